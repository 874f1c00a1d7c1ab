"""What the tests that build a small embedded model share: MBPP rows by split, the tokenizer
texts and (prompt, code) pairs, and a model small enough to build in seconds on 2 CPU cores."""

from __future__ import annotations

import json
import os
from pathlib import Path

from sdlib.generation.tiny_model import TinyModelConfig, tiny_prompt

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MBPP = Path(os.environ.get("SDLIB_DATA_DIR") or DATA) / "mbpp.jsonl"
SPLITS = {"train": (601, 974), "validation": (511, 600)}


def mbpp_rows(split: str = "train") -> list[dict]:
    """MBPP's rows of one split, code with Unix line ends."""
    first, last = SPLITS[split]
    rows = [json.loads(line) for line in MBPP.read_text().splitlines()]
    return [
        {**r, "code": r["code"].replace("\r\n", "\n")}
        for r in rows
        if first <= r["task_id"] <= last
    ]


def tiny_corpus(
    n_pairs: int = 24, with_validation: bool = False
) -> tuple[list[str], list[tuple[str, str]]]:
    """Tokenizer texts (text and code of the train split, and validation when asked) and the
    first ``n_pairs`` train (prompt, code) pairs, as the embedded model is warm-started."""
    train = mbpp_rows("train")
    rows = train + (mbpp_rows("validation") if with_validation else [])
    texts = [r["text"] for r in rows] + [r["code"] for r in rows]
    pairs = [(tiny_prompt(r["text"], r["test_list"][0]), r["code"]) for r in train[:n_pairs]]
    return texts, pairs


def small_config(steps: int = 20) -> TinyModelConfig:
    """A 2-layer, 32-wide model: a few seconds per build."""
    return TinyModelConfig(
        vocab_size=512, hidden=32, intermediate=64, layers=2, heads=2, max_len=320, steps=steps
    )
