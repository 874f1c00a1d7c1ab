"""One way to judge an answer (issue 13, item 2): every stage parses, builds and runs a model's
response through ``sdlib.prompting.answers``, so the same response gets the same verdict everywhere."""

from __future__ import annotations

import pytest

from sdlib.execution.problems import Problem
from sdlib.execution.problems import TestCase as Case
from sdlib.execution.sandbox import Sandbox, SandboxConfig
from sdlib.prompting.answers import judge_programs, no_code_verdict, read_answer

ADD = Problem(
    "add",
    "unit",
    "test",
    "Add two numbers.",
    "def add(a, b):\n",
    "add",
    "def add(a, b):\n    return a + b\n",
    tests=tuple(
        Case("assert", code=f"assert add({a}, {b}) == {a + b}") for a, b in [(1, 2), (0, 0)]
    ),
)


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(SandboxConfig(timeout=3, memory_mb=512, tmpfs_mb=64, workers=1)) as sb:
        yield sb


def test_an_answer_is_read_into_explanation_code_and_program():
    answer = read_answer(ADD, "It adds.\n```python\ndef add(a, b):\n    return a + b\n```\n")
    assert answer.explanation.strip() == "It adds."
    assert answer.program.strip() == "def add(a, b):\n    return a + b"
    broken = read_answer(ADD, "```python\ndef add(a, b)\n    return a +\n```\n")
    assert broken.code and broken.program  # kept: it runs, for a SyntaxError verdict
    none = read_answer(ADD, "I cannot answer that.")
    assert (none.code, none.program, none.parse_reason) == (None, None, "no_code")


def test_verdicts_come_in_order_and_an_answer_without_code_is_a_counted_failure(sandbox):
    responses = [
        "```python\ndef add(a, b):\n    return a + b\n```",
        "no code at all",
        "```python\ndef add(a, b)\n    return a +\n```",
        "```python\ndef add(a, b):\n    return a - b\n```",
    ]
    answers = [read_answer(ADD, text) for text in responses]
    verdicts = judge_programs(
        sandbox, [(ADD, a.program) for a in answers], [a.parse_reason for a in answers]
    )
    assert [v.status for v in verdicts] == ["pass", "no_code", "syntax", "fail"]
    assert verdicts[1] == no_code_verdict(ADD, "no_code")
    assert (verdicts[1].passed, verdicts[1].total) == (0, len(ADD.tests))  # not total=0
    assert verdicts[0].pass_fraction == 1.0 and verdicts[1].pass_fraction == 0.0


def test_answers_without_code_need_no_sandbox():
    verdicts = judge_programs(None, [(ADD, None), (ADD, "")])
    assert [v.status for v in verdicts] == ["no_code", "no_code"]
