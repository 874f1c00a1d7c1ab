"""The sandbox: verdicts on small problems, and hostile programs that must be contained.

Every hostile program must (1) not pass, and (2) leave no trace that we can observe from the
host: no file written or deleted outside its directory, no connection made, no process left
behind, no worker lost. Run as root (CI and GPU nodes are), the namespace path is the one
tested; ``isolation="none"`` (resource limits only) gets the basics.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pytest

from sdlib.execution.doctor import processes_with
from sdlib.execution.problems import Problem
from sdlib.execution.problems import TestCase as Case
from sdlib.execution.sandbox import WORKER_ENV, Sandbox, SandboxConfig, SandboxUnavailable
from sdlib.execution.verdict import FEEDBACK_LIMIT

NPROC = 32
HOSTILE = SandboxConfig(timeout=2, memory_mb=512, workers=2, nproc=NPROC, output_mb=4, tmpfs_mb=64)


def problem(key: str, entry: str, *tests: Case) -> Problem:
    return Problem(key, "unit", "test", key, "", entry, "", tests=tests)


def asserts(*codes: str) -> tuple[Case, ...]:
    return tuple(Case("assert", code=c) for c in codes)


def call(expected, *inputs) -> Case:
    return Case("call", inputs=inputs, expected=expected)


ADD = problem("add", "add", *asserts("assert add(1, 2) == 3"), call(5, 2, 3))
ADD3 = problem(
    "add3",
    "add",
    *asserts("assert add(1, 2) == 3", "assert add(0, 0) == 0", "assert add(2, 2) == 4"),
)
# Problems that one hostile value could satisfy completely, were it not caught.
ADD_CALLS = problem("add_calls", "add", call(3, 1, 2), call(5, 2, 3))
ROOT = problem(
    "root",
    "root",
    *asserts("assert abs(root(9.0) - 3.0) < 1e-6", "assert abs(root(4.0) - 2) < 1e-6"),
)
ROOT_CALLS = problem("root_calls", "root", call(3.0, 9.0), call(2.0, 4.0))
LISTS = problem("lists", "lists", *asserts("assert lists(1) == [3]"), call([5], 2))
DICTS = problem("dicts", "dicts", *asserts("assert dicts(1) == {'a': 3}"), call({"a": 5}, 2))
LOOP = problem("loop", "seven", *asserts("for x in range(3):\n    assert seven(x) == 7 * x"))
STDIO_ADD = Problem(
    "stdio_add", "unit", "test", "add two numbers", "", "", "",
    tests=(Case("stdio", inputs=("1 2\n",), expected="3\n"), Case("stdio", inputs=("2 3\n",), expected="5\n")),
)  # fmt: skip
GOOD_STDIO = "a, b = map(int, input().split())\nprint(a + b)\n"
GOOD_ADD = "def add(a, b):\n    return a + b\n"
WRONG_ADD = "def add(a, b):\n    return a - b\n"
ALWAYS_EQUAL = (
    "class AlwaysEqual:\n"
    "    def __eq__(self, other): return True\n"
    "    def __ne__(self, other): return False\n"
    "    def __hash__(self): return 0\n"
)


# ------------------------------------------------------------------------------ fixtures ----


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(HOSTILE) as sb:
        yield sb


@pytest.fixture(scope="module")
def outside():
    """A world-writable host directory outside every path the sandbox makes private (/tmp is
    a private tmpfs inside it), holding a world-writable victim file."""
    bases = [Path("/var/lib"), Path.home(), Path(__file__).resolve().parent]
    for base in bases:
        if str(base).startswith(("/tmp", "/var/tmp", "/dev/shm", "/run")):
            continue
        try:
            path = Path(tempfile.mkdtemp(prefix="sdlib-sandbox-test-", dir=base))
        except OSError:
            continue
        break
    else:
        pytest.skip("no writable directory outside /tmp")
    path.chmod(0o777)
    victim = path / "victim.txt"
    victim.write_text("precious")
    victim.chmod(0o666)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            kids.append(int(entry))
    return kids


def _pid_ns(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return ""


def leftovers() -> list[int]:
    """Processes below our sandbox workers other than their zygotes (PID 1 of a namespace):
    an idle pool has none, so anything here is a program's process that outlived its job."""
    workers = []
    for pid in _children(os.getpid()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"sandbox_worker.py" in f.read():
                    workers.append(pid)
        except OSError:
            continue
    found = []
    for worker in workers:
        stack = _children(worker)
        while stack:
            pid = stack.pop()
            kids = _children(pid)
            is_zygote = pid in _children(worker) and _pid_ns(pid) != _pid_ns(worker)
            if not is_zygote:
                found.append(pid)
            stack.extend(kids)
    return found


def token() -> str:
    return "9" + "".join(random.choice("0123456789") for _ in range(12))


def daemon_program(tok: str, solution: str) -> str:
    """setsid, double fork, exec a long sleep whose argument is our token."""
    return (
        "import os\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execv('/bin/sleep', ['sleep', '{tok}'])\n"
        "    os._exit(0)\n"
        "import time\n"
        "time.sleep(0.3)\n" + solution
    )


# ------------------------------------------------------------------------------ verdicts ----


def test_isolation_is_namespaced_and_unprivileged(sandbox):
    info = sandbox.isolation
    assert info["mode"] in ("namespaces", "userns")
    assert {"pid-namespace", "net-namespace", "mount-namespace"} <= set(info["layers"])
    assert "/tmp" in info["private_tmpfs"]
    if os.getuid() == 0:
        assert info["mode"] == "namespaces"
        assert info["uid"] != 0 and "unprivileged-uid" in info["layers"]
    assert info["limits"]["timeout_s"] == HOSTILE.timeout


def test_isolation_namespaces_can_be_required():
    with Sandbox(SandboxConfig(isolation="namespaces", workers=1, timeout=2)) as sb:
        assert sb.isolation["mode"] in ("namespaces", "userns")
        assert sb.run(ADD, GOOD_ADD).status == "pass"


def test_pools_side_by_side_get_their_own_uids(sandbox):
    if os.getuid() != 0:
        pytest.skip("uids are only assigned when running as root")
    with Sandbox(SandboxConfig(workers=1, timeout=2)) as other:
        assert other.isolation["uid"] != sandbox.isolation["uid"]
        assert other.run(ADD, GOOD_ADD).ok


def test_pass(sandbox):
    verdict = sandbox.run(ADD, GOOD_ADD)
    assert verdict.status == "pass" and verdict.ok
    assert (verdict.passed, verdict.total) == (2, 2)
    assert verdict.duration > 0
    assert verdict.feedback == ""


def test_fail_shows_expected_and_actual(sandbox):
    verdict = sandbox.run(ADD, WRONG_ADD)
    assert verdict.status == "fail"
    assert (verdict.passed, verdict.total) == (0, 2)
    assert verdict.failed_test == "assert add(1, 2) == 3"
    assert (verdict.expected, verdict.actual) == ("3", "-1")
    assert "Expected: 3" in verdict.feedback and "Actual: -1" in verdict.feedback
    assert verdict.duration > 0


def test_fail_on_a_call_test(sandbox):
    verdict = sandbox.run(ADD, "def add(a, b):\n    return 3\n")
    assert verdict.status == "fail"
    assert (verdict.passed, verdict.total) == (1, 2)
    assert verdict.failed_test == "add(2, 3)"
    assert (verdict.expected, verdict.actual) == ("5", "3")


def test_passed_of_total(sandbox):
    verdict = sandbox.run(ADD3, "def add(a, b):\n    return a + b if a else 7\n")
    assert verdict.status == "fail"
    assert (verdict.passed, verdict.total) == (2, 3)
    assert verdict.failed_test == "assert add(0, 0) == 0"
    assert verdict.pass_fraction == pytest.approx(2 / 3)


def test_error_shows_the_exception_line(sandbox):
    verdict = sandbox.run(ADD, "def add(a, b):\n    x = 1\n    return a / 0\n")
    assert verdict.status == "error"
    assert verdict.error_type == "ZeroDivisionError"
    assert "ZeroDivisionError: division by zero" in verdict.feedback
    assert "line 3, in add" in verdict.feedback
    assert "assert add(1, 2) == 3" in verdict.feedback


def test_error_at_top_level(sandbox):
    verdict = sandbox.run(ADD, "import no_such_module_anywhere\n" + GOOD_ADD)
    assert verdict.status == "error"
    assert verdict.error_type == "ModuleNotFoundError"
    assert "no_such_module_anywhere" in verdict.feedback


def test_syntax(sandbox):
    verdict = sandbox.run(ADD, "def add(a, b)\n    return a + b\n")
    assert verdict.status == "syntax"
    assert verdict.error_type == "SyntaxError"
    assert "SyntaxError" in verdict.feedback
    assert verdict.passed == 0 and verdict.total == 2


def test_timeout(sandbox):
    start = time.perf_counter()
    verdict = sandbox.run(ADD, "def add(a, b):\n    while True:\n        pass\n")
    assert verdict.status == "timeout" and verdict.error_type == "Timeout"
    assert HOSTILE.timeout <= verdict.duration < HOSTILE.timeout + 2
    assert time.perf_counter() - start < HOSTILE.timeout + 5


def test_timeout_can_be_given_per_run(sandbox):
    verdict = sandbox.run(ADD, "import time\ntime.sleep(5)\n", timeout=0.5)
    assert verdict.status == "timeout"
    assert verdict.duration < 1.5


def test_feedback_is_capped(sandbox):
    verdict = sandbox.run(ADD, "def add(a, b):\n    raise ValueError('x' * 100000)\n")
    assert verdict.status == "error"
    assert len(verdict.feedback) <= FEEDBACK_LIMIT
    assert verdict.feedback.endswith("[truncated]")
    huge = sandbox.run(ADD, "def add(a, b):\n    return 'y' * 100000\n")
    assert huge.status == "fail"
    assert len(huge.feedback) <= FEEDBACK_LIMIT and len(huge.actual) <= FEEDBACK_LIMIT


def test_float_tolerance_and_containers(sandbox):
    assert sandbox.run(ROOT, "def root(x):\n    return x ** 0.5\n").status == "pass"
    assert sandbox.run(ROOT_CALLS, "def root(x):\n    return x ** 0.5 + 1e-9\n").ok
    assert sandbox.run(ADD_CALLS, GOOD_ADD).ok
    assert sandbox.run(LISTS, "def lists(n):\n    return [2 * n + 1]\n").ok
    assert sandbox.run(DICTS, "def dicts(n):\n    return {'a': 2 * n + 1}\n").ok
    counter = "import collections\ndef dicts(n):\n    return collections.Counter(a=2 * n + 1)\n"
    assert sandbox.run(DICTS, counter).ok
    point = problem("point", "point", call((1, 2), 1), *asserts("assert point(2) == (2, 3)"))
    named = "import collections\nP = collections.namedtuple('P', 'x y')\ndef point(n):\n    return P(n, n + 1)\n"
    assert sandbox.run(point, named).ok
    assert sandbox.run(LOOP, "def seven(x):\n    return 7 * x\n").ok
    # A program may define helpers named like builtins for its own use.
    shadow = "def abs(x):\n    return -x\ndef root(x):\n    return x ** 0.5 if abs(-x) else 0\n"
    assert sandbox.run(ROOT, shadow).ok


def test_run_many_gives_a_verdict_for_every_sample_in_order(sandbox):
    programs = [
        GOOD_ADD,
        WRONG_ADD,
        "def add(a, b) return",
        "while True:\n    pass\n",
        "import os\nos._exit(0)\n",
        "import os\nos.killpg(0, 9)\n",
        "def add(a, b):\n    return [][0]\n",
        GOOD_ADD,
    ]
    seen = []
    verdicts = sandbox.run_many([(ADD, p) for p in programs], on_result=lambda i, v: seen.append(i))
    assert [v.status for v in verdicts] == [
        "pass",
        "fail",
        "syntax",
        "timeout",
        "crash",
        "crash",
        "error",
        "pass",
    ]
    assert sorted(seen) == list(range(len(programs)))
    assert all(v.total == 2 for v in verdicts)


def test_every_run_gets_a_fresh_directory(sandbox):
    writer = (
        "open('leak.txt', 'w').write('x')\n"
        "for path in ('/tmp/leak', '/var/tmp/leak', '/dev/shm/leak'):\n"
        "    open(path, 'w').write('x')\n" + GOOD_ADD
    )
    probe = problem(
        "probe",
        "probe",
        call([False, False, False, False, ["stderr.txt", "stdout.txt"]]),
    )
    checker = (
        "import os\n"
        "def probe():\n"
        "    paths = ('leak.txt', '/tmp/leak', '/var/tmp/leak', '/dev/shm/leak')\n"
        "    return [os.path.exists(p) for p in paths] + [sorted(os.listdir('.'))]\n"
    )
    # Two of each, so that both workers run a writer and then a checker.
    for program, prob in ((writer, ADD), (writer, ADD), (checker, probe), (checker, probe)):
        verdict = sandbox.run(prob, program)
        assert verdict.status == "pass", verdict.feedback


# ------------------------------------------------------------------------- hostile programs ----
# (id, problem, program, statuses allowed). None of them may pass; containment is checked by
# ``test_hostile`` after every one (no leftover process, outside files untouched), and by the
# dedicated tests below where an observation needs setting up.

HOSTILE_PROGRAMS = [
    ("infinite-loop", ADD, "while True:\n    pass\n", {"timeout"}),
    (
        "signal-ignoring-loop",
        ADD,
        "import signal\n"
        "for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGXCPU):\n"
        "    signal.signal(s, signal.SIG_IGN)\n"
        "while True:\n    pass\n",
        {"timeout"},
    ),
    ("sleep-in-test", ADD, "import time\ndef add(a, b):\n    time.sleep(100)\n", {"timeout"}),
    ("memory-bomb", ADD, "x = []\nwhile True:\n    x.append(' ' * 10**7)\n", {"memory"}),
    ("huge-allocation", ADD, "x = bytearray(10**11)\n" + GOOD_ADD, {"memory"}),
    ("huge-output-line", ADD, "print('x' * 10**9)\n" + GOOD_ADD, {"memory"}),
    ("output-flood", ADD, "while True:\n    print('x' * 1000)\n", {"error"}),
    (
        "stderr-flood",
        ADD,
        "import sys\nwhile True:\n    sys.stderr.write('x' * 10**5)\n",
        {"error"},
    ),
    (
        "disk-fill",
        ADD,
        "i = 0\nwhile True:\n    with open(f'fill{i}', 'wb') as f:\n"
        "        f.write(b'x' * (1 << 20) * 3)\n    i += 1\n",
        {"error"},
    ),
    (
        "disk-fill-shm",
        ADD,
        "i = 0\nwhile True:\n    with open(f'/dev/shm/fill{i}', 'wb') as f:\n"
        "        f.write(b'x' * (1 << 20) * 3)\n    i += 1\n",
        {"error"},
    ),
    ("segfault", ADD, "import ctypes\nctypes.string_at(0)\n" + GOOD_ADD, {"crash"}),
    (
        "deep-recursion",
        ADD,
        "import sys\nsys.setrecursionlimit(10**6)\ndef add(a, b):\n    return add(a, b)\n",
        {"crash", "error", "timeout"},
    ),
    (
        "deep-recursion-c",
        ADD,
        "import sys\nsys.setrecursionlimit(10**6)\nx = []\nfor i in range(10**6):\n"
        "    x = [x]\nrepr(x)\n" + GOOD_ADD,
        {"crash", "error", "timeout", "memory"},
    ),
    ("garbage-bytes", ADD, bytes(random.Random(0).randbytes(2000)).decode("latin-1"), {"syntax"}),
    ("nul-bytes", ADD, "def add(a, b):\x00\n    return a + b\n", {"syntax"}),
    (
        "invalid-utf8",
        ADD,
        b"\xff\xfe\xfd def add(a, b): pass".decode("utf-8", "surrogateescape"),
        {"syntax"},
    ),
    ("empty-program", ADD, "", {"error"}),
    ("whitespace-program", ADD, "\n\n   \n", {"error"}),
    ("sys-exit-top-level", ADD, "import sys\nsys.exit(0)\n" + GOOD_ADD, {"error"}),
    ("raise-systemexit-in-test", ADD, "def add(a, b):\n    raise SystemExit(0)\n", {"error"}),
    ("keyboardinterrupt-in-test", ADD, "def add(a, b):\n    raise KeyboardInterrupt\n", {"error"}),
    ("os-exit-top-level", ADD, "import os\nos._exit(0)\n", {"crash"}),
    ("os-exit-in-test", ADD, "import os\ndef add(a, b):\n    os._exit(0)\n", {"crash"}),
    (
        "exit-after-atexit",
        ADD,
        "import atexit, os\natexit.register(lambda: os._exit(0))\ndef add(a, b):\n    raise SystemExit(0)\n",
        {"error", "crash"},
    ),
    ("always-equal", ADD, ALWAYS_EQUAL + "def add(a, b):\n    return AlwaysEqual()\n", {"fail"}),
    (
        "int-subclass-eq",
        ADD,
        "class I(int):\n    def __eq__(self, other): return True\n"
        "def add(a, b):\n    return I(0)\n",
        {"fail"},
    ),
    (
        "always-equal-in-list",
        LISTS,
        ALWAYS_EQUAL + "def lists(n):\n    return [AlwaysEqual()]\n",
        {"fail"},
    ),
    (
        "list-subclass-hiding-items",
        LISTS,
        ALWAYS_EQUAL + "class L(list):\n    def __iter__(self): return iter([])\n"
        "def lists(n):\n    return L([AlwaysEqual()])\n",
        {"fail"},
    ),
    (
        "dict-subclass-hiding-values",
        DICTS,
        ALWAYS_EQUAL + "class D(dict):\n    def values(self): return []\n"
        "def dicts(n):\n    return D(a=AlwaysEqual())\n",
        {"fail"},
    ),
    (
        "always-equal-in-a-loop-assert",
        LOOP,
        ALWAYS_EQUAL + "def seven(x):\n    return AlwaysEqual()\n",
        {"fail"},
    ),
    (
        "arithmetic-hack-for-tolerance",
        ROOT,
        "class H:\n    def __sub__(self, other): return 0.0\n    __rsub__ = __sub__\n"
        "def root(x):\n    return H()\n",
        {"fail"},
    ),
    (
        "weakref-proxy-to-always-equal",
        LISTS,
        ALWAYS_EQUAL + "import weakref\nkeep = []\ndef lists(n):\n"
        "    keep.append(AlwaysEqual())\n    return weakref.proxy(keep[-1])\n",
        {"fail"},
    ),
    (
        "mappingproxy-of-always-equal",
        DICTS,
        ALWAYS_EQUAL + "import types\ndef dicts(n):\n"
        "    return types.MappingProxyType({'a': AlwaysEqual()})\n",
        {"fail"},
    ),
    (
        "patched-counter",
        DICTS,
        "import collections\ncollections.Counter.__eq__ = lambda s, o: True\n"
        "collections.Counter.__ne__ = lambda s, o: False\n"
        "def dicts(n):\n    return collections.Counter()\n",
        {"fail"},
    ),
    (
        "patched-builtins-isinstance",
        ADD,
        "import builtins\nbuiltins.isinstance = lambda *a: True\ndef add(a, b):\n    return 0\n",
        {"fail", "error", "crash"},
    ),
    (
        "patched-builtins-bool",
        ADD_CALLS,
        "import builtins\nbuiltins.bool = lambda *a: True\ndef add(a, b):\n    return 0\n",
        {"fail"},
    ),
    (
        "patched-builtins-abs-in-asserts",
        ROOT,
        "import builtins\nbuiltins.abs = lambda x: 0\ndef root(x):\n    return 0.0\n",
        {"fail"},
    ),
    (
        "patched-builtins-abs-in-calls",
        ROOT_CALLS,
        "import builtins\nbuiltins.abs = lambda x: 0\ndef root(x):\n    return 0.0\n",
        {"fail"},
    ),
    ("shadowed-abs", ROOT, "def abs(x):\n    return 0\ndef root(x):\n    return 0.0\n", {"fail"}),
    (
        "fake-report-on-stdout",
        ADD,
        "import json\nfor i in range(2):\n"
        "    print(json.dumps({'ev': 'test', 'i': i, 'ok': True}))\n"
        "print(json.dumps({'ev': 'done', 'tests': 2}))\n"
        "print(json.dumps({'verdict': {'status': 'pass', 'passed': 2, 'total': 2}}))\n"
        "def add(a, b):\n    return 0\n",
        {"fail"},
    ),
    (
        "fake-report-on-fds",
        ADD,
        "import json, os\n"
        "lines = [{'ev': 'test', 'i': 0, 'ok': True}, {'ev': 'test', 'i': 1, 'ok': True},\n"
        "         {'ev': 'done', 'tests': 2}, {'verdict': {'status': 'pass'}}]\n"
        "data = ''.join(json.dumps(x) + '\\n' for x in lines).encode()\n"
        "for fd in range(0, 21):\n"
        "    try:\n        os.write(fd, data)\n    except OSError:\n        pass\n"
        "os._exit(0)\n",
        {"crash"},
    ),
    (
        "fake-report-then-loop",
        ADD,
        "import json, os\n"
        "data = json.dumps({'ev': 'done', 'tests': 2, 'n': '0' * 32}) + '\\n'\n"
        "for fd in range(3, 21):\n"
        "    try:\n        os.write(fd, data.encode())\n    except OSError:\n        pass\n"
        "while True:\n    pass\n",
        {"timeout"},
    ),
    ("close-all-fds", ADD, "import os\nos.closerange(0, 4096)\n" + GOOD_ADD, {"crash"}),
    (
        "read-etc-shadow",
        ADD,
        "data = open('/etc/shadow').read()\ndef add(a, b):\n    return data\n",
        {"error"},
    ),
    # Become root and use it. In a user namespace an ordinary user's job may already be its
    # uid 0 (setuid(0) is then a no-op), but that root owns nothing outside: /etc stays shut.
    (
        "setuid-root",
        ADD,
        "import os\nos.setuid(0)\nopen('/etc/sdlib-owned', 'w').write('x')\n" + GOOD_ADD,
        {"error"},
    ),
    (
        "threads-flood",
        ADD,
        "import _thread, time\nn = 0\ntry:\n    while True:\n"
        "        _thread.start_new_thread(time.sleep, (100,))\n        n += 1\n"
        "except RuntimeError:\n    pass\ndef add(a, b):\n    return -n\n",
        {"fail"},
    ),
    (
        "fork-bomb",
        ADD,
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
        {"timeout", "crash", "error"},
    ),
    ("kill-parent", ADD, "import os\nos.kill(os.getppid(), 9)\n" + WRONG_ADD, {"error", "fail"}),
    ("kill-process-group", ADD, "import os\nos.killpg(0, 9)\n" + GOOD_ADD, {"crash"}),
    ("kill-everything", ADD, "import os\nos.kill(-1, 9)\n" + GOOD_ADD, {"crash", "error"}),
    (
        "kill-pid-1",
        ADD,
        "import os, signal\nfor s in (9, 15):\n    try:\n        os.kill(1, s)\n"
        "    except OSError:\n        pass\n" + WRONG_ADD,
        {"fail"},
    ),
    # stdin/stdout programs: the whole program runs on each test's input
    (
        "stdio-read-forever",
        STDIO_ADD,
        "import sys\nwhile True:\n    sys.stdin.read()\n",
        {"timeout"},
    ),
    (
        "stdio-print-flood",
        STDIO_ADD,
        "while True:\n    print('x' * 65536)\n",
        {"error", "crash", "timeout"},
    ),
    (
        "stdio-fork-bomb",
        STDIO_ADD,
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
        {"timeout", "crash", "error"},
    ),
    (
        "stdio-kill-parent",
        STDIO_ADD,
        "import os\nos.kill(os.getppid(), 9)\nprint(0)\n",
        {"fail", "error", "crash"},
    ),
    (
        "stdio-stdout-swapped-for-a-link",
        STDIO_ADD,
        "import os\nos.remove('stdout.txt')\nos.symlink('/etc/passwd', 'stdout.txt')\n",
        {"fail"},
    ),
    ("stdio-constant-answer", STDIO_ADD, "print(3)\n", {"fail"}),
    ("stdio-early-exit", STDIO_ADD, "import os\nos._exit(0)\n", {"fail"}),
    (
        "stdin-read",
        ADD,
        "import sys\ndata = sys.stdin.read()\ndef add(a, b):\n    return data\n",
        {"fail"},
    ),
]


@pytest.mark.parametrize(
    "prob, program, allowed",
    [h[1:] for h in HOSTILE_PROGRAMS],
    ids=[h[0] for h in HOSTILE_PROGRAMS],
)
def test_hostile(sandbox, outside, prob, program, allowed):
    before = sorted(p.name for p in outside.iterdir())
    verdict = sandbox.run(prob, program)
    assert verdict.status != "pass"
    assert verdict.status in allowed, (verdict.status, verdict.error_type, verdict.feedback)
    assert verdict.total == len(prob.tests)
    assert len(verdict.feedback) <= FEEDBACK_LIMIT
    assert leftovers() == []
    assert sorted(p.name for p in outside.iterdir()) == before
    assert (outside / "victim.txt").read_text() == "precious"


def test_enough_hostile_programs():
    assert len(HOSTILE_PROGRAMS) >= 25


def test_writes_and_deletes_outside_fail(sandbox, outside):
    victim = outside / "victim.txt"
    marker = outside / "marker.txt"
    harness = Path(__file__).resolve().parents[1] / "sdlib" / "execution" / "sandbox_worker.py"
    harness_bytes = harness.read_bytes()
    attempts = {
        "write": f"open({str(marker)!r}, 'w').write('x')\n",
        "append": f"open({str(victim)!r}, 'a').write('x')\n",
        "truncate": f"open({str(victim)!r}, 'w').close()\n",
        "delete": f"import os\nos.remove({str(victim)!r})\n",
        "rename": f"import os\nos.rename({str(victim)!r}, {str(marker)!r})\n",
        "mkdir": f"import os\nos.mkdir({str(outside / 'dir')!r})\n",
        "chmod": f"import os\nos.chmod({str(victim)!r}, 0)\n",
        "symlink": f"import os\nos.symlink('/etc/passwd', {str(marker)!r})\n",
        "escape-cwd": "import os\nos.chdir('..')\nos.chdir('..')\nopen('escaped', 'w').write('x')\n",
        "harness": f"open({str(harness)!r}, 'a').write('# owned')\n",
        "in-test": f"def add(a, b):\n    open({str(marker)!r}, 'w').write('x')\n    return a + b\n",
    }
    mode = victim.stat().st_mode
    for name, program in attempts.items():
        if name != "in-test":
            program += GOOD_ADD
        verdict = sandbox.run(ADD, program)
        assert verdict.status == "error", (name, verdict.feedback)
        assert "Error" in verdict.error_type, (name, verdict.error_type)
        assert sorted(p.name for p in outside.iterdir()) == ["victim.txt"], name
        assert victim.read_text() == "precious" and victim.stat().st_mode == mode, name
        if name != "in-test":  # the same attempts by a stdin/stdout program
            stdio = sandbox.run(STDIO_ADD, program.replace(GOOD_ADD, GOOD_STDIO))
            assert stdio.status == "error" and "Error" in stdio.error_type, (name, stdio.feedback)
            assert sorted(p.name for p in outside.iterdir()) == ["victim.txt"], name
            assert victim.read_text() == "precious" and victim.stat().st_mode == mode, name
    assert harness.read_bytes() == harness_bytes


def test_loopback_connection_is_refused(sandbox):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    port = server.getsockname()[1]
    # Raw system calls through ctypes, so that no missing module can make the test vacuous.
    program = (
        "import ctypes\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "fd = libc.socket(2, 1, 0)\n"
        f"addr = bytes([2, 0, {port >> 8}, {port & 0xFF}, 127, 0, 0, 1]) + bytes(8)\n"
        "rc = libc.connect(fd, addr, 16)\n"
        "result = (fd >= 0, rc)\n"
        "def add(a, b):\n    return result\n"
    )
    try:
        verdict = sandbox.run(ADD, program)
        assert verdict.status == "fail"
        # seccomp refuses the socket itself; without it, a socket but no connection
        no_socket = "seccomp" in sandbox.isolation["layers"]
        assert verdict.actual == ("(False, -1)" if no_socket else "(True, -1)")
        with_module = (
            "import socket\n"
            f"socket.create_connection(('127.0.0.1', {port}), timeout=1)\n" + GOOD_ADD
        )
        assert sandbox.run(ADD, with_module).status == "error"
        with pytest.raises(BlockingIOError):
            server.accept()
    finally:
        server.close()


def test_setsid_double_fork_escape_is_killed(sandbox):
    tok = token()
    verdict = sandbox.run(ADD, daemon_program(tok, WRONG_ADD))
    assert verdict.status == "fail"
    assert processes_with(tok) == []
    assert leftovers() == []


def test_daemon_cannot_outlive_a_passing_job(sandbox):
    tok = token()
    verdict = sandbox.run(ADD, daemon_program(tok, GOOD_ADD))
    assert verdict.status == "pass"  # the program is correct; its daemon still dies
    assert processes_with(tok) == []


def test_fork_bomb_leaves_the_machine_usable(sandbox):
    verdict = sandbox.run(
        ADD,
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
    )
    assert verdict.status != "pass"
    assert leftovers() == []
    assert subprocess.run(["true"], timeout=10).returncode == 0
    assert sandbox.run(ADD, GOOD_ADD).status == "pass"


def test_threads_are_bounded_by_nproc(sandbox):
    program = (
        "import _thread, time\nn = 0\ntry:\n    while True:\n"
        "        _thread.start_new_thread(time.sleep, (100,))\n        n += 1\n"
        "except RuntimeError:\n    pass\ndef add(a, b):\n    return n\n"
    )
    verdict = sandbox.run(ADD, program)
    assert verdict.status == "fail"
    assert int(verdict.actual) < NPROC
    assert leftovers() == []


def test_output_and_disk_floods_do_not_reach_the_host_disk(sandbox):
    used = shutil.disk_usage("/").used
    for program in (
        "import os\nfd = os.open('big', os.O_WRONLY | os.O_CREAT)\nwhile True:\n"
        "    os.write(fd, b'x' * (1 << 20))\n",
        "i = 0\nwhile True:\n    with open(f'f{i}', 'wb') as f:\n        f.write(b'x' * (3 << 20))\n"
        "    i += 1\n",
        "while True:\n    print('y' * 10**6)\n",
    ):
        verdict = sandbox.run(ADD, program)
        assert verdict.status == "error", verdict.feedback
        assert verdict.error_type == "OSError"  # file too large, or no space left
    assert shutil.disk_usage("/").used - used < 256 << 20


def test_the_evaluator_survives_kills_and_answers_the_next_sample(sandbox):
    killers = [
        "import os\nos.kill(os.getppid(), 9)\n",
        "import os, signal\nos.kill(os.getppid(), signal.SIGSTOP)\n",
        "import os\nos.killpg(0, 9)\n",
        "import os\nos.killpg(os.getpgid(os.getppid()), 9)\n",
        "import os\nos.kill(-1, 9)\n",
        "import os\nos.kill(0, 9)\n",
    ]
    restarts = sandbox.restarts
    for killer in killers:
        jobs = [(ADD, killer + GOOD_ADD), (ADD, GOOD_ADD), (ADD, WRONG_ADD)]
        verdicts = sandbox.run_many(jobs)
        assert all(v is not None for v in verdicts)
        assert verdicts[0].status != "sandbox_error", killer
        assert [v.status for v in verdicts[1:]] == ["pass", "fail"], killer
    assert sandbox.restarts - restarts <= 2
    assert leftovers() == []


def test_the_pool_is_not_poisoned(sandbox):
    """Runs after the hostile programs above (pytest keeps file order)."""
    for _ in range(4):
        verdict = sandbox.run(ADD, GOOD_ADD)
        assert verdict.status == "pass", verdict.feedback
    assert sandbox.restarts <= 2
    assert leftovers() == []


# The job only computes answers; expected values, comparisons and the counting of tests live
# outside it (sdlib.execution.harness). Reaching into the job's own memory (stack frames, its modules)
# finds neither the answers nor anything that decides a pass.


def test_a_report_forged_with_the_nonce_from_the_stack_does_not_pass(sandbox):
    program = (
        "import sys, os, json\n"
        "f, n = sys._getframe(), None\n"
        "while f is not None and n is None:\n"
        "    n = f.f_locals.get('nonce')\n"
        "    f = f.f_back\n"
        "for i in range(2):\n"
        "    os.write(3, (json.dumps({'n': n, 'ev': 'test', 'i': i, 'ok': True}) + '\\n').encode())\n"
        "os.write(3, (json.dumps({'n': n, 'ev': 'done'}) + '\\n').encode())\n"
        "os._exit(0)\n"
    )
    assert sandbox.run(ADD, program).status != "pass"


def test_patching_the_job_side_modules_does_not_pass(sandbox):
    program = (
        "import sys\nsys.modules['__main__']._call_matches = lambda *a: True\n"
        "sys.modules['__main__']._eval_checked = lambda *a: True\n"
        "def add(a, b):\n    return 0\n"
    )
    assert sandbox.run(ADD, program).status != "pass"


# --------------------------------------------------------------- isolation="none" fallback ----


@pytest.fixture(scope="module")
def plain_sandbox():
    with Sandbox(SandboxConfig(isolation="none", timeout=1, workers=1, memory_mb=512)) as sb:
        yield sb


def test_rlimits_only_basics(plain_sandbox):
    info = plain_sandbox.isolation
    assert info["mode"] == "rlimits"
    assert "pid-namespace" not in info["layers"]
    assert plain_sandbox.run(ADD, GOOD_ADD).status == "pass"
    failed = plain_sandbox.run(ADD, WRONG_ADD)
    assert failed.status == "fail" and failed.actual == "-1"
    assert plain_sandbox.run(ADD, "while True:\n    pass\n").status == "timeout"
    assert plain_sandbox.run(ADD, "def add(a, b):\n    return 1 / 0\n").status == "error"
    assert plain_sandbox.run(ADD, "import sys\nsys.exit(0)\n").status == "error"
    assert plain_sandbox.run(ADD, "import os\nos._exit(0)\n").status == "crash"
    always = plain_sandbox.run(ADD, ALWAYS_EQUAL + "def add(a, b):\n    return AlwaysEqual()\n")
    assert always.status == "fail"
    segfault = plain_sandbox.run(ADD, "import ctypes\nctypes.string_at(0)\n")
    assert (segfault.status, segfault.error_type) == ("crash", "SIGSEGV")


def test_rlimits_only_kills_setsid_escapes(plain_sandbox):
    for solution in (WRONG_ADD, GOOD_ADD):
        tok = token()
        verdict = plain_sandbox.run(ADD, daemon_program(tok, solution))
        assert verdict.status == ("pass" if solution == GOOD_ADD else "fail")
        assert processes_with(tok) == []
    chain = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    while True:\n"
        "        if os.fork():\n"
        "            os._exit(0)\n"
        "        time.sleep(0.01)\n" + WRONG_ADD
    )
    assert plain_sandbox.run(ADD, chain).status == "fail"
    assert leftovers() == []
    assert plain_sandbox.run(ADD, GOOD_ADD).status == "pass"


def test_unknown_isolation_level_is_refused():
    with pytest.raises((SandboxUnavailable, ValueError, RuntimeError)):
        Sandbox(SandboxConfig(isolation="bogus", workers=1))


def test_programs_import_any_installed_module_but_see_no_home(sandbox):
    """Python may live under a home the sandbox uid cannot enter (pyenv in /root): its own
    folders are bound back, so imports that the worker did not preload work, while the rest
    of that home stays hidden."""
    import sys

    program = (
        "import threading, queue, socket, numpy, os, sys\n"
        "def f():\n"
        "    return [os.path.isdir(p) for p in " + repr([sys.base_prefix]) + "]\n"
    )
    verdict = sandbox.run(problem("imports", "f", *asserts("assert f() == [True]")), program)
    assert verdict.status == "pass", verdict.feedback
    home = Path(sys.base_prefix)
    while home.parent != home and os.stat(home.parent).st_mode & 0o001:
        home = home.parent
    hidden = home.parent if not os.stat(home.parent).st_mode & 0o001 else None
    if hidden is not None:  # e.g. /root on this machine: other entries must be invisible
        others = [p.name for p in hidden.iterdir() if not str(home).startswith(str(p))]
        check = (  # Landlock refuses the listing itself; the new root has nothing to list
            "import os\ndef f():\n    try:\n"
            f"        return sorted(os.listdir({str(hidden)!r}))\n"
            "    except PermissionError:\n        return []\n"
        )
        seen = sandbox.run(
            problem("home", "f", *asserts(f"assert not set(f()) & set({others!r})")), check
        )
        assert seen.status == "pass", seen.feedback


# ------------------------------------------------- the same hostile programs without namespaces ----
# What a container that refuses namespaces gives: Landlock, seccomp and resource limits.
# Every hostile program must still fail and leave nothing behind. Two differ in how they
# fail: without a private tmpfs the disk fill runs into the time limit (the files are
# removed after the job), and /dev/shm is outside the job's writable folder.
# kill(-1) spares its caller, and Landlock's scope leaves it nothing else to kill: the
# correct ``add`` after it then passes, as it should.
UNPRIVILEGED_ALSO = {
    "disk-fill": {"timeout"},
    "disk-fill-shm": {"error", "timeout"},
    "kill-everything": {"pass"},
}


@pytest.fixture(scope="module")
def unprivileged_sandbox():
    with Sandbox(replace(HOSTILE, isolation="unprivileged")) as sb:
        yield sb


@pytest.mark.parametrize(
    "name, prob, program, allowed", HOSTILE_PROGRAMS, ids=[h[0] for h in HOSTILE_PROGRAMS]
)
def test_hostile_without_namespaces(unprivileged_sandbox, outside, name, prob, program, allowed):
    assert {"landlock", "seccomp"} <= set(unprivileged_sandbox.isolation["layers"])
    before = sorted(p.name for p in outside.iterdir())
    verdict = unprivileged_sandbox.run(prob, program)
    assert verdict.status != "pass" or "pass" in UNPRIVILEGED_ALSO.get(name, set())
    assert verdict.status in allowed | UNPRIVILEGED_ALSO.get(name, set()), (
        verdict.status,
        verdict.feedback,
    )
    assert leftovers() == []
    assert sorted(p.name for p in outside.iterdir()) == before
    assert (outside / "victim.txt").read_text() == "precious"


def test_writes_and_deletes_outside_fail_without_namespaces(unprivileged_sandbox, outside):
    test_writes_and_deletes_outside_fail(unprivileged_sandbox, outside)


def test_loopback_is_refused_without_namespaces(unprivileged_sandbox):
    test_loopback_connection_is_refused(unprivileged_sandbox)


def test_killers_are_contained_without_namespaces(unprivileged_sandbox):
    test_the_evaluator_survives_kills_and_answers_the_next_sample(unprivileged_sandbox)


# ------------------------------------------------------------- secrets, answers, channels ----
SECRET = "sk-SECRET-123"


@pytest.fixture(scope="module", params=["auto", "unprivileged", "none"])
def any_sandbox(request):
    """A sandbox of each isolation level, started while the caller holds secrets."""
    saved = {k: os.environ.get(k) for k in ("OPENAI_API_KEY", "HF_TOKEN", "AWS_SECRET_ACCESS_KEY")}
    os.environ.update(OPENAI_API_KEY=SECRET, HF_TOKEN=SECRET, AWS_SECRET_ACCESS_KEY=SECRET)
    try:
        with Sandbox(replace(HOSTILE, isolation=request.param, workers=1)) as sb:
            yield sb
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_no_secret_of_the_caller_reaches_a_program(any_sandbox):
    leak = "import os\ndef add(a, b):\n    raise ValueError(os.environ.get('OPENAI_API_KEY'))\n"
    verdict = any_sandbox.run(ADD, leak)
    assert SECRET not in verdict.feedback + verdict.actual
    listing = problem("env", "env", call([]))
    allowed = set(WORKER_ENV) | {"HOME", "TMPDIR", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"}
    allowed |= {"MKL_NUM_THREADS"}
    program = (
        "import os\ndef env():\n"
        f"    return sorted(k for k in os.environ if k not in {sorted(allowed)!r})\n"
    )
    verdict = any_sandbox.run(listing, program)
    assert verdict.status == "pass", verdict.actual  # nothing beyond the allow-list
    home = problem("home", "home", call(True))
    program = "import os\ndef home():\n    return os.environ['HOME'] == os.getcwd()\n"
    assert any_sandbox.run(home, program).status == "pass"


DATA_DIR = Path(os.environ["SDLIB_DATA_DIR"])  # set by conftest.py when unset


@pytest.mark.parametrize("isolation", ["auto", "unprivileged"])
def test_the_answers_are_out_of_reach(isolation):
    """A program that finds its task in the benchmark file and runs the reference."""
    import json

    data = DATA_DIR / "mbpp.jsonl"
    assert data.is_file(), f"{data} is missing"
    row = json.loads(data.read_text().splitlines()[10])
    task = problem("mbpp-copy", "solve", *asserts(*[t for t in row["test_list"]]))
    entry = row["test_list"][0].split("assert ")[1].split("(")[0].strip()
    task = Problem("mbpp-copy", "unit", "test", "", "", entry, "", tests=task.tests)
    copier = (
        "import json\n"
        f"for line in open({str(data)!r}):\n"
        "    row = json.loads(line)\n"
        f"    if row['task_id'] == {row['task_id']}:\n"
        "        exec(row['code'])\n"
    )
    project_file = Path(__file__).resolve().parents[1] / "README.md"
    reader = f"text = open({str(project_file)!r}).read()\ndef add(a, b):\n    return a + b\n"
    with Sandbox(replace(HOSTILE, isolation=isolation, workers=1)) as sb:
        assert sb.run(task, row["code"]).status == "pass"  # the reference itself passes
        copied = sb.run(task, copier)
        assert copied.status == "error" and copied.error_type in (
            "FileNotFoundError",
            "PermissionError",
        ), copied.feedback
        assert sb.run(ADD, reader).status == "error"  # the checkout is out of reach too


def test_private_temp_folders_share_one_budget(sandbox):
    """/tmp and /dev/shm are one tmpfs (counted against memory_mb): 2 x 40 MB cannot fit."""
    program = (
        "def add(a, b):\n"
        "    for path in ('/tmp/a', '/dev/shm/b'):\n"
        "        for i in range(14):  # files of 3 MB: output_mb caps one file at 4\n"
        "            with open(f'{path}{i}', 'wb') as f:\n"
        "                f.write(b'x' * (3 << 20))\n"
        "    return a + b\n"
    )
    verdict = sandbox.run(ADD, program)
    assert verdict.status == "error" and "No space left" in verdict.feedback, verdict.feedback
    assert sandbox.isolation["limits"]["tmpfs_mb"] == HOSTILE.tmpfs_mb


def test_deeply_nested_leftovers_are_wiped(sandbox):
    deep = "import os\nfor _ in range(1500):\n    os.mkdir('d')\n    os.chdir('d')\n" + GOOD_ADD
    restarts = sandbox.restarts
    assert sandbox.run(ADD, deep).status == "pass"
    probe = problem("left", "left", call([]))
    # A venv or interpreter under /tmp is bound back into the job's /tmp: not a leftover.
    prefixes = [Path(p).resolve().parts for p in (sys.prefix, sys.base_prefix)]
    own = {"job"} | {parts[2] for parts in prefixes if parts[1:2] == ("tmp",) and len(parts) > 2}
    checker = f"import os\ndef left():\n    return sorted(set(os.listdir('/tmp')) - {own!r})\n"
    assert sandbox.run(probe, checker).status == "pass"
    assert sandbox.restarts == restarts


def test_a_required_guarantee_refuses_a_weak_machine(capsys):
    with pytest.raises(SandboxUnavailable) as info:
        Sandbox(SandboxConfig(isolation="none", workers=1, require=("filesystem", "network")))
    message = str(info.value)
    assert "filesystem" in message and "network" in message and "Landlock" in message
    assert "sdlib doctor" in message
    with pytest.raises(ValueError, match="guarantees are"):
        SandboxConfig(require=("everything",))


def test_a_weakened_sandbox_warns_once(capsys):
    import sdlib.execution.sandbox as sandbox_module

    sandbox_module._WARNED.clear()
    for _ in range(2):
        with Sandbox(SandboxConfig(isolation="none", workers=1)):
            pass
    err = capsys.readouterr().err
    assert err.count("WARNING: the sandbox is weakened") == 1
    assert "filesystem" in err and "sandbox.require" in err
    with Sandbox(SandboxConfig(workers=1)) as strong:
        assert strong.isolation["missing"] == {}
    assert "WARNING" not in capsys.readouterr().err
