"""The sandbox worker: a warm process that runs untrusted programs against tests.

Started by ``sdlib.sandbox`` as ``python -I sandbox_worker.py``; it imports only the standard
library and ``valuecodec`` so that nothing of the caller (torch, a model, a notebook) is
within reach of the programs it runs.

Layers, outermost first (README, "Sandbox", says what each one protects against):

1. Namespaces (when the kernel allows): a new mount, PID and network namespace, entered by
   ``unshare`` in this process. Its first child becomes PID 1 of the new PID namespace: the
   *zygote*. The zygote serves jobs and forks one *runner* per job. After each job it sends
   SIGKILL to every other process of its namespace (``kill(-1)``), so setsid and double-fork
   escapes die with the job. The network namespace has only a downed loopback. /tmp,
   /var/tmp, /dev/shm and /run/lock are private tmpfs mounts, wiped after each job; other
   mounts are remounted read-only where the kernel lets us.
2. Identity: as root, the runner drops to an unprivileged uid of its own (one per worker), so
   root's files cannot be written or deleted and RLIMIT_NPROC binds. Without root a user
   namespace maps the caller's uid instead; no new privileges are ever gained (setuid
   binaries are neutered by PR_SET_NO_NEW_PRIVS).
3. Limits: RLIMIT_AS (memory), RLIMIT_CPU, RLIMIT_FSIZE (output and files), RLIMIT_NOFILE,
   RLIMIT_NPROC, no core dumps, a wall-clock deadline kept by the zygote.
4. Harness: a pass is counted by the harness test by test, reported over a private pipe with a
   per-job nonce; exiting early, printing a fake report or returning objects whose ``__eq__``
   always answers True never passes.

Protocol: one JSON object per line on stdin/stdout.
  {"op": "hello"} -> {"isolation": {...}}
  {"op": "problem", "key", "entry_point", "setup", "atol", "tests": [...]} -> {"ok": true}
  {"op": "run", "key", "program", "timeout", "memory_mb", "mode": "check"|"outputs"}
      -> {"verdict": {...}} (mode "outputs" adds "outputs": [encoded values or null])
"""

from __future__ import annotations

import ast
import builtins
import ctypes
import gc
import json
import math
import operator
import os
import resource
import secrets
import select
import signal
import stat
import sys
import time
import traceback
import types
import weakref

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sandbox_layers as layers  # noqa: E402
import valuecodec  # noqa: E402

del sys.path[0]

# Modules that model-written solutions commonly import: loaded once in the zygote, so a
# forked runner finds them ready.
_PRELOAD = (
    "array bisect cmath collections copy dataclasses datetime decimal fractions functools "
    "hashlib heapq itertools json math operator random re statistics string typing"
).split()
for _name in _PRELOAD:
    __import__(_name)
import collections  # noqa: E402

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_SET_DUMPABLE = 1, 38, 4
# Bytes a runner may send back in one job: reports are small, reference outputs can be large.
OUTPUT_CHANNEL_LIMIT = {"check": 64 << 20, "outputs": 2 << 30}
_FINAL_EVENTS = ("done", "syntax", "fatal", "setup_failed")
EVENT_LINE_LIMIT = 1 << 20  # bytes of one report line when checking (outputs may be larger)
REPR_LIMIT = 400

_libc = ctypes.CDLL(None, use_errno=True)
_prctl = layers.prctl


# --------------------------------------------------------------------------- isolation ----
# What each guarantee needs; the first layer found in force is named in the report.
GUARANTEES = {
    "filesystem": (("new-root", "landlock"), "writes, deletes and reads outside the job"),
    "network": (("net-namespace", "seccomp"), "connections, loopback services included"),
    "processes": (("pid-namespace", "landlock-scope"), "signals to and escapes from the job"),
    "ipc": (("ipc-namespace", "seccomp"), "SysV shared memory and keyrings between jobs"),
}
HOW_TO_GET = {
    "filesystem": "Linux >= 5.13 with Landlock enabled (lsm=landlock), or unprivileged user "
    "namespaces (sysctl kernel.unprivileged_userns_clone=1 / user.max_user_namespaces > 0; "
    "in Docker: --security-opt seccomp=unconfined, or run as root in the container)",
    "network": "a kernel with seccomp filters (x86_64 or aarch64), or network namespaces",
    "processes": "Landlock ABI >= 6 (Linux >= 6.12), or PID namespaces",
    "ipc": "a kernel with seccomp filters, or IPC namespaces",
}


def enter_namespaces() -> tuple[str, str]:
    """Unshare mount, PID, network, IPC and UTS namespaces (plus a user namespace when not
    root). Returns (mode, why not) with mode "rlimits" when the kernel refused."""
    uid, gid = os.getuid(), os.getgid()
    flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
    try:
        if uid == 0:
            layers._check(_libc.unshare(flags), "unshare")
            return "namespaces", ""
        layers._check(_libc.unshare(CLONE_NEWUSER | flags), "unshare")
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:
            f.write(f"0 {uid} 1")
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"0 {gid} 1")
        return "userns", ""
    except OSError as exc:
        return "rlimits", str(exc)


def judge_guarantees(info: dict) -> None:
    """Which guarantees the layers in force give, and for each missing one how to get it."""
    have = set(info["layers"])
    info["contains"] = {}
    info["missing"] = {}
    for name, (needs, what) in GUARANTEES.items():
        by = [layer for layer in needs if layer in have]
        info["contains"][name] = by[0] if by else None
        if not by:
            info["missing"][name] = f"{what} are not contained; to contain them: {HOW_TO_GET[name]}"


# ----------------------------------------------------------------------------- harness ----
# Everything the harness needs is bound here, before any program runs, so that a program
# that monkeypatches builtins or modules cannot change how results are judged.

# The builtins of everything defined below are a private copy taken now: a program that
# patches the ``builtins`` module (``builtins.bool = lambda x: True``) changes what it sees,
# never what the harness calls. Programs run with the real module; tests with a fresh copy.
_PRISTINE_BUILTINS = dict(builtins.__dict__)
__builtins__ = dict(_PRISTINE_BUILTINS)

_type = type
_len = len
_repr = repr
_isinstance = isinstance
_flags_of = type.__dict__["__flags__"].__get__
_mro_of = type.__dict__["__mro__"].__get__
_dict_of = type.__dict__["__dict__"].__get__
_HEAPTYPE = 1 << 9
_IMMUTABLETYPE = 1 << 8  # builtin and extension types; never a class a program defines
_PYTHON_CLASS = _HEAPTYPE | _IMMUTABLETYPE  # flags & this == _HEAPTYPE: a class statement
# The special names a class may define without changing how its instances compare or compute
# (any other, __eq__ or __sub__ or __round__ or __iter__, lets an object answer what a test
# wants to hear: ``abs(candidate(x) - 3.0) < 1e-6`` with ``__sub__`` answering 0.0).
_INERT_DUNDERS = frozenset(
    "__module__ __qualname__ __doc__ __dict__ __weakref__ __slots__ __init__ __new__ __repr__ "
    "__str__ __hash__ __match_args__ __getnewargs__ __annotations__ __annotate__ __orig_bases__ "
    "__parameters__ __type_params__ __firstlineno__ __static_attributes__ __classcell__ "
    "__init_subclass__ __class_getitem__ __set_name__ __reduce__ __reduce_ex__ __getstate__ "
    "__setstate__ __copy__ __deepcopy__ __sizeof__ __abstractmethods__ __dataclass_fields__ "
    "__dataclass_params__".split()
)
_CONTAINERS = (list, tuple, set, frozenset, collections.deque)
# Counter is a Python class: a program could patch its comparison methods.
_COUNTER_ORIGINALS = dict(collections.Counter.__dict__)
_SCALARS = frozenset((int, float, str, bool, bytes, complex, type(None)))
# Static types whose comparison forwards to an object they wrap.
_FORWARDING = (*weakref.ProxyTypes, types.MappingProxyType)
_os_write = os.write
_os_exit = os._exit
_dumps = json.dumps
_encode = valuecodec.encode
_perf = time.perf_counter
_BINOPS = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}


class NotPlain(Exception):
    """A value's type can redefine equality or truth (the always-equal reward hack)."""


def _check_plain(value) -> None:
    """Accept builtin and extension values, recursively; refuse objects of a class a program
    defined (a subclass of a builtin included) with special methods of its own, and wrappers
    that compare as what they hold. Defeats ``__eq__`` hacks and their relatives."""
    stack = [value]
    seen = 0
    while stack:
        item = stack.pop()
        seen += 1
        if seen > 1_000_000:
            return
        klass = _type(item)
        if klass in _SCALARS:
            continue
        mro = _mro_of(klass)
        if klass is collections.Counter:
            attrs = _dict_of(klass)
            if _len(attrs) != _len(_COUNTER_ORIGINALS) or any(
                attrs.get(name) is not value for name, value in _COUNTER_ORIGINALS.items()
            ):
                raise NotPlain("returned a Counter whose class was modified")
        elif _flags_of(klass) & _PYTHON_CLASS == _HEAPTYPE:
            for base in mro:
                if _flags_of(base) & _PYTHON_CLASS != _HEAPTYPE:
                    break
                for name in _dict_of(base):
                    if name[:2] == "__" and name[-2:] == "__" and name not in _INERT_DUNDERS:
                        raise NotPlain(
                            f"returned an object of class {klass.__name__} that defines "
                            f"{name}; only plain values are compared"
                        )
        if klass in _FORWARDING or _is_object_array(mro, item):
            raise NotPlain(
                f"returned a {klass.__name__}, which compares as the objects it holds; "
                "only plain values are compared"
            )
        # Walk containers with the builtin base's own methods: a subclass's __iter__,
        # keys() or values() could hide what its comparison will look at.
        for base in _CONTAINERS:
            if base in mro:
                stack.extend(base.__iter__(item))
                break
        else:
            if dict in mro:
                stack.extend(dict.keys(item))
                stack.extend(dict.values(item))


def _is_object_array(mro: tuple, item) -> bool:
    """A numpy array of Python objects compares element by element with their __eq__."""
    for base in mro:
        if base.__name__ == "ndarray" and base.__module__ == "numpy":
            return bool(base.__dict__["dtype"].__get__(item).hasobject)
    return False


def _check_outcome(outcome) -> None:
    """A comparison of plain values answers a bool (numpy scalars: a numpy bool)."""
    klass = _type(outcome)
    if klass is bool or (klass.__module__ == "numpy" and klass.__name__ in ("bool_", "bool")):
        return
    raise NotPlain(f"a comparison answered a {klass.__name__}, not a bool")


def _checked(function):
    """The entry point as the tests call it: every value it returns must be plain."""

    def candidate(*args, **kwargs):
        value = function(*args, **kwargs)
        _check_plain(value)
        return value

    return candidate


def _short(value) -> str:
    try:
        text = _repr(value)
    except BaseException as exc:  # a hostile __repr__
        text = f"<unprintable {_type(value).__name__}: {_type(exc).__name__}>"
    if _type(text) is not str:  # a str subclass can lie about its length
        text = "".join((text,))
    return text if _len(text) <= REPR_LIMIT else text[: REPR_LIMIT - 3] + "..."


def _compile_test(test: dict) -> dict:
    """Precompile an assert test in the zygote; split its final assert so that operands are
    checked for plainness before they are compared."""
    if test["kind"] != "assert":
        test["inputs"] = valuecodec.decode(test["inputs"])
        test["expected"] = valuecodec.decode(test.get("expected"))
        return test
    code = test["code"]
    try:
        tree = ast.parse(code)
    except SyntaxError:
        test["whole"] = None
        return test
    body = tree.body
    last = body[-1] if body else None
    prefix = ast.Module(body=body[:-1] if _isinstance(last, ast.Assert) else body, type_ignores=[])
    test["prefix"] = compile(prefix, "<test>", "exec")
    test["assert"] = None
    if _isinstance(last, ast.Assert):
        test["assert"] = _compile_expr(last.test)
        test["msg"] = (
            compile(ast.Expression(last.msg), "<test>", "eval") if last.msg is not None else None
        )
    return test


def _compile_expr(node: ast.expr) -> tuple:
    """A small tree of compiled pieces: ('cmp', left, [(op, right)...]) | ('not', x) |
    ('and'|'or', [xs]) | ('val', code)."""
    if _isinstance(node, ast.Compare) and all(_type(op) in _BINOPS for op in node.ops):
        left = compile(ast.Expression(node.left), "<test>", "eval")
        rights = [
            (_BINOPS[_type(op)], compile(ast.Expression(c), "<test>", "eval"))
            for op, c in zip(node.ops, node.comparators)
        ]
        return ("cmp", left, rights)
    if _isinstance(node, ast.UnaryOp) and _isinstance(node.op, ast.Not):
        return ("not", _compile_expr(node.operand))
    if _isinstance(node, ast.BoolOp):
        kind = "and" if _isinstance(node.op, ast.And) else "or"
        return (kind, [_compile_expr(v) for v in node.values])
    return ("val", compile(ast.Expression(node), "<test>", "eval"))


def _eval_checked(piece: tuple, ns: dict, report: dict):
    """Evaluate a compiled assertion; every operand must be a plain value."""
    kind = piece[0]
    if kind == "val":
        value = eval(piece[1], ns)
        _check_plain(value)
        return value
    if kind == "not":
        return not _eval_checked(piece[1], ns, report)
    if kind in ("and", "or"):
        result = None
        for sub in piece[1]:
            result = _eval_checked(sub, ns, report)
            if (kind == "and") != bool(result):
                return result
        return result
    left = eval(piece[1], ns)
    _check_plain(left)
    for op, right_code in piece[2]:
        right = eval(right_code, ns)
        _check_plain(right)
        outcome = op(left, right)
        _check_outcome(outcome)
        if not outcome:
            if op is operator.eq:
                report["expected"], report["actual"] = _short(right), _short(left)
            return False
        left = right
    return True


def _is_floats(x) -> bool:
    if _isinstance(x, float):
        return True
    if _isinstance(x, (list, tuple)) and x:
        return all(_isinstance(i, float) for i in x)
    return False


def _allclose(out, exp, atol: float, rtol: float = 1e-07) -> bool:
    """numpy.allclose for the scalars and flat sequences EvalPlus compares with it."""
    outs = list(out) if _isinstance(out, (list, tuple)) else [out]
    exps = list(exp) if _isinstance(exp, (list, tuple)) else [exp]
    if _len(outs) != _len(exps):
        return False
    for a, b in zip(outs, exps):
        if _isinstance(a, (list, tuple)) or _isinstance(b, (list, tuple)):
            if not _allclose(a, b, atol, rtol):
                return False
            continue
        a, b = float(a), float(b)
        if math.isinf(a) or math.isinf(b):
            if a != b:
                return False
        elif not abs(a - b) <= atol + rtol * abs(b):
            return False
    return True


_ORACLES: dict = {}


def _load_oracles() -> None:
    """EvalPlus's special oracles, read from its file without importing the package."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("evalplus")
        if spec is None or not spec.submodule_search_locations:
            return
        path = os.path.join(spec.submodule_search_locations[0], "eval", "_special_oracle.py")
        namespace: dict = {}
        with open(path) as f:
            exec(compile(f.read(), path, "exec"), namespace)
        _ORACLES.update(namespace)
    except Exception:
        return


def _call_matches(out, exp, inputs, oracle: str, atol_state: list) -> bool:
    """EvalPlus's comparison (evalplus.eval.unsafe_execute), oracles included."""
    _check_plain(out)
    if oracle == "poly_root":
        return abs(_ORACLES["_poly"](*inputs, out)) <= atol_state[0]
    exact = out == exp
    _check_outcome(exact)
    if oracle == "any":
        exact = True
    elif oracle == "sum_div":
        exact = exact or out == 0
    elif oracle == "surface_area":
        exact = exact or abs(out - _ORACLES["_surface_Area"](*inputs)) <= atol_state[0]
    elif oracle == "digit_distance":
        exact = exact or out == _ORACLES["_digit_distance_nums"](*inputs)
    elif oracle == "set_eq":
        exact = set(out) == set(exp)
    elif oracle == "not_none":
        exact = out == exp if _isinstance(out, bool) else exp == (out is not None)
    # EvalPlus keeps a float tolerance, once set, for the task's later inputs: so do we.
    if atol_state[0] == 0 and _is_floats(exp):
        atol_state[0] = 1e-6
    if not exact and atol_state[0] != 0:
        if _type(out) is not _type(exp):
            return False
        if _isinstance(exp, (list, tuple)) and _len(out) != _len(exp):
            return False
        return _allclose(out, exp, atol_state[0])
    return bool(exact)


def _error_line(exc: BaseException) -> str:
    text = "".join(traceback.format_exception_only(_type(exc), exc)).strip()
    return text.splitlines()[-1] if text else _type(exc).__name__


def _program_line(exc: BaseException) -> str:
    """The last traceback line that points into the program, for the feedback."""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename == "<solution>":
            return f"line {frame.lineno}, in {frame.name}"
    return ""


def run_tests(fd: int, nonce: str, program: str, spec: dict, mode: str) -> None:
    """In the runner: execute the program and its tests, reporting one line per event."""

    def send(event: dict) -> None:
        event["n"] = nonce
        data = (_dumps(event) + "\n").encode()
        while data:
            data = data[_os_write(fd, data) :]

    if mode == "outputs" and hasattr(sys, "set_int_max_str_digits"):
        sys.set_int_max_str_digits(0)  # trusted references may return huge ints
    try:
        code = compile(program, "<solution>", "exec")
    except (SyntaxError, ValueError, OverflowError, RecursionError, MemoryError) as exc:
        send({"ev": "syntax", "msg": _error_line(exc)})
        return
    ns: dict = {"__builtins__": builtins}  # not the harness's private copy
    entry = spec["entry_point"]
    try:
        exec(code, ns)
        if spec.get("setup"):
            exec(spec["setup"], ns)
        if entry not in ns:
            raise NameError(f"name '{entry}' is not defined (the program must define {entry})")
        ns["candidate"] = ns[entry]
    except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt included
        send({"ev": "fatal", "etype": _type(exc).__name__, "msg": _error_line(exc)})
        return
    # The tests run in a namespace of their own: their builtins are a pristine copy (not names
    # the program shadowed, ``def abs(x): return 0``, nor a patched ``builtins`` module), and
    # whatever the entry point returns to them must be plain, even inside loops.
    test_ns = {k: v for k, v in ns.items() if k == entry or k not in _PRISTINE_BUILTINS}
    test_ns["__builtins__"] = dict(_PRISTINE_BUILTINS)
    if not _isinstance(ns[entry], type):
        test_ns[entry] = test_ns["candidate"] = _checked(ns[entry])
    atol_state = [spec.get("atol") or 0.0]
    for index, test in enumerate(spec["tests"]):
        event: dict = {"ev": "test", "i": index}
        try:
            if test["kind"] == "call":
                out = ns[entry](*test["inputs"])
                if mode == "outputs":
                    if test.get("oracle") == "not_none":
                        out = out is not None
                    event["out"] = _encode(out)
                    event["ok"] = True
                elif _call_matches(
                    out, test["expected"], test["inputs"], test.get("oracle", ""), atol_state
                ):
                    event["ok"] = True
                else:
                    event.update(ok=False, expected=_short(test["expected"]), actual=_short(out))
            elif test.get("whole", 1) is None:
                raise SyntaxError("the test itself does not compile")
            else:
                exec(test["prefix"], test_ns)
                report: dict = {}
                if test["assert"] is None or _eval_checked(test["assert"], test_ns, report):
                    event["ok"] = True
                else:
                    event["ok"] = False
                    event.update(report)
                    if test.get("msg") is not None:
                        event["msg"] = _short(eval(test["msg"], test_ns))
        except NotPlain as exc:
            event.update(ok=False, etype="NotPlain", msg=str(exc))
        except MemoryError:
            event.update(ok=False, etype="MemoryError", msg="MemoryError")
        except BaseException as exc:  # noqa: BLE001
            event.update(ok=False, etype=_type(exc).__name__, msg=_error_line(exc))
            where = _program_line(exc)
            if where:
                event["where"] = where
        try:
            send(event)
        except BaseException as exc:  # noqa: BLE001 - e.g. an output too large to encode
            event = {"ev": "test", "i": index, "ok": False, "etype": _type(exc).__name__}
            event["msg"] = f"could not report the result: {_error_line(exc)}"
            send(event)
    send({"ev": "done", "tests": _len(spec["tests"])})


# ------------------------------------------------------------------------------ zygote ----


class Zygote:
    """Serves jobs one at a time; forks a runner per job and cleans up after it."""

    def __init__(self, info: dict, sandbox_uid: int, nproc: int, output_mb: int, scratch: str):
        self.info = info
        self.namespaced = info["mode"] != "rlimits"
        self.drop_to = sandbox_uid if (os.getuid() == 0 and sandbox_uid > 0) else None
        if self.drop_to is not None:
            info["layers"].append("unprivileged-uid")
            info["uid"] = self.drop_to
        self.nproc = nproc
        self.output_bytes = output_mb << 20
        self.problems: collections.OrderedDict = collections.OrderedDict()
        self._runner_status: int | None = None
        # Where a job may write: the private temp folders, or (without a mount namespace) a
        # scratch folder of this worker's; the job's own directory is ``job`` inside it.
        self.scratch = scratch
        self.wiped = [*layers.PRIVATE_TMP] if self.namespaced else [scratch]
        self.workdir = os.path.join("/tmp" if self.namespaced else scratch, "job")
        self.tmpdir = "/tmp" if self.namespaced else os.path.join(scratch, "tmp")
        self.landlock: layers.Landlock | None = None
        self.seccomp: layers.Seccomp | None = None
        if not self.namespaced:
            _prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: orphans come back to us to be killed

    # --- the runner (child side) ---
    def _runner(self, fd: int, nonce: str, program: str, spec: dict, job: dict) -> None:
        gc.disable()  # a short-lived runner: no collections, so fewer pages copied after fork
        os.setsid()
        try:
            if self.drop_to is not None:
                os.setgroups([])
                os.setgid(self.drop_to)
                os.setuid(self.drop_to)
            _prctl(PR_SET_NO_NEW_PRIVS, 1)
            os.chdir(self.workdir)
            os.environ["HOME"] = self.workdir
            os.environ["TMPDIR"] = self.tmpdir
            null = os.open(os.devnull, os.O_RDONLY)
            out = os.open("stdout.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            err = os.open("stderr.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(null, 0)
            os.dup2(out, 1)
            os.dup2(err, 2)
            os.dup2(fd, 3)
            if self.landlock is not None:
                self.landlock.enter()
            os.closerange(4, 1 << 16)
            fd = 3
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # oversized writes fail, not kill
            memory = job["memory_mb"] << 20
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
            cpu = int(math.ceil(job["timeout"])) + 1
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.output_bytes, self.output_bytes))
            resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            if self.drop_to is not None or self.namespaced:
                resource.setrlimit(resource.RLIMIT_NPROC, (self.nproc, self.nproc))
            if self.seccomp is not None:
                self.seccomp.enter()
            sys.stdout = open(1, "w", closefd=False)
            sys.stderr = open(2, "w", closefd=False)
            sys.stdin = open(0, closefd=False)
        except BaseException as exc:  # noqa: BLE001
            os.write(
                fd,
                (json.dumps({"n": nonce, "ev": "setup_failed", "msg": repr(exc)}) + "\n").encode(),
            )
            _os_exit(70)
        try:
            run_tests(fd, nonce, program, spec, job["mode"])
        finally:
            _os_exit(0)

    # --- the zygote side ---
    def run(self, job: dict) -> dict:
        spec = self.problems.get(job["key"])
        if spec is None:
            return {"error": f"unknown problem key {job['key']!r}"}
        self.problems.move_to_end(job["key"])
        nonce = secrets.token_hex(16)
        self._prepare_dirs()
        read_fd, write_fd = os.pipe()
        gc.freeze()  # objects so far stay out of the runner's collections: cheaper fork
        start = _perf()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            self._runner(write_fd, nonce, job["program"], spec, job)
            _os_exit(0)
        os.close(write_fd)
        events, outcome = self._collect(
            read_fd, pid, nonce, start + job["timeout"], OUTPUT_CHANNEL_LIMIT[job["mode"]]
        )
        duration = _perf() - start
        os.close(read_fd)
        status = self._cleanup(pid)
        verdict = self._verdict(events, outcome, status, len(spec["tests"]), spec, duration)
        reply = {"verdict": verdict}
        if job["mode"] == "outputs":
            outputs = [None] * len(spec["tests"])
            for ev in events:
                if ev.get("ev") == "test" and "out" in ev:
                    outputs[ev["i"]] = ev["out"]
            reply["outputs"] = outputs
        return reply

    def _prepare_dirs(self) -> None:
        """The job's own directory (and, without a mount namespace, its temp folder)."""
        for path in {self.workdir, self.tmpdir} - set(layers.PRIVATE_TMP):
            os.makedirs(path, exist_ok=True)
            if self.drop_to is not None:
                os.chown(path, self.drop_to, self.drop_to)

    def _collect(self, read_fd: int, pid: int, nonce: str, deadline: float, limit: int):
        """Read the runner's reports until it is done, dead, or out of time."""
        events: list[dict] = []
        buffer = b""
        received = 0
        line_limit = EVENT_LINE_LIMIT if limit == OUTPUT_CHANNEL_LIMIT["check"] else limit
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pidfd = None
        watch = [read_fd] + ([pidfd] if pidfd is not None else [])
        exited = False
        outcome = "eof"
        try:
            while True:
                remaining = deadline - _perf()
                if remaining <= 0:
                    outcome = "eof" if exited else "timeout"
                    break
                wait = remaining if pidfd is not None else min(remaining, 0.02)
                ready, _, _ = select.select(watch, [], [], wait)
                if read_fd in ready:
                    chunk = os.read(read_fd, 1 << 16)
                    if not chunk:
                        break
                    received += len(chunk)
                    if received > limit:
                        outcome = "flood"
                        break
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        if len(line) > line_limit:
                            continue  # no report is this long: never parsed
                        try:
                            event = json.loads(line)
                        except (ValueError, RecursionError):  # '[' x 200000 recurses
                            continue
                        if _isinstance(event, dict) and event.get("n") == nonce:
                            events.append(event)
                    if events and events[-1].get("ev") in _FINAL_EVENTS:
                        break
                    continue
                if exited:
                    break  # the runner is gone and its pipe is quiet: a child holds it open
                if pidfd is not None:
                    gone = pidfd in ready
                else:
                    try:
                        got, status = os.waitpid(pid, os.WNOHANG)
                        gone = got != 0
                        if gone:
                            self._runner_status = status
                    except ChildProcessError:
                        gone = True
                if gone:
                    exited = True
                    watch = [read_fd]
                    deadline = min(deadline, _perf() + 0.05)
        finally:
            if pidfd is not None:
                os.close(pidfd)
        return events, outcome

    def _cleanup(self, pid: int) -> int | None:
        """Kill every process the job left and reap them; return the runner's wait status."""
        if self.namespaced:
            try:
                os.kill(-1, signal.SIGKILL)  # PID 1 of the namespace: everyone but us
            except ProcessLookupError:
                pass
        else:
            self._kill_descendants(pid)  # may reap the runner: its status is kept
        status, self._runner_status = self._runner_status, None
        while True:
            try:
                got, st = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            if got == pid:
                status = st
        for path in self.wiped:
            wipe(path)
        return status

    def _kill_descendants(self, pid: int) -> None:
        """Without a PID namespace: kill the runner's session and every child that was
        reparented to us (we are a subreaper), until none is left."""
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        me = os.getpid()
        for _ in range(50):
            children = []
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == me:
                    children.append(int(entry))
            if not children:
                return
            for child in children:
                try:
                    os.kill(child, signal.SIGKILL)
                except OSError:
                    pass
            for _child in children:
                try:
                    got, status = os.waitpid(-1, 0)
                except ChildProcessError:
                    break
                if got == pid:
                    self._runner_status = status

    def _verdict(self, events, outcome, status, total, spec, duration) -> dict:
        # One report per test index, the first one wins: a forked clone that re-runs the
        # harness loop, or a forged event, can never count a test twice (passed <= total).
        first: dict[int, dict] = {}
        ignored = 0
        for event in events:
            if event.get("ev") != "test":
                continue
            index = event.get("i")
            if _type(index) is not int or not 0 <= index < total or index in first:
                ignored += 1
                continue
            first[index] = _plain_event(event)
        tests = [first[i] for i in sorted(first)]
        passed = sum(1 for e in tests if e.get("ok") is True)
        verdict = {
            "status": "pass",
            "passed": passed,
            "total": total,
            "duration": round(duration, 4),
        }
        if ignored:
            verdict["extra"] = {"ignored_events": ignored}
        last = _plain_event(events[-1]) if events else {}
        kind = last.get("ev")
        if kind == "syntax":
            return dict(
                verdict, status="syntax", error_type="SyntaxError", feedback=last.get("msg", "")
            )
        if kind == "setup_failed":
            return dict(verdict, status="sandbox_error", feedback=last.get("msg", ""))
        if kind == "fatal":
            etype = last.get("etype", "")
            status_name = "memory" if etype == "MemoryError" else "error"
            return dict(verdict, status=status_name, error_type=etype, feedback=last.get("msg", ""))
        failures = [e for e in tests if e.get("ok") is not True]
        first = failures[0] if failures else None
        if first is not None:
            test = spec["tests"][first["i"]]
            verdict["failed_test"] = _describe(test, spec["entry_point"])
            verdict["expected"] = first.get("expected", "")
            verdict["actual"] = first.get("actual", "")
            verdict["error_type"] = first.get("etype", "")
        if kind == "done" and len(tests) == total and not failures:
            return verdict
        if kind == "done":
            return dict(
                verdict, status=_failure_status(first), feedback=_failure_feedback(verdict, first)
            )
        if outcome == "timeout":
            return dict(verdict, status="timeout", error_type="Timeout", feedback="Timeout")
        if outcome == "flood":
            return dict(
                verdict,
                status="crash",
                error_type="OutputFlood",
                feedback="the program flooded the harness channel",
            )
        if status is not None and os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if sig == signal.SIGXCPU:
                return dict(verdict, status="timeout", error_type="Timeout", feedback="Timeout")
            name = (
                signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
            )
            return dict(
                verdict,
                status="crash",
                error_type=name,
                feedback=f"the program was killed by signal {name}",
            )
        code = os.WEXITSTATUS(status) if status is not None and os.WIFEXITED(status) else None
        return dict(
            verdict,
            status="crash",
            error_type="EarlyExit",
            feedback=f"the program exited (status {code}) before the tests finished",
        )

    def serve(self, rfile, wfile) -> None:
        for line in rfile:
            try:
                msg = json.loads(line)
                op = msg.get("op")
                if op == "hello":
                    reply = {"isolation": self.info, "pid": os.getpid()}
                elif op == "problem":
                    tests = [_compile_test(t) for t in msg["tests"]]
                    self.problems[msg["key"]] = {
                        "entry_point": msg["entry_point"],
                        "setup": msg.get("setup", ""),
                        "atol": msg.get("atol", 0.0),
                        "tests": tests,
                    }
                    while len(self.problems) > 256:
                        self.problems.popitem(last=False)
                    reply = {"ok": True}
                elif op == "run":
                    reply = self.run(msg)
                else:
                    reply = {"error": f"unknown op {op!r}"}
            except Exception as exc:  # noqa: BLE001 - report, keep serving
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            wfile.write((json.dumps(reply) + "\n").encode())
            wfile.flush()


WIPE_DEPTH = 32  # deeper folders are moved up to the top before they are emptied


def wipe(root: str) -> int:
    """Empty ``root`` without recursion limits: a job can leave folders nested thousands
    deep, unreadable modes, or millions of files. Returns the entries that would not go."""
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return 0
    device = os.fstat(root_fd).st_dev
    moved = 0
    stuck = 0

    def remove(dir_fd: int, name: str, depth: int) -> None:
        nonlocal moved, stuck
        try:
            info = os.lstat(name, dir_fd=dir_fd)
            if not stat.S_ISDIR(info.st_mode):
                os.unlink(name, dir_fd=dir_fd)
                return
            if info.st_dev != device:
                stuck += 1  # a folder bound in (a venv under /tmp): never ours to empty
                return
            if depth >= WIPE_DEPTH:
                moved += 1
                os.rename(name, f".wipe-{moved}", src_dir_fd=dir_fd, dst_dir_fd=root_fd)
                return
            try:
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
            except PermissionError:
                os.chmod(name, 0o700, dir_fd=dir_fd)
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
            try:
                try:
                    os.fchmod(fd, 0o700)
                except OSError:
                    pass
                for child in os.listdir(fd):
                    remove(fd, child, depth + 1)
            finally:
                os.close(fd)
            os.rmdir(name, dir_fd=dir_fd)
        except FileNotFoundError:
            return
        except OSError:
            stuck += 1

    try:
        for _ in range(10_000):
            names = os.listdir(root_fd)
            before = stuck
            for name in names:
                remove(root_fd, name, 1)
            if not names or stuck > before and len(os.listdir(root_fd)) >= len(names):
                break
    finally:
        os.close(root_fd)
    return stuck


def _describe(test: dict, entry_point: str) -> str:
    if test["kind"] == "assert":
        text = test["code"].strip()
    else:
        args = ", ".join(_short(a) for a in test["inputs"])
        text = f"{entry_point}({args})"
    return text if len(text) <= 2 * REPR_LIMIT else text[: 2 * REPR_LIMIT - 3] + "..."


_TEXT_FIELDS = ("etype", "msg", "expected", "actual", "where", "ev")
EVENT_TEXT_LIMIT = 4000  # characters of one text field of an event; the verdict caps again


def _plain_event(event: dict) -> dict:
    """An event as the verdict may use it: known text fields as capped ``str``, whatever the
    job wrote (null, a number, a list, megabytes)."""
    clean = dict(event)
    for key in _TEXT_FIELDS:
        if key in clean:
            value = clean[key]
            text = value if _type(value) is str else ("" if value is None else _dumps(value))
            clean[key] = text[:EVENT_TEXT_LIMIT]
    return clean


def _failure_status(event: dict) -> str:
    etype = event.get("etype", "")
    if not etype or etype in ("NotPlain",):
        return "fail"
    if etype == "MemoryError":
        return "memory"
    return "error"


def _failure_feedback(verdict: dict, event: dict) -> str:
    lines = [f"Failed test: {verdict.get('failed_test', '')}"]
    if event.get("etype") and event["etype"] != "NotPlain":
        lines.append(
            event.get("msg", event["etype"])
            + (f" ({event['where']})" if event.get("where") else "")
        )
    elif event.get("etype") == "NotPlain":
        lines.append(event.get("msg", ""))
    else:
        if event.get("expected") or event.get("actual"):
            lines.append(f"Expected: {event.get('expected', '')}")
            lines.append(f"Actual: {event.get('actual', '')}")
        if event.get("msg"):
            lines.append(f"Message: {event['msg']}")
    return "\n".join(lines)


def _blocker(path: str) -> str | None:
    """The first folder on the way to ``path`` that other users cannot enter."""
    current = "/"
    for part in [p for p in path.split("/") if p]:
        current = os.path.join(current, part)
        if not os.stat(current).st_mode & 0o001:
            return current
    return None


def _probe(landlock, seccomp) -> str:
    """Enter the layers in a throw-away child: a layer that cannot be entered here is
    dropped now, with the reason, rather than failing every job."""
    pid = os.fork()
    if pid == 0:
        try:
            _prctl(PR_SET_NO_NEW_PRIVS, 1)
            if landlock is not None:
                landlock.enter()
            if seccomp is not None:
                seccomp.enter()
        except BaseException:  # noqa: BLE001
            os._exit(3)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return "" if os.waitstatus_to_exitcode(status) == 0 else "entering it failed"


def setup_layers(args, info: dict) -> str:
    """Build every layer this machine allows; returns the scratch folder jobs write in."""
    import platform
    import tempfile

    info["kernel"] = platform.release()
    readable = layers.readable_paths(args.project_root)
    namespaced = info["mode"] != "rlimits"
    if namespaced:
        layers.build_new_root(readable, args.tmpfs_mb, info)
        info["layers"] += ["mount-namespace", "new-root", "pid-namespace", "net-namespace"]
        info["layers"] += ["ipc-namespace"] + (["fresh-proc"] if info["fresh_proc"] else [])
        if info["mode"] == "userns":
            layers.drop_capabilities()
            info["layers"].append("no-capabilities")
        scratch, writable = "/tmp", list(layers.PRIVATE_TMP)
    else:
        scratch = tempfile.mkdtemp(prefix="sdlib-worker-")
        os.chmod(scratch, 0o711)
        writable = [scratch]
        info["scratch"] = scratch
        if os.getuid() == 0 and args.uid > 0:
            for path in readable:
                blocker = _blocker(path)
                if blocker:
                    info.setdefault("warnings", []).append(
                        f"{path} lies under {blocker}, which the sandbox uid cannot enter: "
                        "programs can import only the modules the worker preloaded (mount "
                        "namespaces bind it back; without them, install Python where others "
                        "can read it)"
                    )
    _prctl(PR_SET_DUMPABLE, 0)  # our memory stays out of reach of same-uid processes
    landlock = seccomp = None
    if args.isolation != "none":
        abi = layers.landlock_abi()
        info["landlock_abi"] = abi
        if abi:
            extra = ["/proc"] if info.get("fresh_proc") else []
            try:
                landlock = layers.Landlock(abi, readable + extra, writable, devices=True)
            except OSError as exc:
                info["why_not_landlock"] = str(exc)
        else:
            info["why_not_landlock"] = (
                f"kernel {info['kernel']} offers no Landlock (Linux >= 5.13 with lsm=landlock)"
            )
        if layers.seccomp_available():
            seccomp = layers.Seccomp()
        else:
            info["why_not_seccomp"] = "no system-call table for this architecture"
        if landlock is not None and (why := _probe(landlock, None)):
            info["why_not_landlock"], landlock = why, None
        if seccomp is not None and (why := _probe(None, seccomp)):
            info["why_not_seccomp"], seccomp = why, None
    if landlock is not None:
        info["layers"] += landlock.layers
    if seccomp is not None:
        info["layers"].append("seccomp")
    info["_landlock"], info["_seccomp"] = landlock, seccomp
    return scratch


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--isolation", choices=["auto", "namespaces", "unprivileged", "none"], default="auto"
    )
    parser.add_argument("--uid", type=int, default=0)
    parser.add_argument("--nproc", type=int, default=64)
    parser.add_argument("--tmpfs-mb", type=int, default=256)
    parser.add_argument("--output-mb", type=int, default=16)
    parser.add_argument("--project-root", default=os.path.dirname(os.path.dirname(__file__)))
    args = parser.parse_args()
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    _load_oracles()
    rfile = os.fdopen(os.dup(0), "rb")
    wfile = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)

    def fatal(why: str) -> None:
        wfile.write((json.dumps({"fatal": why}) + "\n").encode())
        wfile.flush()
        sys.exit(2)

    info: dict = {"mode": "rlimits", "layers": ["rlimits", "clean-env", "harness"]}
    if args.isolation in ("auto", "namespaces"):
        mode, why = enter_namespaces()
        info["mode"] = mode
        if why:
            info["why_not_namespaces"] = why
            if args.isolation == "namespaces":
                fatal(f"namespaces were required but {why}")
    else:
        info["why_not_namespaces"] = f"isolation={args.isolation!r} was asked for"
    if info["mode"] != "rlimits":
        child = os.fork()  # becomes PID 1 of the new PID namespace
        if child:
            rfile.close()
            wfile.close()
            while True:
                try:
                    _, status = os.waitpid(child, 0)
                    break
                except InterruptedError:
                    continue
            os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        scratch = setup_layers(args, info)
    except OSError as exc:
        fatal(f"building the {info['mode']} sandbox failed: {exc}")
    landlock, seccomp = info.pop("_landlock"), info.pop("_seccomp")
    judge_guarantees(info)
    zygote = Zygote(info, args.uid, args.nproc, args.output_mb, scratch)
    zygote.landlock, zygote.seccomp = landlock, seccomp
    zygote.serve(rfile, wfile)


if __name__ == "__main__":
    try:
        main()
    except (BrokenPipeError, KeyboardInterrupt):
        pass
    except Exception:  # noqa: BLE001
        traceback.print_exc(file=sys.__stderr__)
        sys.exit(1)
    sys.exit(0)
