"""RL prompts and rollouts: the refinement prompts of ``filter/rl.jsonl`` (one per wrong
solution and instruction type), the order they are drawn in, and sampling one answer per
prompt with the policy while keeping its token ids (PPO needs them)."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdlib.data.records import RLRecord, read_records
from sdlib.runs.layout import RunLayout


@dataclass
class RLPrompt:
    """One refinement prompt: a wrong solution (``parent``) and an instruction type (``mode``).

    ``reference_code`` / ``reference_explanations`` are *all* the correct refinements of the
    parent (and the explanations that came with the Expl.+Refine ones): the records of rl.jsonl
    each leave themselves out, so the union over a parent's records is the full set.
    """

    id: str  # "<parent>/<mode>"
    parent: str
    task_id: str
    mode: str
    messages: list[dict[str, str]]
    reference_code: list[str] = field(default_factory=list)
    reference_explanations: list[str] = field(default_factory=list)


def _add_unique(target: list[str], items: Sequence[str]) -> None:
    for item in items:
        if item and item.strip() and item not in target:
            target.append(item)


def rl_prompts(records: Sequence[dict[str, Any]]) -> list[RLPrompt]:
    """The RL prompts of an rl.jsonl: one per (parent, mode), in first-seen order."""
    refinements = [r for r in records if r.get("kind") == "refinement"]
    codes: dict[str, list[str]] = defaultdict(list)
    explanations: dict[str, list[str]] = defaultdict(list)
    for r in refinements:
        parent = r["parent"]
        if r.get("status") == "pass":
            _add_unique(codes[parent], [r.get("code") or ""])
            if r.get("mode") == "expl_refine":
                _add_unique(explanations[parent], [r.get("explanation") or ""])
        _add_unique(codes[parent], r.get("reference_code") or [])
        _add_unique(explanations[parent], r.get("reference_explanations") or [])
    out: dict[str, RLPrompt] = {}
    for r in refinements:
        key = f"{r['parent']}/{r['mode']}"
        if key not in out:
            out[key] = RLPrompt(
                id=key,
                parent=r["parent"],
                task_id=r["task_id"],
                mode=r["mode"],
                messages=r["messages"],
                reference_code=codes[r["parent"]],
                reference_explanations=explanations[r["parent"]],
            )
    return list(out.values())


def load_rl_prompts(run_dir: str | Path) -> list[RLPrompt]:
    path = RunLayout.of(run_dir).rl_set
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: run the collect and filter stages first "
            "(sdlib run PARAMS --stages collect,filter)"
        )
    found = rl_prompts(read_records(path, RLRecord))
    if not found:
        raise ValueError(f"{path} holds no refinement records: nothing to train RL on")
    return found


def prompt_batches(items: Sequence[RLPrompt], batch_size: int, seed: int) -> Iterator[list]:
    """Endless batches: a fresh seeded shuffle per pass, so every prompt comes up in turn."""
    rng = random.Random(seed)
    pool: list[RLPrompt] = []
    while True:
        batch = []
        while len(batch) < batch_size:
            if not pool:
                pool = list(items)
                rng.shuffle(pool)
            batch.append(pool.pop())
        yield batch


def limit_prompts(items: list[RLPrompt], n: int | None, seed: int) -> list[RLPrompt]:
    """A seeded subset of ``n`` prompts in their original order (all when ``n`` is None):
    short runs see each prompt several times instead of every prompt once."""
    if n is None or n >= len(items):
        return items
    keep = set(random.Random(seed).sample(range(len(items)), n))
    return [item for k, item in enumerate(items) if k in keep]


def eval_prompt_set(items: Sequence[RLPrompt], n: int, samples: int, seed: int) -> list[RLPrompt]:
    """The fixed prompts of the before/after check: a seeded sample of ``n`` RL prompts, each
    repeated ``samples`` times (independent of the training order)."""
    chosen = random.Random(seed + 7919).sample(list(items), min(n, len(items)))
    return [item for item in chosen for _ in range(samples)]


@dataclass
class Rollout:
    query_ids: list[int]
    response_ids: list[int]
    text: str  # decoded response, cut before a stop string
    finish_reason: str


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


def generate_rollouts(
    model: Any,
    tokenizer: Any,
    queries: Sequence[list[int]],
    max_new_tokens: int,
    temperature: float,
    stop: Sequence[str] = (),
    batch_size: int = 16,
) -> list[Rollout]:
    """One sampled response per query (left-padded batches), cut after EOS or a stop string.

    The response ids keep the token that ended it (EOS, or the one completing a stop string):
    the policy is credited for stopping. The text excludes it.
    """
    import torch
    from transformers import GenerationConfig, StoppingCriteriaList

    from sdlib.generation.backends import _stop_string_criteria, truncate_at_stop
    from sdlib.training.ppo import response_token_offsets

    pad = tokenizer.pad_token_id
    eos = _eos_ids(model, tokenizer)
    device = next(model.parameters()).device
    # A fresh config: a checkpoint's own settings (repetition penalty, top-k, ...) would make
    # the sampled distribution differ from the temperature-scaled one that PPO scores.
    config = GenerationConfig(
        do_sample=True,
        temperature=temperature,
        top_k=0,
        top_p=1.0,
        max_new_tokens=max_new_tokens,
        pad_token_id=pad,
        eos_token_id=eos,
    )
    out: list[Rollout] = []
    for start in range(0, len(queries), batch_size):
        chunk = [list(q) for q in queries[start : start + batch_size]]
        width = max(len(q) for q in chunk)
        input_ids = torch.tensor([[pad] * (width - len(q)) + q for q in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(q)) + [1] * len(q) for q in chunk], device=device)
        kwargs: dict[str, Any] = {}
        if stop:
            kwargs["stopping_criteria"] = StoppingCriteriaList(
                [_stop_string_criteria(tokenizer, list(stop), [width] * len(chunk))]
            )
        with torch.no_grad():
            gen = model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                generation_config=config,
                **kwargs,
            )
        for q, row in zip(chunk, gen[:, width:].tolist(), strict=True):
            ids, finish = [], "length"
            for tok in row:
                ids.append(tok)
                if tok in eos:
                    finish = "stop"
                    break
            if finish == "length" and pad not in eos:  # padding after a stopping criterion
                while len(ids) > 1 and ids[-1] == pad:
                    ids.pop()
            text = tokenizer.decode(ids, skip_special_tokens=True)
            cut, hit = truncate_at_stop(text, stop)
            if hit:  # keep the tokens up to the one that completes the stop string
                at = len(cut)
                need = at + max(len(s) for s in stop if s and text.startswith(s, at))
                offsets = response_token_offsets(tokenizer, ids)
                last = next((i for i, (_, e) in enumerate(offsets) if e >= need), len(ids) - 1)
                ids, finish = ids[: last + 1], "stop"
            out.append(Rollout(q, ids, cut, finish))
    return out
