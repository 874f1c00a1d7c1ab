"""The trusted half of judging stdin/stdout programs (APPS, CodeContests).

Each test is one run of the program in a fresh job: its input on stdin, its stdout read back
afterwards and compared *here* with the expected output, which the program never sees.

Comparison follows APPS's ``testing_util`` and the CodeContests checkers for problems with
one right answer:

1. the texts are equal after normalising line ends and trailing whitespace of every line and
   of the whole output; else
2. the whitespace-separated tokens are equal; else
3. the token lists have the same length and every pair is equal or both parse as numbers
   within APPS's tolerance (``numpy.allclose``'s: ``|a - b| <= 1e-8 + 1e-5 * |b|``).

Problems that accept several answers ("print any of them") cannot be judged by comparison;
loaders flag them (``Problem.checkable``), and a failed comparison on one is marked in the
verdict (``extra["uncheckable"]``) so it is never silently counted as the model's failure.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from sdlib.execution.harness import allclose
from sdlib.execution.problems import Problem, TestCase
from sdlib.execution.verdict import FEEDBACK_LIMIT

RTOL, ATOL = 1e-5, 1e-8  # APPS's numpy.allclose defaults
SHOWN = 300  # characters of an input, expected or actual output shown in feedback
_SEVERAL_ANSWERS = re.compile(
    r"(any of them|print any|output any|any (?:valid|correct|possible|such|one)|"
    r"if there are (?:multiple|several|many)|multiple (?:possible )?(?:answers|solutions)|"
    r"several (?:possible )?(?:answers|solutions))",
    re.I,
)


def several_answers(statement: str) -> bool:
    """Whether a statement accepts more than one right output (then comparison cannot judge)."""
    return bool(_SEVERAL_ANSWERS.search(statement or ""))


def _lines(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def outputs_match(actual: str, expected: str) -> bool:
    """APPS's rules (module docstring): text, then tokens, then numbers within tolerance."""
    if _lines(actual) == _lines(expected):
        return True
    got, want = actual.split(), expected.split()
    if got == want:
        return True
    if len(got) != len(want):
        return False
    return all(a == b or allclose(a, b, ATOL, RTOL) for a, b in zip(got, want))


def _shown(text: str, limit: int = SHOWN) -> str:
    text = text.rstrip("\n")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(test: TestCase) -> str:
    """A stdio test as a refinement prompt shows it: its input (truncated)."""
    return "Input:\n" + _shown(test.inputs[0] if test.inputs else "")


def time_limit(problem: Problem, default: float, factor: float) -> float:
    """Seconds for one test: the problem's own limit times ``factor`` (its limits are set for
    C++; Python is slower), or ``default`` when the data gives none."""
    return problem.time_limit * factor if problem.time_limit else default


def judge(problem: Problem, runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The verdict (as ``Sandbox`` reads it) from one worker reply per test run, in order:
    ``passed`` counts every test that passed, the feedback is the first failure's. Tests
    after a timeout or a crash were not run and count as failed."""
    tests = list(problem.tests)
    verdict: dict[str, Any] = {
        "status": "pass",
        "passed": 0,
        "total": len(tests),
        "duration": round(sum(r.get("end", {}).get("duration", 0.0) for r in runs), 4),
    }
    first: dict[str, Any] | None = None
    for test, run in zip(tests, runs):
        end = run.get("end", {})
        kind = end.get("end")
        if kind == "done" or (kind == "exit" and end.get("code") == 0):
            actual = run.get("stdout") if isinstance(run.get("stdout"), str) else ""
            if not run.get("truncated") and outputs_match(actual, test.expected):
                verdict["passed"] += 1
                continue
            failure = _failed_output(test, actual, bool(run.get("truncated")))
        else:
            failure = _failed_run(test, end)
        if first is None:
            first = failure
    if first is not None:
        if not problem.checkable and first["status"] == "fail":
            first["extra"] = {"uncheckable": True}
        return {**verdict, **first}
    if len(runs) < len(tests):  # a run is asked for every test unless one failed
        return {**verdict, "status": "sandbox_error", "feedback": "not every test was run"}
    return verdict


def _cap(lines: list[str]) -> str:
    text = "\n".join(lines)
    return text if len(text) <= FEEDBACK_LIMIT else text[: FEEDBACK_LIMIT - 3] + "..."


def _failed_output(test: TestCase, actual: str, truncated: bool) -> dict:
    shown_actual = _shown(actual) + (
        "\n... (output cut: far longer than expected)" if truncated else ""
    )
    return {
        "status": "fail",
        "failed_test": describe(test),
        "expected": _shown(test.expected),
        "actual": shown_actual,
        "feedback": _cap(
            [
                f"Failed test: {describe(test)}",
                f"Expected output:\n{_shown(test.expected)}",
                f"Actual output:\n{shown_actual}",
            ]
        ),
    }


def _failed_run(test: TestCase, end: dict) -> dict:
    kind = end.get("end")
    head = f"Failed test: {describe(test)}"
    if kind == "syntax":
        return {"status": "syntax", "error_type": "SyntaxError", "feedback": end.get("msg", "")}
    if kind == "setup_failed":
        return {"status": "sandbox_error", "feedback": end.get("msg", "")}
    if kind == "timeout" or end.get("signal") == "SIGXCPU":
        return {
            "status": "timeout",
            "error_type": "Timeout",
            "failed_test": describe(test),
            "feedback": _cap([head, "Timeout"]),
        }
    if kind == "fatal":
        etype = end.get("etype", "")
        line = end.get("msg", etype) + (f" ({end['where']})" if end.get("where") else "")
        return {
            "status": "memory" if etype == "MemoryError" else "error",
            "error_type": etype,
            "failed_test": describe(test),
            "feedback": _cap([head, line]),
        }
    if kind == "flood":
        why = "the program flooded the harness channel"
    elif kind == "signal":
        why = f"the program was killed by signal {end.get('signal', '')}"
    else:
        why = f"the program exited with status {end.get('code')}"
    return {
        "status": "crash",
        "error_type": end.get("signal") or "EarlyExit",
        "failed_test": describe(test),
        "feedback": _cap([head, why]),
    }
