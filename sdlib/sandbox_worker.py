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
import shutil
import signal
import sys
import time
import traceback
import types
import weakref

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
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
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
PRIVATE_TMPFS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
# Bytes a runner may send back in one job: reports are small, reference outputs can be large.
OUTPUT_CHANNEL_LIMIT = {"check": 64 << 20, "outputs": 2 << 30}
_FINAL_EVENTS = ("done", "syntax", "fatal", "setup_failed")
REPR_LIMIT = 400

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None):
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def _prctl(option: int, value: int) -> None:
    _check(_libc.prctl(option, value, 0, 0, 0), "prctl")


# --------------------------------------------------------------------------- isolation ----


def enter_namespaces(tmpfs_mb: int) -> dict:
    """Unshare mount, PID and network namespaces (plus a user namespace when not root)."""
    info: dict = {"mode": "rlimits", "layers": ["rlimits", "fresh-cwd", "harness"]}
    uid, gid = os.getuid(), os.getgid()
    try:
        if uid == 0:
            _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET), "unshare")
            info["mode"] = "namespaces"
        else:
            _check(
                _libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET),
                "unshare",
            )
            with open("/proc/self/setgroups", "w") as f:
                f.write("deny")
            with open("/proc/self/uid_map", "w") as f:
                f.write(f"0 {uid} 1")
            with open("/proc/self/gid_map", "w") as f:
                f.write(f"0 {gid} 1")
            info["mode"] = "userns"
    except OSError as exc:
        info["why_not_namespaces"] = str(exc)
        return info
    info["layers"] += ["pid-namespace", "net-namespace", "mount-namespace"]
    _mount(None, "/", None, MS_REC | MS_PRIVATE, None)
    private = []
    for path in PRIVATE_TMPFS:
        if os.path.isdir(path):
            try:
                _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmpfs_mb}m,mode=1777")
                private.append(path)
            except OSError as exc:
                info.setdefault("warnings", []).append(str(exc))
    info["private_tmpfs"] = private
    if uid == 0:
        info["exposed"] = _expose_interpreter(info)
    info["read_only"] = _remount_read_only(set(private))
    if info["read_only"]:
        info["layers"].append("read-only-mounts")
    return info


def _blocker(path: str) -> str | None:
    """The first directory on the way to ``path`` that an unprivileged uid cannot enter."""
    current = "/"
    for part in [p for p in path.split("/") if p]:
        current = os.path.join(current, part)
        if not os.stat(current).st_mode & 0o001:
            return current
    return None


def _expose_interpreter(info: dict) -> list[str]:
    """Let the unprivileged runner import the whole standard library and site-packages.

    Python may live under a directory others cannot enter (pyenv in /root, mode 700). Such a
    directory is covered by an empty tmpfs in our mount namespace, and only the interpreter's
    own folders are bound back at their paths: the runner can import ``threading`` or
    ``numpy`` but still sees nothing else of that home directory.
    """
    wanted = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, sys.exec_prefix)}
    wanted |= {os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)}
    wanted = {p for p in wanted if not any(p != q and p.startswith(q + "/") for q in wanted)}
    by_blocker: dict[str, list[str]] = {}
    for path in sorted(wanted):
        blocker = _blocker(path)
        if blocker is None:
            continue
        if blocker == path:
            info.setdefault("warnings", []).append(f"{path} is not readable by the sandbox uid")
            continue
        by_blocker.setdefault(blocker, []).append(path)
    exposed = []
    for blocker, paths in by_blocker.items():
        fds = {path: os.open(path, os.O_PATH | os.O_DIRECTORY) for path in paths}
        try:
            _mount("tmpfs", blocker, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
            for path, fd in fds.items():
                os.makedirs(path, mode=0o755, exist_ok=True)
                _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC, None)
                exposed.append(path)
        except OSError as exc:
            info.setdefault("warnings", []).append(f"could not expose {paths}: {exc}")
        finally:
            for fd in fds.values():
                os.close(fd)
    return exposed


def _remount_read_only(skip: set[str]) -> list[str]:
    """Make every other mount read-only inside our mount namespace (best effort)."""
    flag_map = {
        os.ST_NOSUID: MS_NOSUID,
        os.ST_NODEV: MS_NODEV,
        os.ST_NOEXEC: MS_NOEXEC,
        os.ST_NOATIME: MS_NOATIME,
        os.ST_NODIRATIME: MS_NODIRATIME,
        getattr(os, "ST_RELATIME", 4096): MS_RELATIME,
    }
    done = []
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in points:
        if point in skip or point.startswith(("/proc", "/sys", "/dev")) and point != "/dev/shm":
            continue
        if point == "/dev/shm":
            continue
        try:
            st = os.statvfs(point)
            flags = MS_REMOUNT | MS_BIND | MS_RDONLY
            for st_flag, ms_flag in flag_map.items():
                if st.f_flag & st_flag:
                    flags |= ms_flag
            _mount(None, point, None, flags, None)
            done.append(point)
        except OSError:
            continue
    return done


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

    def __init__(self, info: dict, sandbox_uid: int, nproc: int, output_mb: int):
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
        if not self.namespaced:
            _prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: orphans come back to us to be killed

    # --- the runner (child side) ---
    def _runner(self, fd: int, nonce: str, program: str, spec: dict, job: dict) -> None:
        gc.disable()  # a short-lived runner: no collections, so fewer pages copied after fork
        os.setsid()
        if self.namespaced:
            workdir_root = "/tmp"
        else:
            workdir_root = job["workdir"]
        try:
            if self.drop_to is not None:
                os.setgroups([])
                os.setgid(self.drop_to)
                os.setuid(self.drop_to)
            _prctl(PR_SET_NO_NEW_PRIVS, 1)
            workdir = os.path.join(workdir_root, "job") if self.namespaced else workdir_root
            os.makedirs(workdir, exist_ok=True)
            os.chdir(workdir)
            null = os.open(os.devnull, os.O_RDONLY)
            out = os.open("stdout.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            err = os.open("stderr.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(null, 0)
            os.dup2(out, 1)
            os.dup2(err, 2)
            os.dup2(fd, 3)
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
        if not self.namespaced:
            import tempfile

            job["workdir"] = tempfile.mkdtemp(prefix="sdlib-")
            if self.drop_to is not None:
                os.chown(job["workdir"], self.drop_to, self.drop_to)
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
        if not self.namespaced:
            shutil.rmtree(job["workdir"], ignore_errors=True)
        return reply

    def _collect(self, read_fd: int, pid: int, nonce: str, deadline: float, limit: int):
        """Read the runner's reports until it is done, dead, or out of time."""
        events: list[dict] = []
        buffer = b""
        received = 0
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
                        try:
                            event = json.loads(line)
                        except ValueError:
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
        if self.namespaced:
            for path in self.info.get("private_tmpfs", ()):
                for entry in os.listdir(path):
                    full = os.path.join(path, entry)
                    if os.path.isdir(full) and not os.path.islink(full):
                        shutil.rmtree(full, ignore_errors=True)
                    else:
                        try:
                            os.unlink(full)
                        except OSError:
                            pass
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
        tests = [e for e in events if e.get("ev") == "test"]
        passed = sum(1 for e in tests if e.get("ok") is True)
        verdict = {
            "status": "pass",
            "passed": passed,
            "total": total,
            "duration": round(duration, 4),
        }
        last = events[-1] if events else {}
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


def _describe(test: dict, entry_point: str) -> str:
    if test["kind"] == "assert":
        text = test["code"].strip()
    else:
        args = ", ".join(_short(a) for a in test["inputs"])
        text = f"{entry_point}({args})"
    return text if len(text) <= 2 * REPR_LIMIT else text[: 2 * REPR_LIMIT - 3] + "..."


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


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--isolation", choices=["auto", "namespaces", "none"], default="auto")
    parser.add_argument("--uid", type=int, default=0)
    parser.add_argument("--nproc", type=int, default=64)
    parser.add_argument("--tmpfs-mb", type=int, default=512)
    parser.add_argument("--output-mb", type=int, default=16)
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
    if args.isolation == "none":
        info = {
            "mode": "rlimits",
            "layers": ["rlimits", "fresh-cwd", "harness"],
            "why_not_namespaces": "isolation=none was asked for",
        }
    else:
        info = enter_namespaces(args.tmpfs_mb)
        if args.isolation == "namespaces" and info["mode"] == "rlimits":
            wfile.write((json.dumps({"fatal": info.get("why_not_namespaces", "")}) + "\n").encode())
            wfile.flush()
            sys.exit(2)
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
    Zygote(info, args.uid, args.nproc, args.output_mb).serve(rfile, wfile)


if __name__ == "__main__":
    try:
        main()
    except (BrokenPipeError, KeyboardInterrupt):
        pass
    except Exception:  # noqa: BLE001
        traceback.print_exc(file=sys.__stderr__)
        sys.exit(1)
    sys.exit(0)
