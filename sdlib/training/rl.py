"""Stage 4 (method §4): online RL on refinement prompts, PPO with per-token rewards.

Each PPO step:

1. takes ``batch_size`` refinement prompts from ``filter/rl.jsonl`` (one per wrong solution and
   instruction type, ``RLPrompt``), cycling through them in a seeded shuffled order;
2. samples one answer each with the policy (transformers ``generate``, sampling at
   ``temperature``), keeping the sampled token ids;
3. splits each answer into explanation and code (``parsing.split_response``); for
   Expl.+Refine prompts the explanation's last token (``ppo.explanation_end_index``) is where
   ``R_expl`` goes;
4. executes the code in the sandbox (``S_ut`` = pass fraction, no code -> 0) and scores
   ``R_code`` / ``R_expl`` with ``rewards.score_batch`` against the correct refinements (and
   their explanations) of the same wrong solution;
5. runs ``ppo.ppo_step`` (KL to the reference = the same model with its LoRA adapters off).

The policy starts from the SFT adapter (``sft/model``) when there is one, else a fresh LoRA
adapter on the base model; the result says which. Outputs (``outputs/<run>/rl/``):
``metrics.jsonl`` (one line per step: rewards, pass rate, KL, losses, seconds per phase),
``samples.jsonl`` (every rollout with its scores), ``model/`` (the adapter, tokenizer and
``value_head.pt``), ``reward.png`` (mean reward per step), ``summary.json`` (what ``run_rl``
returns) and, with ``rl.eval_prompts > 0``, ``eval.json``: the mean reward on a fixed seeded
set of RL prompts sampled with the same seeds before and after training. The per-step means
come from different prompts each step, so they are too noisy to show learning on short runs;
the fixed set is the honest before/after comparison.

``algorithm: grpo | rloo``: trl's trainers with the same rewards summed into one number per
completion, for comparison (``run_trl_baseline``).

Multi-GPU: under ``accelerate launch`` (``sdlib train rl``) every process takes an equal share
of each step's rollouts, DDP averages the gradients, and metrics cover the whole batch.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sdlib.data.jsonl import JsonlWriter
from sdlib.prompting import prompts
from sdlib.runs.layout import RunLayout
from sdlib.runs.params import PPOConfig, RunParams
from sdlib.runs.plots import plot_rewards
from sdlib.training.policy import (
    REFERENCE_ADAPTER,
    VALUE_HEAD_FILE,
    _gather,
    _shard,
    load_policy,
    open_rl_run,
)
from sdlib.training.rollouts import (
    RLPrompt,
    Rollout,
    eval_prompt_set,
    generate_rollouts,
    prompt_batches,
)
from sdlib.training.scoring import paired_difference, reward_summary, score_rollouts
from sdlib.training.sft import trainable_checksum


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    from sdlib.data.jsonl import read_jsonl

    records, _bad = read_jsonl(RunLayout.of(run_dir).rl_metrics)
    return records


def ppo_fields(cfg: PPOConfig) -> dict[str, Any]:
    """The PPO hyper-parameters of ``params.rl``, as the summary records them."""
    return {name: getattr(cfg, name) for name in PPOConfig.model_fields}


def run_rl(params: RunParams, run_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Online RL from ``filter/rl.jsonl``; writes ``rl/`` and returns a summary (see module).

    Under ``accelerate launch`` (``sdlib train rl``) every process samples and scores its share
    of each step's prompts, DDP averages the gradients, the metrics are computed over the whole
    batch, and only the main process writes files.
    """
    if params.rl.algorithm in ("grpo", "rloo"):
        from sdlib.training.trl_baseline import run_trl_baseline

        return run_trl_baseline(params, run_dir, progress)
    if params.rl.algorithm != "ppo":
        raise ValueError(f"unknown rl.algorithm {params.rl.algorithm!r}")
    import torch
    from tqdm.auto import tqdm

    from sdlib.training.ppo import PolicyWithValueHead, disable_dropout, kl_controller, ppo_step

    cfg = params.rl
    run = open_rl_run(params, run_dir, progress)
    ctx, accelerator, items, problems = run.ctx, run.accelerator, run.items, run.problems
    layout, main, n_proc = ctx.layout, run.main, run.processes
    rank = accelerator.process_index
    rcfg = run.rewards
    device = accelerator.device
    eval_items = eval_prompt_set(items, cfg.eval_prompts, cfg.eval_samples, params.seed)
    torch.manual_seed(params.seed)  # the fresh adapter and the value head start identical
    t_run = time.perf_counter()
    metrics: list[dict[str, Any]] = []
    evals: dict[str, list[dict[str, Any]]] = {}
    with ctx:
        base_path = run.base_model()
        sandbox = ctx.sandbox
        peft_model, tokenizer, start = load_policy(base_path, run_dir, params, device.type)
        peft_model.to(device)
        reference = REFERENCE_ADAPTER if start == "sft_adapter" else None
        model = PolicyWithValueHead(
            peft_model, reference_adapter=reference, detach_value=cfg.detach_value
        )
        disable_dropout(model)
        rates = run.learning_rates(start)
        head = {id(p) for p in model.value_head.parameters()}
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            [
                {"params": [p for p in trainable if id(p) not in head], "lr": rates["policy"]},
                {"params": [p for p in trainable if id(p) in head], "lr": rates["value_head"]},
            ]
        )
        model, optimizer = accelerator.prepare(model, optimizer)
        kl_ctl = kl_controller(cfg)
        chat_tokenizer, stop = run.chat_layout(tokenizer)
        special = {"add_special_tokens": False} if chat_tokenizer is not None else {}
        query_cache: dict[str, list[int]] = {}

        def rollout(batch: list[RLPrompt]) -> tuple[list[Rollout], list[dict], list[float]]:
            """Sample and score one answer per prompt: (rollouts, scored rows, seconds of
            generation, execution and rewards)."""
            t0 = time.perf_counter()
            for item in batch:
                if item.id not in query_cache:
                    text = prompts.render_chat(item.messages, chat_tokenizer)
                    query_cache[item.id] = tokenizer(text, **special)["input_ids"]
            peft_model.eval()
            rollouts = generate_rollouts(
                peft_model,
                tokenizer,
                [query_cache[i.id] for i in batch],
                cfg.max_new_tokens,
                cfg.temperature,
                stop,
                params.model.batch_size,
            )
            t_gen = time.perf_counter() - t0
            scored, t_exec, t_rewards = score_rollouts(
                batch, rollouts, problems, sandbox, tokenizer, rcfg
            )
            return rollouts, scored, [t_gen, t_exec, t_rewards]

        def check(phase: str) -> None:
            """Score the fixed eval prompts with fixed sampling seeds (per process)."""
            if not eval_items:
                return
            torch.manual_seed(params.seed + 104729 + rank)
            mine = _shard(list(enumerate(eval_items)), accelerator)
            _, scored, _ = rollout([item for _, item in mine])
            rows = [{"index": k, **s} for (k, _), s in zip(mine, scored, strict=True)]
            evals[phase] = sorted(_gather(rows, accelerator), key=lambda r: r["index"])

        check("before")
        torch.manual_seed(params.seed + rank)
        batches = prompt_batches(items, cfg.batch_size, params.seed)
        samples_log = run.samples_log()
        if main:
            layout.rl_metrics.write_text("")
            metrics_log = JsonlWriter(layout.rl_metrics, fsync=False)
        bar = tqdm(range(cfg.steps), desc="PPO", unit="step", disable=not (progress and main))
        for step in bar:
            t0 = time.perf_counter()
            rollouts, scored, (t_gen, t_exec, t_rewards) = rollout(
                _shard(next(batches), accelerator)
            )
            t2 = time.perf_counter()
            samples = [
                {
                    "query_ids": r.query_ids,
                    "response_ids": r.response_ids,
                    "r_code": s["r_code"],
                    "r_expl": s["r_expl"] if s["expl_end"] is not None else None,
                    "expl_end": s["expl_end"],
                }
                for r, s in zip(rollouts, scored, strict=True)
            ]
            model.train()
            stats = ppo_step(
                model,
                None,
                samples,
                optimizer,
                cfg,
                kl_ctl,
                tokenizer.pad_token_id,
                accelerator=accelerator,
            )
            t3 = time.perf_counter()
            scored = _gather(scored, accelerator)  # the whole batch, on every process
            step_seconds = t3 - t0
            row = {
                "step": step,
                **{k: v for k, v in reward_summary(scored).items() if k != "n"},
                "kl": stats["objective/kl"],
                "kl_coef": stats["objective/kl_coef"],
                "policy_loss": stats.get("ppo/policy_loss"),
                "value_loss": stats.get("ppo/value_loss"),
                "entropy": stats.get("ppo/entropy"),
                "clipfrac": stats.get("ppo/clipfrac"),
                "response_len": stats["ppo/response_len"],
                "seconds_generation": round(t_gen, 3),
                "seconds_execution": round(t_exec, 3),
                "seconds_rewards": round(t_rewards, 3),
                "seconds_update": round(t3 - t2, 3),
                "seconds_step": round(step_seconds, 3),
                "reward_share": round((t_exec + t_rewards) / max(step_seconds, 1e-9), 4),
                "processes": n_proc,
                "ppo": stats,
            }
            metrics.append(row)
            if main:
                metrics_log.write(row)
                samples_log.write_many({"step": step, **s} for s in scored)
            bar.set_postfix(reward=f"{row['reward_mean']:.2f}", kl=f"{row['kl']:.3f}")
        check("after")
        if main:
            metrics_log.close()
            samples_log.close()
    unwrapped = accelerator.unwrap_model(model)
    model_dir = layout.rl_model
    evaluation = _eval_report(evals, cfg, params.seed) if evals else None
    if main:
        unwrapped.policy.save_pretrained(str(model_dir), selected_adapters=["default"])
        tokenizer.save_pretrained(str(model_dir))
        torch.save(unwrapped.value_head.state_dict(), model_dir / VALUE_HEAD_FILE)
        plot_rewards(metrics, layout.rl_reward_plot)
        import matplotlib.pyplot as plt

        plt.close("all")
        if evaluation is not None:
            layout.rl_eval.write_text(json.dumps(evaluation, indent=1))
    accelerator.wait_for_everyone()
    seconds = time.perf_counter() - t_run
    sums = {
        k: sum(m[k] for m in metrics)
        for k in (
            "seconds_generation",
            "seconds_execution",
            "seconds_rewards",
            "seconds_update",
            "seconds_step",
        )
    }
    summary = {
        **ctx.note(),
        "algorithm": "ppo",
        "start": start,
        "base_model": base_path,
        "adapter": str(model_dir),
        "device": str(device),
        "processes": n_proc,
        "prompts": len(items),
        "prompts_by_mode": dict(sorted(Counter(i.mode for i in items).items())),
        "prompts_with_reference_code": sum(bool(i.reference_code) for i in items),
        "steps": len(metrics),
        "batch_size": cfg.batch_size,
        "reward_first": metrics[0]["reward_mean"] if metrics else None,
        "reward_last": metrics[-1]["reward_mean"] if metrics else None,
        "pass_rate_last": metrics[-1]["pass_rate"] if metrics else None,
        "kl_last": metrics[-1]["kl"] if metrics else None,
        **(
            {
                "reward_before": evaluation["before"]["reward_mean"],
                "reward_after": evaluation["after"]["reward_mean"],
                "reward_change": evaluation["difference"]["mean"],
                "reward_change_stderr": evaluation["difference"]["stderr"],
            }
            if evaluation
            else {}
        ),
        "reward_config": asdict(rcfg),
        "ppo_config": ppo_fields(cfg),
        "learning_rates": rates,
        "trainable_checksum": trainable_checksum(unwrapped),
        "seconds": round(seconds, 1),
        **{k: round(v, 2) for k, v in sums.items()},
        "reward_share": round(
            (sums["seconds_execution"] + sums["seconds_rewards"]) / max(sums["seconds_step"], 1e-9),
            4,
        ),
    }
    return run.save_summary(summary)


def _eval_report(evals: dict[str, list[dict[str, Any]]], cfg: Any, seed: int) -> dict[str, Any]:
    """``rl/eval.json``: the fixed-prompt check before and after training, paired by sample."""
    totals = {
        phase: [s["r_code"] + (s["r_expl"] or 0.0) for s in rows] for phase, rows in evals.items()
    }
    return {
        "what": "mean reward on a fixed seeded subset of the RL prompts, sampled with the same "
        "seeds before and after RL (paired by sample)",
        "prompts": cfg.eval_prompts,
        "samples_per_prompt": cfg.eval_samples,
        "seed": seed,
        "before": reward_summary(evals["before"]),
        "after": reward_summary(evals["after"]),
        "difference": paired_difference(totals["before"], totals["after"]),
        "samples": [
            {
                "index": b["index"],
                "prompt": b["prompt"],
                "mode": b["mode"],
                "reward_before": tb,
                "reward_after": ta,
                "status_before": b["status"],
                "status_after": a["status"],
            }
            for b, a, tb, ta in zip(
                evals["before"], evals["after"], totals["before"], totals["after"], strict=True
            )
        ],
    }
