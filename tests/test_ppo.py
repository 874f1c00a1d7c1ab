"""PPO maths of method §4 against hand-computed values, and one real update on a tiny Llama."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from sdlib.training.ppo import (
    AdaptiveKLController,
    FixedKLController,
    PolicyWithValueHead,
    PPOConfig,
    PPOSample,
    ValueHead,
    collate_samples,
    disable_dropout,
    explanation_end_index,
    gae_advantages,
    kl_controller,
    masked_mean,
    place_rewards,
    place_rewards_batch,
    ppo_losses,
    ppo_step,
    response_token_offsets,
    score_responses,
    token_kl,
    whiten,
)


def t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float32)


# ------------------------------------------------------------------------------- rewards


def test_place_rewards_puts_expl_and_code_rewards_on_their_tokens() -> None:
    kl = t(0.1, 0.2, -0.1, 0.4)
    # -0.5 * kl = [-0.05, -0.1, 0.05, -0.2]; +2 at token 1, -3 at the final token.
    got = place_rewards(kl, r_expl=2.0, expl_end=1, r_code=-3.0, kl_coef=0.5)
    assert torch.allclose(got, t(-0.05, 1.9, 0.05, -3.2))
    assert torch.equal(kl, t(0.1, 0.2, -0.1, 0.4))  # input untouched


def test_place_rewards_refine_only_and_missing_expl_reward() -> None:
    kl = t(0.1, 0.2, -0.1, 0.4)
    expected = t(-0.05, -0.1, 0.05, -3.2)
    assert torch.allclose(place_rewards(kl, None, None, -3.0, 0.5), expected)
    assert torch.allclose(place_rewards(kl, None, 1, -3.0, 0.5), expected)
    assert torch.allclose(place_rewards(kl, 2.0, None, -3.0, 0.5), expected)


def test_place_rewards_expl_on_final_token_adds_up_and_bad_index_raises() -> None:
    got = place_rewards(torch.zeros(3), r_expl=1.0, expl_end=2, r_code=2.0, kl_coef=0.1)
    assert torch.allclose(got, t(0.0, 0.0, 3.0))
    with pytest.raises(ValueError):
        place_rewards(torch.zeros(3), 1.0, 3, 2.0, 0.1)


def test_place_rewards_batch_uses_each_rows_length() -> None:
    kl = torch.tensor([[0.2, 0.2, 0.2, 9.0], [0.0, 0.4, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    got = place_rewards_batch(kl, mask, [1.0, None], [0, None], [5.0, -1.0], kl_coef=1.0)
    assert torch.allclose(got[0], t(0.8, -0.2, 4.8, 0.0))  # padding gets 0, not -9
    assert torch.allclose(got[1], t(0.0, -0.4, 0.0, -1.0))


# ----------------------------------------------------------------------------------- GAE

REWARDS, VALUES = t(1.0, 0.0, 2.0), t(0.5, 1.0, 0.5)


def test_gae_lam1_is_discounted_return_minus_value() -> None:
    # gamma 0.5: delta = [1 + .5*1 - .5, 0 + .5*.5 - 1, 2 - .5] = [1, -0.75, 1.5]
    # returns G = [1.5, 1, 2]; A = G - V = [1, 0, 1.5]
    adv, ret = gae_advantages(REWARDS, VALUES, torch.ones(3), gamma=0.5, lam=1.0)
    assert torch.allclose(adv, t(1.0, 0.0, 1.5))
    assert torch.allclose(ret, t(1.5, 1.0, 2.0))


def test_gae_lam_below_one() -> None:
    # gamma*lam = 0.25: A2 = 1.5, A1 = -0.75 + .25*1.5 = -0.375, A0 = 1 + .25*(-0.375) = 0.90625
    adv, ret = gae_advantages(REWARDS, VALUES, torch.ones(3), gamma=0.5, lam=0.5)
    assert torch.allclose(adv, t(0.90625, -0.375, 1.5))
    assert torch.allclose(ret, t(1.40625, 0.625, 2.0))


def test_gae_ignores_padding() -> None:
    rewards = torch.stack([torch.cat([REWARDS, t(7.0, 7.0)]), t(1, 1, 1, 1, 1)])
    values = torch.stack([torch.cat([VALUES, t(3.0, -4.0)]), torch.zeros(5)])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    adv, ret = gae_advantages(rewards, values, mask, gamma=0.5, lam=0.5)
    assert torch.allclose(adv[0], t(0.90625, -0.375, 1.5, 0.0, 0.0))
    assert torch.allclose(ret[0], t(1.40625, 0.625, 2.0, 0.0, 0.0))


def _gae_reference(r: list[float], v: list[float], gamma: float, lam: float) -> list[float]:
    """The textbook double sum A_t = sum_k (gamma lam)^k delta_{t+k}."""
    n = len(r)
    vv = [*v, 0.0]
    delta = [r[i] + gamma * vv[i + 1] - vv[i] for i in range(n)]
    return [sum((gamma * lam) ** (k - i) * delta[k] for k in range(i, n)) for i in range(n)]


def test_gae_matches_loop_reference_on_random_padded_batch() -> None:
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(4, 9, generator=g), torch.randn(4, 9, generator=g)
    lengths = [9, 5, 1, 7]
    mask = torch.tensor([[j < n for j in range(9)] for n in lengths])
    adv, ret = gae_advantages(rewards, values, mask, gamma=0.99, lam=0.95)
    for b, n in enumerate(lengths):
        ref = _gae_reference(rewards[b, :n].tolist(), values[b, :n].tolist(), 0.99, 0.95)
        assert torch.allclose(adv[b, :n], torch.tensor(ref), atol=1e-5)
        assert torch.allclose(ret[b, :n], torch.tensor(ref) + values[b, :n], atol=1e-5)
        assert not adv[b, n:].any() and not ret[b, n:].any()


# ---------------------------------------------------------------------------- losses, stats


def test_masked_mean_and_whiten() -> None:
    x, mask = t(1.0, 2.0, 3.0, 100.0), torch.tensor([1, 1, 1, 0])
    assert masked_mean(x, mask).item() == pytest.approx(2.0)
    # mean 2, unbiased variance 1
    assert torch.allclose(whiten(x, mask), t(-1.0, 0.0, 1.0, 0.0), atol=1e-6)
    assert torch.allclose(whiten(x, mask, shift_mean=False), t(1.0, 2.0, 3.0, 0.0), atol=1e-6)
    rows = torch.tensor([[1.0, 3.0], [2.0, 0.0]])
    assert torch.allclose(masked_mean(rows, torch.tensor([[1, 1], [1, 0]]), dim=1), t(2.0, 2.0))


def test_ppo_losses_hand_computed() -> None:
    mask = torch.tensor([1, 1, 1, 0])
    old = torch.zeros(4)
    logprobs = torch.log(t(1.5, 0.5, 1.1, 50.0))  # ratios; the 4th is padding
    adv = t(1.0, 1.0, -1.0, 80.0)
    # token 0: max(-1.5, -1.2) = -1.2 (clipped); token 1: max(-0.5, -0.8) = -0.5 (pessimistic,
    # not clipped); token 2: max(1.1, 1.1) = 1.1. Mean = -0.2.
    values, old_values = t(1.0, 0.0, 0.5, 9.0), t(0.5, 0.5, 0.5, 0.0)
    returns = t(1.0, 1.0, 0.0, -9.0)
    # clipped values [0.7, 0.3, 0.5]; max sq errors [0.09, 1, 0.25]; 0.5 * mean = 0.2233...
    out = ppo_losses(logprobs, old, values, old_values, adv, returns, mask, 0.2, 0.2, 0.1)
    assert out.policy_loss.item() == pytest.approx(-0.2, abs=1e-6)
    assert out.value_loss.item() == pytest.approx(0.5 * 1.34 / 3, abs=1e-6)
    assert out.loss.item() == pytest.approx(-0.2 + 0.1 * 0.5 * 1.34 / 3, abs=1e-6)
    assert out.stats["clipfrac"] == pytest.approx(1 / 3)
    assert out.stats["vf_clipfrac"] == pytest.approx(1 / 3)  # token 0's clipped error is larger
    lr = [math.log(1.5), math.log(0.5), math.log(1.1)]
    assert out.stats["approx_kl"] == pytest.approx(sum(0.5 * x * x for x in lr) / 3, rel=1e-5)
    assert "entropy" not in out.stats
    with_entropy = ppo_losses(
        logprobs, old, values, old_values, adv, returns, mask, entropy=t(1.0, 2.0, 3.0, 99.0)
    )
    assert with_entropy.stats["entropy"] == pytest.approx(2.0)


def test_ppo_losses_gradient_vanishes_where_clipped() -> None:
    logprobs = torch.log(t(1.5, 0.5)).requires_grad_()
    values = t(0.0, 0.0).requires_grad_()
    out = ppo_losses(
        logprobs, torch.zeros(2), values, torch.zeros(2), t(1.0, 1.0), t(1.0, 1.0), torch.ones(2)
    )
    out.loss.backward()
    assert logprobs.grad[0].item() == 0.0  # ratio 1.5 > 1.2 with A > 0: clipped
    assert logprobs.grad[1].item() == pytest.approx(-0.5 / 2)  # d(-A r)/dlogp = -r, mean of 2


# ------------------------------------------------------------------------------ KL control


def test_token_kl_estimators() -> None:
    lp, ref = t(-1.0, -2.0, -0.5), t(-1.5, -1.0, -0.5)
    assert torch.allclose(token_kl(lp, ref), t(0.5, -1.0, 0.0))
    assert torch.allclose(token_kl(lp, ref, "k2"), t(0.125, 0.5, 0.0))
    # k3 = exp(ref - lp) - 1 - (ref - lp)
    k3 = token_kl(lp, ref, "k3")
    assert torch.allclose(k3, t(math.exp(-0.5) - 0.5, math.e - 2.0, 0.0), atol=1e-6)
    assert (k3 >= 0).all()
    with pytest.raises(ValueError):
        token_kl(lp, ref, "k9")  # type: ignore[arg-type]


def test_kl_controllers() -> None:
    fixed = FixedKLController(0.05)
    fixed.update(100.0, 64)
    assert fixed.value == 0.05
    ctl = AdaptiveKLController(0.2, target=6.0, horizon=10_000)
    ctl.update(12.0, 64)  # error 1.0 clipped to 0.2
    assert ctl.value == pytest.approx(0.2 * (1 + 0.2 * 64 / 10_000))
    before = ctl.value
    ctl.update(4.5, 100)  # error -0.25 clipped to -0.2
    assert ctl.value == pytest.approx(before * (1 - 0.2 * 100 / 10_000))
    assert isinstance(kl_controller(PPOConfig()), FixedKLController)
    assert isinstance(kl_controller(PPOConfig(adaptive_kl=True)), AdaptiveKLController)


def test_config_has_papers_values_and_validates() -> None:
    cfg = PPOConfig()
    assert (cfg.learning_rate, cfg.batch_size, cfg.gamma) == (2e-6, 64, 0.99)
    with pytest.raises(ValueError):
        PPOConfig(gamma=1.5)
    with pytest.raises(ValueError):
        PPOConfig(mini_batch_size=0)


def test_rl_params_are_the_ppo_config_every_field_from_yaml_and_documented() -> None:
    """One definition: the params' ``rl:`` section is a PPOConfig, each field settable from
    YAML (no hard-coded knob left in the loop) and documented once."""
    from sdlib.runs.params import ParamsError, RLParams, parse

    assert issubclass(RLParams, PPOConfig)
    undocumented = [n for n, f in RLParams.model_fields.items() if not f.description]
    assert not undocumented, f"fields without a docstring: {undocumented}"
    knobs = {
        "micro_batch_size": 2,
        "clip_range": 0.1,
        "clip_range_value": 0.3,
        "vf_coef": 0.5,
        "adaptive_kl": True,
        "kl_target": 3.0,
        "kl_estimator": "k3",
        "whiten_advantages": False,
        "max_grad_norm": None,
        "lora_r": 4,
    }
    rl = parse({"rl": knobs}).rl
    assert {k: getattr(rl, k) for k in knobs} == knobs
    assert isinstance(kl_controller(rl), AdaptiveKLController)
    with pytest.raises(ParamsError, match="clip"):
        parse({"rl": {"clip_range": 0}})
    with pytest.raises(ParamsError, match="kl_estimator"):
        parse({"rl": {"kl_estimator": "k9"}})


# ------------------------------------------------------------------ explanation boundary


def test_explanation_end_index_hand_offsets() -> None:
    # "Th" "e" " "(trimmed to zero width) "loo" "p": code starts at char 4 -> the space is
    # explanation.
    offsets = [(0, 2), (2, 3), (4, 4), (4, 7), (7, 8)]
    assert explanation_end_index(offsets, 4) == 2
    assert explanation_end_index(torch.tensor(offsets), 4) == 2
    assert explanation_end_index([(0, 5), (5, 9), (9, 12)], 7) == 1  # straddling token
    assert explanation_end_index([(0, 3), (3, 6), (0, 0)], 3) == 0  # special token at the end
    assert explanation_end_index([(0, 3), (3, 6), (0, 0)], 6) == 1  # no code: last real token
    assert explanation_end_index([(0, 3), (3, 6)], 0) is None
    assert explanation_end_index([], 5) is None


TEXTS = [
    "The loop starts at 1, so it skips index 0.\n\n```python\ndef f(x):\n    return x + 1\n```",
    "It returns too early, before the café closes.\n\n```python\ndef g(a, b):\n    return a * b\n```",
    "```python\ndef h(s):\n    return s[::-1]\n```",
]


@pytest.fixture(scope="module")
def tiny_tokenizer():  # noqa: ANN201 - transformers is imported lazily
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|pad|>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TEXTS * 5, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>"
    )


@pytest.mark.parametrize("text", TEXTS[:2])
def test_explanation_end_index_with_fast_tokenizer_offsets(tiny_tokenizer, text: str) -> None:
    from sdlib.prompting.prompts import split_response

    boundary = split_response(text).span[0]
    assert text[boundary:].startswith("```")
    enc = tiny_tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    idx = explanation_end_index(enc.offset_mapping, boundary)
    assert idx is not None
    ids = enc.input_ids
    explanation = tiny_tokenizer.decode(ids[: idx + 1])
    assert explanation == text[:boundary]  # exactly the explanation, "\n\n" included
    assert tiny_tokenizer.decode(ids[idx + 1 :]).startswith("```")
    # Offsets from decoding the ids give the same boundary.
    assert explanation_end_index(response_token_offsets(tiny_tokenizer, ids), boundary) == idx


def test_explanation_end_index_refine_only_is_none(tiny_tokenizer) -> None:
    enc = tiny_tokenizer(TEXTS[2], return_offsets_mapping=True, add_special_tokens=False)
    assert explanation_end_index(enc.offset_mapping, 0) is None


def test_response_token_offsets_follow_generated_ids(tiny_tokenizer) -> None:
    # A sampled response need not be the canonical encoding of its text: here the explanation
    # and the code were encoded apart, and an EOS ends the response.
    text = TEXTS[1]
    boundary = text.index("```")
    expl_ids = tiny_tokenizer.encode(text[:boundary], add_special_tokens=False)
    code_ids = tiny_tokenizer.encode(text[boundary:], add_special_tokens=False)
    ids = [*expl_ids, *code_ids, tiny_tokenizer.eos_token_id]
    offsets = response_token_offsets(tiny_tokenizer, ids)
    decoded = tiny_tokenizer.decode(ids, skip_special_tokens=True)
    assert decoded == text
    assert "".join(decoded[s:e] for s, e in offsets) == decoded  # a partition of the text
    assert offsets[-1][0] == offsets[-1][1]  # EOS is zero-width
    assert explanation_end_index(offsets, boundary) == len(expl_ids) - 1


# --------------------------------------------------------------------------- tiny Llama


def test_value_head_shape_and_dtype() -> None:
    head = ValueHead(8)
    out = head(torch.randn(2, 5, 8, dtype=torch.bfloat16))
    assert out.shape == (2, 5) and out.dtype == torch.float32


def _tiny_llama(seed: int = 0):  # noqa: ANN202
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(config)
    disable_dropout(model)
    return model


def test_score_responses_matches_unpadded_forward() -> None:
    model = PolicyWithValueHead(_tiny_llama())
    samples = [
        PPOSample([5, 6, 7, 8, 9], [10, 11], r_code=0.0),
        PPOSample([3], [12, 13, 14, 15], r_code=0.0),
        PPOSample([4, 4], [20], r_code=0.0),
    ]
    batch = collate_samples(samples)
    with torch.no_grad():
        scores = score_responses(model, batch, with_entropy=True)
        for b, s in enumerate(samples):
            ids = torch.tensor([[*s.query_ids, *s.response_ids]])
            logits, values = model(ids, torch.ones_like(ids))
            q, r = len(s.query_ids), len(s.response_ids)
            logp = torch.log_softmax(logits[0, q - 1 : q + r - 1].float(), -1)
            want = logp[torch.arange(r), torch.tensor(s.response_ids)]
            assert torch.allclose(scores.logprobs[b, :r], want, atol=1e-5)
            assert torch.allclose(scores.values[b, :r], values[0, q - 1 : q + r - 1], atol=1e-5)
            ent = -(logp.exp() * logp).sum(-1)
            assert torch.allclose(scores.entropy[b, :r], ent, atol=1e-5)
    assert batch.response_mask.sum(1).tolist() == [2, 4, 1]


def _response_logprob(model: PolicyWithValueHead, sample: PPOSample) -> float:
    with torch.no_grad():
        return score_responses(model, collate_samples([sample])).logprobs.sum().item()


def test_ppo_step_runs_with_zero_kl_against_a_copy() -> None:
    policy = _tiny_llama()
    ref = copy.deepcopy(policy).eval()
    model = PolicyWithValueHead(policy)
    samples = [
        {"query_ids": [1, 2, 3], "response_ids": [4, 5, 6, 7], "r_code": 2.0, "r_expl": 1.0,
         "expl_end": 1},
        {"query_ids": [1, 9], "response_ids": [8, 8], "r_code": -4.0},
        {"query_ids": [7, 7, 7], "response_ids": [30], "r_code": 0.5},
    ]  # fmt: skip
    config = PPOConfig(learning_rate=1e-3, batch_size=3, mini_batch_size=2, micro_batch_size=1,
                       ppo_epochs=2, adaptive_kl=True)  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    stats = ppo_step(model, ref, samples, opt, config)
    assert all(math.isfinite(v) for v in stats.values())
    assert stats["objective/kl"] == pytest.approx(0.0, abs=1e-6)
    assert stats["env/r_code_mean"] == pytest.approx(-0.5)
    assert stats["env/r_expl_mean"] == pytest.approx(1.0)
    assert stats["ppo/response_len"] == pytest.approx(7 / 3)
    assert stats["objective/kl_coef_next"] < config.kl_coef  # KL below target: coefficient drops
    # The policy moved, so a second step sees a non-zero KL to the reference.
    stats2 = ppo_step(model, ref, samples, opt, config)
    assert stats2["objective/kl"] != 0.0 and math.isfinite(stats2["ppo/policy_loss"])


def test_ppo_step_raises_logprob_of_rewarded_response() -> None:
    model = PolicyWithValueHead(_tiny_llama(seed=1))
    ref = copy.deepcopy(model.policy).eval()
    good = PPOSample([1, 2, 3], [40, 41, 42, 43], r_code=5.0)
    bad = PPOSample([1, 2, 3], [50, 51, 52, 53], r_code=-5.0)
    config = PPOConfig(learning_rate=3e-3, batch_size=2, mini_batch_size=2, micro_batch_size=2,
                       ppo_epochs=2)  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    good0, bad0 = _response_logprob(model, good), _response_logprob(model, bad)
    for _ in range(4):
        ppo_step(model, ref, [good, bad], opt, config)
    good1, bad1 = _response_logprob(model, good), _response_logprob(model, bad)
    assert good1 > good0 + 1.0  # measured: -18.7 -> -15.3
    assert bad1 < bad0 - 1.0  # measured: -18.6 -> -22.1


def test_ppo_step_single_rewarded_response_without_whitening() -> None:
    # Whitening one sequence's advantages would centre them on 0; without it a lone positive
    # reward must push its response up.
    model = PolicyWithValueHead(_tiny_llama(seed=3))
    ref = copy.deepcopy(model.policy).eval()
    good = PPOSample([1, 2, 3], [40, 41, 42, 43], r_code=5.0, r_expl=2.0, expl_end=1)
    config = PPOConfig(batch_size=1, mini_batch_size=1, ppo_epochs=2, whiten_advantages=False)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    before = _response_logprob(model, good)
    for _ in range(3):
        ppo_step(model, ref, [good], opt, config)
    assert _response_logprob(model, good) > before + 1.0


def test_ppo_step_with_peft_uses_adapterless_policy_as_reference() -> None:
    from peft import LoraConfig, get_peft_model

    policy = get_peft_model(
        _tiny_llama(seed=2), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    disable_dropout(policy)
    model = PolicyWithValueHead(policy)
    sample = PPOSample([1, 2, 3], [40, 41, 42], r_code=5.0, r_expl=-1.0, expl_end=0)
    config = PPOConfig(learning_rate=1e-2, batch_size=1, mini_batch_size=1, ppo_epochs=2)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    before = _response_logprob(model, sample)
    stats = ppo_step(model, None, [sample], opt, config)
    assert stats["objective/kl"] == pytest.approx(0.0, abs=1e-6)  # LoRA starts as identity
    stats = ppo_step(model, None, [sample], opt, config)
    assert stats["objective/kl"] != 0.0  # the adapters moved away from the base model
    assert all(math.isfinite(v) for v in stats.values())
    assert _response_logprob(model, sample) != before
    with pytest.raises(ValueError):
        ppo_step(PolicyWithValueHead(_tiny_llama()), None, [sample], opt, config)
