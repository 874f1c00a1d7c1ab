"""Scoring rollouts: split each answer into explanation and code, run the code in the sandbox
(``S_ut``) and compute ``R_code`` / ``R_expl`` against the parent's correct refinements; the
same scores feed PPO (per token) and the TRL baseline (one number per completion)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sdlib.prompting.answers import judge_programs, read_answer
from sdlib.prompting.parsing import ParsedResponse
from sdlib.runs.params import RunParams
from sdlib.training.rewards import RewardConfig
from sdlib.training.rollouts import RLPrompt, Rollout


def reward_config(params: RunParams) -> RewardConfig:
    """params.rl -> RewardConfig (None constants keep RewardConfig's defaults)."""
    rl = params.rl
    overrides: dict[str, Any] = {
        "embedding_model": rl.embedding_model,
        "no_reference_code": rl.no_reference_code,
    }
    for name in ("expl_scale", "expl_offset", "expl_divisor"):
        if getattr(rl, name) is not None:
            overrides[name] = getattr(rl, name)
    return RewardConfig(**overrides)


def explanation_end(tokenizer: Any, rollout: Rollout, parsed: ParsedResponse) -> int:
    """Token index of the explanation's end in an Expl.+Refine answer.

    The explanation ends where the chosen code block starts (``parsed.span[0]``), or, without
    code, at the end of the text. An answer that opens with its code has no explanation token:
    the explanation reward (for a blank explanation) then lands on its first token.
    """
    from sdlib.training.ppo import explanation_end_index, response_token_offsets

    boundary = parsed.span[0] if parsed.span is not None else len(rollout.text)
    offsets = response_token_offsets(tokenizer, rollout.response_ids)
    index = explanation_end_index(offsets, boundary)
    return 0 if index is None else min(index, len(rollout.response_ids) - 1)


def parse_rollout(
    problem: Any, mode: str, text: str
) -> tuple[Any, str | None, str | None, str | None]:
    """(parsed response, code, runnable program, explanation) of one sampled refinement."""
    answer = read_answer(problem, text)
    explanation = answer.explanation if mode == "expl_refine" else None
    return answer.parsed, answer.code, answer.program, explanation


def score_rollouts(
    batch: Sequence[RLPrompt],
    rollouts: Sequence[Rollout],
    problems: dict[str, Any],
    sandbox: Any,
    tokenizer: Any,
    config: RewardConfig,
) -> tuple[list[dict[str, Any]], float, float]:
    """Per rollout: parsed code, verdict, rewards and ``expl_end`` (the token that gets
    ``R_expl``; None without a tokenizer, as for TRL's sequence-level reward); plus the seconds
    spent on execution and on CodeBLEU + embeddings."""
    from sdlib.training.rewards import score_batch

    start = time.perf_counter()
    rows = []
    for item, rollout in zip(batch, rollouts, strict=True):
        parsed, code, program, expl = parse_rollout(problems[item.task_id], item.mode, rollout.text)
        rows.append({"parsed": parsed, "code": code, "program": program, "explanation": expl})
    verdicts = judge_programs(
        sandbox,
        [(problems[item.task_id], row["program"]) for item, row in zip(batch, rows, strict=True)],
        [row["parsed"].reason for row in rows],
    )
    s_ut = [v.pass_fraction for v in verdicts]
    status = [v.status for v in verdicts]
    t_exec = time.perf_counter() - start

    start = time.perf_counter()
    scores = score_batch(
        [row["code"] or "" for row in rows],
        [item.reference_code for item in batch],
        s_ut,
        [row["explanation"] for row in rows],
        [item.reference_explanations for item in batch],
        config,
    )
    t_rewards = time.perf_counter() - start

    out = []
    for item, rollout, row, sc, st in zip(batch, rollouts, rows, scores, status, strict=True):
        expl_end = None
        if tokenizer is not None and item.mode == "expl_refine" and sc["r_expl"] is not None:
            expl_end = explanation_end(tokenizer, rollout, row["parsed"])
        out.append(
            {
                "prompt": item.id,
                "task_id": item.task_id,
                "mode": item.mode,
                "response": rollout.text,
                "finish_reason": rollout.finish_reason,
                "response_tokens": len(rollout.response_ids),
                "explanation": row["explanation"],
                "code": row["code"],
                "status": st,
                "expl_end": expl_end,
                "n_reference_code": len(item.reference_code),
                "n_reference_explanations": len(item.reference_explanations),
                **sc,
            }
        )
    return out, t_exec, t_rewards


def _mean(values: Sequence[float | None]) -> float | None:
    real = [v for v in values if v is not None]
    return sum(real) / len(real) if real else None


def reward_summary(scored: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean rewards, pass and no-code rates of scored rollouts (``score_rollouts`` rows)."""
    totals = [s["r_code"] + (s["r_expl"] or 0.0) for s in scored]
    return {
        "n": len(scored),
        "reward_mean": _mean(totals),
        "r_code_mean": _mean([s["r_code"] for s in scored]),
        "r_expl_mean": _mean([s["r_expl"] for s in scored]),
        "s_ut_mean": _mean([s["s_ut"] for s in scored]),
        "s_cb_mean": _mean([s["s_cb"] for s in scored]),
        "s_ex_mean": _mean([s["s_ex"] for s in scored]),
        "pass_rate": _mean([float(s["status"] == "pass") for s in scored]),
        "no_code_rate": _mean([float(s["status"] == "no_code") for s in scored]),
    }


def paired_difference(before: Sequence[float], after: Sequence[float]) -> dict[str, float]:
    """Mean of ``after - before`` over paired samples and its standard error."""
    diffs = [a - b for a, b in zip(after, before, strict=True)]
    n = len(diffs)
    mean = sum(diffs) / n if n else 0.0
    var = sum((d - mean) ** 2 for d in diffs) / (n - 1) if n > 1 else 0.0
    return {"mean": mean, "stderr": (var / n) ** 0.5 if n else 0.0, "n": n}
