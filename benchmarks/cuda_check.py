"""One short check of the CUDA paths of training: bf16 LoRA SFT, 4-bit QLoRA SFT, bf16 PPO.

    python benchmarks/cuda_check.py --model DIR --data DIR --out DIR [--summary FILE]

``--model``: a local model folder (for example the embedded default from
``outputs/_models/tiny-*``); ``--data``: a folder holding a filter stage's ``sft.jsonl`` and
``rl.jsonl``. Each check runs the real stage code (``sdlib.training.sft.run_sft``,
``sdlib.training.rl.run_rl``) on ``params/smoke.yaml`` with the model switched to that folder, and
records what ran where: the base weights' dtype, the 4-bit layers QLoRA loaded, losses,
rewards, times and peak GPU memory. The explanation reward uses the model folder itself as
its sentence embedder (mean pooling), since the packaged MiniLM (88 MB) is too big to carry
to a GPU machine here; its reward values are meaningless, the code path is the real one.

Without CUDA it runs the LoRA SFT and PPO checks on the CPU and reports QLoRA as not run.
Exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "missing"
    return out


def make_params(model: str, method: str):
    from sdlib.runs import params as P

    data = P.load(ROOT / "params" / "smoke.yaml").model_dump()
    data["run_name"] = f"cuda-check-{method}"
    data["model"] = {"kind": "hf", "path": model, "dtype": "auto"}
    data["sft"]["method"] = method
    data["rl"].update(
        steps=2,
        batch_size=16,
        mini_batch_size=8,
        eval_prompts=8,
        eval_samples=2,
        max_prompts=None,
        embedding_model=model,
        max_new_tokens=128,
    )
    return P.parse(data, source=f"cuda check ({method})")


def prepare_run(out: Path, data: Path, name: str) -> Path:
    run = out / name
    if run.exists():
        shutil.rmtree(run)
    (run / "filter").mkdir(parents=True)
    for f in ("sft.jsonl", "rl.jsonl"):
        shutil.copy(data / f, run / "filter" / f)
    return run


def gpu_peak_mib() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    peak = torch.cuda.max_memory_allocated() / 2**20
    torch.cuda.reset_peak_memory_stats()
    return round(peak, 1)


def check_sft(model: str, data: Path, out: Path, method: str) -> dict[str, Any]:
    import torch

    from sdlib.training.sft import _load_model, run_sft

    cuda = torch.cuda.is_available()
    loaded, dtype = _load_model(model, method, cuda)
    layers: dict[str, int] = {}
    for module in loaded.modules():
        layers[type(module).__name__] = layers.get(type(module).__name__, 0) + 1
    weight_dtypes = sorted({str(p.dtype) for p in loaded.parameters()})
    del loaded
    run = prepare_run(out, data, f"sft-{method}")
    start = time.perf_counter()
    summary = run_sft(make_params(model, method), run, progress=False)
    metrics = json.loads((run / "sft" / "metrics.json").read_text())
    result = {
        "method": method,
        "compute_dtype": str(dtype),
        "weight_dtypes_at_load": weight_dtypes,
        "linear4bit_layers": layers.get("Linear4bit", 0),
        "eval_loss_before": metrics.get("eval_loss_before"),
        "eval_loss_after": metrics.get("eval_loss_after"),
        "optimizer_steps": metrics.get("optimizer_steps"),
        "final_train_loss": summary.get("final_train_loss"),
        "adapter_saved": (run / "sft" / "model" / "adapter_config.json").is_file(),
        "seconds": round(time.perf_counter() - start, 1),
        "gpu_peak_mib": gpu_peak_mib(),
        "run_dir": str(run),
    }
    finite = all(
        isinstance(result[k], float) and math.isfinite(result[k])
        for k in ("eval_loss_before", "eval_loss_after", "final_train_loss")
    )
    result["passed"] = bool(
        finite
        and result["adapter_saved"]
        and result["eval_loss_after"] < result["eval_loss_before"]
        and (method != "qlora" or result["linear4bit_layers"] > 0)
        and (not cuda or method == "qlora" or "torch.bfloat16" in weight_dtypes)
    )
    return result


def check_ppo(model: str, sft_run: Path) -> dict[str, Any]:
    import torch

    from sdlib.data.jsonl import read_jsonl
    from sdlib.training.rl import run_rl

    start = time.perf_counter()
    summary = run_rl(make_params(model, "lora"), sft_run, progress=False)
    evaluation = json.loads((sft_run / "rl" / "eval.json").read_text())
    steps, _bad = read_jsonl(sft_run / "rl" / "metrics.jsonl")
    result = {
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "start": summary["start"],
        "steps": len(steps),
        "reward_before": evaluation["before"]["reward_mean"],
        "reward_after": evaluation["after"]["reward_mean"],
        "step_rewards": [round(s["reward_mean"], 3) for s in steps],
        "step_r_expl": [s["r_expl_mean"] for s in steps],
        "step_seconds": [round(s["seconds_step"], 2) for s in steps],
        "seconds": round(time.perf_counter() - start, 1),
        "gpu_peak_mib": gpu_peak_mib(),
    }
    result["passed"] = bool(
        len(steps) == 2
        and any(s["r_expl_mean"] is not None for s in steps)  # the embedder ran
        and math.isfinite(result["reward_before"])
        and math.isfinite(result["reward_after"])
        and (sft_run / "rl" / "model" / "adapter_config.json").is_file()
    )
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--summary", default=None, help="write the results here as JSON")
    args = ap.parse_args()
    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"versions": versions(), "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        report["gpu"] = torch.cuda.get_device_name(0)
        report["bf16_supported"] = torch.cuda.is_bf16_supported()
    print(json.dumps(report, indent=1), flush=True)
    checks: list[tuple[str, Any]] = [
        ("sft_lora", lambda: check_sft(args.model, Path(args.data), out, "lora")),
        ("ppo_from_sft_lora", lambda: check_ppo(args.model, out / "sft-lora")),
    ]
    if torch.cuda.is_available():
        checks.append(("sft_qlora", lambda: check_sft(args.model, Path(args.data), out, "qlora")))
    else:
        report["sft_qlora"] = {"passed": None, "why": "no CUDA here: QLoRA is CUDA only"}
    ok = True
    for name, check in checks:
        try:
            report[name] = check()
        except Exception as exc:  # one failing check must not hide the others
            report[name] = {"passed": False, "error": repr(exc), "trace": traceback.format_exc()}
        ok &= bool(report[name].get("passed"))
        print(name, json.dumps(report[name], indent=1, default=str), flush=True)
    if args.summary:
        Path(args.summary).write_text(json.dumps(report, indent=1, default=str))
    print("ALL PASSED" if ok else "SOME CHECK FAILED", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
