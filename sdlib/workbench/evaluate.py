"""Judge a file of samples (EvalPlus format) against a benchmark: the engine behind
``sdlib evaluate`` and the evaluation notebook.

Data (``benchmarks``), execution (``sandbox``) and metrics (``metrics``) stay apart; this
module only wires them and keeps every sample accounted for: a corrupt line or an unknown
task id becomes an ``invalid`` result with its line number, and the others are still judged.
"""

from __future__ import annotations

import os
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdlib.data import benchmarks
from sdlib.data.jsonl import BadLine, iter_jsonl, write_jsonl
from sdlib.execution.metrics import mean_pass_at_k
from sdlib.execution.problems import Problem
from sdlib.execution.sandbox import Sandbox, SandboxConfig

PASS_AT = (1, 10, 100)


def normalise_task_id(benchmark: str, task_id: Any) -> str:
    """Accept the ids people actually write: 11, "11", "Mbpp/11", "HumanEval/0", 0."""
    text = str(task_id).strip()
    number = text.rsplit("/", 1)[-1]
    if benchmark in ("humaneval", "humaneval+"):
        return f"HumanEval/{number}" if number.isdigit() else text
    if benchmark == "mbpp":
        return number if number.isdigit() else text
    return f"Mbpp/{number}" if number.isdigit() else text


@dataclass
class EvaluationReport:
    benchmark: str
    results: list[dict[str, Any]]
    pass_at_k: dict[str, float]
    status_counts: dict[str, int]
    invalid: list[str] = field(default_factory=list)
    isolation: dict[str, Any] = field(default_factory=dict)

    def summary_lines(self) -> list[str]:
        judged = sum(self.status_counts.values())
        lines = [f"{self.benchmark}: {judged} samples judged, {len(self.invalid)} invalid"]
        lines.append("  " + ", ".join(f"{k}={v}" for k, v in sorted(self.status_counts.items())))
        for name, value in self.pass_at_k.items():
            lines.append(f"  {name}: {100 * value:.2f}%")
        return lines


def program_of(sample: dict[str, Any], problem: Problem) -> str:
    if isinstance(sample.get("solution"), str):
        return sample["solution"]
    if isinstance(sample.get("completion"), str):
        return problem.program_from_completion(sample["completion"])
    raise ValueError("a sample needs a 'solution' (whole program) or 'completion' string")


def evaluate_samples(
    benchmark: str,
    samples: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    config: SandboxConfig | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    sandbox: Sandbox | None = None,
    test_details: bool = False,
) -> EvaluationReport:
    """Judge a samples file. As EvalPlus's ``evaluate``, a sample stops at its first failing
    test unless ``test_details`` (then ``passed`` counts every test it passes)."""
    problems = benchmarks.load_by_id(benchmark, directory=data_dir)
    jobs: list[tuple[Problem, str]] = []
    slots: list[dict[str, Any]] = []  # one per line of the samples file, in order
    per_task_index: Counter[str] = Counter()
    invalid: list[str] = []
    for number, sample in iter_jsonl(samples):
        if isinstance(sample, BadLine):
            invalid.append(f"{samples}: {sample}")
            slots.append({"line": number, "status": "invalid", "error": sample.error})
            continue
        try:
            if "task_id" not in sample:
                raise ValueError("missing 'task_id'")
            task_id = normalise_task_id(benchmark, sample["task_id"])
            if task_id not in problems:
                raise ValueError(f"unknown task id {sample['task_id']!r} for {benchmark}")
            problem = problems[task_id]
            program = program_of(sample, problem)
        except ValueError as exc:
            invalid.append(f"{samples}: line {number}: {exc}")
            slots.append(
                {
                    "line": number,
                    "task_id": sample.get("task_id"),
                    "status": "invalid",
                    "error": str(exc),
                }
            )
            continue
        index = per_task_index[task_id]
        per_task_index[task_id] += 1
        slots.append({"line": number, "task_id": task_id, "index": index, "job": len(jobs)})
        jobs.append((problem, program))
    owned = sandbox is None
    sandbox = sandbox or Sandbox(config)
    try:
        verdicts = sandbox.run_many(
            jobs,
            progress=f"judging {benchmark}" if progress else False,
            fail_fast=not test_details,
        )
        isolation = sandbox.isolation
    finally:
        if owned:
            sandbox.close()
    results = []
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    statuses: Counter[str] = Counter()
    for slot in slots:
        if "job" not in slot:
            results.append(slot)
            continue
        verdict = verdicts[slot.pop("job")]
        record = {**slot, **verdict.to_dict()}
        results.append(record)
        statuses[verdict.status] += 1
        counts[slot["task_id"]][0] += 1
        counts[slot["task_id"]][1] += int(verdict.ok)
    report = EvaluationReport(
        benchmark=benchmark,
        results=results,
        pass_at_k=mean_pass_at_k({t: (n, c) for t, (n, c) in counts.items()}, PASS_AT),
        status_counts=dict(statuses),
        invalid=invalid,
        isolation=isolation,
    )
    if out is not None:
        write_jsonl(out, results)
    return report


def main(args) -> int:
    require = tuple(
        name.strip() for name in getattr(args, "require", "").split(",") if name.strip()
    )
    config = SandboxConfig(
        timeout=args.timeout,
        memory_mb=args.memory_mb,
        workers=args.workers,
        isolation=getattr(args, "isolation", "auto"),
        require=require,
    )
    if not Path(args.samples).is_file():
        print(f"error: samples file {args.samples} does not exist", file=sys.stderr)
        return 2
    report = evaluate_samples(
        args.benchmark,
        args.samples,
        args.out,
        config,
        data_dir=args.data_dir,
        progress=not args.quiet,
        test_details=getattr(args, "test_details", False),
    )
    for problem in report.invalid:
        print(f"error: {problem}", file=sys.stderr)
    for line in report.summary_lines():
        print(line)
    print(f"results: {args.out}")
    return 1 if report.invalid else 0
