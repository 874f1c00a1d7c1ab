"""The stages as the notebooks call them: one function per stage, taking the run's params and
folder, writing its outputs and returning a small summary for the notebook to show."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sdlib.data.records import InitialRecord, RefinementRecord, read_records
from sdlib.data.resumable import ResumableLog
from sdlib.runs.context import StageContext
from sdlib.runs.layout import RunLayout
from sdlib.runs.params import RunParams
from sdlib.stages import trajectories
from sdlib.stages.collect import collect_dir, sample_initial, sample_refinements, wrong_solutions


def run_collect(params: RunParams, run_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    from sdlib.generation.models import make_generator, make_teacher

    collect_dir(run_dir).mkdir(parents=True, exist_ok=True)
    cfg = params.collect
    with StageContext.open(params, run_dir, progress) as ctx:
        problems = ctx.training_problems()
        start = time.perf_counter()
        sandbox = ctx.sandbox
        model = make_generator(params.model, params, sandbox, progress=progress)
        teacher = make_teacher(params, model, sandbox)
        with ResumableLog(ctx.layout.initial) as log:
            resumed_initial = len(log.done)
            sample_initial(
                problems,
                model,
                sandbox,
                log,
                ctx.few_shot_problems(),
                cfg.samples_per_problem,
                cfg.temperature,
                cfg.max_new_tokens,
                params.seed,
                progress,
                problems_per_call=cfg.problems_per_call,
            )
            initial = log.records
        t_initial = time.perf_counter() - start
        wrong = wrong_solutions(initial, cfg.max_wrong_per_problem)
        with ResumableLog(ctx.layout.teacher_refinements) as log:
            resumed_wrong = len(log.done)
            sample_refinements(
                wrong,
                {p.task_id: p for p in problems},
                teacher,
                log,
                cfg.modes,
                cfg.refinements_per_wrong,
                cfg.refine_temperature,
                cfg.max_new_tokens,
                params.seed,
                progress,
            )
            refinements = log.records
        seconds = time.perf_counter() - start
        return ctx.summary(
            problems=len(problems),
            initial_unique=len(initial),
            wrong=len(wrong),
            refinements=len(refinements),
            resumed={"problems": resumed_initial, "wrong_solutions": resumed_wrong},
            model=model.name,
            teacher=teacher.name,
            seconds=round(seconds, 1),
            seconds_initial=round(t_initial, 1),
            records_per_second=round((len(initial) + len(refinements)) / max(seconds, 1e-9), 2),
        )


def load_collected(run_dir: str | Path) -> tuple[list[dict], list[dict]]:
    layout = RunLayout.of(run_dir)
    for path in (layout.initial, layout.teacher_refinements):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: run the collect stage first (sdlib run PARAMS --stages collect)"
            )
    return (
        read_records(layout.initial, InitialRecord, resumable=True),
        read_records(layout.teacher_refinements, RefinementRecord, resumable=True),
    )


def run_filter(params: RunParams, run_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    initial, refinements = load_collected(run_dir)
    with StageContext.open(params, run_dir, progress) as ctx:
        problems = {p.task_id: p for p in ctx.training_problems()}
        start = time.perf_counter()
        judged = trajectories.judge_refinements(refinements, problems, ctx.sandbox, progress)
        seconds = time.perf_counter() - start
    sft = trajectories.sft_records(
        initial, judged, problems, params.filter.include_initial_correct, ctx.few_shot_problems()
    )
    benchmark_of = {task: problem.benchmark for task, problem in problems.items()}
    rl_sources = set(params.filter.rl_sources)
    rl = [
        r
        for r in trajectories.rl_records(initial, judged)
        if benchmark_of.get(r["task_id"]) in rl_sources
    ]
    table = trajectories.source_tables(initial, judged, benchmark_of)
    table.update(ctx.note())
    table["seconds"] = round(seconds, 2)
    table["records_per_second"] = round(len(judged) / max(seconds, 1e-9), 1)
    table["sft_records"] = len(sft)
    table["sft_by_source"] = dict(trajectories.Counter(r["source"] for r in sft))
    table["rl_records"] = len(rl)
    trajectories.write_outputs(ctx.layout.filter, judged, sft, rl, table)
    return {"table": table, "initial": initial, "judged": judged}
