"""One problem type for every benchmark, so that collection, rewards and evaluation never care
where a problem came from.

A problem's tests come in two kinds:

* ``assert``: a Python statement run after the program (MBPP's ``test_list``, the statements of
  HumanEval's ``check(candidate)`` body). ``candidate`` is bound to the entry point.
* ``call``: call the entry point with ``inputs`` and compare the result with ``expected``
  (EvalPlus's differential tests, with ``atol`` for floats).

Stdin/stdout problems (APPS, CodeContests) will add a third kind, ``stdio``, without changing
any consumer: consumers only read ``Verdict`` objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

TestKind = Literal["assert", "call"]
Split = Literal["prompt", "train", "validation", "test"]


@dataclass(frozen=True)
class TestCase:
    kind: TestKind
    code: str = ""  # kind == "assert": the statement
    inputs: tuple[Any, ...] = ()  # kind == "call": positional arguments
    expected: Any = None  # kind == "call": the canonical solution's output
    # EvalPlus oracles that are not plain equality ("set_eq", "not_none", ...); "" = equality.
    oracle: str = ""

    def describe(self, entry_point: str, limit: int = 300) -> str:
        """The test as a human (or a refinement prompt) reads it."""
        if self.kind == "assert":
            text = self.code.strip()
        else:
            args = ", ".join(repr(a) for a in self.inputs)
            text = f"assert {entry_point}({args}) == {self.expected!r}"
        return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Problem:
    task_id: str
    benchmark: str  # "humaneval", "mbpp", "humaneval+", "mbpp+"
    split: Split
    text: str  # the natural-language task
    prompt: str  # code the model completes (signature + docstring); "" when there is none
    entry_point: str
    reference: str  # a complete program that passes every test
    tests: tuple[TestCase, ...] = field(default=(), repr=False)
    setup: str = ""  # code run after the program and before the tests (imports, helpers)
    atol: float = 0.0
    # The few test cases a prompt may show to the model (MBPP shows its first test).
    visible_tests: tuple[str, ...] = ()
    # Seconds the reference took on all tests (EvalPlus benchmarks): a slow-but-correct
    # program gets a time limit in proportion (SandboxConfig.reference_factor).
    reference_seconds: float = 0.0
    # The tests already encoded for the sandbox's wire format (set by loaders that read them
    # encoded, so that large EvalPlus inputs are not encoded a second time).
    wire_tests: tuple = field(default=(), repr=False, compare=False)

    @property
    def key(self) -> str:
        return f"{self.benchmark}:{self.task_id}"

    def program_from_completion(self, completion: str) -> str:
        """EvalPlus's convention: a ``completion`` is appended to the prompt."""
        return self.prompt + completion
