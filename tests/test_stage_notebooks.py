"""The stage notebooks run end to end as ``sdlib run`` runs them (issue 13, item 7): papermill
injects a run's parameters and executes 01–06 in order on a miniature run of the embedded
default model, each notebook reading what the one before wrote."""

from __future__ import annotations

import json
from pathlib import Path

import papermill
import pytest
import yaml

from sdlib.runs.layout import RunLayout

ROOT = Path(__file__).resolve().parents[1]
MINI = {
    "run_name": "nbmini",
    "seed": 0,
    # warm-started on the 6 problems collect samples from, so some answers pass and the
    # filter stage keeps records to train on
    "model": {
        "kind": "tiny",
        "batch_size": 16,
        "tiny": {"n_problems": 4, "steps": 100, "batch_size": 8},
    },
    "teacher": {"kind": "self"},
    "sandbox": {"timeout": 5, "workers": 2},
    "collect": {
        "n_problems": 4,
        "few_shot": 0,
        "samples_per_problem": 4,
        "max_new_tokens": 160,
        "refinements_per_wrong": 1,
    },
    "sft": {"epochs": 1, "batch_size": 4, "learning_rate": 5.0e-4, "held_out_fraction": 0.3},
    "rl": {"steps": 1, "batch_size": 2, "mini_batch_size": 2, "max_new_tokens": 16},
    "eval": {
        "benchmarks": ["mbpp", "humaneval"],
        "n_problems": 1,
        "samples_per_task": 2,
        "max_new_tokens": 32,
        "rounds": 1,
        "tasks_per_call": 1,
        "models": ["base", "sft", "rl"],
    },
    "human_study": {"n_problems": 2, "max_new_tokens": 24, "models": ["base", "sft"]},
}
NOTEBOOKS = ["01_collect", "02_filter", "03_sft", "04_rl", "05_eval", "06_human_study"]


@pytest.fixture(scope="module")
def executed(tmp_path_factory, data_dir):
    folder = tmp_path_factory.mktemp("nb")
    params_path = folder / "mini.yaml"
    params_path.write_text(yaml.safe_dump({**MINI, "output_dir": str(folder / "outputs")}))
    run_dir = folder / "outputs" / MINI["run_name"]
    outputs = {}
    for name in NOTEBOOKS:
        out = folder / f"{name}.ipynb"
        papermill.execute_notebook(
            str(ROOT / "notebooks" / f"{name}.ipynb"),
            str(out),
            parameters={"params_path": str(params_path), "run_dir": str(run_dir)},
            cwd=str(ROOT / "notebooks"),  # as JupyterLab starts the kernel
            progress_bar=False,
            kernel_name="python3",
        )
        outputs[name] = json.loads(out.read_text())
    return RunLayout(run_dir), outputs


def _text(notebook: dict) -> str:
    parts = []
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            parts.append("".join(output.get("text", "")))
            for kind in ("text/plain", "text/markdown"):
                parts.append("".join(output.get("data", {}).get(kind, "")))
    return "\n".join(parts)


def test_sft_notebook_trains_and_shows_its_loss(executed):
    run, outputs = executed
    metrics = json.loads(run.sft_metrics.read_text())
    assert metrics["records"]["train"] > 0 and metrics["eval_loss_before"] is not None
    assert run.sft_loss_plot.stat().st_size > 1000
    text = _text(outputs["03_sft"])
    assert "loss only below this line" in text and "held-out loss:" in text


def test_rl_notebook_runs_ppo_on_the_filtered_set(executed):
    run, outputs = executed
    summary = json.loads(run.rl_summary.read_text())
    assert summary["algorithm"] == "ppo" and summary["steps"] == 1
    assert summary["start"] == "sft_adapter"  # it continues the adapter notebook 03 trained
    assert summary["ppo_config"]["mini_batch_size"] == 2
    assert run.rl_reward_plot.stat().st_size > 1000
    assert "reward_first" in _text(outputs["04_rl"])


def test_eval_notebook_evaluates_every_stage_model(executed):
    run, outputs = executed
    summary = json.loads((run.eval / "summary.json").read_text())
    results = summary["results"]
    evaluated = {(m, b) for m, per_benchmark in results.items() for b in per_benchmark}
    assert evaluated == {(m, b) for m in ("base", "sft", "rl") for b in ("mbpp", "humaneval")}
    for per_benchmark in results.values():
        for result in per_benchmark.values():
            assert result["samples"] == 2 and "pass@1" in result["init"]
    assert "Expl.+Refine" in _text(outputs["05_eval"])


def test_human_study_notebook_builds_a_blinded_study(executed):
    run, outputs = executed
    items = [
        json.loads(line) for line in (run.human_study / "items.jsonl").read_text().splitlines()
    ]
    assert items and all("model" not in item for item in items)
