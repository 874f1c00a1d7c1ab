"""The judge's shortcuts give the verdicts its long way gives (issue 11, item 6): lists carried
by the codec as they are, digests of large answers, equal wire forms, call tests kept as
text, and fail-fast jobs that stop at the first failing call."""

from __future__ import annotations

import json
import math

import pytest

from sdlib.data.benchmarks import large_facts
from sdlib.execution import valuecodec
from sdlib.execution.problems import CallTests, Problem
from sdlib.execution.problems import TestCase as Case
from sdlib.execution.sandbox import FIRST_CALLS, Sandbox, SandboxConfig

N_TESTS = 40


def call_problem(tests, entry: str = "f", name: str = "calls") -> Problem:
    return Problem(name, "unit", "test", "", "", entry, "", tests=tests)


SQUARES = call_problem(
    tuple(Case("call", inputs=(x,), expected=x * x) for x in range(N_TESTS)), name="squares"
)


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(SandboxConfig(timeout=3, memory_mb=512, tmpfs_mb=64, workers=1)) as sb:
        yield sb


def walked(value):
    """The codec's element-by-element encoding of a list, without its fast path."""
    return [valuecodec.encode(v) for v in value]


@pytest.mark.parametrize(
    "value",
    [
        [1, 2, 3],
        [1, 2.5, True, None, "a"],
        [0.5, float("inf")],
        [float("nan"), 1.0],
        [2**70, 1],
        [-(2**64), 1.0],
        ["a", b"b"],
        [1, (2, 3)],
        [],
    ],
)
def test_lists_the_codec_carries_as_they_are_encode_as_walked(value):
    assert valuecodec.encode(value) == walked(value) or value != value
    assert json.dumps(valuecodec.encode(value)) == json.dumps(walked(value))
    round_trip = valuecodec.decode(json.loads(json.dumps(valuecodec.encode(value))))
    assert repr(round_trip) == repr(value)  # repr: nan is not equal to itself


def test_digests_are_equal_exactly_when_the_values_are():
    digest = valuecodec.digest
    assert digest([1, 2.0, 3]) == digest([1.0, 2, 3.0])  # equal as Python compares them
    assert digest([1, 2, 3]) != digest([1, 2, 4])
    assert digest([2**60]) != digest([2**60 + 1])  # beyond a double's exact integers
    assert digest([0.1, 0.2]) != digest([0.1, 0.2000000001])
    assert digest("ab") != digest(["ab"]) != digest({"$t": ["ab"]})
    assert digest("x" * 100) == digest("x" * 100) != digest("x" * 101)


@pytest.mark.parametrize(
    "program",
    [
        "def f(x):\n    return x * x\n",  # passes
        "def f(x):\n    return None\n",  # fails the first call
        "def f(x):\n    return x * x + (x == 30)\n",  # passes the first round, fails later
        "def f(x):\n    raise ValueError(x)\n",
    ],
)
def test_fail_fast_gives_the_verdict_of_the_whole_job(sandbox, program):
    whole = sandbox.run(SQUARES, program)
    fast = sandbox.run(SQUARES, program, fail_fast=True)
    assert (fast.status, fast.failed_test, fast.feedback) == (
        whole.status,
        whole.failed_test,
        whole.feedback,
    )
    assert fast.total == whole.total == N_TESTS
    if whole.status == "pass" or "30" in program:  # both rounds ran: every test judged
        assert fast.passed == whole.passed


def test_fail_fast_never_makes_the_calls_after_a_failing_first_round(sandbox):
    # Wrong at once, and endless for the inputs after the first round: a whole job times
    # out, a fail-fast one stops at its first failure and costs one short job.
    program = f"def f(x):\n    while x >= {FIRST_CALLS}:\n        pass\n    return -1\n"
    assert sandbox.run(SQUARES, program, timeout=1).status == "timeout"
    fast = sandbox.run(SQUARES, program, timeout=1, fail_fast=True)
    assert fast.status == "fail" and fast.failed_test == "f(0)"
    assert fast.passed == 0  # and no timeout: the endless calls were never made


def test_call_tests_kept_as_text_read_and_judge_as_the_decoded_ones(sandbox):
    cases = tuple(Case("call", inputs=((x, "a"), {x}), expected=[float(x), None]) for x in range(5))
    text = CallTests.of(cases)
    assert len(text) == 5 and list(text) == list(cases) and text[1:3] == cases[1:3]
    assert text == CallTests.of(cases) and hash(text) == hash(CallTests.of(cases))
    program = "def f(pair, s):\n    return [float(pair[0]), None]\n"
    wrong = "def f(pair, s):\n    return [float(pair[0]) + (pair[0] == 3), None]\n"
    for candidate in (program, wrong):
        as_tuple = sandbox.run(call_problem(cases, name="tuple"), candidate)
        as_text = sandbox.run(call_problem(text, name="text"), candidate)
        assert as_tuple.to_dict() | {"duration": 0} == as_text.to_dict() | {"duration": 0}


LONG = 3000  # floats: an answer of about 60 KB, sent as its digest


def long_floats(x: int) -> list[float]:
    return [x + i / 7 for i in range(LONG)]


@pytest.mark.parametrize("cached_facts", [False, True])
def test_large_answers_judged_by_digest_as_by_value(sandbox, cached_facts):
    cases = tuple(Case("call", inputs=(x,), expected=long_floats(x)) for x in range(3))
    text = CallTests.of(cases)
    if cached_facts:  # digests and float-ness computed when the cache was written
        text = CallTests(text.inputs, text.expected, large=large_facts(list(text.expected)))
        assert len(text.large) == 3
    problem = call_problem(text, name=f"long-{cached_facts}")
    good = "def f(x):\n    return [x + i / 7 for i in range(3000)]\n"
    off = "def f(x):\n    return [x + i / 7 + (x == 2 and i == 2999) for i in range(3000)]\n"
    assert sandbox.run(problem, good).status == "pass"
    verdict = sandbox.run(problem, off)
    assert verdict.status == "fail" and verdict.passed == 2 and verdict.failed_test == "f(2)"


def test_a_tolerance_set_by_a_digest_match_holds_for_later_tests(sandbox):
    # EvalPlus turns on atol=1e-6 once a test expects floats, for the task's later inputs:
    # a list of floats matched by its digest must turn it on as a matched value does.
    for length in (LONG, 3):  # by digest, then by value
        cases = (
            Case("call", inputs=(0,), expected=[i / 7 for i in range(length)]),
            Case("call", inputs=(1,), expected=[1, 0.5]),
        )
        program = (
            f"def f(x):\n    return [i / 7 for i in range({length})] if x == 0 "
            "else [1, 0.5 + 1e-9]\n"
        )
        verdict = sandbox.run(call_problem(CallTests.of(cases), name=f"atol-{length}"), program)
        assert verdict.status == "pass", verdict.feedback


def test_an_expected_nan_matches_nothing_whatever_the_path(sandbox):
    # EvalPlus compares with == and then allclose without equal_nan: nan never passes.
    for length in (1, LONG):
        cases = (Case("call", inputs=(0,), expected=[math.nan] * length),)
        program = f"def f(x):\n    return [float('nan')] * {length}\n"
        verdict = sandbox.run(call_problem(CallTests.of(cases), name=f"nan-{length}"), program)
        assert verdict.status == "fail"
