"""A pool of warm sandbox workers that turns (problem, program) pairs into verdicts.

Each worker is a separate ``python -I sdlib/execution/sandbox_worker.py`` process (see its docstring for
the isolation layers). Workers are pre-forked and keep each problem's compiled tests, so a job
costs one ``fork`` rather than a fresh interpreter. A worker that dies (a program that got
through to it, a crash of the worker itself) is restarted, and its job is retried once and
then given a ``sandbox_error`` verdict: every sample always gets a verdict.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import queue
import select
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdlib.execution import harness, stdio, valuecodec
from sdlib.execution.problems import Problem
from sdlib.execution.verdict import STATUSES, Verdict, cap

WORKER_SCRIPT = Path(__file__).with_name("sandbox_worker.py")
# As root, each worker runs programs as a uid of its own from this range, claimed with an
# flock, so that pools running side by side never share one (RLIMIT_NPROC is counted per uid,
# and without a PID namespace kill(-1) reaches every process of the uid).
SANDBOX_UID_BASE = 61000
SANDBOX_UID_COUNT = 4000


ISOLATION_LEVELS = ("auto", "namespaces", "unprivileged", "none")
GUARANTEES = ("filesystem", "network", "processes", "ipc")
# The only variables of the caller a worker (and so a program) sees: what an interpreter
# needs to start and to read text. Keys and tokens (OPENAI_API_KEY, HF_TOKEN, ...) never pass.
WORKER_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "LD_LIBRARY_PATH", "TZ")
PROJECT_ROOT = Path(__file__).resolve().parents[2]
MAX_ROUNDS = 4  # further jobs for calls whose inputs depend on an earlier result
# With fail_fast, the calls of a first short job: a wrong program most often fails on one
# of a benchmark's first (base) inputs, and then its other thousand are never made.
FIRST_CALLS = 16


@dataclass(frozen=True)
class SandboxConfig:
    timeout: float = 10.0  # seconds of wall time per program, all its tests together
    # The job's whole memory budget: address space plus what it keeps in its private temp
    # folders (namespace modes: the address-space limit is memory_mb - tmpfs_mb).
    memory_mb: int = 2048
    workers: int = 0  # 0 = one per CPU core
    # "auto": namespaces where the kernel allows, then Landlock and seccomp on top (or alone);
    # "namespaces": refuse to run without namespaces; "unprivileged": Landlock and seccomp
    # only (what a container that refuses namespaces gives); "none": resource limits only.
    isolation: str = "auto"
    nproc: int = 64  # processes/threads the program may have
    output_mb: int = 16  # largest file (stdout included) the program may write
    tmpfs_mb: int = 256  # size of the private /tmp + /var/tmp + /dev/shm of each worker
    # EvalPlus's rule: a program may take reference_factor x the reference's time when that
    # is longer than ``timeout`` (slow machines must not flip verdicts of correct programs).
    reference_factor: float = 4.0
    # Stdin/stdout problems: each test gets the problem's own time limit times this factor
    # (CodeContests' limits are set for C++), or ``stdio_timeout`` when the data gives none.
    stdio_time_factor: float = 3.0
    stdio_timeout: float = 4.0
    # Guarantees the machine must give or the sandbox refuses to start: any of "filesystem",
    # "network", "processes", "ipc" (README, "The sandbox").
    require: tuple[str, ...] = ()
    # Extra environment variables a program may see, beyond WORKER_ENV.
    pass_env: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.isolation not in ISOLATION_LEVELS:
            raise ValueError(
                f"sandbox isolation {self.isolation!r} is not one of {', '.join(ISOLATION_LEVELS)}"
            )
        unknown = sorted(set(self.require) - set(GUARANTEES))
        if unknown:
            raise ValueError(
                f"sandbox.require names {unknown}; the guarantees are {', '.join(GUARANTEES)}"
            )
        if not 0 < self.tmpfs_mb <= self.memory_mb // 2:
            raise ValueError(
                f"sandbox tmpfs_mb={self.tmpfs_mb} must be between 1 and half of "
                f"memory_mb={self.memory_mb} (the temp folders count against the job's memory)"
            )

    def n_workers(self) -> int:
        return self.workers if self.workers > 0 else max(1, os.cpu_count() or 1)

    def limits(self) -> dict[str, Any]:
        """What a manifest records next to every result (EvalPlus lesson: verdicts depend
        on these)."""
        return {
            "timeout_s": self.timeout,
            "reference_factor": self.reference_factor,
            "memory_mb": self.memory_mb,
            "nproc": self.nproc,
            "output_mb": self.output_mb,
            "tmpfs_mb": self.tmpfs_mb,
        }


class SandboxUnavailable(RuntimeError):
    """The requested isolation cannot be had on this machine."""


def worker_environment(extra: Sequence[str] = ()) -> dict[str, str]:
    """The whole environment of a worker: a short allow-list, never the caller's secrets."""
    env = {name: os.environ[name] for name in (*WORKER_ENV, *extra) if name in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.setdefault("LANG", "C.UTF-8")
    env["HOME"] = "/nonexistent"  # each job gets its own directory as HOME
    return env


def _fix_for(isolation: str) -> str:
    if isolation == "namespaces":
        return (
            "Fix: allow user namespaces on this machine (see `sdlib doctor`), or use "
            "isolation='auto', which falls back to Landlock and seccomp where they exist."
        )
    if isolation == "auto":
        return (
            "Fix: run `sdlib doctor` to see which layers this machine gives; "
            "isolation='unprivileged' skips namespaces entirely."
        )
    return "Fix: run `sdlib doctor` to see which layers this machine gives."


def missing_guarantees(isolation: dict) -> dict[str, str]:
    """Guarantee -> what is not contained and how to get it (empty: everything contained)."""
    return dict(isolation.get("missing", {}))


def check_guarantees(isolation: dict, required: Sequence[str]) -> None:
    """Refuse to run where a guarantee the run requires is missing (``sandbox.require``)."""
    missing = missing_guarantees(isolation)
    lacking = [name for name in required if name in missing]
    if lacking:
        raise SandboxUnavailable(
            "this machine cannot give the sandbox guarantees this run requires "
            f"(sandbox.require: {list(required)}):\n"
            + "\n".join(f"  - {name}: {missing[name]}" for name in lacking)
            + f"\n  layers in force: {', '.join(isolation.get('layers', []))}"
            + (
                f"\n  namespaces: {isolation['why_not_namespaces']}"
                if isolation.get("why_not_namespaces")
                else ""
            )
            + "\nFix: run on a machine that gives them (`sdlib doctor` tells), or, knowing "
            "that model-written code could then reach your files, remove them from "
            "sandbox.require."
        )


_WARNED: set[str] = set()


def isolation_warning(isolation: dict) -> str | None:
    """The one warning to show before untrusted code runs on a weakened sandbox."""
    missing = missing_guarantees(isolation)
    if not missing:
        return None
    lines = [
        "WARNING: the sandbox is weakened on this machine "
        f"(layers in force: {', '.join(isolation.get('layers', []))}):"
    ]
    lines += [f"  - {name}: {text}" for name, text in missing.items()]
    if isolation.get("why_not_namespaces"):
        lines.append(f"  (namespaces: {isolation['why_not_namespaces']})")
    lines.append(
        "  Model-written programs could act on what is listed. `sdlib doctor` checks this "
        "machine; sandbox.require: [filesystem, network] makes a run refuse instead."
    )
    return "\n".join(lines)


def warn_if_weakened(isolation: dict) -> None:
    """Print the warning once per process (every stage opens a sandbox)."""
    text = isolation_warning(isolation)
    if text and text not in _WARNED:
        _WARNED.add(text)
        print(text, file=sys.stderr, flush=True)


def _claim_uid() -> tuple[int, int]:
    """A sandbox uid that no other live pool on this machine holds, and the fd of its lock."""
    directory = Path(tempfile.gettempdir()) / "sdlib-sandbox-uids"
    directory.mkdir(mode=0o700, exist_ok=True)
    for uid in range(SANDBOX_UID_BASE, SANDBOX_UID_BASE + SANDBOX_UID_COUNT):
        fd = os.open(directory / f"{uid}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        return uid, fd
    raise SandboxUnavailable("every sandbox uid is held by another pool")


class _Worker:
    def __init__(self, index: int, config: SandboxConfig):
        self.index = index
        self.config = config
        self.proc: subprocess.Popen | None = None
        self.loaded: set[str] = set()
        self.isolation: dict = {}
        self.uid, self._uid_lock = _claim_uid() if os.getuid() == 0 else (0, None)
        try:
            self.start()
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Stop the worker for good and give its uid back."""
        self.stop()
        if self._uid_lock is not None:
            os.close(self._uid_lock)
            self._uid_lock = None

    def start(self) -> None:
        reply = self._spawn(self.config.isolation)
        if reply is not None and "fatal" in reply and self.config.isolation == "auto":
            # The kernel gave namespaces but not what the new root needs (pivot_root refused
            # by a container, say): fall back to the unprivileged layers, and say why.
            why = reply["fatal"]
            reply = self._spawn("unprivileged")
            if reply is not None and "isolation" in reply:
                reply["isolation"]["why_not_namespaces"] = why
        if reply is None or "fatal" in reply:
            why = (reply or {}).get("fatal") or "the worker did not start"
            detail = self._stderr_tail()
            self.stop()
            raise SandboxUnavailable(
                f"the sandbox (isolation={self.config.isolation!r}) could not start: {why}"
                + (f"\nworker output:\n{detail}" if detail else "")
                + f"\n{_fix_for(self.config.isolation)}"
            )
        self.isolation = reply["isolation"]

    def _spawn(self, isolation: str) -> dict | None:
        self.stop()
        cmd = [
            sys.executable,
            "-I",
            str(WORKER_SCRIPT),
            "--isolation",
            isolation,
            "--uid",
            str(self.uid),
            "--nproc",
            str(self.config.nproc),
            "--tmpfs-mb",
            str(self.config.tmpfs_mb),
            "--output-mb",
            str(self.config.output_mb),
            "--project-root",
            str(PROJECT_ROOT),
        ]
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=worker_environment(self.config.pass_env),
            cwd="/",
            start_new_session=True,  # a program's killpg can never reach the caller
        )
        self.loaded = set()
        return self.request({"op": "hello"}, timeout=30)

    def _stderr_tail(self, limit: int = 2000) -> str:
        try:
            self._stderr.seek(0)
            return self._stderr.read().decode("utf-8", "replace")[-limit:].strip()
        except (AttributeError, OSError, ValueError):
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, 9)
        except OSError:
            pass
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self.proc = None
        stderr = getattr(self, "_stderr", None)
        if stderr is not None:
            stderr.close()
            self._stderr = None

    def request(self, message: dict | bytes, timeout: float) -> dict | None:
        """Send one message (or its ready JSON line) and wait for its one-line reply; None
        if the worker died or hung."""
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        line = message if isinstance(message, bytes) else (json.dumps(message) + "\n").encode()
        try:
            self.proc.stdin.write(line)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        if not line:
            return None
        try:
            return json.loads(line)
        except ValueError:
            return None

    def memory_mb(self) -> int:
        """The job's address-space limit: in a mount namespace its temp folders live in RAM
        and count against the same budget."""
        private = self.isolation.get("private_tmpfs")
        return self.config.memory_mb - (self.config.tmpfs_mb if private else 0)

    def run(
        self,
        plan: harness.Plan,
        program: str,
        mode: str,
        timeout: float,
        calls: list[str] | slice | None = None,
    ) -> dict | None:
        """One job: every call of the problem, a slice of them, or (a later round) the
        calls named, answered in full."""
        key = plan.wire_key
        if key not in self.loaded:
            reply = self.request(self._problem_message(plan), timeout=120)
            if reply is None or not reply.get("ok"):
                return None
            self.loaded.add(key)
        job = {
            "op": "run",
            "key": key,
            "program": program,
            "timeout": timeout,
            "memory_mb": self.memory_mb(),
            "mode": mode,
        }
        if isinstance(calls, slice):
            job["slice"] = [calls.start, calls.stop]
        elif calls is not None:  # a later round: these calls, every answer in full
            job["calls"] = [json.loads(c) for c in calls]
            job["full"] = True
        return self.request(job, timeout=timeout + 30)

    def run_stdio(
        self, program: str, stdin: str, timeout: float, memory_mb: int, max_output: int
    ) -> dict | None:
        """One stdio test run: the program whole, ``stdin`` as its input."""
        job = {
            "op": "stdio",
            "program": program,
            "stdin": stdin,
            "timeout": timeout,
            "memory_mb": memory_mb,
            "max_output": max_output,
        }
        return self.request(job, timeout=timeout + 30)

    def _problem_message(self, plan: harness.Plan) -> bytes:
        return plan.message_line()


class Sandbox:
    """Run programs against problems' tests on warm, isolated workers.

    >>> with Sandbox() as sandbox:
    ...     verdicts = sandbox.run_many([(problem, program), ...])
    """

    def __init__(self, config: SandboxConfig | None = None):
        self.config = config or SandboxConfig()
        self._plans: dict[str, harness.Plan] = {}
        self._plan_count = 0
        self._lock = threading.Lock()
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._workers: list[_Worker] = []
        try:
            for i in range(self.config.n_workers()):
                self._workers.append(_Worker(i, self.config))
                if i == 0:
                    check_guarantees(self._workers[0].isolation, self.config.require)
        except BaseException:
            self.close()
            raise
        warn_if_weakened(self._workers[0].isolation)
        for worker in self._workers:
            self._idle.put(worker)
        self.restarts = 0

    @property
    def isolation(self) -> dict:
        """Which layers are active (recorded in every run manifest)."""
        return dict(self._workers[0].isolation, limits=self.config.limits())

    def close(self) -> None:
        for worker in self._workers:
            worker.release()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def plan(self, problem: Problem) -> harness.Plan:
        """The trusted side's plan of a problem's tests, made once per problem."""
        with self._lock:
            plan = self._plans.get(problem.key)
            if plan is None or plan.problem != problem:
                plan = self._plans[problem.key] = harness.make_plan(problem)
                self._plan_count += 1
                plan.wire_key = f"{problem.key}#{self._plan_count}"  # a new version, re-sent
            return plan

    def _job(
        self, worker: _Worker, plan: harness.Plan, program: str, mode: str, timeout: float,
        calls: list[str] | slice | None,
    ) -> dict:  # fmt: skip
        reply = self._retried(worker, lambda: worker.run(plan, program, mode, timeout, calls))
        return reply if "end" in reply else {"end": reply["error_end"], "results": []}

    def _retried(self, worker: _Worker, send: Callable[[], dict | None]) -> dict:
        """A job's reply; a worker that died, hung or refused is replaced and asked once
        more. Two failures give ``{"error_end": ...}``: a ``setup_failed`` ending."""
        reply = None
        for _attempt in range(2):
            reply = send()
            if reply is not None and "end" in reply:
                return reply
            worker.stop()
            self.restarts += 1
            worker.start()
        detail = (reply or {}).get("error", "the sandbox worker died twice on this program")
        return {"error_end": {"end": "setup_failed", "msg": detail}}

    def _execute(
        self,
        problem: Problem,
        program: str,
        mode: str,
        timeout: float | None = None,
        fail_fast: bool = False,
    ) -> tuple[dict, harness.Plan, dict]:
        """Run the program's calls (in rounds where a test's inputs depend on an earlier
        result) and decide each test here, outside the job. With ``fail_fast``, a problem
        of many call tests is asked its first FIRST_CALLS calls alone, and the rest only
        if none of those failed: a wrong program costs one short job."""
        plan = self.plan(problem)
        limit = timeout or self.timeout_for(problem)
        staged = fail_fast and mode == "check" and plan.call_only
        first = slice(0, FIRST_CALLS) if staged and len(plan.calls) > FIRST_CALLS else None
        worker = self._idle.get()
        try:
            reply = self._job(worker, plan, program, mode, limit, first)
            asked = plan.calls if first is None else plan.calls[first]
            results = {k: r for k, r in zip(asked, reply["results"]) if r is not None}
            end = reply["end"]
            spent = end.get("duration", 0.0)

            def more(calls: list[str] | slice, keys: list[str]) -> None:
                """A further job on the same worker; its answers replace those of ``keys``."""
                nonlocal end, spent
                reply = self._job(worker, plan, program, mode, limit - spent, calls)
                for key, result in zip(keys, reply["results"]):
                    if result is not None:
                        results[key] = result
                    else:
                        results.pop(key, None)
                end = dict(reply["end"], duration=spent + reply["end"].get("duration", 0.0))
                spent = end["duration"]

            if first is not None and end.get("end") == "done" and spent < limit:
                events, _ = harness.judge_tests(plan, results, mode)
                if not any(e is not None and e.get("ok") is not True for e in events):
                    rest = slice(FIRST_CALLS, len(plan.calls))
                    more(rest, plan.calls[rest])
            for _round in range(MAX_ROUNDS):
                events, missing = harness.judge_tests(plan, results, mode)
                if not missing or end.get("end") != "done" or spent >= limit:
                    break
                asked = sorted(missing)
                more(asked, asked)
            else:
                events, missing = harness.judge_tests(plan, results, mode)
        finally:
            self._idle.put(worker)
        return harness.verdict_of(plan, events, end), plan, results

    def timeout_for(self, problem: Problem) -> float:
        return max(self.config.timeout, self.config.reference_factor * problem.reference_seconds)

    def run(
        self,
        problem: Problem,
        program: str,
        timeout: float | None = None,
        fail_fast: bool = False,
    ) -> Verdict:
        """The program's verdict. ``fail_fast``: stop at the first failing call test, as
        EvalPlus does without ``--test-details``; ``passed`` then counts only the tests
        judged before it."""
        if problem.stdio:
            return _verdict(self._execute_stdio(problem, program, timeout, fail_fast))
        return _verdict(self._execute(problem, program, "check", timeout, fail_fast)[0])

    def _execute_stdio(
        self, problem: Problem, program: str, timeout: float | None, fail_fast: bool
    ) -> dict:
        """One fresh job per test (``sdlib.execution.stdio``); judged here. After a failed
        run (timeout, crash) the remaining tests are not run and count as failed."""
        limit = timeout or stdio.time_limit(
            problem, self.config.stdio_timeout, self.config.stdio_time_factor
        )
        worker = self._idle.get()
        memory = worker.memory_mb()
        if problem.memory_mb:  # the problem's own limit, plus what the interpreter needs
            memory = min(memory, problem.memory_mb + STDIO_INTERPRETER_MB)
        runs: list[dict] = []
        try:
            for test in problem.tests:
                expected = test.expected if isinstance(test.expected, str) else ""
                max_output = 2 * len(expected.encode("utf-8", "replace")) + 4096
                stdin = test.inputs[0] if test.inputs else ""
                send = functools.partial(
                    worker.run_stdio, program, stdin, limit, memory, max_output
                )
                reply = self._retried(worker, send)
                if "end" not in reply:
                    reply = {"end": reply["error_end"]}
                runs.append(reply)
                end = reply["end"].get("end")
                ok_end = end == "done" or (end == "exit" and reply["end"].get("code") == 0)
                if not ok_end:
                    break
                if fail_fast and not (
                    not reply.get("truncated")
                    and stdio.outputs_match(reply.get("stdout") or "", expected)
                ):
                    break
        finally:
            self._idle.put(worker)
        return stdio.judge(problem, runs)

    def reference_outputs(
        self, problem: Problem, program: str, timeout: float | None = None
    ) -> tuple[Verdict, list]:
        """Run a trusted reference and return its outputs for the ``call`` tests."""
        verdict, plan, results = self._execute(problem, program, "outputs", timeout)
        outputs = []
        for test in plan.tests:
            result = results.get(test.key) if isinstance(test, harness.CallTest) else None
            if result is None or "v" not in result:
                outputs.append(None)
                continue
            out = valuecodec.decode(result["v"])
            outputs.append(out is not None if test.oracle == "not_none" else out)
        return _verdict(verdict), outputs

    def run_many(
        self,
        jobs: Iterable[tuple[Problem, str]],
        progress: bool | str = False,
        on_result: Callable[[int, Verdict], None] | None = None,
        fail_fast: bool = False,
    ) -> list[Verdict]:
        """Verdicts in job order; ``on_result`` sees each as soon as it is ready."""
        jobs = list(jobs)
        results: list[Verdict | None] = [None] * len(jobs)
        bar = _progress_bar(len(jobs), progress)
        pending: queue.Queue[int] = queue.Queue()
        # Longest first (by the reference's time on the tests): a slow problem started last
        # would leave the other workers idle at the end.
        for i in sorted(range(len(jobs)), key=lambda i: -jobs[i][0].reference_seconds):
            pending.put(i)

        def drain() -> None:
            while True:
                try:
                    i = pending.get_nowait()
                except queue.Empty:
                    return
                problem, program = jobs[i]
                verdict = self.run(problem, program, fail_fast=fail_fast)
                results[i] = verdict
                if on_result is not None:
                    on_result(i, verdict)
                if bar is not None:
                    bar.update(1)

        threads = [threading.Thread(target=drain, daemon=True) for _ in self._workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if bar is not None:
            bar.close()
        return results  # type: ignore[return-value]


STDIO_INTERPRETER_MB = 256  # address space a Python process needs beyond a problem's own limit
TEXT_BYTES = 4096  # bytes of one text field of a verdict, before the feedback cap


def _text(value: object) -> str:
    """Valid UTF-8, at most TEXT_BYTES: a lone surrogate or a huge message from a program
    must not reach a JSONL writer or a prompt."""
    text = value if type(value) is str else ("" if value is None else str(value))
    data = text.encode("utf-8", "replace")[:TEXT_BYTES]
    return data.decode("utf-8", "ignore")


def _verdict(data: dict) -> Verdict:
    """The worker's verdict, type-checked field by field, its text made valid and capped
    (an exception message can be megabytes), ``passed`` never above ``total``."""
    status = data.get("status")
    total = data.get("total") if type(data.get("total")) is int else 0
    passed = data.get("passed") if type(data.get("passed")) is int else 0
    duration = data.get("duration")
    verdict = Verdict(
        status=status if status in STATUSES else "sandbox_error",
        passed=max(0, min(passed, total)),
        total=max(0, total),
        duration=float(duration) if type(duration) in (int, float) else 0.0,
        feedback=cap(_text(data.get("feedback"))),
        error_type=_text(data.get("error_type"))[:200],
        failed_test=_text(data.get("failed_test")),
        expected=_text(data.get("expected")),
        actual=_text(data.get("actual")),
        extra=data["extra"] if type(data.get("extra")) is dict else {},
    )
    return verdict


def _progress_bar(total: int, progress: bool | str):
    if not progress or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=progress if isinstance(progress, str) else "executing", unit="prog"
    )


def run_programs(
    problems: Sequence[Problem], programs: Sequence[str], config: SandboxConfig | None = None
) -> list[Verdict]:
    """One-shot convenience: a pool for a single batch."""
    with Sandbox(config) as sandbox:
        return sandbox.run_many(list(zip(problems, programs)))
