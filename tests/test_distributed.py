"""Multi-process training for real: ``accelerate launch`` with configs/accelerate/multi_gpu.yaml
and 2 CPU processes (gloo), the code path that runs on N GPUs, on a tiny random model.

What is checked: both processes train and end with the same weights although each saw a
different share of the data (so gradients were synchronised), the data is sharded (half the
optimizer steps of one process), files are written once, by the main process, and the RL
metrics cover the whole batch (both processes' rollouts).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_rl import _write_rl_jsonl
from test_sft import mbpp_train, model_dir, records  # noqa: F401  (fixtures)

from sdlib.runs import params as P
from sdlib.training import rl, rollouts, sft

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "accelerate" / "multi_gpu.yaml"
CHECKSUM = re.compile(r"process (\d)/2: (\w+) done, trainable_checksum=(-?\d+\.\d+(?:e[-+]?\d+)?)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(stage: str, params_file: Path, run_dir: Path) -> tuple[dict, list[float]]:
    """``accelerate launch --num_processes 2 -m sdlib.workbench.cli train STAGE``: (the summary the main
    process prints, each process's trainable checksum)."""
    accelerate = Path(sys.executable).parent / "accelerate"
    cmd = [
        str(accelerate),
        "launch",
        "--config_file",
        str(CONFIG),
        "--num_processes",
        "2",
        "--main_process_port",
        str(_free_port()),
        "-m",
        "sdlib.workbench.cli",
        "train",
        stage,
        str(params_file),
        "--run-dir",
        str(run_dir),
        "--quiet",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    summaries = [m for m in re.finditer(r"^\{\n.*?^\}$", done.stdout, re.S | re.M)]
    assert len(summaries) == 1, done.stdout  # printed by the main process only
    found = {int(m[1]): float(m[3]) for m in CHECKSUM.finditer(done.stderr) if m[2] == stage}
    assert sorted(found) == [0, 1], done.stderr[-4000:]  # both processes ran to the end
    return json.loads(summaries[0][0]), [found[0], found[1]]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, records, model_dir, data_dir):  # noqa: F811
    folder = tmp_path_factory.mktemp("dist")
    raw = {
        "run_name": "dist",
        "seed": 1,
        "output_dir": str(folder / "outputs"),
        "data_dir": str(data_dir),
        "model": {"kind": "hf", "path": str(model_dir), "batch_size": 4},
        "sandbox": {"timeout": 5, "workers": 1},
        "collect": {"n_problems": 3, "exclude_eval_overlap": False},
        "sft": {
            "max_length": 1024,
            "batch_size": 2,
            "epochs": 1,
            "learning_rate": 1e-2,
            "held_out_fraction": 0.2,
            "lora_r": 4,
            "lora_alpha": 8,
            "lora_dropout": 0.0,
            "warmup_steps": 1,  # not the tiny model: no 10% cap on the paper's 500
        },
        "rl": {
            "steps": 2,
            "batch_size": 4,
            "max_new_tokens": 24,
            "learning_rate": 1e-3,
            "eval_prompts": 3,
        },
    }
    params_file = folder / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    params = P.load(params_file)
    run_dir = folder / "outputs" / "dist"
    _write_rl_jsonl(params, run_dir)
    with open(run_dir / "filter" / "sft.jsonl", "w") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    return params, params_file, run_dir


def test_sft_two_processes(setup):
    params, params_file, run_dir = setup
    summary, checksums = _launch("sft", params_file, run_dir)
    metrics = json.loads((run_dir / "sft" / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["global_batch_size"] == 4
    n_train = metrics["records"]["train"]
    # the data is sharded: each step takes 2 records on each of 2 processes
    # the plan counts both processes' shares: planned = real steps (was 2x too many)
    planned = sft.optimizer_steps(n_train, 2, 1, 1, processes=2)
    assert metrics["optimizer_steps"] == metrics["planned_steps"] == planned < n_train // 2
    assert checksums[0] == checksums[1] == summary["trainable_checksum"]
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"]
    assert metrics["records"]["held_out_refinements"] > 0
    assert metrics["eval_loss_refinement_after"] < metrics["eval_loss_refinement_before"]
    model = run_dir / "sft" / "model"
    assert (model / "adapter_model.safetensors").is_file() and (model / "tokenizer.json").is_file()
    assert (run_dir / "sft" / "loss.png").is_file()


def test_ppo_two_processes(setup):
    params, params_file, run_dir = setup
    summary, checksums = _launch("rl", params_file, run_dir)
    out = run_dir / "rl"
    assert summary["processes"] == 2 and summary["steps"] == 2
    assert checksums[0] == checksums[1] == summary["trainable_checksum"]
    assert json.loads((out / "summary.json").read_text())["processes"] == 2
    metrics = rl.read_metrics(run_dir)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    # every rollout of both processes, written once: the global batches in training order
    batches = rollouts.prompt_batches(rollouts.load_rl_prompts(run_dir), 4, params.seed)
    for step, m in enumerate(metrics):
        rows = [s for s in samples if s["step"] == step]
        assert sorted(s["prompt"] for s in rows) == sorted(p.id for p in next(batches))
        totals = [s["r_code"] + (s["r_expl"] or 0.0) for s in rows]
        assert m["reward_mean"] == pytest.approx(sum(totals) / len(totals))
        assert m["processes"] == 2 and m["kl"] == m["kl"]
    check = json.loads((out / "eval.json").read_text())
    assert check["before"]["n"] == check["after"]["n"] == 3 == len(check["samples"])
    assert summary["reward_before"] == check["before"]["reward_mean"]
    model = out / "model"
    assert (model / "adapter_model.safetensors").is_file() and (model / "value_head.pt").is_file()


def test_grpo_two_processes(setup, tmp_path):
    """trl's GRPOTrainer shards the completions; the reward function gathers both processes'
    rows, so the metrics match trl's own (gathered) mean reward and each sample is written once."""
    import shutil

    _, params_file, run_dir = setup
    raw = yaml.safe_load(params_file.read_text())
    raw["rl"].update({"algorithm": "grpo", "steps": 1, "max_new_tokens": 16, "eval_prompts": 0})
    grpo_file = tmp_path / "grpo.yaml"
    grpo_file.write_text(yaml.safe_dump(raw))
    other = tmp_path / "run"
    shutil.copytree(run_dir / "filter", other / "filter")
    summary, checksums = _launch("rl", grpo_file, other)
    assert summary["algorithm"] == "grpo" and summary["processes"] == 2
    assert checksums[0] == checksums[1] == summary["trainable_checksum"]
    metrics = rl.read_metrics(other)
    samples = (other / "rl" / "samples.jsonl").read_text().splitlines()
    assert len(metrics) == 1 and len(samples) == 4  # the global batch, written once
    assert metrics[0]["trl"]["reward"] == pytest.approx(metrics[0]["reward_mean"], abs=1e-4)
