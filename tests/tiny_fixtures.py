"""What the tests that build a small embedded model share: the tokenizer texts and
(prompt, code) pairs from MBPP's training split, and a model small enough to build in
seconds on 2 CPU cores."""

from __future__ import annotations

from sdlib.data import benchmarks
from sdlib.generation.tiny_model import TinyModelConfig, tiny_prompt


def tiny_corpus(
    n_pairs: int = 24, with_validation: bool = False
) -> tuple[list[str], list[tuple[str, str]]]:
    """Tokenizer texts (text and code of the train split, and validation when asked) and the
    first ``n_pairs`` train (prompt, code) pairs, as the embedded model is warm-started."""
    train = benchmarks.load("mbpp", split="train")
    problems = train + (benchmarks.load("mbpp", split="validation") if with_validation else [])
    texts = [p.text for p in problems] + [p.reference for p in problems]
    pairs = [(tiny_prompt(p.text, p.visible_tests[0]), p.reference) for p in train[:n_pairs]]
    return texts, pairs


def small_config(steps: int = 20) -> TinyModelConfig:
    """A 2-layer, 32-wide model: a few seconds per build."""
    return TinyModelConfig(
        vocab_size=512, hidden=32, intermediate=64, layers=2, heads=2, max_len=320, steps=steps
    )
