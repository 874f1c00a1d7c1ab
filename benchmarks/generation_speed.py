"""Tokens per second of batched sampling against a one-prompt-at-a-time loop (HFBackend).

Why: collection samples 20 programs per problem and evaluation 100 per task; the loop that
stack-notes timed at about 1 s per sample would make that hours. This shows what batching buys
on the tiny default model (or any model given with --model)::

    .venv/bin/python benchmarks/generation_speed.py               # builds outputs/tiny_model
    .venv/bin/python benchmarks/generation_speed.py --model PATH --device cuda
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sdlib.generation.backends import HFBackend, SamplingParams  # noqa: E402
from sdlib.generation.tiny_model import TinyModelConfig, build_tiny_model, tiny_prompt  # noqa: E402


def mbpp_rows(path: Path) -> tuple[list[dict], list[dict]]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    train = [r for r in rows if 601 <= r["task_id"] <= 974]
    val = [r for r in rows if 511 <= r["task_id"] <= 600]
    return train, val


def default_model(mbpp: Path, out: Path) -> Path:
    """The default tiny model, built as the pipeline builds it (reused when already there)."""
    train, val = mbpp_rows(mbpp)
    config = TinyModelConfig()

    def code(r: dict) -> str:
        return r["code"].replace("\r\n", "\n")

    texts = [r["text"] for r in train + val] + [code(r) for r in train + val]
    pairs = [
        (tiny_prompt(r["text"], r["test_list"][0]), code(r)) for r in train[: config.n_problems]
    ]
    return build_tiny_model(texts, pairs, out, config)


def timed(backend: HFBackend, prompts: list[str], params: SamplingParams, one_by_one: bool):
    """Completion tokens per second; one_by_one: one generate call per sample, as a plain loop."""
    start = time.perf_counter()
    if one_by_one:
        rows = [
            backend.generate([p], replace(params, n=1, seed=params.seed + k))[0]
            for p in prompts
            for k in range(params.n)
        ]
    else:
        rows = backend.generate(prompts, params)
    seconds = time.perf_counter() - start
    tokens = sum(c.completion_tokens for row in rows for c in row)
    return {"seconds": round(seconds, 2), "tokens": tokens, "tok_per_s": round(tokens / seconds, 1)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model dir (default: the tiny model)")
    parser.add_argument("--mbpp", default=str(ROOT.parent / "shared" / "data" / "mbpp.jsonl"))
    parser.add_argument("--out", default=str(ROOT / "outputs" / "tiny_model"))
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--n", type=int, default=4, help="samples per prompt")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--refill-every", type=int, default=64, help="0: one call per batch")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (0: torch default)"
    )
    parser.add_argument("--attn", default=None, help="attn_implementation (eager, sdpa, ...)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model = Path(args.model) if args.model else default_model(Path(args.mbpp), Path(args.out))
    train, _ = mbpp_rows(Path(args.mbpp))
    prompts = [tiny_prompt(r["text"], r["test_list"][0]) for r in train[: args.prompts]]
    params = SamplingParams(
        n=args.n, temperature=args.temperature, max_new_tokens=args.max_new_tokens, seed=0
    )
    batched = HFBackend(
        model,
        device=args.device,
        batch_size=args.batch_size,
        progress=False,
        attn_implementation=args.attn,
        refill_every=args.refill_every or None,
    )
    single = HFBackend.from_model(
        batched.model, batched.tokenizer, batch_size=1, progress=False, refill_every=None
    )
    timed(batched, prompts[:2], params, one_by_one=False)  # warm-up

    result = {
        "model": str(model),
        "device": args.device,
        "threads": torch.get_num_threads(),
        "attn_implementation": batched.model.config._attn_implementation,
        "prompts": len(prompts),
        "n": args.n,
        "batch_size": args.batch_size,
        "refill_every": args.refill_every or None,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "one_by_one": timed(single, prompts, params, one_by_one=True),
        "batched": timed(batched, prompts, params, one_by_one=False),
    }
    result["speedup"] = round(result["batched"]["tok_per_s"] / result["one_by_one"]["tok_per_s"], 2)
    for mode in ("one_by_one", "batched"):
        r = result[mode]
        print(
            f"{mode:>10}: {r['tokens']:6d} tokens in {r['seconds']:7.2f} s = {r['tok_per_s']:8.1f} tok/s"
        )
    print(
        f"   speedup: {result['speedup']}x ({len(prompts)} prompts x {args.n} samples, "
        f"batch {args.batch_size}, refill every {args.refill_every or None} tokens)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
