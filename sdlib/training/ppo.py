"""PPO for self-debugging (method §4), small enough to read in one sitting.

trl >= 1.13 has no PPO, and trl 1.12's takes only a reward *model*, while the method needs
per-token rewards: ``R_expl`` on the last explanation token, ``R_code`` on the final token and a
KL penalty on every token. So the PPO maths lives here, in the classic RLHF form (Ziegler et al.
2019, as in trl's old ``PPOTrainer``):

* per-token reward ``r_t = -kl_coef * KL_t`` (+ ``R_expl`` at ``expl_end``, + ``R_code`` at the end);
* advantages by GAE, the discounted sum of TD errors ``delta_t = r_t + gamma V_{t+1} - V_t``;
  returns = advantages + values; advantages whitened over the batch;
* clipped surrogate policy loss + ``vf_coef`` * clipped value loss; the value head is one linear
  layer on the policy's last hidden states.

Tensors are *response-aligned* and right-padded: column ``j`` of a ``[B, T]`` tensor is response
token ``j`` of row ``b``, and ``mask[b, j]`` says whether it exists. ``ppo_step`` does one PPO update
on a batch of already generated (query, response, rewards) samples; generation and reward
computation belong to the caller's online loop.

torch is imported at module top (this is a training module); transformers and peft are never
imported: any Hugging Face causal LM (``AutoModelForCausalLM``, optionally wrapped by peft) works.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from sdlib.runs.params import PPOConfig

__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "PPOConfig",
    "PPOLosses",
    "PPOSample",
    "PolicyWithValueHead",
    "ResponseBatch",
    "ResponseScores",
    "ValueHead",
    "collate_samples",
    "disable_dropout",
    "explanation_end_index",
    "gae_advantages",
    "kl_controller",
    "masked_mean",
    "masked_var",
    "place_rewards",
    "place_rewards_batch",
    "ppo_losses",
    "ppo_step",
    "response_token_offsets",
    "score_responses",
    "token_kl",
    "whiten",
]

KLEstimator = Literal["k1", "k2", "k3"]


# --------------------------------------------------------------------------------- config


# --------------------------------------------------------------------------- masked stats


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean over the positions where ``mask`` is true (padding must not dilute losses)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp_min(1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp_min(1.0)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance over the masked positions (Bessel-corrected by default, as trl)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum().to(x.dtype)
        var = var * n / (n - 1).clamp_min(1.0)
    return var


def whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalise advantages to unit variance (and zero mean) over the real tokens.

    Whitening keeps the policy step's size independent of the reward scale ([-5, 5] here).
    Padding positions come back as 0.
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


# ------------------------------------------------------------------------- KL and rewards


def token_kl(logprobs: Tensor, ref_logprobs: Tensor, estimator: KLEstimator = "k1") -> Tensor:
    """Per-token estimate of KL(policy || reference) at the sampled tokens.

    k1 = log p - log q (unbiased, can be negative per token; the classic RLHF penalty);
    k2 = (log p - log q)^2 / 2; k3 = (q/p - 1) - log(q/p) (unbiased and never negative).
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}")


class FixedKLController:
    """A constant KL coefficient."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Nothing to adapt."""


class AdaptiveKLController:
    """Ziegler et al.'s proportional controller: moves ``value`` so the KL tracks ``target``.

    ``current_kl`` is the mean per-*sequence* KL (sum over tokens) of the last batch; the
    coefficient changes by at most 20% x n_steps / horizon per update.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


def kl_controller(config: PPOConfig) -> FixedKLController | AdaptiveKLController:
    """The controller ``config`` asks for."""
    if config.adaptive_kl:
        return AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
    return FixedKLController(config.kl_coef)


def place_rewards(
    kl: Tensor,
    r_expl: float | None,
    expl_end: int | None,
    r_code: float,
    kl_coef: float,
) -> Tensor:
    """Per-token rewards of one response (method §4, "Placement").

    Every token gets ``-kl_coef * kl``; the last explanation token (``expl_end``) also gets
    ``r_expl`` and the final token ``r_code``, so that a right explanation followed by a wrong
    fix is not punished as a whole. Refine-only samples (``expl_end`` or ``r_expl`` None) get
    only ``r_code``. When ``expl_end`` is the final token both rewards add up there.
    """
    if kl.dim() != 1 or kl.numel() == 0:
        raise ValueError("kl must be a non-empty 1-D tensor")
    rewards = -kl_coef * kl.detach().clone()
    if r_expl is not None and expl_end is not None:
        if not 0 <= expl_end < kl.numel():
            raise ValueError(f"expl_end {expl_end} outside a response of {kl.numel()} tokens")
        rewards[expl_end] += r_expl
    rewards[-1] += r_code
    return rewards


def place_rewards_batch(
    kl: Tensor,
    mask: Tensor,
    r_expl: Sequence[float | None],
    expl_end: Sequence[int | None],
    r_code: Sequence[float],
    kl_coef: float,
) -> Tensor:
    """``place_rewards`` over a right-padded ``[B, T]`` batch; padding gets reward 0."""
    lengths = mask.long().sum(1).tolist()
    rows = []
    for b, n in enumerate(lengths):
        row = torch.zeros_like(kl[b], dtype=torch.float32)
        if n == 0:
            raise ValueError(f"row {b} has an empty response")
        row[:n] = place_rewards(kl[b, :n].float(), r_expl[b], expl_end[b], r_code[b], kl_coef)
        rows.append(row)
    return torch.stack(rows)


# ----------------------------------------------------------------------------------- GAE


def gae_advantages(
    rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    gamma: float = 0.99,
    lam: float = 0.95,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over right-padded ``[B, T]`` tensors.

    ``A_t = sum_k (gamma lam)^k delta_{t+k}`` with ``delta_t = r_t + gamma V_{t+1} - V_t`` and
    ``V = 0`` after the last real token (the episode ends there). With ``lam = 1`` this is the
    discounted return minus ``V_t``. Returns ``(advantages, returns = advantages + values)``,
    both detached and zero on padding. The mask must be a prefix per row (no holes).
    """
    m = mask.to(values.dtype)
    rewards, values = rewards.detach() * m, values.detach() * m
    T = rewards.shape[-1]
    advantages = torch.zeros_like(values)
    last = torch.zeros_like(values[..., 0])
    for t in reversed(range(T)):
        next_value = values[..., t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[..., t] + gamma * next_value - values[..., t]
        last = delta + gamma * lam * last
        last = last * m[..., t]  # padding: no signal flows back into the real tokens
        advantages[..., t] = last
    return advantages, (advantages + values) * m


# ---------------------------------------------------------------------------------- losses


class PPOLosses(NamedTuple):
    """What ``ppo_losses`` returns: ``loss = policy_loss + vf_coef * value_loss``."""

    loss: Tensor
    policy_loss: Tensor
    value_loss: Tensor
    stats: dict[str, float]


def ppo_losses(
    logprobs: Tensor,
    old_logprobs: Tensor,
    values: Tensor,
    old_values: Tensor,
    advantages: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_range: float = 0.2,
    clip_range_value: float = 0.2,
    vf_coef: float = 0.1,
    entropy: Tensor | None = None,
) -> PPOLosses:
    """Clipped surrogate policy loss and clipped value loss, averaged over real tokens.

    Policy: ``max(-A r, -A clip(r, 1 - eps, 1 + eps))`` with ``r = exp(logp - old_logp)``; the
    clip stops one batch from moving the policy far. Value: ``0.5 max((V - R)^2, (V_clip - R)^2)``
    with ``V_clip`` within ``clip_range_value`` of the old value. Stats: ``approx_kl``
    (``0.5 E[(logp - old_logp)^2]``), the clip fractions and, when given, the mean entropy.
    """
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    pg1 = -advantages * ratio
    pg2 = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    policy_loss = masked_mean(torch.maximum(pg1, pg2), mask)

    values_clipped = old_values + torch.clamp(
        values - old_values, -clip_range_value, clip_range_value
    )
    vf1 = (values - returns) ** 2
    vf2 = (values_clipped - returns) ** 2
    value_loss = 0.5 * masked_mean(torch.maximum(vf1, vf2), mask)

    with torch.no_grad():
        stats = {
            "approx_kl": masked_mean(0.5 * log_ratio**2, mask).item(),
            "clipfrac": masked_mean((pg2 > pg1).float(), mask).item(),
            "vf_clipfrac": masked_mean((vf2 > vf1).float(), mask).item(),
            "ratio": masked_mean(ratio, mask).item(),
            "policy_loss": policy_loss.item(),
            "value_loss": value_loss.item(),
        }
        if entropy is not None:
            stats["entropy"] = masked_mean(entropy, mask).item()
    return PPOLosses(policy_loss + vf_coef * value_loss, policy_loss, value_loss, stats)


# --------------------------------------------------------------------- explanation boundary


def explanation_end_index(
    offsets: Sequence[tuple[int, int]] | Tensor,
    explanation_char_len: int,
) -> int | None:
    """Index of the last explanation token, given each response token's (start, end) chars.

    ``explanation_char_len`` is where the code starts in the response text (``ParsedResponse.span[0]``
    from ``sdlib.prompting.parsing.split_response``). The first code token is the first token with a
    non-empty span starting at or after it; the explanation ends one token before. Tokens that
    straddle the boundary carry explanation text, so they count as explanation; zero-width spans
    (special tokens skipped when decoding, whitespace trimmed by byte-level ``trim_offsets``) are
    placed by their neighbours. None when there is no explanation token.
    """
    if isinstance(offsets, Tensor):
        offsets = [tuple(pair) for pair in offsets.tolist()]
    if explanation_char_len <= 0 or not offsets:
        return None
    first_code = next(
        (i for i, (s, e) in enumerate(offsets) if e > s and s >= explanation_char_len), None
    )
    if first_code is None:  # no code after the explanation: its last real token
        return max((i for i, (s, e) in enumerate(offsets) if e > s), default=len(offsets) - 1)
    return first_code - 1 if first_code > 0 else None


def response_token_offsets(
    tokenizer: Any, response_ids: Sequence[int], skip_special_tokens: bool = True
) -> list[tuple[int, int]]:
    """(start, end) chars of each *generated* token in ``tokenizer.decode(response_ids)``.

    Re-encoding the decoded text need not give back the sampled ids (a model may sample a
    non-canonical split), so this decodes growing prefixes instead. Decode the response text
    with the same ``skip_special_tokens``. A prefix ending inside a multi-byte character decodes
    with a replacement character; taking the running minimum from the right undoes that.
    """
    ends = [
        len(tokenizer.decode(list(response_ids[: i + 1]), skip_special_tokens=skip_special_tokens))
        for i in range(len(response_ids))
    ]
    for i in range(len(ends) - 2, -1, -1):
        ends[i] = min(ends[i], ends[i + 1])
    starts = [0, *ends[:-1]]
    return list(zip(starts, ends))


# ---------------------------------------------------------------------- model and scoring


class ValueHead(nn.Module):
    """V(s_t): one linear layer on the policy's last hidden state (method §4).

    Kept in float32 whatever the policy's dtype, since the returns it regresses reach +-5.
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.summary.weight, std=1.0 / math.sqrt(hidden_size + 1))
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden_states: Tensor) -> Tensor:
        """``[..., H]`` hidden states -> ``[...]`` values."""
        return self.summary(hidden_states.to(self.summary.weight.dtype)).squeeze(-1)


def _hidden_size(policy: nn.Module) -> int:
    config = policy.config
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    return int(config.hidden_size)


class PolicyWithValueHead(nn.Module):
    """A causal LM (optionally a peft model) and its value head, trained together.

    ``forward`` returns ``(logits, values)`` for every position; the value at position ``t`` is
    the value of the state that predicts token ``t + 1``.
    """

    def __init__(
        self,
        policy: nn.Module,
        value_head: ValueHead | None = None,
        reference_adapter: str | None = None,
        detach_value: bool = False,
    ) -> None:
        super().__init__()
        self.policy = policy
        self.reference_adapter = reference_adapter
        # True: the value loss trains the value head only, not the policy's weights (a shared
        # trunk lets the critic's regression outweigh the small policy gradient).
        self.detach_value = detach_value
        self.value_head = value_head if value_head is not None else ValueHead(_hidden_size(policy))
        device = next(policy.parameters()).device
        self.value_head.to(device)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        out = self.policy(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True
        )
        hidden = out.hidden_states[-1]
        return out.logits, self.value_head(hidden.detach() if self.detach_value else hidden)

    @contextlib.contextmanager
    def reference(self) -> Iterator[nn.Module]:
        """The frozen reference of a peft policy, without a second copy of the base model.

        With ``reference_adapter`` (a frozen copy of the adapter the policy started from, e.g.
        the SFT adapter), that adapter is switched on instead of the trained one, so that the
        KL penalty pulls towards the SFT model and not back to the base model; otherwise the
        adapters are switched off. Use under ``torch.no_grad()``.
        """
        if not hasattr(self.policy, "disable_adapter"):
            raise ValueError("no ref_model given and the policy is not a peft model")
        if self.reference_adapter is None:
            with self.policy.disable_adapter():
                yield self.policy
            return
        active = self.policy.active_adapter
        self.policy.set_adapter(self.reference_adapter, inference_mode=True)
        try:
            yield self.policy
        finally:  # the trained adapter is active and trainable again
            self.policy.set_adapter(active)


def disable_dropout(model: nn.Module) -> None:
    """Set every dropout to p=0, so that old and new log-probabilities agree before a step."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


@dataclass(frozen=True)
class PPOSample:
    """One rollout: token ids and the rewards from ``sdlib.training.rewards`` (expl_end in response tokens)."""

    query_ids: Sequence[int]
    response_ids: Sequence[int]
    r_code: float
    r_expl: float | None = None
    expl_end: int | None = None


@dataclass
class ResponseBatch:
    """Right-padded query+response ids and the response-aligned index tensors.

    ``positions[b, j]`` is the position in ``input_ids`` whose logits predict response token
    ``j`` (the query length + j - 1); padded slots point at position 0 and are masked.
    """

    input_ids: Tensor  # [B, L]
    attention_mask: Tensor  # [B, L]
    response_ids: Tensor  # [B, T]
    response_mask: Tensor  # [B, T]
    positions: Tensor  # [B, T]

    def select(self, idx: Tensor) -> ResponseBatch:
        """Rows ``idx``, trimmed to their longest sequence and response."""
        L = int(self.attention_mask[idx].sum(1).max())
        T = int(self.response_mask[idx].sum(1).max())
        return ResponseBatch(
            self.input_ids[idx, :L],
            self.attention_mask[idx, :L],
            self.response_ids[idx, :T],
            self.response_mask[idx, :T],
            self.positions[idx, :T],
        )


def collate_samples(
    samples: Sequence[PPOSample], pad_token_id: int = 0, device: torch.device | str = "cpu"
) -> ResponseBatch:
    """Pad samples on the right into one ``ResponseBatch`` (queries need >= 1 token)."""
    B = len(samples)
    L = max(len(s.query_ids) + len(s.response_ids) for s in samples)
    T = max(len(s.response_ids) for s in samples)
    input_ids = torch.full((B, L), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((B, L), dtype=torch.long)
    response_ids = torch.full((B, T), pad_token_id, dtype=torch.long)
    response_mask = torch.zeros((B, T), dtype=torch.bool)
    positions = torch.zeros((B, T), dtype=torch.long)
    for b, s in enumerate(samples):
        q, r = len(s.query_ids), len(s.response_ids)
        if q == 0 or r == 0:
            raise ValueError(f"sample {b}: query and response must be non-empty")
        input_ids[b, : q + r] = torch.tensor([*s.query_ids, *s.response_ids])
        attention_mask[b, : q + r] = 1
        response_ids[b, :r] = torch.tensor(list(s.response_ids))
        response_mask[b, :r] = True
        positions[b, :r] = torch.arange(q - 1, q + r - 1)
    return ResponseBatch(
        *(t.to(device) for t in (input_ids, attention_mask, response_ids, response_mask, positions))
    )


class ResponseScores(NamedTuple):
    """Response-aligned ``[B, T]`` log-probabilities, values (None without a value head), entropy."""

    logprobs: Tensor
    values: Tensor | None
    entropy: Tensor | None


def score_responses(
    model: nn.Module,
    batch: ResponseBatch,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> ResponseScores:
    """Log-probabilities of the response tokens (and values, for a ``PolicyWithValueHead``).

    Logits are divided by ``temperature`` (that is the distribution that was sampled) and turned
    into float32 only at the response positions, to spare memory on big vocabularies.
    """
    if isinstance(model, PolicyWithValueHead) or isinstance(
        getattr(model, "module", None), PolicyWithValueHead
    ):  # the module itself, or wrapped by DDP / DeepSpeed / FSDP (accelerate's prepare)
        logits, all_values = model(batch.input_ids, batch.attention_mask)
    else:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        all_values = None
    rows = torch.arange(batch.positions.shape[0], device=logits.device)[:, None]
    logits = logits[rows, batch.positions].float() / temperature  # [B, T, V]
    logz = torch.logsumexp(logits, dim=-1)
    logprobs = logits.gather(-1, batch.response_ids[..., None]).squeeze(-1) - logz
    values = all_values[rows, batch.positions] if all_values is not None else None
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = logz - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    return ResponseScores(logprobs, values, entropy)


def _chunks(n: int, size: int) -> Iterator[Tensor]:
    for start in range(0, n, size):
        yield torch.arange(start, min(start + size, n))


# --------------------------------------------------------------------------------- PPO step


def ppo_step(
    model: PolicyWithValueHead,
    ref_model: nn.Module | None,
    samples: Sequence[PPOSample | Mapping[str, Any]],
    optimizer: torch.optim.Optimizer,
    config: PPOConfig,
    kl_ctl: FixedKLController | AdaptiveKLController | None = None,
    pad_token_id: int = 0,
    accelerator: Any | None = None,
) -> dict[str, float]:
    """One PPO update on a batch of generated samples; returns floats to log.

    1. score the rollouts without gradients: old log-probs and values from the policy, reference
       log-probs from ``ref_model`` (None: the peft policy with its adapters off);
    2. per-token rewards (KL penalty + ``R_expl`` + ``R_code``), GAE, whitened advantages;
    3. ``ppo_epochs`` passes over shuffled mini-batches, accumulating micro-batch gradients.

    The KL controller is updated afterwards with the batch's mean per-sequence KL. Dropout
    should be off (``disable_dropout``), or the ratio is not 1 before the first update.

    ``accelerator`` (an ``accelerate.Accelerator``, with ``model`` and ``optimizer`` from its
    ``prepare``): each process passes its own shard of the batch (the same number of samples
    on every process); gradients are averaged across processes by DDP, advantages are whitened
    with the statistics of the whole batch, and the returned stats (and the KL controller's
    input) are means over all processes, so every process logs the same numbers.
    """
    samples = [s if isinstance(s, PPOSample) else PPOSample(**s) for s in samples]
    kl_ctl = kl_ctl if kl_ctl is not None else kl_controller(config)
    distributed = accelerator is not None and accelerator.num_processes > 1
    # ``model`` may be wrapped (DDP): the wrapper only for passes that backpropagate.
    policy = accelerator.unwrap_model(model) if accelerator is not None else model
    device = next(policy.parameters()).device
    batch = collate_samples(samples, pad_token_id, device)
    B, mask = len(samples), batch.response_mask
    micro = min(config.micro_batch_size, config.mini_batch_size)

    # 1. rollout scores
    old_logprobs = torch.zeros(mask.shape, device=device)
    old_values = torch.zeros(mask.shape, device=device)
    ref_logprobs = torch.zeros(mask.shape, device=device)
    with torch.no_grad():
        for idx in _chunks(B, micro):
            sub = batch.select(idx)
            T = sub.response_ids.shape[1]
            scores = score_responses(policy, sub, config.temperature)
            old_logprobs[idx, :T] = scores.logprobs
            old_values[idx, :T] = scores.values.float()
            ref_ctx = policy.reference() if ref_model is None else contextlib.nullcontext(ref_model)
            with ref_ctx as ref:
                ref_logprobs[idx, :T] = score_responses(ref, sub, config.temperature).logprobs

    # 2. rewards and advantages
    kl = token_kl(old_logprobs, ref_logprobs, config.kl_estimator) * mask
    kl_coef = kl_ctl.value
    rewards = place_rewards_batch(
        kl,
        mask,
        [s.r_expl for s in samples],
        [s.expl_end for s in samples],
        [s.r_code for s in samples],
        kl_coef,
    )
    advantages, returns = gae_advantages(rewards, old_values, mask, config.gamma, config.lam)
    if config.whiten_advantages:
        advantages = (
            _whiten_global(advantages, mask, accelerator)
            if distributed
            else whiten(advantages, mask)
        )

    # 3. updates
    sums: dict[str, float] = {}
    n_micro = 0
    params = [p for p in model.parameters() if p.requires_grad]
    for _ in range(config.ppo_epochs):
        order = torch.randperm(B)
        for mb in _chunks(B, config.mini_batch_size):
            mb_idx = order[mb]
            optimizer.zero_grad(set_to_none=True)
            parts = list(_chunks(len(mb_idx), micro))
            for k, part in enumerate(parts):
                idx = mb_idx[part]
                sub = batch.select(idx)
                T = sub.response_ids.shape[1]
                # Gradients are all-reduced once per mini-batch, on its last micro-batch.
                sync = k == len(parts) - 1 or not distributed
                with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                    scores = score_responses(model, sub, config.temperature, with_entropy=True)
                    out = ppo_losses(
                        scores.logprobs,
                        old_logprobs[idx, :T],
                        scores.values.float(),
                        old_values[idx, :T],
                        advantages[idx, :T],
                        returns[idx, :T],
                        sub.response_mask,
                        config.clip_range,
                        config.clip_range_value,
                        config.vf_coef,
                        entropy=scores.entropy,
                    )
                    loss = out.loss * len(idx) / len(mb_idx)
                    if accelerator is not None:
                        accelerator.backward(loss)
                    else:
                        loss.backward()
                for key, value in out.stats.items():
                    sums[key] = sums.get(key, 0.0) + value
                n_micro += 1
            if config.max_grad_norm is not None:
                clip = (
                    accelerator.clip_grad_norm_
                    if accelerator is not None
                    else torch.nn.utils.clip_grad_norm_
                )
                norm = clip(params, config.max_grad_norm)  # None under DeepSpeed (clips itself)
                if norm is not None:
                    sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(norm)
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)

    seq_kl = (kl * mask).sum(1)
    stats = {f"ppo/{k}": v / n_micro for k, v in sums.items() if k != "grad_norm"}
    if "grad_norm" in sums:  # measured after the all-reduce: the same on every process
        n_updates = config.ppo_epochs * math.ceil(B / config.mini_batch_size)
        stats["ppo/grad_norm"] = sums["grad_norm"] / n_updates
    stats.update(
        {
            "objective/kl": seq_kl.mean().item(),
            "env/r_code_mean": sum(s.r_code for s in samples) / B,
            "env/reward_mean": (rewards * mask).sum(1).mean().item(),
            "ppo/returns_mean": masked_mean(returns, mask).item(),
            "ppo/values_mean": masked_mean(old_values, mask).item(),
            "ppo/response_len": mask.sum(1).float().mean().item(),
        }
    )
    if distributed:  # equal shards: the mean of the process means is the batch mean
        keys = sorted(k for k in stats if k != "ppo/grad_norm")
        local = torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=device)
        stats.update(zip(keys, accelerator.reduce(local, reduction="mean").tolist()))
    kl_ctl.update(stats["objective/kl"], B * (accelerator.num_processes if distributed else 1))
    stats["objective/kl_coef"] = kl_coef
    stats["objective/kl_coef_next"] = kl_ctl.value
    r_expl = [s.r_expl for s in samples if s.r_expl is not None and s.expl_end is not None]
    if distributed:
        r_expl = [v for part in _gather_lists(r_expl, accelerator) for v in part]
    if r_expl:
        stats["env/r_expl_mean"] = sum(r_expl) / len(r_expl)
    return stats


def _gather_lists(values: list[float], accelerator: Any) -> list[list[float]]:
    from accelerate.utils import gather_object

    return gather_object([values])


def _whiten_global(x: Tensor, mask: Tensor, accelerator: Any, eps: float = 1e-8) -> Tensor:
    """``whiten`` with the mean and variance of the real tokens of *all* processes' shards,
    so that a sample's advantage does not depend on which process it landed on."""
    m = mask.to(x.dtype)
    local = torch.stack([(x * m).sum(), (x * x * m).sum(), m.sum()]).double()
    s1, s2, n = accelerator.reduce(local, reduction="sum").tolist()
    n = max(n, 1.0)
    mean = s1 / n
    var = max(s2 / n - mean * mean, 0.0) * n / max(n - 1.0, 1.0)
    return (x - mean) * (1.0 / math.sqrt(var + eps)) * m
