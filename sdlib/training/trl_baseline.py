"""The comparison to PPO: TRL's GRPO or RLOO trainer on the same prompts, with the same two
rewards summed into one number per completion (``rl.algorithm: grpo | rloo``)."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sdlib.data.jsonl import write_jsonl
from sdlib.prompting import prompts
from sdlib.runs.params import RunParams
from sdlib.runs.plots import plot_rewards
from sdlib.training.policy import _gather, load_policy, open_rl_run
from sdlib.training.rollouts import Rollout
from sdlib.training.scoring import reward_summary, score_rollouts
from sdlib.training.sft import trainable_checksum


def _group_size(batch_size: int) -> int:
    for size in (8, 4, 2):
        if batch_size % size == 0 and batch_size > size:
            return size
    if batch_size < 2:
        raise ValueError("grpo/rloo need rl.batch_size >= 2 (completions are compared per group)")
    return batch_size


def run_trl_baseline(
    params: RunParams, run_dir: str | Path, progress: bool = True
) -> dict[str, Any]:
    """The comparison: trl's GRPOTrainer (or RLOOTrainer) with one number per completion,
    ``R_code + R_expl`` (missing R_expl counts 0), computed as in PPO (sandbox + rewards).

    A sequence-level reward cannot tell the explanation from the code, which is what PPO's
    per-token placement is for. Completions of the plain chat layout are cut at its stop
    strings before parsing (trl has no stop strings; the tokens after still count). Groups of
    ``_group_size(batch_size)`` completions share a prompt; ``kl_coef`` is trl's ``beta``.
    Writes the same ``rl/`` files as PPO (``metrics.jsonl`` from trl's logs plus the reward
    statistics of each generation batch). Under ``accelerate launch`` trl shards the
    generation batch (``rl.batch_size`` stays the global number of completions per step); the
    reward function gathers every process's rows, so the statistics cover the whole batch, and
    only the main process writes.
    """
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback

    from sdlib.generation.backends import truncate_at_stop

    cfg = params.rl
    run = open_rl_run(params, run_dir, progress)
    ctx, accelerator, items, problems = run.ctx, run.accelerator, run.items, run.problems
    layout, main, n_proc = ctx.layout, run.main, run.processes
    by_id = {i.id: i for i in items}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    group = _group_size(cfg.batch_size)
    calls: list[dict[str, Any]] = []
    step_times: list[float] = []
    t_run = time.perf_counter()

    with ctx:
        base_path = run.base_model()
        sandbox = ctx.sandbox
        peft_model, tokenizer, start = load_policy(base_path, ctx.run_dir, params, device)
        chat_tokenizer, stop = run.chat_layout(tokenizer)
        rates = run.learning_rates(start)
        dataset = Dataset.from_list(
            [
                {"prompt": prompts.render_chat(i.messages, chat_tokenizer), "rl_id": i.id}
                for i in items
            ]
        )

        samples_log = run.samples_log()

        def reward(completions: list, rl_id: list[str], **_: Any) -> list[float]:
            """One number per completion, R_code + R_expl, scored as PPO scores its rollouts."""
            batch = [by_id[i] for i in rl_id]
            texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
            rollouts = [Rollout([], [], truncate_at_stop(t, stop)[0], "") for t in texts]
            scored, t_exec, t_rewards = score_rollouts(
                batch, rollouts, problems, sandbox, None, run.rewards
            )
            local = [s["r_code"] + (s["r_expl"] or 0.0) for s in scored]
            # trl calls this on every process with its share: statistics of the whole batch
            scored = _gather(scored, accelerator)
            summary = {k: v for k, v in reward_summary(scored).items() if k != "n"}
            calls.append(
                {
                    **summary,
                    "seconds_execution": round(t_exec, 3),
                    "seconds_rewards": round(t_rewards, 3),
                }
            )
            if samples_log is not None:
                samples_log.write_many({"step": len(calls) - 1, **s} for s in scored)
            return local

        class StepTimer(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                self.t = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                step_times.append(time.perf_counter() - self.t)

        common = dict(
            output_dir=str(layout.rl_trl),
            max_steps=cfg.steps,
            learning_rate=rates["policy"],
            per_device_train_batch_size=cfg.batch_size // n_proc,
            generation_batch_size=cfg.batch_size,
            num_generations=group,
            max_completion_length=cfg.max_new_tokens,
            temperature=cfg.temperature,
            beta=cfg.kl_coef,
            use_cpu=device == "cpu",
            bf16=False,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            seed=params.seed,
            disable_tqdm=not progress,
        )
        if cfg.algorithm == "grpo":
            from trl import GRPOConfig as Config
            from trl import GRPOTrainer as Trainer
        else:
            from trl import RLOOConfig as Config
            from trl import RLOOTrainer as Trainer
        trainer = Trainer(
            model=peft_model,
            reward_funcs=reward,
            args=Config(**common),
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[StepTimer()],
        )
        trainer.train()
        if samples_log is not None:
            samples_log.close()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    metrics = []
    for step, call in enumerate(calls):
        log = logs[step] if step < len(logs) else {}
        seconds = step_times[step] if step < len(step_times) else None
        row = {
            "step": step,
            **call,
            "kl": log.get("kl"),
            "loss": log.get("loss"),
            "seconds_step": round(seconds, 3) if seconds else None,
            "reward_share": round(
                (call["seconds_execution"] + call["seconds_rewards"]) / seconds, 4
            )
            if seconds
            else None,
            "trl": log,
        }
        metrics.append(row)
    model_dir = layout.rl_model
    trainer.save_model(str(model_dir))  # the main process writes
    if main:
        write_jsonl(layout.rl_metrics, metrics)
        tokenizer.save_pretrained(str(model_dir))
        plot_rewards(metrics, layout.rl_reward_plot)
        import matplotlib.pyplot as plt

        plt.close("all")
    summary = {
        **ctx.note(),
        "algorithm": cfg.algorithm,
        "start": start,
        "base_model": base_path,
        "adapter": str(model_dir),
        "device": device,
        "prompts": len(items),
        "group_size": group,
        "processes": n_proc,
        "steps": len(metrics),
        "batch_size": cfg.batch_size,
        "reward_first": metrics[0]["reward_mean"] if metrics else None,
        "reward_last": metrics[-1]["reward_mean"] if metrics else None,
        "reward_config": asdict(run.rewards),
        "learning_rates": rates,
        "trainable_checksum": trainable_checksum(trainer.model),
        "seconds": round(time.perf_counter() - t_run, 1),
    }
    run.save_summary(summary)
    accelerator.wait_for_everyone()
    return summary
