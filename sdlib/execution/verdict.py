"""The result of running one program against one problem's tests.

Every later stage reads only this: filtering keeps ``status == "pass"``, the refinement reward
uses ``pass_fraction``, refinement prompts show ``feedback``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal[
    "pass",  # every test ran and passed, as counted by the harness
    "fail",  # the first failing test gave a wrong answer
    "error",  # the first failing test (or the program itself) raised an exception
    "timeout",  # the time limit was hit
    "memory",  # the memory limit was hit
    "syntax",  # the program does not compile
    "crash",  # the process died without reporting (signal, os._exit, harness tampering)
    "no_code",  # the model response had no usable code (decided before execution)
    "sandbox_error",  # the sandbox itself failed; never the program's fault
]
STATUSES: tuple[str, ...] = Status.__args__  # type: ignore[attr-defined]

FEEDBACK_LIMIT = 1000  # characters of feedback a prompt may show


@dataclass
class Verdict:
    status: Status
    passed: int = 0  # tests passed
    total: int = 0  # tests in the problem
    duration: float = 0.0  # seconds the program ran
    feedback: str = ""  # what a refinement prompt shows: error line, or failed test + outputs
    error_type: str = ""  # exception class name, "Timeout", "MemoryError", signal name, ...
    failed_test: str = ""  # the first failed test, as text
    expected: str = ""  # repr of the expected value of the first failed test, capped
    actual: str = ""  # repr of the actual value of the first failed test, capped
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "pass"

    @property
    def pass_fraction(self) -> float:
        return self.passed / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if not data["extra"]:
            del data["extra"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verdict:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def cap(text: str, limit: int = FEEDBACK_LIMIT) -> str:
    """Cut text to ``limit`` characters, marking the cut, so prompts never blow up."""
    if len(text) <= limit:
        return text
    return text[: limit - 15] + " ...[truncated]"
