"""Stage 4 (method §4): online RL on refinement prompts, PPO with per-token rewards.

Each PPO step:

1. takes ``batch_size`` refinement prompts from ``filter/rl.jsonl`` (one per wrong solution and
   instruction type, ``RLPrompt``), cycling through them in a seeded shuffled order;
2. samples one answer each with the policy (transformers ``generate``, sampling at
   ``temperature``), keeping the sampled token ids;
3. splits each answer into explanation and code (``prompts.split_response``); for
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
import random
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import prompts
from .answers import judge_programs, read_answer
from .layout import RunLayout
from .params import RunParams
from .records import RLRecord, read_records
from .rewards import RewardConfig
from .sft import trainable_checksum

REFERENCE_ADAPTER = "reference"
VALUE_HEAD_FILE = "value_head.pt"


# ----------------------------------------------------------------------------------- prompts


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


def reward_config(params: RunParams) -> RewardConfig:
    """params.rl -> RewardConfig (None constants keep RewardConfig's defaults)."""
    rl = params.rl
    overrides: dict[str, Any] = {"embedding_model": rl.embedding_model}
    for name in ("expl_scale", "expl_offset", "expl_divisor"):
        if getattr(rl, name) is not None:
            overrides[name] = getattr(rl, name)
    return RewardConfig(**overrides)


# ------------------------------------------------------------------------------------ model


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

    from .generation import _resolve_dtype

    sft = RunLayout.of(run_dir).sft_model
    dtype = _resolve_dtype(params.model.dtype, device)
    if (sft / "adapter_config.json").is_file():
        start, model_path = "sft_adapter", base_path
    elif (sft / "config.json").is_file():
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
            r=params.sft.lora_r,
            lora_alpha=params.sft.lora_alpha,
            lora_dropout=0.0,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(base, lora)
    for p in model.parameters():  # LoRA weights train in float32 even on a bf16 base
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    return model, tokenizer, start


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

    from .generation import _stop_string_criteria, truncate_at_stop
    from .ppo import response_token_offsets

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


# ------------------------------------------------------------------------------------ scoring


def explanation_end(tokenizer: Any, rollout: Rollout, parsed: prompts.ParsedResponse) -> int:
    """Token index of the explanation's end in an Expl.+Refine answer.

    The explanation ends where the chosen code block starts (``parsed.span[0]``), or, without
    code, at the end of the text. An answer that opens with its code has no explanation token:
    the explanation reward (for a blank explanation) then lands on its first token.
    """
    from .ppo import explanation_end_index, response_token_offsets

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
    """Per rollout: parsed code, verdict, rewards and ``expl_end``; plus the seconds spent on
    execution and on CodeBLEU + embeddings."""
    from .rewards import score_batch

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
        if item.mode == "expl_refine" and sc["r_expl"] is not None:
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


# ----------------------------------------------------------------------------------- the run


def _mean(values: Sequence[float | None]) -> float | None:
    real = [v for v in values if v is not None]
    return sum(real) / len(real) if real else None


def plot_rewards(metrics: Sequence[dict[str, Any]], save: Path | None = None):
    """Mean R_code, R_expl and their sum per step."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    steps = [m["step"] for m in metrics]
    for key, label in (
        ("reward_mean", "R_code + R_expl"),
        ("r_code_mean", "R_code"),
        ("r_expl_mean", "R_expl (Expl.+Refine)"),
    ):
        pts = [(s, m[key]) for s, m in zip(steps, metrics) if m.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=label)
    ax.set_xlabel("PPO step")
    ax.set_ylabel("mean reward")
    ax.set_ylim(-5.2, 5.2)
    ax.axhline(0, color="grey", lw=0.5)
    ax.legend(fontsize=8)
    ax.set_title("RL: mean reward per step")
    fig.tight_layout()
    if save is not None:
        save.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(save, dpi=110)
    return fig


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    from .jsonl import read_jsonl

    records, _bad = read_jsonl(RunLayout.of(run_dir).rl_metrics)
    return records


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


def eval_prompt_set(items: Sequence[RLPrompt], n: int, samples: int, seed: int) -> list[RLPrompt]:
    """The fixed prompts of the before/after check: a seeded sample of ``n`` RL prompts, each
    repeated ``samples`` times (independent of the training order)."""
    chosen = random.Random(seed + 7919).sample(list(items), min(n, len(items)))
    return [item for item in chosen for _ in range(samples)]


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


def run_rl(params: RunParams, run_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Online RL from ``filter/rl.jsonl``; writes ``rl/`` and returns a summary (see module).

    Under ``accelerate launch`` (``sdlib train rl``) every process samples and scores its share
    of each step's prompts, DDP averages the gradients, the metrics are computed over the whole
    batch, and only the main process writes files.
    """
    if params.rl.algorithm in ("grpo", "rloo"):
        return run_trl_baseline(params, run_dir, progress)
    if params.rl.algorithm != "ppo":
        raise ValueError(f"unknown rl.algorithm {params.rl.algorithm!r}")
    import torch
    from tqdm.auto import tqdm

    from .default_model import DISCLAIMER, training_problems
    from .models import model_path
    from .pipeline import record_sandbox, sandbox_for
    from .ppo import PolicyWithValueHead, PPOConfig, disable_dropout, kl_controller, ppo_step

    cfg = params.rl
    run_dir = Path(run_dir)
    layout = RunLayout.of(run_dir)

    accelerator = _accelerator("cuda" if torch.cuda.is_available() else "cpu")
    main = accelerator.is_main_process
    n_proc, rank = accelerator.num_processes, accelerator.process_index
    if cfg.batch_size % n_proc:
        raise ValueError(
            f"rl.batch_size {cfg.batch_size} must be divisible by the {n_proc} processes "
            "(every process takes an equal share of each step's rollouts)"
        )
    if main:
        layout.rl.mkdir(parents=True, exist_ok=True)
    items = limit_prompts(load_rl_prompts(run_dir), cfg.max_prompts, params.seed)
    problems = {p.task_id: p for p in training_problems(params)}
    missing = sorted({i.task_id for i in items} - set(problems))
    if missing:
        raise ValueError(f"rl.jsonl names problems outside the training set: {missing[:5]}")
    rcfg = reward_config(params)
    device = accelerator.device
    local_batch = cfg.batch_size // n_proc
    ppo_cfg = PPOConfig(
        learning_rate=cfg.learning_rate,
        batch_size=local_batch,
        mini_batch_size=min(cfg.mini_batch_size, local_batch),
        micro_batch_size=4,
        ppo_epochs=cfg.ppo_epochs,
        gamma=cfg.gamma,
        lam=cfg.lam,
        kl_coef=cfg.kl_coef,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        seed=params.seed,
    )
    eval_items = eval_prompt_set(items, cfg.eval_prompts, cfg.eval_samples, params.seed)
    torch.manual_seed(params.seed)  # the fresh adapter and the value head start identical
    t_run = time.perf_counter()
    metrics: list[dict[str, Any]] = []
    evals: dict[str, list[dict[str, Any]]] = {}
    with sandbox_for(params) as sandbox:
        with accelerator.main_process_first():  # the tiny model is built once, by the main
            base_path = model_path(params.model, params, sandbox)
        if main:
            record_sandbox(run_dir, sandbox)
        peft_model, tokenizer, start = load_policy(base_path, run_dir, params, device.type)
        peft_model.to(device)
        reference = REFERENCE_ADAPTER if start == "sft_adapter" else None
        model = PolicyWithValueHead(
            peft_model, reference_adapter=reference, detach_value=cfg.detach_value
        )
        disable_dropout(model)
        optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate
        )
        model, optimizer = accelerator.prepare(model, optimizer)
        kl_ctl = kl_controller(ppo_cfg)
        chat_tokenizer = tokenizer if params.model.chat else None
        stop = [] if prompts._has_chat_template(chat_tokenizer) else list(prompts.STOP_PLAIN_CHAT)
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
        if main:
            layout.rl_metrics.write_text("")
            layout.rl_samples.write_text("")
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
                ppo_cfg,
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
                with open(layout.rl_metrics, "a") as handle:
                    handle.write(json.dumps(row) + "\n")
                with open(layout.rl_samples, "a") as handle:
                    for s in scored:
                        handle.write(json.dumps({"step": step, **s}) + "\n")
            bar.set_postfix(reward=f"{row['reward_mean']:.2f}", kl=f"{row['kl']:.3f}")
        check("after")
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
        **({"note": DISCLAIMER} if params.model.kind == "tiny" else {}),
        "algorithm": "ppo",
        "start": start,
        "base_model": base_path,
        "adapter": str(model_dir),
        "device": str(device),
        "processes": n_proc,
        "prompts": len(items),
        "prompts_by_mode": dict(sorted(_count(i.mode for i in items).items())),
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
        "ppo_config": asdict(ppo_cfg),
        "trainable_checksum": trainable_checksum(unwrapped),
        "seconds": round(seconds, 1),
        **{k: round(v, 2) for k, v in sums.items()},
        "reward_share": round(
            (sums["seconds_execution"] + sums["seconds_rewards"]) / max(sums["seconds_step"], 1e-9),
            4,
        ),
    }
    if main:
        layout.rl_summary.write_text(json.dumps(summary, indent=1))
    return summary


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


def _count(values: Iterator[str]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for v in values:
        counts[v] += 1
    return counts


# ------------------------------------------------------------------------- GRPO / RLOO (trl)


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

    from .default_model import DISCLAIMER, training_problems
    from .generation import truncate_at_stop
    from .models import model_path
    from .pipeline import record_sandbox, sandbox_for
    from .rewards import score_batch

    cfg = params.rl
    run_dir = Path(run_dir)
    layout = RunLayout.of(run_dir)

    accelerator = _accelerator("cuda" if torch.cuda.is_available() else "cpu")
    main, n_proc = accelerator.is_main_process, accelerator.num_processes
    if cfg.batch_size % n_proc:
        raise ValueError(f"rl.batch_size {cfg.batch_size} must be divisible by {n_proc} processes")
    if main:
        layout.rl.mkdir(parents=True, exist_ok=True)
    items = limit_prompts(load_rl_prompts(run_dir), cfg.max_prompts, params.seed)
    by_id = {i.id: i for i in items}
    problems = {p.task_id: p for p in training_problems(params)}
    rcfg = reward_config(params)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    group = _group_size(cfg.batch_size)
    calls: list[dict[str, Any]] = []
    step_times: list[float] = []
    t_run = time.perf_counter()

    with sandbox_for(params) as sandbox:
        with accelerator.main_process_first():
            base_path = model_path(params.model, params, sandbox)
        if main:
            record_sandbox(run_dir, sandbox)
        peft_model, tokenizer, start = load_policy(base_path, run_dir, params, device)
        chat_tokenizer = tokenizer if params.model.chat else None
        stop = [] if prompts._has_chat_template(chat_tokenizer) else list(prompts.STOP_PLAIN_CHAT)
        dataset = Dataset.from_list(
            [
                {"prompt": prompts.render_chat(i.messages, chat_tokenizer), "rl_id": i.id}
                for i in items
            ]
        )

        def reward(completions: list, rl_id: list[str], **_: Any) -> list[float]:
            batch = [by_id[i] for i in rl_id]
            texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
            rollouts = [Rollout([], [], truncate_at_stop(t, stop)[0], "") for t in texts]
            start_exec = time.perf_counter()
            parsed_rows = []
            for item, rollout in zip(batch, rollouts, strict=True):
                problem = problems[item.task_id]
                _, code, program, expl = parse_rollout(problem, item.mode, rollout.text)
                parsed_rows.append((problem, code, program, expl))
            verdicts = judge_programs(sandbox, [(r[0], r[2]) for r in parsed_rows])
            s_ut = [v.pass_fraction for v in verdicts]
            statuses = [v.status for v in verdicts]
            t_exec = time.perf_counter() - start_exec
            start_rewards = time.perf_counter()
            rows = score_batch(
                [r[1] or "" for r in parsed_rows],
                [i.reference_code for i in batch],
                s_ut,
                [r[3] for r in parsed_rows],
                [i.reference_explanations for i in batch],
                rcfg,
            )
            t_rewards = time.perf_counter() - start_rewards
            totals = [r["r_code"] + (r["r_expl"] or 0.0) for r in rows]
            local = totals
            # trl calls this on every process with its share: statistics of the whole batch
            batch = _gather(batch, accelerator)
            texts = _gather(texts, accelerator)
            rows = _gather(rows, accelerator)
            statuses = _gather(statuses, accelerator)
            s_ut = _gather(s_ut, accelerator)
            totals = [r["r_code"] + (r["r_expl"] or 0.0) for r in rows]
            calls.append(
                {
                    "reward_mean": _mean(totals),
                    "r_code_mean": _mean([r["r_code"] for r in rows]),
                    "r_expl_mean": _mean([r["r_expl"] for r in rows]),
                    "s_ut_mean": _mean(s_ut),
                    "pass_rate": _mean([float(st == "pass") for st in statuses]),
                    "no_code_rate": _mean([float(st == "no_code") for st in statuses]),
                    "seconds_execution": round(t_exec, 3),
                    "seconds_rewards": round(t_rewards, 3),
                }
            )
            if not main:
                return local
            with open(layout.rl_samples, "a") as handle:
                for item, text, r, st in zip(batch, texts, rows, statuses, strict=True):
                    handle.write(
                        json.dumps(
                            {
                                "step": len(calls) - 1,
                                "prompt": item.id,
                                "mode": item.mode,
                                "response": text,
                                "status": st,
                                **r,
                            }
                        )
                        + "\n"
                    )
            return local

        class StepTimer(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                self.t = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                step_times.append(time.perf_counter() - self.t)

        common = dict(
            output_dir=str(layout.rl_trl),
            max_steps=cfg.steps,
            learning_rate=cfg.learning_rate,
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
        if main:
            layout.rl_samples.write_text("")
        trainer = Trainer(
            model=peft_model,
            reward_funcs=reward,
            args=Config(**common),
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[StepTimer()],
        )
        trainer.train()
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
        layout.rl_metrics.write_text("".join(json.dumps(m) + "\n" for m in metrics))
        tokenizer.save_pretrained(str(model_dir))
        plot_rewards(metrics, layout.rl_reward_plot)
        import matplotlib.pyplot as plt

        plt.close("all")
    accelerator.wait_for_everyone()
    return {
        **({"note": DISCLAIMER} if params.model.kind == "tiny" else {}),
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
        "reward_config": asdict(rcfg),
        "trainable_checksum": trainable_checksum(trainer.model),
        "seconds": round(time.perf_counter() - t_run, 1),
    }
