"""Prompt KV caches (``sdlib.generation.kv_cache``) on real tiny models: the embedded Llama-style
model, and a random Gemma 3 whose sliding window (8) is shorter than the prompts, so both kinds
of cache layer are merged. The merged cache must give the logits a left-padded prefill gives,
and the backend the same text as without it."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_fixtures import small_config, tiny_corpus

from sdlib.data import benchmarks
from sdlib.generation.backends import HFBackend, SamplingParams
from sdlib.generation.kv_cache import (
    PrefixCache,
    common_prefix_length,
    mergeable,
    stack_left_padded,
)
from sdlib.generation.tiny_model import build_tiny_model, tiny_prompt

SMALL = small_config(steps=20)
ROWS = benchmarks.load("mbpp", split="train")[:24]
SHARED = "".join(f"{p.text}\n```python\n{p.reference}\n```\n\n" for p in ROWS[:2])
# Prompts behind one shared prefix, of different lengths (rows are left-padded).
PROMPTS = [SHARED + tiny_prompt(p.text, p.visible_tests[0]) for p in ROWS[5:8]]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts, pairs = tiny_corpus()
    out = tmp_path_factory.mktemp("kv") / "tiny"
    return build_tiny_model(texts, pairs, out, SMALL, progress=False, verbose=False)


@pytest.fixture(scope="module", params=["llama", "gemma3-sliding"])
def backend(request: pytest.FixtureRequest, llama_dir: Path) -> HFBackend:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma3TextConfig

    tokenizer = AutoTokenizer.from_pretrained(str(llama_dir))
    if request.param == "llama":
        model = AutoModelForCausalLM.from_pretrained(str(llama_dir))
    else:
        torch.manual_seed(0)
        config = Gemma3TextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            sliding_window=8,
            layer_types=["sliding_attention", "full_attention"],
            max_position_embeddings=1024,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
        )
        from transformers import Gemma3ForCausalLM

        model = Gemma3ForCausalLM(config)
    return HFBackend.from_model(model.eval(), tokenizer, batch_size=8, progress=False)


def test_common_prefix_length() -> None:
    assert common_prefix_length([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert common_prefix_length([[5, 6], [5, 6]]) == 2
    assert common_prefix_length([[1], [2]]) == 0
    assert common_prefix_length([]) == 0


def test_merged_cache_gives_left_padded_logits(backend: HFBackend) -> None:
    """The next-token logits from the merged cache equal those of one left-padded prefill."""
    import torch

    model, tokenizer = backend.model, backend.tokenizer
    ids = [tokenizer(p)["input_ids"] for p in PROMPTS]
    assert len({len(i) for i in ids}) == len(ids)  # really different lengths
    cache = PrefixCache(model, min_tokens=8)
    rows = cache.rows(ids)
    assert rows is not None and all(mergeable(r) for r in rows)
    assert cache.prefilled < cache.requested  # the shared prefix ran once
    width = max(len(i) for i in ids)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(i)) + i for i in ids])
    mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])
    with torch.inference_mode():
        want = model(input_ids=input_ids, attention_mask=mask).logits[:, -1]
        merged = stack_left_padded(rows, [len(i) - 1 for i in ids])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -1:]
        got = model(
            input_ids=input_ids[:, -1:],
            attention_mask=mask,
            position_ids=positions,
            cache=merged,
        ).logits[:, -1]
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()


def test_backend_text_is_unchanged_and_prefix_reused(backend: HFBackend) -> None:
    """Greedy and seeded sampling give the same text with and without the cache (seeded: as
    one plain generate call); a second call behind the same prefix prefills only the
    prompts' own tokens."""
    plain = HFBackend.from_model(backend.model, backend.tokenizer, batch_size=8, progress=False)
    cached = HFBackend.from_model(
        backend.model, backend.tokenizer, batch_size=8, progress=False, prefix_cache=True
    )
    greedy = SamplingParams(n=2, temperature=0, max_new_tokens=20)
    want = plain.generate(PROMPTS, greedy)
    got = cached.generate(PROMPTS, greedy)
    assert [[c.text for c in r] for r in got] == [[c.text for c in r] for r in want]
    assert [r[0].completion_tokens for r in got] == [r[0].completion_tokens for r in want]
    first = cached.prefix_cache.prefilled
    sampled = SamplingParams(n=3, temperature=1.0, max_new_tokens=16, seed=3)
    again = cached.generate(PROMPTS[:2], sampled)
    assert cached.generate(PROMPTS[:2], sampled) == again  # seeded: reproducible
    assert len({c.text for r in again for c in r}) > 1
    # seeded samples equal a plain run in one generate call (the same random draws)
    one_call = HFBackend.from_model(
        backend.model, backend.tokenizer, batch_size=8, progress=False, refill_every=None
    )
    assert [[c.text for c in r] for r in one_call.generate(PROMPTS[:2], sampled)] == [
        [c.text for c in r] for r in again
    ]
    ids = [backend.tokenizer(p)["input_ids"] for p in PROMPTS[:2]]
    shared = len(cached.prefix_cache.tokens)
    # the second call reused the first call's prefix: only the prompts' own tokens ran
    assert cached.prefix_cache.prefilled - first == 2 * sum(len(i) - 1 - shared for i in ids)


def test_unmergeable_prompts_fall_back(backend: HFBackend) -> None:
    """One-token prompts leave nothing to cache: the plain path samples them."""
    cached = HFBackend.from_model(
        backend.model, backend.tokenizer, batch_size=8, progress=False, prefix_cache=True
    )
    assert cached.prefix_cache.rows([[5], [5, 6]]) is None
    out = cached.generate(["a"], SamplingParams(n=2, temperature=0, max_new_tokens=5))
    assert len(out[0]) == 2 and out[0][0].completion_tokens >= 1
