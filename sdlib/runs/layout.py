"""Where everything of a run lives: ``outputs/<run>/``, one folder per stage. Every stage,
notebook and tool asks this object for a path; nothing else spells one.

    outputs/<run>/
      manifest.json  params.yaml  notebooks/        the run's record (sdlib run)
      collect/   initial.jsonl  refinements.jsonl   stage 1 (resumable logs)
      filter/    refinements.jsonl  sft.jsonl  rl.jsonl  table.json  overview.png
      sft/       model/  merged/  checkpoints/  metrics.json  loss.png
      rl/        model/  metrics.jsonl  samples.jsonl  reward.png  summary.json  eval.json  trl/
      eval/      <model>/<benchmark>/initial.jsonl, round<k>.jsonl, ...; summary.json
                 table.md  pass_by_round.png  refinement_rate.png
      human_study/                                   the blinded study and its ratings
      <stage>/DONE.json                              a finished stage (sdlib run)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

STAGES = ("collect", "filter", "sft", "rl", "eval", "human_study")
DONE = "DONE.json"
MANIFEST = "manifest.json"


def project_root(start: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding ``params/`` and ``notebooks/``: the first one from ``start`` (the
    kernel's working folder) upwards, else the checkout this package was installed from."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "params").is_dir() and (folder / "notebooks").is_dir():
            return folder
    installed = Path(__file__).resolve().parents[2]
    if (installed / "params").is_dir():
        return installed
    return here


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @classmethod
    def of(cls, run_dir: str | os.PathLike[str] | RunLayout) -> RunLayout:
        return run_dir if isinstance(run_dir, RunLayout) else cls(Path(run_dir))

    def stage(self, name: str) -> Path:
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}; the stages are {', '.join(STAGES)}")
        return self.root / name

    def done(self, stage: str) -> Path:
        return self.stage(stage) / DONE

    def replaced(self, stage: str, stamp: str) -> Path:
        """Where a stage's earlier outputs go when it is redone from scratch (nothing lost)."""
        return self.root / f"{self.stage(stage).name}.replaced-{stamp}"

    # -- the run's record
    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

    @property
    def notebooks(self) -> Path:
        return self.root / "notebooks"

    @property
    def lock(self) -> Path:
        """Held by ``sdlib run`` while it runs: one run of a folder at a time."""
        return self.root / ".run.lock"

    # -- stage 1: collect
    @property
    def collect(self) -> Path:
        return self.stage("collect")

    @property
    def initial(self) -> Path:
        return self.collect / "initial.jsonl"

    @property
    def teacher_refinements(self) -> Path:
        return self.collect / "refinements.jsonl"

    # -- stage 2: filter
    @property
    def filter(self) -> Path:
        return self.stage("filter")

    @property
    def judged_refinements(self) -> Path:
        return self.filter / "refinements.jsonl"

    @property
    def sft_set(self) -> Path:
        return self.filter / "sft.jsonl"

    @property
    def rl_set(self) -> Path:
        return self.filter / "rl.jsonl"

    @property
    def filter_table(self) -> Path:
        return self.filter / "table.json"

    @property
    def filter_overview(self) -> Path:
        return self.filter / "overview.png"

    # -- stage 3: SFT
    @property
    def sft(self) -> Path:
        return self.stage("sft")

    @property
    def sft_model(self) -> Path:
        return self.sft / "model"

    @property
    def sft_merged(self) -> Path:
        return self.sft / "merged"

    @property
    def sft_checkpoints(self) -> Path:
        return self.sft / "checkpoints"

    @property
    def sft_metrics(self) -> Path:
        return self.sft / "metrics.json"

    @property
    def sft_loss_plot(self) -> Path:
        return self.sft / "loss.png"

    # -- stage 4: RL
    @property
    def rl(self) -> Path:
        return self.stage("rl")

    @property
    def rl_metrics(self) -> Path:
        return self.rl / "metrics.jsonl"

    @property
    def rl_samples(self) -> Path:
        return self.rl / "samples.jsonl"

    @property
    def rl_model(self) -> Path:
        return self.rl / "model"

    @property
    def rl_reward_plot(self) -> Path:
        return self.rl / "reward.png"

    @property
    def rl_summary(self) -> Path:
        return self.rl / "summary.json"

    @property
    def rl_eval(self) -> Path:
        """The before/after check on fixed prompts (``rl.eval_prompts``)."""
        return self.rl / "eval.json"

    @property
    def rl_trl(self) -> Path:
        return self.rl / "trl"

    # -- stage 5: evaluation
    @property
    def eval(self) -> Path:
        return self.stage("eval")

    def eval_setting(self, model: str, benchmark: str) -> Path:
        return self.eval / model / benchmark

    @staticmethod
    def eval_round(setting: Path, round_: int) -> Path:
        """A setting's log of initial samples (round 0) or of refinement round ``round_``."""
        return setting / ("initial.jsonl" if round_ == 0 else f"round{round_}.jsonl")

    @staticmethod
    def eval_export(setting: Path, name: str = "", round_: int = 0) -> Path:
        """A setting's samples for a third-party evaluator (EvalPlus's task_id + solution):
        the initial samples, or those of refinement setting ``name`` after ``round_``."""
        return setting / (f"samples_{name}_r{round_}.jsonl" if name else "samples.jsonl")

    def evaluated_models(self) -> list[str]:
        """The models with at least one evaluated benchmark, by name."""
        if not self.eval.is_dir():
            return []
        return sorted(p.name for p in self.eval.iterdir() if p.is_dir() and self.evaluated(p.name))

    def evaluated(self, model: str) -> list[Path]:
        """A model's benchmark folders that hold initial samples."""
        folder = self.eval / model
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if self.eval_round(p, 0).is_file())

    @property
    def eval_summary(self) -> Path:
        return self.eval / "summary.json"

    @property
    def eval_table(self) -> Path:
        return self.eval / "table.md"

    @property
    def eval_plots(self) -> tuple[Path, Path]:
        return self.eval / "pass_by_round.png", self.eval / "refinement_rate.png"

    # -- stage 6: human study
    @property
    def human_study(self) -> Path:
        return self.stage("human_study")
