"""The sandbox worker: a warm process that runs untrusted programs and calls their functions.

Started by ``sdlib.execution.sandbox`` as ``python -I sandbox_worker.py`` with a short allow-list of
environment variables; it imports only the standard library, ``valuecodec`` and
``sandbox_layers``, so that nothing of the caller (torch, a model, a notebook, a secret) is
within reach of the programs it runs. It decides no verdict: it returns each call's answer as
plain data, and ``sdlib.execution.harness`` (outside) compares and counts.

Layers, outermost first (README, "The sandbox", says what each one protects against):

1. Namespaces (when the kernel allows): new mount, PID, network, IPC and UTS namespaces (and
   a user namespace without root), entered by ``unshare`` in this process. Its first child
   becomes PID 1 of the new PID namespace: the *zygote*. It pivots into a new root holding
   only the system folders and the interpreter's, read-only, a fresh /proc and one private
   tmpfs behind /tmp, /var/tmp, /dev/shm and /run/lock (``sandbox_layers.build_new_root``).
   The zygote serves jobs and forks one *runner* per job; after each job it sends SIGKILL
   to every other process of its namespace (``kill(-1)``) and wipes the temp folders.
2. Landlock and seccomp (``sandbox_layers``): entered once by the zygote in namespace mode,
   by each runner otherwise.
3. Identity: as root, the runner drops to an unprivileged uid of its own (one per worker);
   in a user namespace all capabilities are dropped; PR_SET_NO_NEW_PRIVS always.
4. Limits: RLIMIT_AS (memory), RLIMIT_CPU, RLIMIT_FSIZE (output and files), RLIMIT_NOFILE,
   RLIMIT_NPROC, no core dumps, a wall-clock deadline kept by the zygote.

Protocol: one JSON object per line on stdin/stdout.
  {"op": "hello"} -> {"isolation": {...}}
  {"op": "problem", "key", "entry_point", "setup", "calls": [[name, args, kwargs], ...],
   "groups": [test index of each call]} -> {"ok": true}
  {"op": "run", "key", "program", "timeout", "memory_mb", "mode": "check"|"outputs",
   optional "slice": [start, stop] of the problem's calls, or "calls" (a later round)
   with "full"}
      -> {"end": {"end": "done"|"syntax"|"fatal"|"timeout"|..., ...},
          "results": [{"v": encoded answer} | {"h": sha256} | {"etype", "msg"} | null, ...]}
  {"op": "stdio", "program", "stdin", "timeout", "memory_mb", "max_output"}: one run of a
   stdin/stdout program on one test's input, in a fresh runner
      -> {"end": {...}, "stdout": text (at most max_output bytes), "truncated": bool}
"""

from __future__ import annotations

import builtins
import ctypes
import gc
import json
import math
import os
import resource
import secrets
import select
import signal
import stat
import sys
import time
import traceback

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
FLUSH_EVERY = 0.002  # seconds between writes of batched reports
EVENT_LINE_LIMIT = 1 << 20  # bytes of one report line when checking (outputs may be larger)

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


# ------------------------------------------------------------------------------ runner ----
# The job only runs the program and calls its functions on inputs the trusted side computed;
# each result goes back as plain data. Nothing here decides a verdict: expected values,
# comparisons and the counting of tests live in ``sdlib.execution.harness``, outside the job.

_type = type
_os_write = os.write
_os_exit = os._exit
_dumps = json.dumps
_perf = time.perf_counter


class _Reported(Exception):
    """The event already holds the answer."""


class NotPlain(Exception):
    """A returned value that is not plain data (an object of a program's own class)."""


_SCALARS = (type(None), bool, int, float, str, bytes, complex)
_SCALAR_SET = frozenset(_SCALARS)
# A builtin's own methods (never a subclass's override) turn a subclass into plain data.
_AS_BASE = {
    int: int.__int__,
    float: float.__float__,
    str: str.__str__,
    bytes: lambda b: bytes.__getitem__(b, slice(None)),
    complex: complex.__complex__,
}
_SEQUENCES = {list: list, tuple: tuple, set: set, frozenset: frozenset}


def to_plain(value):
    """The data a value holds, read with the builtin base types' own methods: exact builtin
    types only, recursively. A subclass's overrides (``__eq__``, ``__iter__``, ``values``)
    are never called, so what goes back is what it holds; anything else is refused."""
    kind = _type(value)
    if kind in _SCALARS:
        return value
    if (kind is list or kind is tuple) and set(map(_type, value)) <= _SCALAR_SET:
        return list(value) if kind is list else value  # exact types all through: as it is
    mro = _mro_of(kind)
    for base, convert in _AS_BASE.items():
        if base in mro:
            return convert(value)
    for base, make in _SEQUENCES.items():
        if base in mro:
            return make([to_plain(v) for v in base.__iter__(value)])
    if dict in mro:
        return {to_plain(k): to_plain(v) for k, v in dict.items(value)}
    for base in mro:  # numpy scalars and arrays, by their own C methods
        if base.__module__ == "numpy" and base.__name__ in ("generic", "ndarray"):
            method = base.__dict__["item" if base.__name__ == "generic" else "tolist"]
            return to_plain(method(value))
    raise NotPlain(f"a {kind.__name__}")


_mro_of = type.__dict__["__mro__"].__get__


_JOB_TAGS = ("$ref", "$call", "$builtin")


def _tagged(data, depth: int = 0) -> bool:
    if _type(data) is dict:
        return any(tag in data for tag in _JOB_TAGS) or (
            "$t" in data and depth < 50 and any(_tagged(v, depth + 1) for v in data["$t"])
        )
    return _type(data) is list and depth < 50 and any(_tagged(v, depth + 1) for v in data[:64])


class Deferred:
    """Inputs that only the job can make: resolved in the runner, in the program's
    namespace, just before the call."""

    def __init__(self, data):
        self.data = data

    def resolve(self, ns: dict, depth: int = 0):
        return _resolve(self.data, ns, depth)


def _resolve(data, ns: dict, depth: int):
    kind = _type(data)
    if kind is list:
        return [_resolve(v, ns, depth) for v in data]
    if kind is dict:
        if "$ref" in data:
            return ns[data["$ref"]]
        if "$builtin" in data:
            return getattr(builtins, data["$builtin"])
        if "$call" in data:
            if depth > 20:
                raise RecursionError("inputs nested too deeply")
            name, args, kwargs = data["$call"]
            function = ns[name]
            return function(
                *[_resolve(a, ns, depth + 1) for a in args],
                **{k: _resolve(v, ns, depth + 1) for k, v in kwargs.items()},
            )
        if "$t" in data:
            return tuple(_resolve(v, ns, depth) for v in data["$t"])
    return valuecodec.decode(data)


def decode_call(call: list) -> tuple[str, list, dict]:
    """[name, encoded args, encoded kwargs] -> the call as the runner makes it."""
    name, args, kwargs, *flags = call
    decoded = [Deferred(a) if _tagged(a) else valuecodec.decode(a) for a in args]
    kwargs = {k: Deferred(v) if _tagged(v) else valuecodec.decode(v) for k, v in kwargs.items()}
    return name, decoded, kwargs, "not_none" in flags


def _error_line(exc: BaseException) -> str:
    text = "".join(traceback.format_exception_only(_type(exc), exc)).strip()
    return text.splitlines()[-1] if text else _type(exc).__name__


def _program_line(exc: BaseException) -> str:
    """The last traceback line that points into the program, for the feedback."""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename == "<solution>":
            return f"line {frame.lineno}, in {frame.name}"
    return ""


def _longer_than(wire, size: int) -> bool:
    """Whether an answer's JSON text is over ``size`` bytes; a long string or list is,
    without writing it out (the ten million floats of a HumanEval+ answer)."""
    if _type(wire) in (str, list) and len(wire) > size:
        return True
    return len(_dumps(wire)) > size


def run_calls(
    fd: int,
    nonce: str,
    program: str,
    spec: dict,
    calls: list,
    groups: list | None,
    mode: str,
    full: bool,
) -> None:
    """In the runner: execute the program, then each call, reporting one line per event.
    When checking, a large answer goes back as its SHA-256 (the trusted side compares it
    with the expected value's, and asks for the value itself only when they differ)."""
    digest_over = valuecodec.DIGEST_OVER if mode == "check" and not full else None

    pending: list[bytes] = []
    last_flush = [_perf()]

    def flush() -> None:
        data = b"".join(pending)
        pending.clear()
        while data:
            data = data[_os_write(fd, data) :]
        last_flush[0] = _perf()

    def send(event: dict, final: bool = False) -> None:
        """Reports go out in batches (one write per 64 KB or 2 ms), the last one at once:
        a job that dies loses at most its last 2 ms of answers."""
        event["n"] = nonce
        pending.append((_dumps(event) + "\n").encode())
        if final or len(pending) >= 256 or _perf() - last_flush[0] >= FLUSH_EVERY:
            flush()

    if mode == "outputs" and hasattr(sys, "set_int_max_str_digits"):
        sys.set_int_max_str_digits(0)  # trusted references may return huge ints
    try:
        code = compile(program, "<solution>", "exec")
    except (SyntaxError, ValueError, OverflowError, RecursionError, MemoryError) as exc:
        send({"ev": "syntax", "msg": _error_line(exc)}, final=True)
        return
    ns: dict = {"__builtins__": builtins}
    try:
        exec(code, ns)
        if spec.get("setup"):
            exec(spec["setup"], ns)
    except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt included
        send({"ev": "fatal", "etype": _type(exc).__name__, "msg": _error_line(exc)}, final=True)
        return
    stopped: set = set()  # tests whose calls raised: their later calls are not made
    for index, (name, args, kwargs, not_none) in enumerate(calls):
        group = groups[index] if groups else None
        if group is not None and group in stopped:
            continue
        event: dict = {"ev": "call", "i": index}
        try:
            function = ns.get(name)
            if function is None:
                raise NameError(f"name '{name}' is not defined (the program must define {name})")
            args = [a.resolve(ns) if _type(a) is Deferred else a for a in args]
            kwargs = {k: v.resolve(ns) if _type(v) is Deferred else v for k, v in kwargs.items()}
            out = function(*args, **kwargs)
            try:
                if _type(out) is list and valuecodec.carried_as_is(out):
                    event["v"] = out[:]  # a long list of numbers: one check, no walk
                else:
                    event["v"] = valuecodec.encode(to_plain(out))
                if digest_over is not None and _longer_than(event["v"], digest_over):
                    event["h"] = valuecodec.digest(event.pop("v"))  # asked again if it differs
            except (NotPlain, valuecodec.UnsupportedValue, RecursionError) as exc:
                if not_none:  # all this test asks of an object: that it is not None
                    event["v"] = True
                    raise _Reported() from None
                what = exc.args[0] if _type(exc) is NotPlain else f"a {_type(out).__name__}"
                event.update(
                    etype="NotPlain",
                    msg=f"{name} returned {what}, not plain data; only plain values are compared",
                )
        except _Reported:
            pass
        except MemoryError:
            event.update(etype="MemoryError", msg="MemoryError")
        except BaseException as exc:  # noqa: BLE001
            event.update(etype=_type(exc).__name__, msg=_error_line(exc))
            where = _program_line(exc)
            if where:
                event["where"] = where
        if "etype" in event and event["etype"] != "NotPlain" and group is not None:
            stopped.add(group)
        try:
            send(event)
        except BaseException as exc:  # noqa: BLE001 - e.g. an output too large to encode
            send({"ev": "call", "i": index, "etype": _type(exc).__name__,
                  "msg": f"could not report the result: {_error_line(exc)}"})  # fmt: skip
    send({"ev": "done"}, final=True)


def run_stdio(fd: int, nonce: str, program: str) -> None:
    """In the runner: execute a stdin/stdout program as ``__main__`` (its stdin is the test's
    input, its stdout a file the zygote reads afterwards). Only how it ended is reported:
    what it printed is judged outside, against an output the program never sees."""

    def send(event: dict) -> None:
        event["n"] = nonce
        data = (_dumps(event) + "\n").encode()
        while data:
            data = data[_os_write(fd, data) :]

    try:
        code = compile(program, "<solution>", "exec")
    except (SyntaxError, ValueError, OverflowError, RecursionError, MemoryError) as exc:
        send({"ev": "syntax", "msg": _error_line(exc)})
        return
    failure = None
    try:
        exec(code, {"__builtins__": builtins, "__name__": "__main__"})
    except SystemExit as exc:  # exit(), sys.exit(0): a normal end; another code is an error
        if exc.code not in (None, 0):
            failure = {"etype": "SystemExit", "msg": f"exit status {exc.code!r}"[:200]}
    except BaseException as exc:  # noqa: BLE001
        failure = {"etype": _type(exc).__name__, "msg": _error_line(exc)}
        where = _program_line(exc)
        if where:
            failure["where"] = where
    try:
        sys.stdout.flush()
    except BaseException:  # noqa: BLE001 - a closed or replaced stdout: what reached the file counts
        pass
    send({"ev": "fatal", **failure} if failure else {"ev": "done"})


def _read_output(path: str, limit: int) -> tuple[str, bool]:
    """At most ``limit`` bytes of a file the job wrote (never through a link it planted),
    as text; and whether there was more."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return "", False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return "", False
        data = os.read(fd, limit + 1) if limit >= 0 else b""
        chunks = [data]
        while len(data) and sum(map(len, chunks)) <= limit:  # os.read may return less
            data = os.read(fd, limit + 1 - sum(map(len, chunks)))
            chunks.append(data)
        data = b"".join(chunks)
    finally:
        os.close(fd)
    return data[:limit].decode("utf-8", "replace"), len(data) > limit


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
            fresh = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW  # no planted link
            if "stdin" in job:  # a stdio test: its input is the program's stdin
                made = os.open("stdin.txt", fresh, 0o600)
                with open(made, "w", encoding="utf-8", errors="surrogatepass") as f:
                    f.write(job["stdin"])
                null = os.open("stdin.txt", os.O_RDONLY)
            else:
                null = os.open(os.devnull, os.O_RDONLY)
            out = os.open("stdout.txt", fresh, 0o600)
            err = os.open("stderr.txt", fresh, 0o600)
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
            if "stdin" in job:
                run_stdio(fd, nonce, program)
            else:
                run_calls(
                    fd,
                    nonce,
                    program,
                    spec,
                    job["calls"],
                    job["groups"],
                    job["mode"],
                    job.get("full", False),
                )
        finally:
            _os_exit(0)

    # --- the zygote side ---
    def run(self, job: dict) -> dict:
        spec = self.problems.get(job["key"])
        if spec is None:
            return {"error": f"unknown problem key {job['key']!r}"}
        self.problems.move_to_end(job["key"])
        # The problem's own calls, a slice of them (a fail-fast first round and the rest),
        # or (a later round) the ones the trusted side asks for.
        job["groups"] = spec["groups"]
        if "calls" in job:
            job["calls"], job["groups"] = [decode_call(c) for c in job["calls"]], None
        elif "slice" in job:
            part = slice(*map(int, job["slice"]))
            job["calls"] = spec["calls"][part]
            job["groups"] = spec["groups"][part] if spec["groups"] else None
        else:
            job["calls"] = spec["calls"]
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
            read_fd,
            pid,
            nonce,
            start + job["timeout"],
            OUTPUT_CHANNEL_LIMIT["outputs" if job.get("full") else job["mode"]],
        )
        duration = _perf() - start
        os.close(read_fd)
        status = self._cleanup(pid)
        return self._report(events, outcome, status, len(job["calls"]), duration)

    def run_stdio(self, job: dict) -> dict:
        """One stdio test: a fresh runner with the input on stdin; afterwards (every process
        of the job killed) at most ``max_output`` bytes of what it wrote to stdout."""
        if _type(job.get("stdin")) is not str or _type(job.get("program")) is not str:
            return {"error": "a stdio job needs a program and a stdin text"}
        nonce = secrets.token_hex(16)
        self._prepare_dirs()
        read_fd, write_fd = os.pipe()
        gc.freeze()
        start = _perf()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            self._runner(write_fd, nonce, job["program"], {}, job)
            _os_exit(0)
        os.close(write_fd)
        events, outcome = self._collect(
            read_fd, pid, nonce, start + job["timeout"], OUTPUT_CHANNEL_LIMIT["check"]
        )
        duration = _perf() - start
        os.close(read_fd)
        status = self._cleanup(pid)
        reply = self._report(events, outcome, status, 0, duration)
        del reply["results"]
        if reply["end"].get("end") == "fatal":  # keep where the program failed
            final = next((e for e in events if e.get("ev") == "fatal"), {})
            if _type(final.get("where")) is str:
                reply["end"]["where"] = final["where"][:200]
        limit = max(0, int(job.get("max_output", 1 << 20)))
        reply["stdout"], reply["truncated"] = _read_output(
            os.path.join(self.workdir, "stdout.txt"), limit
        )
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
        parts: list[bytes] = []  # the unfinished line, in pieces (no quadratic joins)
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
                    parts.append(chunk)
                    if b"\n" not in chunk:
                        continue
                    *lines, rest = b"".join(parts).split(b"\n")
                    parts = [rest]
                    for line in lines:
                        if len(line) > line_limit:
                            continue  # no report is this long: never parsed
                        try:
                            event = json.loads(line)
                        except (ValueError, RecursionError):  # '[' x 200000 recurses
                            continue
                        if _type(event) is dict and event.get("n") == nonce:
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
        """Kill every process the job left and reap them; return the runner's wait status.
        (Its files go after the reply: ``wipe_job_files``.)"""
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
        return status

    def wipe_job_files(self) -> None:
        """Empty what the last job wrote. Done after its reply is sent (no process of it is
        left by then), so the wipe overlaps the trusted side's judging."""
        for path in self.wiped:
            wipe(path)

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

    def _report(self, events, outcome, status, n_calls, duration) -> dict:
        """How the job ended and each call's result: one per call, the first report wins (a
        forked clone re-running the loop, or a forged event, never counts twice)."""
        results: list = [None] * n_calls
        ignored = 0
        final = None
        for event in events:
            kind = event.get("ev")
            if kind == "call":
                index = event.get("i")
                if _type(index) is not int or not 0 <= index < n_calls or results[index]:
                    ignored += 1
                    continue
                if "v" in event:
                    results[index] = {"v": event["v"]}
                elif _type(event.get("h")) is str:
                    results[index] = {"h": event["h"][:64]}
                else:
                    results[index] = _plain_event(
                        {k: event.get(k) for k in ("etype", "msg", "where") if k in event}
                    )
                    results[index].setdefault("etype", "Exception")
            elif kind in _FINAL_EVENTS and final is None:
                final = _plain_event(event)
            else:
                ignored += 1
        end: dict = {"duration": round(duration, 4), "ignored": ignored}
        if final is not None and final["ev"] != "done":
            end.update(end=final["ev"], etype=final.get("etype", ""), msg=final.get("msg", ""))
        elif final is not None:
            end["end"] = "done"
        elif outcome in ("timeout", "flood"):
            end["end"] = outcome
        elif status is not None and os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            name = (
                signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
            )
            end.update(end="signal", signal=name)
        else:
            code = os.WEXITSTATUS(status) if status is not None and os.WIFEXITED(status) else None
            end.update(end="exit", code=code)
        return {"end": end, "results": results}

    def serve(self, rfile, wfile) -> None:
        for line in rfile:
            op = None
            try:
                msg = json.loads(line)
                op = msg.get("op")
                if op == "hello":
                    reply = {"isolation": self.info, "pid": os.getpid()}
                elif op == "problem":
                    self.problems[msg["key"]] = {
                        "entry_point": msg["entry_point"],
                        "setup": msg.get("setup", ""),
                        "calls": [decode_call(c) for c in msg["calls"]],
                        "groups": msg.get("groups") or None,
                    }
                    while len(self.problems) > 256:
                        self.problems.popitem(last=False)
                    reply = {"ok": True}
                elif op == "run":
                    reply = self.run(msg)
                elif op == "stdio":
                    reply = self.run_stdio(msg)
                else:
                    reply = {"error": f"unknown op {op!r}"}
            except Exception as exc:  # noqa: BLE001 - report, keep serving
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            wfile.write((json.dumps(reply) + "\n").encode())
            wfile.flush()
            if op in ("run", "stdio"):
                self.wipe_job_files()


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
            metadata = () if namespaced else layers.FILE_METADATA  # see FILE_METADATA
            seccomp = layers.Seccomp(layers.DENIED + metadata)
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
    if namespaced and (landlock is not None or seccomp is not None):
        # The zygote itself needs nothing these layers refuse (it writes only the private
        # temp folders and signals only its own namespace): it enters them once, and every
        # runner it forks inherits them at no cost per job.
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        for layer in (landlock, seccomp):
            if layer is not None:
                layer.enter()
        info["layers_entered"] = "once, by the worker; inherited by every job"
        landlock = seccomp = None
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
