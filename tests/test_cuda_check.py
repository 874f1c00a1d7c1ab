"""The CUDA check script's params stay valid as params/smoke.yaml changes (the check itself
needs a GPU for QLoRA; its CPU part is what test_sft and test_rl run)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cuda_check():
    spec = importlib.util.spec_from_file_location(
        "cuda_check", ROOT / "benchmarks" / "cuda_check.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_params_switch_model_and_method(cuda_check, method, tmp_path):
    params = cuda_check.make_params(str(tmp_path), method)
    assert params.model.kind == "hf" and params.model.path == str(tmp_path)
    assert params.sft.method == method
    assert params.rl.embedding_model == str(tmp_path)
    assert params.rl.batch_size % params.rl.mini_batch_size == 0


def test_prepare_run_copies_the_filter_files(cuda_check, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("sft.jsonl", "rl.jsonl"):
        (data / name).write_text('{"x": 1}\n')
    run = cuda_check.prepare_run(tmp_path / "out", data, "sft-lora")
    assert (run / "filter" / "sft.jsonl").read_text() == '{"x": 1}\n'
    (run / "stale").write_text("old")
    run = cuda_check.prepare_run(tmp_path / "out", data, "sft-lora")
    assert not (run / "stale").exists()
