"""The trusted side is total: nothing a program prints, returns or reports can crash it, slow
it or make it count a test twice (issue 12, part 2)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sdlib.data.jsonl import JsonlWriter, read_jsonl, write_jsonl
from sdlib.execution.problems import Problem
from sdlib.execution.problems import TestCase as Case
from sdlib.execution.sandbox import Sandbox, SandboxConfig

ADD3 = Problem(
    "add3",
    "unit",
    "test",
    "",
    "",
    "add",
    "",
    tests=tuple(
        Case("assert", code=c)
        for c in ("assert add(1, 2) == 3", "assert add(0, 0) == 0", "assert add(2, 2) == 4")
    ),
)
GOOD_ADD = "def add(a, b):\n    return a + b\n"
FIND_NONCE = (
    "import sys, os, json\n"
    "f, n = sys._getframe(), None\n"
    "while f is not None and n is None:\n"
    "    n = f.f_locals.get('nonce')\n"
    "    f = f.f_back\n"
)


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(SandboxConfig(timeout=3, memory_mb=512, tmpfs_mb=64, workers=1)) as sb:
        yield sb


def test_a_lone_surrogate_reaches_no_writer_as_invalid_text(sandbox, tmp_path):
    verdict = sandbox.run(ADD3, "def add(a, b):\n    raise ValueError(chr(0xD800) * 3)\n")
    assert verdict.status == "error"
    verdict.feedback.encode("utf-8")  # valid UTF-8 now
    write_jsonl(tmp_path / "a.jsonl", [{"feedback": "x" + chr(0xD800)}, verdict.to_dict()])
    with JsonlWriter(tmp_path / "b.jsonl") as writer:
        writer.write({"msg": chr(0xDFFF)})
    rows, bad = read_jsonl(tmp_path / "a.jsonl")
    assert len(rows) == 2 and not bad and rows[0]["feedback"] == "x" + chr(0xD800)
    assert read_jsonl(tmp_path / "b.jsonl")[0] == [{"msg": chr(0xDFFF)}]


def test_forked_clones_cannot_count_a_test_twice(sandbox):
    # Every call forks: parent and child both report; only the first report of a test counts.
    program = "import os\ndef add(a, b):\n    os.fork()\n    return 3\n"
    verdict = sandbox.run(ADD3, program)
    assert verdict.status == "fail"
    assert verdict.passed == 1 and verdict.total == 3


def test_garbage_and_deep_nesting_on_the_report_channel_are_ignored(sandbox):
    restarts = sandbox.restarts
    program = "import os\nos.write(3, b'[' * 200000)\nos.write(3, b'\\n')\n" + GOOD_ADD
    assert sandbox.run(ADD3, program).status == "pass"
    huge = "import os\nos.write(3, b'{' + b' ' * (4 << 20) + b'}\\n')\n" + GOOD_ADD
    assert sandbox.run(ADD3, huge).status == "pass"
    assert sandbox.restarts == restarts


def test_forged_events_with_null_fields_do_not_crash_the_worker(sandbox):
    restarts = sandbox.restarts
    forged = [
        {"ev": "test", "i": 0, "ok": False, "etype": None, "msg": None, "expected": None},
        {"ev": "test", "i": "1", "ok": True},
        {"ev": "test", "i": 99, "ok": True},
        {"ev": "done", "tests": None},
    ]
    program = (
        FIND_NONCE
        + f"for event in {forged!r}:\n"
        + "    event['n'] = n\n"
        + "    os.write(3, (json.dumps(event) + '\\n').encode())\n"
        + "os._exit(0)\n"
    )
    verdict = sandbox.run(ADD3, program)
    assert verdict.status in ("fail", "error", "crash")
    assert verdict.passed == 0 and verdict.total == 3
    assert sandbox.restarts == restarts
    assert sandbox.run(ADD3, GOOD_ADD).status == "pass"


def test_a_str_that_lies_about_its_length_is_still_capped(sandbox):
    program = (
        "class S(str):\n    def __len__(self):\n        return 0\n"
        "class Big:\n    def __repr__(self):\n        return S('y' * (15 << 20))\n"
        "def add(a, b):\n    return [Big()][0] if a else 0\n"
    )
    calls = Problem(
        "calls", "unit", "test", "", "", "add", "", tests=(Case("call", inputs=(1, 2), expected=3),)
    )
    verdict = sandbox.run(calls, program)
    assert verdict.status == "fail"
    assert len(json.dumps(verdict.to_dict())) < 20_000


# ------------------------------------------------- the decision is made outside the job ----
# conftest.py sets it (to ../shared/data when unset): a clone elsewhere, under /tmp, finds it too
DATA = Path(os.environ["SDLIB_DATA_DIR"])


def test_a_builtin_subclass_with_an_always_equal_mixin_is_read_as_its_data(sandbox):
    program = (
        "class Equal:\n    def __eq__(self, other): return True\n"
        "    def __ne__(self, other): return False\n    __hash__ = object.__hash__\n"
        "class I(Equal, int): pass\n"
        "class L(Equal, list):\n    def __iter__(self): return iter([])\n"
        "def add(a, b):\n    return I(0) if a else L([0])\n"
    )
    assert sandbox.run(ADD3, program).status == "fail"


def test_no_expected_value_is_in_the_jobs_memory(sandbox):
    secret = "EXPECTED-" + "7" * 12
    task = Problem(
        "memory", "unit", "test", "", "", "f", "", tests=(Case("call", expected=secret),)
    )
    program = (
        "import gc\ndef f():\n    for obj in gc.get_objects():\n"
        "        for item in (obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()):\n"
        "            if isinstance(item, str) and len(item) == 21 and item.startswith('EXPECTED-7'):\n"
        "                return item\n    return None\n"
    )
    verdict = sandbox.run(task, program)
    assert verdict.status == "fail" and secret not in verdict.actual
    asserted = Problem(
        "memory2", "unit", "test", "", "", "f", "",
        tests=(Case("assert", code=f"assert f() == {secret!r}"),),
    )  # fmt: skip
    assert sandbox.run(asserted, program).status == "fail"


def test_a_loop_of_asserts_is_judged_outside_the_job(sandbox):
    loop = Problem(
        "loop", "unit", "test", "", "", "seven", "",
        tests=(Case("assert", code="for x in range(5):\n    assert seven(x) == 7 * x"),),
    )  # fmt: skip
    assert sandbox.run(loop, "def seven(x):\n    return 7 * x\n").status == "pass"
    cheat = (
        "import sys\ndef seven(x):\n    f = sys._getframe(1)\n"
        "    return f.f_locals.get('x', 0) * 7 if f else 0\n"
    )  # the caller's frame is the runner's loop, not the test
    assert sandbox.run(loop, cheat).status == "fail"


def _humaneval(task_id: str) -> Problem:
    from sdlib.data import benchmarks

    assert (DATA / "HumanEvalPlus-v0.1.10.jsonl.gz").is_file(), f"benchmark data missing in {DATA}"
    return {p.task_id: p for p in benchmarks.load("humaneval", directory=DATA)}[task_id]


def test_a_program_cannot_redefine_the_helpers_the_tests_call(sandbox):
    problem = _humaneval("HumanEval/38")  # tests call encode_cyclic from the prompt
    assert sandbox.run(problem, problem.reference).status == "pass"
    cheat = "def encode_cyclic(s):\n    return s\ndef decode_cyclic(s):\n    return s\n"
    assert sandbox.run(problem, cheat).status == "fail"


def test_patched_stdlib_modules_do_not_change_the_tests(sandbox):
    problem = _humaneval("HumanEval/32")  # find_zero: the oracle uses math and poly
    assert sandbox.run(problem, problem.reference).status == "pass"
    cheat = (
        "import math, random\nmath.fabs = lambda x: 0.0\nmath.pow = lambda a, b: 0.0\n"
        "random.randint = lambda a, b: 1\nrandom.seed = lambda *a: None\n"
        "def poly(xs, x):\n    return 0.0\n"
        "def find_zero(xs):\n    return 0.0\n"
    )
    assert sandbox.run(problem, cheat).status == "fail"


def test_a_trace_hook_cannot_flip_a_result(sandbox):
    program = (
        "import sys\n"
        "def hook(frame, event, arg):\n"
        "    if event == 'return' and isinstance(arg, dict) and 'ok' in arg:\n"
        "        arg['ok'] = True\n"
        "    return hook\n"
        "sys.settrace(hook)\n"
        "def add(a, b):\n    return 0\n"
    )
    verdict = sandbox.run(ADD3, program)
    assert verdict.status == "fail" and verdict.passed == 1  # add(0, 0) == 0 only


def test_a_metaclass_cannot_run_code_in_the_check_or_fake_a_builtin(sandbox):
    program = (
        "class Meta(type):\n"
        "    def mro(cls):\n        return (cls, int, object)\n"
        "    def __instancecheck__(cls, obj):\n        return True\n"
        "class Fake(metaclass=Meta):\n"
        "    def __eq__(self, other): return True\n"
        "def add(a, b):\n    return Fake()\n"
    )
    verdict = sandbox.run(ADD3, program)
    assert verdict.status in ("fail", "crash", "error") and verdict.passed == 0


def test_a_class_flagged_immutable_through_ctypes_gains_nothing(sandbox):
    program = (
        "import ctypes\n"
        "class Equal:\n    def __eq__(self, other): return True\n"
        "flags = ctypes.c_ulong.from_address(id(Equal) + type.__flags__.__objclass__.__basicsize__ - 8)\n"
        "try:\n    ctypes.c_ulong.from_address(id(Equal) + 168).value |= 1 << 8\n"
        "except Exception:\n    pass\n"
        "def add(a, b):\n    return Equal()\n"
    )
    verdict = sandbox.run(ADD3, program)
    assert verdict.status != "pass" and verdict.passed == 0


def test_a_class_as_the_entry_point_answers_with_instances_that_are_not_data(sandbox):
    program = (
        "class add:\n    def __init__(self, a, b): pass\n    def __eq__(self, other): return True\n"
    )
    verdict = sandbox.run(ADD3, program)
    assert verdict.status == "fail" and verdict.passed == 0
    assert "not plain data" in verdict.feedback
