"""Supervised fine-tuning on execution-verified trajectories (method §3, notebook 03).

The SFT set written by the filter stage (``outputs/<run>/filter/sft.jsonl``) mixes plain code
generation (``source: "initial"``) with correct refinements (``"refine"``, ``"expl_refine"``).
Each record becomes a prompt/completion pair (``prompts.split_chat_for_training``): the prompt
holds the task, the wrong solution as the assistant's first answer and the feedback turn; the
completion is only the final answer, so with TRL's ``completion_only_loss=True`` no loss falls
on the wrong solution in the history.

Training goes through TRL's ``SFTTrainer``: LoRA (PEFT, all linear layers) by default, full
fine-tuning, or QLoRA (bitsandbytes 4-bit, CUDA only). Held-out loss is measured before and
after training, on all held-out records and on the held-out *refinements* alone (what the
method is about; code-generation records are easier and would hide a regression). Outputs
under ``<run_dir>/sft/``: ``model/`` (adapter or full model, plus the tokenizer), ``merged/``
(when ``sft.merge``), ``metrics.json`` and ``loss.png``.

Multi-GPU: ``accelerate launch -m sdlib.workbench.cli train sft PARAMS --run-dir DIR`` runs the same
code in N processes; the Trainer shards the data (``sft.batch_size`` is per process),
synchronises gradients (DDP, or DeepSpeed/FSDP from the accelerate config), reduces the
logged losses, and only the main process writes files.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sdlib.data.records import SFTRecord, read_records
from sdlib.prompting import prompts
from sdlib.runs.context import StageContext
from sdlib.runs.layout import RunLayout
from sdlib.runs.params import RunParams

WARMUP_CAP = 0.1  # at most this share of the optimizer steps is warm-up
REFINEMENT_SOURCES = ("refine", "expl_refine")


def sft_file(run_dir: str | Path) -> Path:
    return RunLayout.of(run_dir).sft_set


def load_sft_records(run_dir: str | Path) -> list[dict[str, Any]]:
    path = sft_file(run_dir)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: run the collect and filter stages first "
            f"(sdlib run PARAMS --stages collect,filter)"
        )
    records = read_records(path, SFTRecord)
    if not records:
        raise ValueError(f"{path} holds no SFT records: the filter stage kept nothing to train on")
    return records


def sft_dataset(records: list[dict[str, Any]], tokenizer: Any = None):
    """A ``datasets.Dataset`` of prompt/completion pairs (plus ``id`` and ``source``).

    ``tokenizer``: the chat model's tokenizer (its chat template renders the chat), or None for
    sdlib's plain chat layout (base models and the tiny model).
    """
    from datasets import Dataset

    rows: dict[str, list[str]] = {"prompt": [], "completion": [], "id": [], "source": []}
    bos = _template_bos(tokenizer)
    for record in records:
        prompt, completion = training_pair(record, tokenizer)
        if bos and prompt.startswith(bos):
            prompt = prompt[len(bos) :]  # TRL's tokenizer call adds it again
        rows["prompt"].append(prompt)
        rows["completion"].append(completion)
        rows["id"].append(str(record.get("id", len(rows["id"]))))
        rows["source"].append(str(record.get("source", "")))
    return Dataset.from_dict(rows)


def training_pair(record: dict[str, Any], tokenizer: Any = None) -> tuple[str, str]:
    """(prompt, completion) of one SFT record, in the layout evaluation prompts the model in.

    A chat model (``tokenizer`` given) sees every record as its chat template renders it. A base
    model sees refinements in sdlib's plain chat layout, as the eval stage's refinement rounds
    show them, and first attempts as the few-shot completion text of collection and
    evaluation (``prompts.initial_prompt(style="base")``), its target the code and the fence."""
    if tokenizer is None and record.get("source") == "initial":
        if "completion_prompt" not in record:
            raise ValueError(
                f"SFT record {record.get('id')!r} has no completion_prompt: it was written by an "
                "older sdlib; rerun the filter stage (sdlib run PARAMS --stages filter --force)"
            )
        return record["completion_prompt"], record["completion"]
    return prompts.split_chat_for_training(record["messages"], record["final_answer"], tokenizer)


def _template_bos(tokenizer: Any) -> str:
    """The BOS text a chat template writes itself, when the tokenizer also adds BOS on its own
    (TRL tokenizes prompt/completion text with special tokens: without this, BOS twice)."""
    bos = getattr(tokenizer, "bos_token", None) if tokenizer is not None else None
    if not bos or tokenizer.bos_token_id is None:
        return ""
    ids = tokenizer("x")["input_ids"]
    return bos if ids and ids[0] == tokenizer.bos_token_id else ""


def fits(dataset, tokenizer: Any, max_length: int) -> list[bool]:
    """Whether each example's prompt + completion + EOS fits in ``max_length`` tokens (longer
    ones would be truncated from the end, cutting the answer the loss is about)."""
    eos = tokenizer.eos_token or ""
    out = []
    for prompt, completion in zip(dataset["prompt"], dataset["completion"]):
        text = prompt + completion
        if eos and not text.endswith(eos):
            text += eos
        out.append(len(tokenizer(text)["input_ids"]) <= max_length)
    return out


def held_out_split(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, held-out indices): a seeded shuffle; at least one held-out record when
    the fraction is positive and there are two or more records."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    k = 0
    if fraction > 0 and n >= 2:
        k = min(n - 1, max(1, round(fraction * n)))
    return sorted(order[k:]), sorted(order[:k])


def optimizer_steps(
    n_train: int, batch_size: int, grad_accum: int, epochs: float, processes: int = 1
) -> int:
    """Optimizer steps of a run: each of ``processes`` gets ``ceil(n_train / processes)``
    records (the distributed sampler's share) in batches of ``batch_size``."""
    per_process = math.ceil(n_train / max(1, processes))
    batches = math.ceil(per_process / batch_size)
    per_epoch = max(1, math.ceil(batches / grad_accum))
    return max(1, math.ceil(per_epoch * epochs))


def capped_warmup(requested: int, total_steps: int, tiny: bool = True) -> tuple[int, str]:
    """The warm-up steps to use and a note. On the embedded tiny model's short runs the
    paper-scale warm-up is capped at ``WARMUP_CAP`` of the steps; any other run keeps what it
    asked for, with a note when that is the whole run."""
    if not tiny:
        if requested < total_steps:
            return requested, ""
        return requested, (
            f"warmup_steps {requested} >= the run's {total_steps} optimizer steps: the learning "
            "rate never reaches sft.learning_rate (lower sft.warmup_steps)"
        )
    cap = int(WARMUP_CAP * total_steps)
    if requested <= cap:
        return requested, ""
    return cap, (
        f"warmup_steps {requested} capped to {cap} ({WARMUP_CAP:.0%} of {total_steps} "
        f"optimizer steps) so that a short run still trains at its learning rate"
    )


def _check_method(method: str) -> None:
    if method == "qlora":
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError(
                "sft.method 'qlora' needs a CUDA GPU (bitsandbytes 4-bit training); none is "
                "available here. Use sft.method: lora (or full) on this machine."
            )
    elif method not in ("lora", "full"):
        raise ValueError(f"unknown sft.method {method!r}; expected lora, full or qlora")


def _load_model(path: str, method: str, cuda: bool):
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.float32
    if cuda and torch.cuda.is_bf16_supported():
        dtype = torch.bfloat16
    if method == "qlora":
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        model = AutoModelForCausalLM.from_pretrained(
            path, quantization_config=quant, dtype=dtype, device_map={"": 0}
        )
        return prepare_model_for_kbit_training(model), dtype
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype), dtype


def _model_source(ctx: StageContext) -> str:
    """The weights to fine-tune; the embedded default is built (in the sandbox) when missing."""
    from sdlib.generation.models import model_path

    params = ctx.params
    if ctx.tiny:
        with ctx:
            return model_path(params.model, params, ctx.sandbox)
    if params.model.kind not in ("hf", "vllm"):
        raise ValueError(
            f"SFT needs local weights: model kind {params.model.kind!r} cannot be fine-tuned "
            f"here (use kind tiny, hf or vllm with a path)"
        )
    return model_path(params.model, params, None)


def build_trainer(
    params: RunParams,
    model_path: str,
    train_dataset,
    eval_dataset,
    output_dir: str | Path,
    progress: bool = True,
    warmup_steps: int | None = None,
):
    """The TRL ``SFTTrainer`` for ``params.sft`` (prompt/completion data, loss on completions)."""
    import torch
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    cfg = params.sft
    _check_method(cfg.method)
    cuda = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model, dtype = _load_model(model_path, cfg.method, cuda)
    peft_config = None
    if cfg.method in ("lora", "qlora"):
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
    args = SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        warmup_steps=cfg.warmup_steps if warmup_steps is None else warmup_steps,
        lr_scheduler_type=cfg.lr_scheduler,
        max_length=cfg.max_length,
        completion_only_loss=True,
        packing=False,
        seed=params.seed,
        data_seed=params.seed,
        use_cpu=not cuda,
        bf16=cuda and dtype == torch.bfloat16,
        fp16=False,
        logging_steps=1,
        logging_first_step=True,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        disable_tqdm=not progress,
        activation_checkpointing=cuda,  # memory on GPUs; only costs time on CPU
    )
    import datasets

    bars = datasets.is_progress_bar_enabled()
    if not progress:
        datasets.disable_progress_bars()  # TRL's dataset preparation: one bar per map
    try:
        return SFTTrainer(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
        )
    finally:
        if bars:
            datasets.enable_progress_bars()


def loss_plot(metrics: dict[str, Any], save: str | Path | None = None):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [x["step"] for x in metrics["train_losses"]]
    losses = [x["loss"] for x in metrics["train_losses"]]
    ax.plot(steps, losses, marker=".", label="train loss (completion tokens)")
    last = max(steps) if steps else 1
    if metrics.get("eval_loss_before") is not None:
        ax.scatter(
            [0], [metrics["eval_loss_before"]], color="tab:red", zorder=3, label="held-out before"
        )
        ax.scatter(
            [last],
            [metrics["eval_loss_after"]],
            color="tab:green",
            zorder=3,
            label="held-out after",
        )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(f"SFT ({metrics['method']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    if save is not None:
        fig.savefig(save, dpi=100)
    return fig


def _undo_eval_only_prepare(trainer: Any) -> None:
    """Let ``train()`` wrap the model in DDP after an ``evaluate()``.

    ``Trainer.evaluate()`` before ``train()`` prepares the model for evaluation only (no DDP)
    yet marks it prepared, and ``train()`` then skips the DDP wrap: every process silently
    trains its own copy on its own shard (transformers 5.24 / accelerate 1.15, found by
    tests/test_distributed.py). DeepSpeed and FSDP prepare fully in ``evaluate()`` and are
    left alone.
    """
    model = trainer.model
    if trainer.model_wrapped is model and getattr(model, "_is_accelerate_prepared", False):
        del model._is_accelerate_prepared


def _distributed_state():
    """accelerate's process state: one process in a notebook, N under ``accelerate launch``.
    Without CUDA the processes talk over gloo (``cpu=True``), which is what lets the multi-GPU
    code path run, and be tested, on a CPU machine."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def _merge(model_path: str, adapter_dir: Path, out_dir: Path, tokenizer) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_path)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def run_sft(params: RunParams, run_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Fine-tune ``params.model`` on the run's SFT set; return a summary (see module doc)."""
    import matplotlib.pyplot as plt
    from transformers import AutoTokenizer

    cfg = params.sft
    _check_method(cfg.method)
    records = load_sft_records(run_dir)
    ctx = StageContext.open(params, run_dir, progress)
    layout = ctx.layout
    out = layout.sft
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    state = _distributed_state()
    with state.main_process_first():  # the tiny model is built once, by the main process
        path = _model_source(ctx)
    tokenizer = AutoTokenizer.from_pretrained(path)
    dataset = sft_dataset(records, tokenizer if params.model.chat else None)
    ok = fits(dataset, tokenizer, cfg.max_length)
    dataset = dataset.select([i for i, f in enumerate(ok) if f])
    if len(dataset) == 0:
        raise ValueError(
            f"none of the {len(records)} SFT records fits sft.max_length={cfg.max_length} tokens"
        )
    train_idx, held_idx = held_out_split(len(dataset), cfg.held_out_fraction, params.seed)
    train_ds = dataset.select(train_idx)
    held_ds = dataset.select(held_idx) if held_idx else None
    held_refine = [
        k for k, src in enumerate(dataset.select(held_idx)["source"]) if src in REFINEMENT_SOURCES
    ]
    refine_ds = held_ds.select(held_refine) if held_ds is not None and held_refine else None

    total = optimizer_steps(
        len(train_ds),
        cfg.batch_size,
        cfg.gradient_accumulation_steps,
        cfg.epochs,
        processes=state.num_processes,
    )
    warmup, warmup_note = capped_warmup(cfg.warmup_steps, total, tiny=ctx.tiny)
    trainer = build_trainer(
        params, path, train_ds, held_ds, layout.sft_checkpoints, progress, warmup
    )

    def held_out_losses() -> tuple[float | None, float | None]:
        every = trainer.evaluate()["eval_loss"] if held_ds is not None else None
        refine = trainer.evaluate(refine_ds)["eval_loss"] if refine_ds is not None else None
        return every, refine

    before, refine_before = held_out_losses()
    _undo_eval_only_prepare(trainer)
    t_train = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - t_train
    after, refine_after = held_out_losses()

    main = trainer.accelerator.is_main_process
    model_dir = layout.sft_model
    trainer.save_model(str(model_dir))  # writes on the main process only
    merged_dir = None
    if main:
        trainer.processing_class.save_pretrained(model_dir)
        if cfg.merge and cfg.method in ("lora", "qlora"):
            merged_dir = layout.sft_merged
            _merge(path, model_dir, merged_dir, trainer.processing_class)
    trainer.accelerator.wait_for_everyone()

    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    every = sum(p.numel() for p in trainer.model.parameters())
    history = trainer.state.log_history
    metrics: dict[str, Any] = {
        "method": cfg.method,
        "base_model": path,
        "chat_template": bool(params.model.chat),
        "records": {
            "total": len(records),
            "fit_max_length": len(dataset),
            "too_long": len(records) - len(dataset),
            "train": len(train_ds),
            "held_out": len(held_idx),
            "held_out_refinements": len(held_refine),
            "by_source": dict(Counter(dataset["source"])),
        },
        "processes": trainer.accelerator.num_processes,
        "global_batch_size": cfg.batch_size
        * cfg.gradient_accumulation_steps
        * trainer.accelerator.num_processes,
        "optimizer_steps": trainer.state.global_step,
        "planned_steps": total,
        "warmup_steps_requested": cfg.warmup_steps,
        "warmup_steps": warmup,
        **({"warmup_note": warmup_note} if warmup_note else {}),
        "train_losses": [
            {"step": h["step"], "loss": h["loss"], "learning_rate": h.get("learning_rate")}
            for h in history
            if "loss" in h
        ],
        "eval_loss_before": before,
        "eval_loss_after": after,
        "eval_loss_refinement_before": refine_before,
        "eval_loss_refinement_after": refine_after,
        "trainable_parameters": trainable,
        "parameters": every,
        "seconds_train": round(train_seconds, 2),
        "seconds": round(time.perf_counter() - start, 2),
        "model_dir": str(model_dir),
        "merged_dir": str(merged_dir) if merged_dir else None,
    }
    metrics.update(ctx.note())
    if main:
        checkpoints = layout.sft_checkpoints
        if checkpoints.is_dir() and not any(checkpoints.iterdir()):
            checkpoints.rmdir()
        layout.sft_metrics.write_text(json.dumps(metrics, indent=1))
        fig = loss_plot(metrics, save=layout.sft_loss_plot)
        plt.close(fig)
    trainer.accelerator.wait_for_everyone()
    return {k: v for k, v in metrics.items() if k != "train_losses"} | {
        "final_train_loss": metrics["train_losses"][-1]["loss"]
        if metrics["train_losses"]
        else None,
        "trainable_checksum": trainable_checksum(trainer.model),
    }


def trainable_checksum(model: Any) -> float:
    """The sum of every trainable weight: the same on every process when the gradients were
    synchronised (each process saw different data), which is what the distributed test checks."""
    return float(sum(p.detach().double().sum() for p in model.parameters() if p.requires_grad))
