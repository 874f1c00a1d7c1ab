"""What every stage shares, so a stage function holds only its own logic.

A stage opens one ``StageContext`` for its run::

    with StageContext.open(params, run_dir, progress) as ctx:
        problems = ctx.training_problems()
        verdicts = judge_programs(..., ctx.sandbox)
        return ctx.summary(records=len(verdicts))

The sandbox is opened on first use (and its isolation layers written to the manifest), and
closed when the context ends; stages that never run a program never start one.
"""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from sdlib.data import benchmarks, competitive
from sdlib.execution.problems import Problem
from sdlib.execution.sandbox import Sandbox
from sdlib.runs.layout import RunLayout
from sdlib.runs.params import RunParams

TINY_MODEL_NOTE = (
    "Embedded default model (a ~1M-parameter model built locally from MBPP's training split): "
    "its scores say nothing about the method."
)


STDIO_FEW_SHOT_SOURCE = "codecontests"  # where stdin/stdout few-shot examples come from


def training_problems(params: RunParams) -> list[Problem]:
    """The collection problems of every ``collect.sources`` entry, in that order: MBPP train
    (601-974) minus those MBPP+ evaluates on, APPS and CodeContests train splits (minus the
    problems shown as few-shot examples)."""
    out: list[Problem] = []
    shown = {p.key for p in few_shot_problems(params)}
    for source in params.collect.sources:
        out.extend(p for p in _source_problems(params, source) if p.key not in shown)
    return out


def _source_problems(params: RunParams, source) -> list[Problem]:
    directory = params.data_directory()
    n = source.n_problems if source.n_problems is not None else params.collect.n_problems
    if source.name == "mbpp":
        problems = benchmarks.load("mbpp", split=source.split, directory=directory)
        if params.collect.exclude_eval_overlap:
            plus_ids = {t.split("/")[-1] for t in benchmarks.task_ids("mbpp+", directory)}
            problems = [p for p in problems if p.task_id not in plus_ids]
    else:
        few = params.collect.few_shot if source.name == STDIO_FEW_SHOT_SOURCE else 0
        limit = None if n is None else n + few
        problems = competitive.load(
            source.name, source.split, source.difficulty, directory, limit=limit
        )
        problems = problems[few:] if source.name == STDIO_FEW_SHOT_SOURCE else problems
    return problems if n is None else problems[:n]


def few_shot_problems(params: RunParams) -> list[Problem]:
    """The few-shot examples of a base model's prompts, of each kind: MBPP's prompt split
    (task ids 1-10) for function problems and, when a source is stdin/stdout, the first
    CodeContests train problems (never collected) for those (``prompts`` picks by kind)."""
    k = params.collect.few_shot
    if k <= 0:
        return []
    shots = benchmarks.load("mbpp", split="prompt", directory=params.data_directory())[:k]
    stdio_used = any(s.name != "mbpp" for s in params.collect.sources) or any(
        b in competitive.SOURCES for b in params.eval.benchmarks
    )
    if stdio_used:
        try:
            shots += competitive.load(
                STDIO_FEW_SHOT_SOURCE, "train", directory=params.data_directory(), limit=k
            )[:k]
        except FileNotFoundError:
            pass  # no CodeContests copy: stdio prompts are zero-shot
    return shots


def record_sandbox(run_dir: str | os.PathLike[str], sandbox: Sandbox) -> None:
    """Write the sandbox's layers in force into the run's manifest."""
    from sdlib.runs.manifest import update_manifest

    update_manifest(run_dir, sandbox=sandbox.isolation)


@dataclass
class StageContext:
    """One stage's view of its run: params, folder layout, a lazily opened sandbox, the
    manifest and the tiny-model note."""

    params: RunParams
    layout: RunLayout
    progress: bool = True
    records_manifest: bool = True  # False on the non-main processes of a distributed run
    started: float = field(default_factory=time.perf_counter)
    _stack: ExitStack = field(default_factory=ExitStack, repr=False)
    _sandbox: Sandbox | None = field(default=None, repr=False)

    @classmethod
    def open(
        cls, params: RunParams, run_dir: str | os.PathLike[str] | RunLayout, progress: bool = True
    ) -> StageContext:
        return cls(params, RunLayout.of(run_dir), progress)

    def __enter__(self) -> StageContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()
        self._sandbox = None

    @property
    def run_dir(self):
        return self.layout.root

    @property
    def sandbox(self) -> Sandbox:
        """The run's sandbox, started on first use; its layers go into the manifest."""
        if self._sandbox is None:
            self._sandbox = self._stack.enter_context(Sandbox(self.params.sandbox.config()))
            if self.records_manifest:
                record_sandbox(self.layout.root, self._sandbox)
        return self._sandbox

    @property
    def sandbox_started(self) -> bool:
        return self._sandbox is not None

    def training_problems(self) -> list[Problem]:
        return training_problems(self.params)

    def few_shot_problems(self) -> list[Problem]:
        return few_shot_problems(self.params)

    @property
    def tiny(self) -> bool:
        return self.params.model.kind == "tiny"

    def note(self) -> dict[str, str]:
        """``{"note": ...}`` for the embedded default model, whose numbers mean nothing."""
        return {"note": TINY_MODEL_NOTE} if self.tiny else {}

    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def summary(self, **fields: Any) -> dict[str, Any]:
        """A stage's summary: the tiny-model note first, then the stage's own fields."""
        return {**self.note(), **fields}
