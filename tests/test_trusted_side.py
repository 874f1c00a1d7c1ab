"""The trusted side is total: nothing a program prints, returns or reports can crash it, slow
it or make it count a test twice (issue 12, part 2)."""

from __future__ import annotations

import json

import pytest

from sdlib.jsonl import JsonlWriter, read_jsonl, write_jsonl
from sdlib.problems import Problem
from sdlib.problems import TestCase as Case
from sdlib.sandbox import Sandbox, SandboxConfig

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
