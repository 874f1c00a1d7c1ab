"""The policy and the run that PPO and the TRL baseline share: where the policy starts (the
SFT adapter, a full SFT model or the base model, with a LoRA adapter), this process's
``accelerate`` state and its share of a batch, and the RL prompts with their problems."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdlib.data.jsonl import JsonlWriter
from sdlib.execution.problems import Problem
from sdlib.prompting import prompts
from sdlib.runs.context import StageContext
from sdlib.runs.layout import RunLayout
from sdlib.runs.params import PPOConfig, RunParams
from sdlib.training.rewards import RewardConfig
from sdlib.training.rollouts import RLPrompt, limit_prompts, load_rl_prompts
from sdlib.training.scoring import reward_config

REFERENCE_ADAPTER = "reference"
VALUE_HEAD_FILE = "value_head.pt"


def load_policy(base_path: str, run_dir: Path, params: RunParams, device: str) -> tuple:
    """(peft model, tokenizer, start) where start says where the policy came from:

    * ``"sft_adapter"``: the LoRA adapter in ``sft/model``, trained further (a frozen copy
      is loaded as the adapter ``REFERENCE_ADAPTER``: the KL reference is the SFT model);
    * ``"sft_full+fresh_lora"``: a full (or merged) SFT model in ``sft/model`` with a new adapter;
    * ``"base+fresh_lora"``: no SFT output, a new adapter on the base model.

    Otherwise the reference is the same network with the adapter disabled (the full SFT
    model, or the base model).
    """
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sdlib.generation.backends import _resolve_dtype
    from sdlib.generation.models import saved_model

    sft = RunLayout.of(run_dir).sft_model
    dtype = _resolve_dtype(params.model.dtype, device)
    saved = saved_model(sft)
    if saved == "adapter":
        start, model_path = "sft_adapter", base_path
    elif saved == "full":
        start, model_path = "sft_full+fresh_lora", str(sft)
    else:
        start, model_path = "base+fresh_lora", base_path
    tok_path = sft if (sft / "tokenizer_config.json").is_file() else model_path
    tokenizer = AutoTokenizer.from_pretrained(str(tok_path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device)
    if start == "sft_adapter":
        model = PeftModel.from_pretrained(base, str(sft), is_trainable=True)
        # the KL reference: the SFT model, i.e. a frozen copy of the same adapter
        model.load_adapter(str(sft), adapter_name=REFERENCE_ADAPTER, is_trainable=False)
        model.set_adapter("default")
    else:
        lora = LoraConfig(
            r=params.rl.lora_r or params.sft.lora_r,
            lora_alpha=params.rl.lora_alpha or params.sft.lora_alpha,
            lora_dropout=0.0,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(base, lora)
    for p in model.parameters():  # LoRA weights train in float32 even on a bf16 base
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    return model, tokenizer, start


def _accelerator(device: str) -> Any:
    """This process's ``accelerate.Accelerator``: a single process in a notebook, one of N
    under ``accelerate launch`` (gloo on CPUs, nccl on GPUs)."""
    from accelerate import Accelerator

    return Accelerator(cpu=device == "cpu")


def _shard(items: Sequence[Any], accelerator: Any) -> list[Any]:
    """This process's share of a global batch (every process sees the same global batch)."""
    return list(items)[accelerator.process_index :: accelerator.num_processes]


def _gather(rows: list[Any], accelerator: Any) -> list[Any]:
    """Every process's rows, in process order, on every process (a no-op in one process)."""
    if accelerator.num_processes == 1:
        return rows
    from accelerate.utils import gather_object

    return [row for part in gather_object([rows]) for row in part]


@dataclass
class RLRun:
    """What PPO and the TRL baseline share: the stage context, this process's accelerator,
    the RL prompts, the training problems they name and the reward settings."""

    ctx: StageContext
    accelerator: Any
    items: list[RLPrompt]
    problems: dict[str, Problem]
    rewards: RewardConfig

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def processes(self) -> int:
        return self.accelerator.num_processes

    def base_model(self) -> str:
        """The base weights; the embedded default is built once, by the main process."""
        from sdlib.generation.models import model_path

        params = self.ctx.params
        with self.accelerator.main_process_first():
            return model_path(params.model, params, self.ctx.sandbox)

    def chat_layout(self, tokenizer: Any) -> tuple[Any, list[str]]:
        """(tokenizer for the chat template or None, stop strings) of the refinement chats."""
        chat_tokenizer = tokenizer if self.ctx.params.model.chat else None
        stop = [] if prompts._has_chat_template(chat_tokenizer) else list(prompts.STOP_PLAIN_CHAT)
        return chat_tokenizer, stop

    def learning_rates(self, start: str) -> dict[str, Any]:
        """The rates for where the policy starts (``learning_rates``), in the manifest too."""
        rates = learning_rates(self.ctx.params.rl, start)
        if self.main:
            from sdlib.runs.manifest import update_manifest

            update_manifest(self.ctx.run_dir, rl_learning_rates=rates)
        return rates

    def save_summary(self, summary: dict[str, Any]) -> dict[str, Any]:
        """``rl/summary.json``, the one file any algorithm's run is read from (main process)."""
        if self.main:
            import json

            self.ctx.layout.rl_summary.write_text(json.dumps(summary, indent=1))
        return summary

    def samples_log(self) -> JsonlWriter | None:
        """``rl/samples.jsonl``, started afresh; written by the main process only."""
        if not self.main:
            return None
        self.ctx.layout.rl_samples.write_text("")
        return JsonlWriter(self.ctx.layout.rl_samples, fsync=False)


def open_rl_run(params: RunParams, run_dir: str | Path, progress: bool) -> RLRun:
    """Check the process count, read the RL prompts and their problems; the sandbox opens
    when first used and closes with ``run.ctx``."""
    import torch

    cfg = params.rl
    accelerator = _accelerator("cuda" if torch.cuda.is_available() else "cpu")
    n_proc = accelerator.num_processes
    if cfg.batch_size % n_proc:
        raise ValueError(
            f"rl.batch_size {cfg.batch_size} must be divisible by the {n_proc} processes "
            "(every process takes an equal share of each step's rollouts)"
        )
    ctx = StageContext.open(params, run_dir, progress)
    ctx.records_manifest = accelerator.is_main_process
    if accelerator.is_main_process:
        ctx.layout.rl.mkdir(parents=True, exist_ok=True)
    items = limit_prompts(load_rl_prompts(run_dir), cfg.max_prompts, params.seed)
    problems = {p.task_id: p for p in ctx.training_problems()}
    missing = sorted({i.task_id for i in items} - set(problems))
    if missing:
        raise ValueError(f"rl.jsonl names problems outside the training set: {missing[:5]}")
    return RLRun(ctx, accelerator, items, problems, reward_config(params))


ADAPTER_LR_FACTOR = 10.0  # fresh LoRA on a full SFT model: this many times the full-weight rate


def learning_rates(cfg: PPOConfig, start: str) -> dict[str, Any]:
    """The policy's and the value head's learning rates for where the policy starts, and the
    rule that chose them (written into the summary and the manifest)."""
    if start == "sft_full+fresh_lora":
        if cfg.adapter_learning_rate is not None:
            policy, rule = (
                cfg.adapter_learning_rate,
                "rl.adapter_learning_rate (fresh LoRA on full SFT)",
            )
        else:
            policy = ADAPTER_LR_FACTOR * cfg.learning_rate
            rule = f"{ADAPTER_LR_FACTOR:g} x rl.learning_rate (fresh LoRA on a full SFT model)"
    else:
        policy, rule = cfg.learning_rate, "rl.learning_rate"
    value = cfg.value_head_learning_rate if cfg.value_head_learning_rate is not None else policy
    return {"start": start, "policy": policy, "value_head": value, "rule": rule}
