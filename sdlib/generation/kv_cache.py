"""Prompt KV caches for CPU sampling: compute a shared prefix once, and each prompt once.

A base model's first-attempt prompts all start with the same few-shot examples (770 of about
900 tokens on Gemma 3 with MBPP's 3 shots), and each prompt is sampled ``n`` times. Without
this, every one of the ``n`` rows of every prompt prefills the whole text again; on 2 CPU cores
that prefill, not the sampling, is most of the time. Here the shared prefix is run through the
model once (and kept for the next call), each distinct prompt's remainder once on top of it,
and the rows' caches are then laid side by side, left-padded, into exactly the cache a
left-padded batch prefill would have built. ``generate`` continues from it.

Only transformers' dynamic cache layers (full and sliding-window attention) are merged; a
model with any other kind of cache (state-space layers, say) is sampled the plain way.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any


def common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix every sequence shares."""
    if not sequences:
        return 0
    shortest = min(len(s) for s in sequences)
    first = sequences[0]
    for i in range(shortest):
        token = first[i]
        if any(s[i] != token for s in sequences):
            return i
    return shortest


def mergeable(cache: Any) -> bool:
    """Whether ``cache`` holds only layers whose rows can be left-padded and stacked."""
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(
        type(layer) in (DynamicLayer, DynamicSlidingWindowLayer)
        and not getattr(layer, "record_past", False)
        for layer in layers
    )


def extend(model: Any, cache: Any | None, tokens: Sequence[int]) -> Any:
    """A new cache: ``cache`` (left untouched; None = empty) followed by ``tokens`` (one row)."""
    import torch

    grown = copy.deepcopy(cache) if cache is not None else None
    if not tokens:
        return grown
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model(
            input_ids=torch.tensor([list(tokens)], device=device),
            cache=grown,
            use_cache=True,
        )
    return out.cache


def stack_left_padded(caches: Sequence[Any], lengths: Sequence[int]) -> Any:
    """One batch cache from single-row caches of ``lengths`` tokens: each row left-padded with
    zeros (masked by the attention mask) to the longest, as a left-padded prefill lays it out.
    A sliding-window layer keeps the last ``window - 1`` positions, so it is padded to the
    longest stored length; the positions line up because every row ends at the same column."""
    import torch
    import torch.nn.functional as F

    longest = max(lengths)
    merged = copy.copy(caches[0])
    merged.layers = []
    for index, template in enumerate(caches[0].layers):
        layer = copy.copy(template)
        rows_k = [c.layers[index].keys for c in caches]
        rows_v = [c.layers[index].values for c in caches]
        width = max(k.shape[-2] for k in rows_k)
        layer.keys = torch.cat([F.pad(k, (0, 0, width - k.shape[-2], 0)) for k in rows_k])
        layer.values = torch.cat([F.pad(v, (0, 0, width - v.shape[-2], 0)) for v in rows_v])
        if hasattr(layer, "cumulative_length"):
            layer.cumulative_length = longest
        merged.layers.append(layer)
    return merged


class PrefixCache:
    """The KV cache of the last shared prefix seen, kept between calls: collection and
    evaluation send one call per few tasks, all behind the same few-shot examples."""

    def __init__(self, model: Any, min_tokens: int = 32) -> None:
        self.model = model
        self.min_tokens = min_tokens
        self.tokens: tuple[int, ...] = ()
        self.cache: Any = None
        self.prefilled = 0  # prompt tokens run through the model
        self.requested = 0  # prompt tokens the rows needed (what a plain prefill would run)

    def rows(self, prompts: Sequence[Sequence[int]]) -> list[Any] | None:
        """One single-row cache per distinct prompt (all but its last token), or None when
        the model's cache cannot be merged."""
        if min(len(p) for p in prompts) < 2:
            return None
        shared = min(common_prefix_length(prompts), min(len(p) for p in prompts) - 1)
        base: Any = None
        start = 0
        if shared >= self.min_tokens:
            if self.tokens and tuple(prompts[0][: len(self.tokens)]) == self.tokens:
                base, start = self.cache, len(self.tokens)
            else:
                base = extend(self.model, None, prompts[0][:shared])
                self.prefilled += shared
                if not mergeable(base):
                    return None
                self.tokens, self.cache, start = tuple(prompts[0][:shared]), base, shared
        out: dict[tuple[int, ...], Any] = {}
        rows = []
        for prompt in prompts:
            key = tuple(prompt)
            if key not in out:
                out[key] = extend(self.model, base, prompt[start:-1])
                self.prefilled += len(prompt) - 1 - start
                if not mergeable(out[key]):
                    return None
            self.requested += len(prompt) - 1
            rows.append(out[key])
        return rows
