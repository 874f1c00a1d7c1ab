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

from sdlib.data import benchmarks
from sdlib.execution.problems import Problem
from sdlib.execution.sandbox import Sandbox
from sdlib.runs.layout import RunLayout
from sdlib.runs.params import RunParams

TINY_MODEL_NOTE = (
    "Embedded default model (a ~1M-parameter model built locally from MBPP's training split): "
    "its scores say nothing about the method."
)


def training_problems(params: RunParams) -> list[Problem]:
    """The collection problems: MBPP train (601-974), minus those MBPP+ evaluates on."""
    problems = benchmarks.load("mbpp", split="train", directory=params.data_directory())
    if params.collect.exclude_eval_overlap:
        plus_ids = {t.split("/")[-1] for t in benchmarks.task_ids("mbpp+", params.data_directory())}
        problems = [p for p in problems if p.task_id not in plus_ids]
    if params.collect.n_problems is not None:
        problems = problems[: params.collect.n_problems]
    return problems


def few_shot_problems(params: RunParams) -> list[Problem]:
    """MBPP's prompt split (task ids 1-10) provides the few-shot examples."""
    if params.collect.few_shot <= 0:
        return []
    return benchmarks.load("mbpp", split="prompt", directory=params.data_directory())[
        : params.collect.few_shot
    ]


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
