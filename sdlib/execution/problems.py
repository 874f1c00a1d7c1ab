"""One problem type for every benchmark, so that collection, rewards and evaluation never care
where a problem came from.

A problem's tests come in two kinds:

* ``assert``: a Python statement run after the program (MBPP's ``test_list``, the statements of
  HumanEval's ``check(candidate)`` body). ``candidate`` is bound to the entry point.
* ``call``: call the entry point with ``inputs`` and compare the result with ``expected``
  (EvalPlus's differential tests, with ``atol`` for floats; APPS's call-based problems).
* ``stdio``: run the whole program with ``inputs[0]`` on stdin and compare its stdout with
  ``expected`` (APPS, CodeContests; ``sdlib.execution.stdio``), each test in a fresh job.

Consumers never care which: they only read ``Verdict`` objects.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sdlib.execution import valuecodec

TestKind = Literal["assert", "call", "stdio"]
Split = Literal["prompt", "train", "validation", "test"]


@dataclass(frozen=True)
class TestCase:
    kind: TestKind
    code: str = ""  # kind == "assert": the statement
    inputs: tuple[Any, ...] = ()  # kind == "call": positional arguments; "stdio": (stdin,)
    expected: Any = None  # kind == "call": the canonical solution's output; "stdio": stdout
    # EvalPlus oracles that are not plain equality ("set_eq", "not_none", ...); "" = equality.
    oracle: str = ""

    def describe(self, entry_point: str, limit: int = 300) -> str:
        """The test as a human (or a refinement prompt) reads it."""
        if self.kind == "assert":
            text = self.code.strip()
        elif self.kind == "stdio":
            text = f"input:\n{self.inputs[0] if self.inputs else ''}\nexpected output:\n{self.expected}"
        else:
            args = ", ".join(repr(a) for a in self.inputs)
            text = f"assert {entry_point}({args}) == {self.expected!r}"
        return text if len(text) <= limit else text[: limit - 3] + "..."


class CallTests(Sequence):
    """``call`` tests kept as the JSON text of their wire form (``valuecodec``) and decoded
    one at a time when read. HumanEval+ holds 124,000 inputs and 300 MB of expected outputs;
    judging needs only the text, so loading it costs a JSON read of strings, not a decode."""

    def __init__(
        self,
        inputs: Sequence[str],
        expected: Sequence[str],
        oracle: str = "",
        large: dict[int, tuple[str, bool]] | None = None,
    ):
        if len(inputs) != len(expected):
            raise ValueError(f"{len(inputs)} inputs but {len(expected)} expected outputs")
        self.inputs, self.expected, self.oracle = tuple(inputs), tuple(expected), oracle
        # For each expected value whose text is over valuecodec.DIGEST_OVER: its digest and
        # whether it is floats, computed once when cached (HumanEval+/130 has ten million).
        self.large = dict(large or {})

    @classmethod
    def of(cls, tests: Sequence[TestCase]) -> CallTests:
        """The wire text of decoded call tests (one oracle for all, as in EvalPlus)."""
        oracle = tests[0].oracle if tests else ""
        return cls(
            [json.dumps(valuecodec.encode(list(t.inputs))) for t in tests],
            [json.dumps(valuecodec.encode(t.expected)) for t in tests],
            oracle,
        )

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return tuple(self[i] for i in range(*index.indices(len(self))))
        inputs = valuecodec.decode(json.loads(self.inputs[index]))
        expected = valuecodec.decode(json.loads(self.expected[index]))
        return TestCase(kind="call", inputs=tuple(inputs), expected=expected, oracle=self.oracle)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CallTests):
            return (self.inputs, self.expected, self.oracle) == (
                other.inputs,
                other.expected,
                other.oracle,
            )
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.inputs, self.expected, self.oracle))

    def __repr__(self) -> str:
        return f"CallTests({len(self)} tests, oracle={self.oracle!r})"


@dataclass(frozen=True)
class Problem:
    task_id: str
    benchmark: str  # "humaneval", "mbpp", "humaneval+", "mbpp+"
    split: Split
    text: str  # the natural-language task
    prompt: str  # code the model completes (signature + docstring); "" when there is none
    entry_point: str
    reference: str  # a complete program that passes every test
    tests: Sequence[TestCase] = field(default=(), repr=False)  # a tuple, or CallTests
    setup: str = ""  # code run after the program and before the tests (imports, helpers)
    atol: float = 0.0
    # The few test cases a prompt may show to the model (MBPP shows its first test).
    visible_tests: tuple[str, ...] = ()
    # Seconds the reference took on all tests (EvalPlus benchmarks): a slow-but-correct
    # program gets a time limit in proportion (SandboxConfig.reference_factor).
    reference_seconds: float = 0.0
    # Stdin/stdout problems: the source's own limits per test (CodeContests gives both; the
    # sandbox scales the time for Python), and whether one right output exists at all.
    time_limit: float | None = None
    memory_mb: int | None = None
    checkable: bool = True  # False: several answers are right; comparison cannot judge
    difficulty: str = ""  # APPS: introductory/interview/competition; CodeContests: its rating
    # Code run before the program (APPS's testing_util imports typing, math, collections...
    # for every solution: its references and starter code rely on them).
    preamble: str = ""

    @property
    def key(self) -> str:
        return f"{self.benchmark}:{self.task_id}"

    @property
    def stdio(self) -> bool:
        """A stdin/stdout problem: the program is run whole on each test's input."""
        return bool(self.tests) and self.tests[0].kind == "stdio"

    def with_preamble(self, program: str) -> str:
        return f"{self.preamble}\n{program}" if self.preamble else program

    def program_from_completion(self, completion: str) -> str:
        """EvalPlus's convention: a ``completion`` is appended to the prompt."""
        return self.prompt + completion
