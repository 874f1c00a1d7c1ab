"""Stage 5 (method §5): sample, execute and refine on the evaluation benchmarks.

For each model and benchmark, ``n`` samples per task are drawn (round 0). In each of up to
``R`` rounds every sample that still fails gets one more model call per setting:

* ``refine`` / ``expl_refine``: the chat so far plus the failing code and its feedback
  (iterative refinement: round r+1 sees round r's code and feedback as the latest turns);
* ``resample``: a fresh first attempt, the equal-budget baseline ("Is Self-Repair a Silver
  Bullet?"): the same number of model calls as each refinement setting, round by round.

Generation and execution overlap: while the model generates task t, a worker thread executes
and commits task t-1, so a run takes about the larger of the two rather than their sum.

Outputs (``outputs/<run>/eval/<model>/<benchmark>/``), each a ``ResumableLog`` committed per
task, so a killed eval resumes without regenerating anything finished:

* ``initial.jsonl``: one record per sample: ``id`` (``<task_id>/s<index>``), ``task_id``,
  ``index``, ``benchmark``, ``model``, ``prompt``, ``response``, ``explanation``, ``code``,
  ``solution`` (the whole program that was executed), ``no_code``, ``verdict``, ``feedback``.
* ``round<r>.jsonl``: one record per model call of round r: ``id``
  (``<root>/<mode>/r<round>``), ``root`` (the sample), ``parent`` (the record refined),
  ``mode``, ``round``, ``messages`` (refinement chats), and the fields above.
* ``samples.jsonl`` and ``samples_<mode>_r<r>.jsonl``: EvalPlus-format exports (``task_id``,
  ``solution``) of the samples and of every chain's program after round r; ``sdlib
  evaluate`` (or EvalPlus) on them reproduces the verdicts and pass@k of this stage.

A sample without usable code is submitted as the bare prompt (what EvalPlus would run) and
flagged ``no_code``; its refinement prompt says that no code was found.
"""

from __future__ import annotations

import gc
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdlib.data import benchmarks, competitive
from sdlib.data.jsonl import write_jsonl
from sdlib.data.resumable import ResumableLog
from sdlib.execution.problems import Problem
from sdlib.execution.sandbox import Sandbox
from sdlib.execution.verdict import Verdict
from sdlib.generation.backends import Completion, SamplingParams
from sdlib.generation.generator import (
    Generator,
    chat_stop,
    complete,
    initial_request,
    initial_stop,
    seed_for,
)
from sdlib.prompting import prompts
from sdlib.prompting.answers import no_code_verdict, read_answer
from sdlib.runs.context import StageContext, training_problems
from sdlib.runs.layout import RunLayout
from sdlib.runs.notebook import to_terminal
from sdlib.runs.params import NamedModel, RunParams
from sdlib.stages.eval_report import (
    RESAMPLE,
    _round_log_path,
    benchmark_dir,
    chain_state,
    load_rounds,
    settings,
)


def eval_dir(run_dir: str | Path) -> Path:
    return RunLayout.of(run_dir).eval


def eval_problems(params: RunParams, benchmark: str) -> list[Problem]:
    """The benchmark's evaluation tasks (MBPP: the test split, task ids 11-510), the first
    ``eval.n_problems`` of them when set."""
    benchmark, _, other_split = benchmark.partition(":")
    split = other_split or ("test" if benchmark == "mbpp" else None)
    directory = params.data_directory()
    n = params.eval.n_problems
    if other_split == "train" and benchmark == "mbpp":
        # the problems collection trained on (and the tiny model was warm-started on), in order
        seen = [p for p in training_problems(params) if p.benchmark == "mbpp"]
        return seen if n is None else seen[:n]
    if benchmark in competitive.SOURCES:  # APPS test, CodeContests test: stdin/stdout
        level = params.eval.apps_difficulty if benchmark == "apps" else None
        problems = benchmarks.load(benchmark, other_split or "test", directory, difficulty=level)
        return problems if n is None else problems[:n]
    if n is None:
        return benchmarks.load(benchmark, split=split, directory=directory)
    if benchmark == "mbpp":
        return benchmarks.load(benchmark, split=split, directory=directory)[:n]
    # EvalPlus: only these tasks' expected outputs are computed on a fresh machine
    ids = benchmarks.task_ids(benchmark, directory)[:n]
    return benchmarks.load(benchmark, directory=directory, task_ids=ids)


# ---------------------------------------------------------------------------- records


def _record(problem: Problem, completion: Completion, mode: str | None) -> dict[str, Any]:
    """The parsed fields of one model answer, with the program that will be executed."""
    answer = read_answer(problem, completion.text)
    return {
        "response": completion.text,
        "explanation": answer.explanation if mode in (None, "expl_refine", RESAMPLE) else "",
        "code": answer.code,
        # No code: submit the bare prompt, as EvalPlus would (a counted failure).
        "solution": answer.program or problem.program_from_completion(""),
        "no_code": not answer.code,
        "parse_reason": answer.parse_reason,
        "finish_reason": completion.finish_reason,
        "completion_tokens": completion.completion_tokens,
    }


def _with_verdict(record: dict[str, Any], problem: Problem, verdict: Verdict) -> dict[str, Any]:
    shown = no_code_verdict(problem, record["parse_reason"]) if record["no_code"] else verdict
    return {**record, "verdict": verdict.to_dict(), "feedback": prompts.format_feedback(shown)}


def _failed(record: dict[str, Any] | None) -> bool:
    return record is not None and record["verdict"]["status"] != "pass"


# ---------------------------------------------------------------------------- pipeline


@dataclass
class Clock:
    """When the model generated (main thread) and the sandbox executed (worker thread): the
    intervals show how much execution ran hidden behind generation."""

    generation: list[tuple[float, float]] = field(default_factory=list)
    execution: list[tuple[float, float]] = field(default_factory=list)
    wall: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, what: str, start: float, end: float) -> None:
        with self.lock:
            getattr(self, what).append((start, end))

    def merge(self, other: Clock) -> None:
        with self.lock:
            self.generation += other.generation
            self.execution += other.execution
            self.wall += other.wall

    @staticmethod
    def _total(spans: list[tuple[float, float]]) -> float:
        return sum(b - a for a, b in spans)

    def overlapped(self) -> float:
        """Seconds of execution that ran while the model was generating."""
        return sum(
            max(0.0, min(b, d) - max(a, c)) for a, b in self.execution for c, d in self.generation
        )

    def as_dict(self) -> dict[str, float]:
        generation, execution = self._total(self.generation), self._total(self.execution)
        hidden = self.overlapped()
        return {
            "generation_s": round(generation, 2),
            "execution_s": round(execution, 2),
            "execution_hidden_s": round(hidden, 2),  # ran while the model generated
            "execution_hidden_share": round(hidden / execution, 3) if execution else 0.0,
            "wall_s": round(self.wall, 2),
            "sum_s": round(generation + execution, 2),
            "units": len(self.execution),
        }


class ExecutionPipeline:
    """Executes and commits units on one worker thread while the caller generates the next."""

    def __init__(self, sandbox: Sandbox, clock: Clock):
        self.sandbox = sandbox
        self.clock = clock
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdlib-exec")
        self.futures: dict[tuple[str, int, str], Future] = {}

    def submit(
        self, key: tuple[str, int, str], log: ResumableLog, problem: Problem, records: list[dict]
    ) -> None:
        self.futures[key] = self.pool.submit(self._execute, log, problem, records)

    def _execute(self, log: ResumableLog, problem: Problem, records: list[dict]) -> list[dict]:
        start = time.perf_counter()
        unique = sorted({r["solution"] for r in records})  # identical programs run once
        verdicts = dict(zip(unique, self.sandbox.run_many([(problem, s) for s in unique])))
        done = [_with_verdict(r, problem, verdicts[r["solution"]]) for r in records]
        log.commit(problem.task_id, done)
        self.clock.add("execution", start, time.perf_counter())
        return done

    def result(self, key: tuple[str, int, str]) -> list[dict] | None:
        future = self.futures.get(key)
        return None if future is None else future.result()

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        for future in self.futures.values():
            future.result()  # re-raise a worker's exception


@dataclass
class BenchmarkRun:
    """What one (model, benchmark) evaluation needs."""

    model: Generator
    label: str
    problems: list[Problem]
    folder: Path
    few_shot: Sequence[Problem]
    n: int
    temperature: float
    max_new_tokens: int
    rounds: int
    settings: list[str]
    seed: int
    tasks_per_call: int = 8

    @property
    def benchmark(self) -> str:
        return self.problems[0].benchmark if self.problems else "-"


def is_complete(folder: Path, problems: Sequence[Problem], rounds: int) -> bool:
    """Every task committed in every round (checked before loading a model for nothing)."""
    from sdlib.data.jsonl import read_records_tolerant
    from sdlib.data.resumable import MARKER

    want = {p.task_id for p in problems}
    for r in range(rounds + 1):
        path = _round_log_path(folder, r)
        if not path.is_file():
            return False
        done = {rec[MARKER] for rec in read_records_tolerant(path) if MARKER in rec}
        if not want <= done:
            return False
    return True


def _sampling(job: BenchmarkRun, n: int, stop: list[str], *seed_parts: object) -> SamplingParams:
    return SamplingParams(
        n=n,
        temperature=job.temperature,
        max_new_tokens=job.max_new_tokens,
        stop=stop,
        seed=seed_for(job.seed, job.label, *seed_parts),
    )


def _generate_initial(
    job: BenchmarkRun, problems: list[Problem], seed_key: str, clock: Clock
) -> dict[str, list[dict]]:
    """``n`` samples of each task, in one generation call."""
    requests = [initial_request(p, job.few_shot, job.model) for p in problems]
    params = _sampling(job, job.n, initial_stop(job.model), seed_key, 0)
    start = time.perf_counter()
    outputs = complete(job.model, requests, params)
    clock.add("generation", start, time.perf_counter())
    return {
        problem.task_id: [
            {
                "id": f"{problem.task_id}/s{index}",
                "kind": "sample",
                "task_id": problem.task_id,
                "index": index,
                "benchmark": problem.benchmark,
                "model": job.label,
                "prompt": request[1],
                **_record(problem, completion, None),
            }
            for index, completion in enumerate(completions)
        ]
        for problem, request, completions in zip(problems, requests, outputs)
    }


def _heads(job: BenchmarkRun, round_: int, initial: list[dict], previous: list[dict] | None):
    """(setting, record to refine or replace) for every chain still failing."""
    latest = {(r["root"], r["mode"]): r for r in previous or []}
    for sample in initial:
        for setting in job.settings:
            head = sample if round_ == 1 else latest.get((sample["id"], setting))
            if _failed(head):
                yield setting, head


def _generate_round(
    job: BenchmarkRun,
    round_: int,
    chains: list[tuple[Problem, str, dict]],
    seed_key: str,
    clock: Clock,
) -> list[tuple[Problem, dict]]:
    """One model call per failing chain (problem, setting, head) of round ``round_``:
    refinement requests in one generation call, fresh samples in another."""
    refine = [c for c in chains if c[1] != RESAMPLE]
    resample = [c for c in chains if c[1] == RESAMPLE]
    out: list[tuple[Problem, dict]] = []
    start = time.perf_counter()
    if refine:
        requests = []
        for problem, setting, head in refine:
            if "messages" in head and head.get("mode") == setting:  # round 2+: continue the chat
                messages = prompts.add_refine_turn(
                    head["messages"], head["code"] or "", head["feedback"], setting
                )
            else:
                messages = prompts.refine_messages(
                    problem, head["code"] or "", head["feedback"], setting
                )
            requests.append((messages, prompts.render_chat(messages, job.model.tokenizer)))
        params = _sampling(job, 1, chat_stop(job.model), seed_key, round_, "refine")
        outputs = complete(job.model, requests, params)
        for (problem, setting, head), (messages, prompt), completions in zip(
            refine, requests, outputs
        ):
            record = _round_record(job, problem, round_, setting, head, completions[0])
            out.append((problem, {**record, "messages": messages, "prompt": prompt}))
    if resample:
        requests = [initial_request(problem, job.few_shot, job.model) for problem, _, _ in resample]
        params = _sampling(job, 1, initial_stop(job.model), seed_key, round_, RESAMPLE)
        outputs = complete(job.model, requests, params)
        for (problem, setting, head), request, completions in zip(resample, requests, outputs):
            record = _round_record(job, problem, round_, setting, head, completions[0])
            out.append((problem, {**record, "prompt": request[1]}))
    clock.add("generation", start, time.perf_counter())
    return out


def _round_record(
    job: BenchmarkRun,
    problem: Problem,
    round_: int,
    setting: str,
    head: dict,
    completion: Completion,
) -> dict[str, Any]:
    root = head.get("root", head["id"])
    return {
        "id": f"{root}/{setting}/r{round_}",
        "kind": "refinement" if setting != RESAMPLE else "resample",
        "root": root,
        "parent": head["id"],
        "task_id": problem.task_id,
        "benchmark": problem.benchmark,
        "model": job.label,
        "mode": setting,
        "round": round_,
        **_record(problem, completion, setting),
    }


class _Logs:
    """One benchmark's round logs, with the committed records of each task at hand."""

    def __init__(self, job: BenchmarkRun):
        job.folder.mkdir(parents=True, exist_ok=True)
        self.logs = [ResumableLog(_round_log_path(job.folder, r)) for r in range(job.rounds + 1)]
        self.resumed = {f"round{r}": len(log.done) for r, log in enumerate(self.logs)}
        self.records: list[dict[str, list[dict]]] = []
        for log in self.logs:
            grouped: dict[str, list[dict]] = defaultdict(list)
            for record in log.records:
                grouped[record["task_id"]].append(record)
            self.records.append(grouped)

    def close(self) -> None:
        for log in self.logs:
            log.close()


def evaluate_model(
    jobs: list[BenchmarkRun], sandbox: Sandbox, clock: Clock, progress: bool = True
) -> dict[str, Any]:
    """All rounds of one model on its benchmarks, generation and execution overlapped.

    Work goes round by round; within a round, benchmark by benchmark, ``tasks_per_call`` tasks
    per generation call, in chunks cut from the whole task list (so a resumed run asks for
    what an uninterrupted one would have). The execution thread runs and commits one task at
    a time while the next chunk is generated; round r+1 of a task waits only for that task's
    round r.
    """
    from tqdm.auto import tqdm

    state = {id(job): _Logs(job) for job in jobs}
    pipeline = ExecutionPipeline(sandbox, clock)

    def committed(job: BenchmarkRun, round_: int, task_id: str) -> list[dict]:
        result = pipeline.result((job.benchmark, round_, task_id))  # waits for the worker
        records = state[id(job)].records[round_]
        if result is not None:
            records[task_id] = result
        return records.get(task_id, [])

    rounds = max((job.rounds for job in jobs), default=0)
    try:
        for round_ in range(rounds + 1):
            what = "samples" if round_ == 0 else f"round {round_}"
            for job in jobs:
                if round_ > job.rounds:
                    continue
                log = state[id(job)].logs[round_]
                desc = f"{job.label} · {job.benchmark} · {what}"
                bar = tqdm(
                    total=len(job.problems),
                    desc=desc,
                    unit="task",
                    disable=not progress,
                )
                finished = sum(p.task_id in log.done for p in job.problems)
                bar.update(finished)
                size = max(1, job.tasks_per_call)
                for i in range(0, len(job.problems), size):
                    chunk = job.problems[i : i + size]
                    todo = [p for p in chunk if p.task_id not in log.done]
                    if not todo:
                        continue
                    key = chunk[0].key
                    if round_ == 0:
                        made = _generate_initial(job, todo, key, clock)
                    else:
                        chains = [
                            (problem, setting, head)
                            for problem in todo
                            for setting, head in _heads(
                                job,
                                round_,
                                committed(job, 0, problem.task_id),
                                committed(job, round_ - 1, problem.task_id) if round_ > 1 else None,
                            )
                        ]
                        made = {p.task_id: [] for p in todo}
                        for problem, record in _generate_round(job, round_, chains, key, clock):
                            made[problem.task_id].append(record)
                    for problem in todo:
                        pipeline.submit(
                            (job.benchmark, round_, problem.task_id),
                            log,
                            problem,
                            made[problem.task_id],
                        )
                    bar.update(len(todo))
                    finished += len(todo)  # a disabled bar counts nothing
                    to_terminal(f"eval {desc}: {finished}/{len(job.problems)} tasks")
                bar.close()
    finally:
        pipeline.close()
        for logs in state.values():
            logs.close()
    for job in jobs:
        export_evalplus(job.folder, job.problems, job.rounds, job.settings)
    return {job.benchmark: {"resumed_tasks": state[id(job)].resumed} for job in jobs}


# ---------------------------------------------------------------------------- exports


def export_evalplus(
    folder: Path, problems: Sequence[Problem], rounds: int, setting_names: Sequence[str]
) -> None:
    """Samples files a third-party evaluator can judge (task_id + solution)."""
    initial, later = load_rounds(folder, rounds)
    order = {p.task_id: i for i, p in enumerate(problems)}
    initial = sorted(initial, key=lambda s: (order.get(s["task_id"], 1 << 30), s["index"]))
    write_jsonl(
        RunLayout.eval_export(folder),
        ({"task_id": s["task_id"], "solution": s["solution"]} for s in initial),
    )
    for setting in setting_names:
        for round_ in range(1, rounds + 1):
            state = chain_state(initial, later, setting, round_)
            write_jsonl(
                RunLayout.eval_export(folder, setting, round_),
                (
                    {"task_id": s["task_id"], "solution": state[s["id"]]["solution"]}
                    for s in initial
                ),
            )


# ---------------------------------------------------------------------------- stage


def run_eval(params: RunParams, run_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Evaluate every model of ``eval.models`` on every benchmark, then summarise."""
    from sdlib.generation.models import model_label, stage_generator
    from sdlib.stages.eval_report import summarise, write_summary

    run_dir = Path(run_dir)
    cfg = params.eval
    problem_sets = {b: eval_problems(params, b) for b in cfg.benchmarks}
    timings: dict[str, dict[str, Any]] = {}
    total = Clock()
    start = time.perf_counter()
    with StageContext.open(params, run_dir, progress) as ctx:
        few_shot = ctx.few_shot_problems()
        sandbox = ctx.sandbox
        for entry in cfg.models:
            label = model_label(entry)
            todo = [
                b
                for b, problems in problem_sets.items()
                if not is_complete(benchmark_dir(run_dir, label, b), problems, cfg.rounds)
            ]
            if not todo:
                timings[label] = {"skipped": "all tasks already evaluated"}
                continue
            model = stage_generator(entry, params, run_dir, sandbox, progress=False)
            jobs = [
                BenchmarkRun(
                    model=model,
                    label=label,
                    problems=problem_sets[benchmark],
                    folder=benchmark_dir(run_dir, label, benchmark),
                    few_shot=few_shot,
                    n=cfg.samples_per_task,
                    temperature=cfg.temperature,
                    max_new_tokens=cfg.max_new_tokens,
                    rounds=cfg.rounds,
                    settings=settings(params),
                    seed=params.seed,
                    tasks_per_call=cfg.tasks_per_call,
                )
                for benchmark in todo
            ]
            clock = Clock()
            began = time.perf_counter()
            resumed = evaluate_model(jobs, sandbox, clock, progress)
            clock.wall = time.perf_counter() - began
            timings[label] = {**clock.as_dict(), "benchmarks": resumed}
            total.merge(clock)
            del model
            gc.collect()
    seconds = time.perf_counter() - start
    summary = summarise(params, run_dir)
    summary["pipeline"] = {"total": total.as_dict(), "per_model": timings}
    summary["seconds"] = round(seconds, 1)
    summary.update(ctx.note())
    write_summary(run_dir, summary)
    return summary


__all__ = [
    "NamedModel",
    "run_eval",
    "evaluate_model",
    "BenchmarkRun",
    "Clock",
    "eval_problems",
    "load_rounds",
    "chain_state",
]
