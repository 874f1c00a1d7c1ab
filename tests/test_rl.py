"""RL stage: PPO end to end on the tiny model, with a real sandbox and real rewards.

Reward placement and the PPO maths are tested in test_ppo.py; here the online loop: prompts
from an rl.jsonl made by ``trajectories.rl_records`` (wrong solutions = real failing mutants
of MBPP train references, with their real feedback), sampling, execution, CodeBLEU and
embedding rewards, updates, and what the stage writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdlib.data.jsonl import write_jsonl
from sdlib.prompting import prompts
from sdlib.runs.layout import RunLayout
from sdlib.runs.params import parse
from sdlib.stages import trajectories
from sdlib.training import policy, rl, rollouts, scoring
from sdlib.training.rewards import code_reward

PARAMS = {
    "run_name": "rlmini",
    "seed": 1,
    # a barely trained tiny model: what it writes does not matter here, only that the loop runs
    "model": {
        "kind": "tiny",
        "batch_size": 8,
        "tiny": {"n_problems": 3, "steps": 4, "batch_size": 4, "max_len": 768},
    },
    "sandbox": {"timeout": 5, "workers": 2},
    "collect": {"n_problems": 3, "exclude_eval_overlap": False},  # skips loading MBPP+ (8 s)
    "rl": {
        "steps": 2,
        "batch_size": 4,
        "max_new_tokens": 64,
        "learning_rate": 1e-4,
        "temperature": 1.0,
        "eval_prompts": 2,
    },
}


def _write_rl_jsonl(params, run_dir: Path) -> list[dict]:
    """rl.jsonl made by the filter stage's own code: per problem one wrong solution (a failing
    mutant) and a Refine and an Expl.+Refine refinement, judged by
    ``trajectories.judge_refinements``; the first problem's refinements are its reference (so
    its prompts get reference code and explanations), the others repeat the mutant."""
    from sdlib.data.mutants import mutants
    from sdlib.execution.sandbox import Sandbox
    from sdlib.generation.default_model import synthetic_explanation
    from sdlib.runs.context import training_problems

    problems = training_problems(params)
    initial, refinements = [], []
    with Sandbox(params.sandbox.config()) as sandbox:
        jobs = []
        for problem in problems:
            for kind, program in list(mutants(problem.reference, problem.entry_point).items())[:2]:
                jobs.append((problem, kind, program))
        verdicts = sandbox.run_many([(p, prog) for p, _, prog in jobs])
        seen = set()
        for (problem, kind, program), verdict in zip(jobs, verdicts):
            if verdict.ok or problem.task_id in seen:
                continue
            seen.add(problem.task_id)
            wid = f"{problem.task_id}/w0"
            feedback = prompts.format_feedback(verdict)
            initial.append(
                {
                    "id": wid,
                    "task_id": problem.task_id,
                    "code": program,
                    "verdict": verdict.to_dict(),
                    "feedback": feedback,
                }
            )
            code = problem.reference if len(seen) == 1 else program
            for mode in ("refine", "expl_refine"):
                expl = synthetic_explanation(kind, verdict) if mode == "expl_refine" else ""
                refinements.append(
                    {
                        "id": f"{wid}/{mode}/0",
                        "parent": wid,
                        "task_id": problem.task_id,
                        "mode": mode,
                        "messages": prompts.refine_messages(problem, program, feedback, mode),
                        "response": prompts.format_answer(code, expl),
                        "explanation": expl,
                        "code": code,
                        "program": prompts.assemble_program(problem, code),
                        "parse_reason": "",
                    }
                )
        judged = trajectories.judge_refinements(
            refinements, {p.task_id: p for p in problems}, sandbox, progress=False
        )
    assert [r["verdict"]["status"] == "pass" for r in judged[:2]] == [True, True]
    records = trajectories.rl_records(initial, judged)
    write_jsonl(RunLayout(run_dir).rl_set, records)
    return records


@pytest.fixture(scope="module")
def rl_run(tmp_path_factory, data_dir):
    folder = tmp_path_factory.mktemp("rl")
    params = parse({**PARAMS, "output_dir": str(folder / "outputs")})
    run_dir = folder / "outputs" / "rlmini"
    records = _write_rl_jsonl(params, run_dir)
    summary = rl.run_rl(params, run_dir, progress=False)
    return params, run_dir, records, summary


def test_prompts_one_per_parent_and_mode_with_all_references():
    base = {"kind": "refinement", "task_id": "t", "messages": [{"role": "user", "content": "x"}]}
    records = [
        {"kind": "initial", "id": "w"},
        {**base, "id": "w/refine/0", "parent": "w", "mode": "refine", "status": "pass",
         "code": "A", "reference_code": ["B"], "reference_explanations": ["eB"]},
        {**base, "id": "w/refine/1", "parent": "w", "mode": "refine", "status": "fail",
         "code": "C", "reference_code": ["A", "B"], "reference_explanations": ["eB"]},
        {**base, "id": "w/expl_refine/0", "parent": "w", "mode": "expl_refine",
         "status": "pass", "code": "B", "explanation": "eB", "reference_code": ["A"],
         "reference_explanations": []},
        {**base, "id": "v/refine/0", "parent": "v", "mode": "refine", "status": "fail",
         "code": "D", "reference_code": [], "reference_explanations": []},
    ]  # fmt: skip
    found = rollouts.rl_prompts(records)
    assert [p.id for p in found] == ["w/refine", "w/expl_refine", "v/refine"]
    assert sorted(found[0].reference_code) == ["A", "B"] and found[0].reference_explanations == [
        "eB"
    ]
    assert found[1].reference_code == found[0].reference_code
    assert found[2].reference_code == [] and found[2].reference_explanations == []
    batches = rollouts.prompt_batches(found, 2, seed=0)
    seen = [p.id for _ in range(3) for p in next(batches)]
    assert sorted(seen[:3]) == sorted(p.id for p in found)  # every prompt once per pass


def test_reward_config_from_params():
    params = parse({"rl": {"expl_scale": 50.0, "expl_offset": 35.0, "expl_divisor": 3.0}})
    config = scoring.reward_config(params)
    assert (config.expl_scale, config.expl_offset, config.expl_divisor) == (50.0, 35.0, 3.0)
    default = scoring.reward_config(parse({}))
    assert default.expl_scale == scoring.RewardConfig().expl_scale


def test_grpo_baseline_runs_with_the_same_rewards(rl_run, tmp_path):
    """trl's GRPOTrainer with R_code + R_expl summed: one step, same prompts and rewards."""
    import shutil

    params, run_dir, _, _ = rl_run
    other = tmp_path / "grpo"
    shutil.copytree(run_dir / "filter", other / "filter")
    grpo = params.model_copy(
        update={
            "rl": params.rl.model_copy(
                update={"algorithm": "grpo", "steps": 1, "max_new_tokens": 16}
            )
        }
    )
    summary = rl.run_rl(grpo, other, progress=False)
    assert summary["algorithm"] == "grpo" and summary["group_size"] == 2
    assert summary["start"] == "base+fresh_lora"
    metrics = rl.read_metrics(other)
    assert len(metrics) == 1
    assert metrics[0]["trl"]["reward"] == pytest.approx(metrics[0]["reward_mean"], abs=1e-4)
    assert (other / "rl" / "model" / "adapter_config.json").is_file()
    assert (other / "rl" / "reward.png").is_file()
    written = json.loads((other / "rl" / "summary.json").read_text())  # where PPO writes its own
    assert written["algorithm"] == "grpo" and written["reward_last"] == summary["reward_last"]


def test_ppo_run_end_to_end(rl_run):
    params, run_dir, records, summary = rl_run
    out = run_dir / "rl"
    assert summary["start"] == "base+fresh_lora" and summary["steps"] == 2
    assert summary["prompts_by_mode"] == {"expl_refine": 3, "refine": 3}
    assert summary["prompts_with_reference_code"] == 2
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 1]
    for m in metrics:
        step = [s for s in samples if s["step"] == m["step"]]
        # the step's means are those of its own rollouts
        assert m["r_code_mean"] == pytest.approx(sum(s["r_code"] for s in step) / len(step))
        assert m["pass_rate"] == pytest.approx(sum(s["status"] == "pass" for s in step) / len(step))
        assert m["kl"] == m["kl"] and m["policy_loss"] is not None
        parts = sum(m[k] for k in ("seconds_generation", "seconds_execution", "seconds_update"))
        assert parts + m["seconds_rewards"] <= m["seconds_step"] + 0.05
        share = (m["seconds_execution"] + m["seconds_rewards"]) / m["seconds_step"]
        assert m["reward_share"] == pytest.approx(share, abs=2e-3) and m["reward_share"] < 1.0
    assert (out / "model" / "adapter_config.json").is_file()
    assert (out / "model" / "adapter_model.safetensors").is_file()
    assert (out / "model" / "value_head.pt").is_file()
    assert (out / "reward.png").stat().st_size > 1000


def test_expl_end_only_for_expl_refine_prompts(rl_run):
    params, run_dir, _, _ = rl_run
    samples = [
        json.loads(line) for line in (run_dir / "rl" / "samples.jsonl").read_text().splitlines()
    ]
    assert len(samples) == 2 * 4 and {s["step"] for s in samples} == {0, 1}
    config = scoring.reward_config(params)
    for s in samples:
        # each reward is the method's formula applied to the scores recorded beside it
        assert s["response_tokens"] >= 1
        assert s["r_code"] == pytest.approx(code_reward(s["s_cb"], s["s_ut"], config))
        if s["n_reference_code"] == 0:  # no correct refinement to compare with
            assert s["s_cb"] is None
        if s["mode"] == "refine":
            assert s["expl_end"] is None and s["r_expl"] is None and s["explanation"] is None
        elif s["n_reference_explanations"]:
            assert s["r_expl"] is not None
            assert 0 <= s["expl_end"] < s["response_tokens"]
        else:  # no reference explanation: no explanation reward, nothing to place
            assert s["r_expl"] is None and s["expl_end"] is None


def test_score_rollouts_executes_code_and_finds_the_explanation_end(rl_run):
    """Hand-written answers through the real sandbox, CodeBLEU and embeddings: the reference
    fix passes, a no-code answer gets S_ut 0, and expl_end is the token before the code."""
    from transformers import AutoTokenizer

    from sdlib.execution.sandbox import Sandbox
    from sdlib.runs.context import training_problems
    from sdlib.training.ppo import response_token_offsets

    params, run_dir, _, summary = rl_run
    tokenizer = AutoTokenizer.from_pretrained(summary["base_model"])
    problems = {p.task_id: p for p in training_problems(params)}
    items = rollouts.load_rl_prompts(run_dir)
    with_refs = [i for i in items if i.reference_code]
    expl_item = next(i for i in with_refs if i.mode == "expl_refine")
    refine_item = next(i for i in with_refs if i.mode == "refine")
    problem = problems[expl_item.task_id]
    explanation = expl_item.reference_explanations[0]
    texts = [
        prompts.format_answer(problem.reference, explanation),
        prompts.format_answer(problem.reference),
        "I do not know.",
    ]
    batch = [expl_item, refine_item, expl_item]
    made = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        made.append(
            rollouts.Rollout([1], ids, tokenizer.decode(ids, skip_special_tokens=True), "stop")
        )
    with Sandbox(params.sandbox.config()) as sandbox:
        scored, t_exec, t_rewards = scoring.score_rollouts(
            batch, made, problems, sandbox, tokenizer, scoring.reward_config(params)
        )
    fixed, refined, no_code = scored
    assert fixed["status"] == "pass" and fixed["s_ut"] == 1.0 and fixed["r_code"] > 4.5
    assert fixed["s_ex"] > 0.99 and fixed["r_expl"] == 5.0  # its own reference explanation
    code_at = made[0].text.index("```python")
    offsets = response_token_offsets(tokenizer, made[0].response_ids)
    end = fixed["expl_end"]
    assert offsets[end][0] < code_at <= offsets[end + 1][0]
    assert refined["status"] == "pass" and refined["expl_end"] is None
    assert refined["r_expl"] is None
    assert no_code["status"] == "no_code" and no_code["s_ut"] == 0.0
    assert no_code["r_code"] == -5.0 and no_code["expl_end"] == len(made[2].response_ids) - 1
    assert t_exec > 0 and t_rewards > 0


def test_policy_starts_from_the_sft_adapter_when_there_is_one(rl_run, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    params, _, _, summary = rl_run
    base = AutoModelForCausalLM.from_pretrained(summary["base_model"])
    sft = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    sft.save_pretrained(str(tmp_path / "sft" / "model"))
    AutoTokenizer.from_pretrained(summary["base_model"]).save_pretrained(
        str(tmp_path / "sft" / "model")
    )
    model, _, start = policy.load_policy(summary["base_model"], tmp_path, params, "cpu")
    assert start == "sft_adapter" and model.peft_config["default"].r == 4
    assert any(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)


def test_kl_reference_is_the_sft_model(rl_run, tmp_path):
    """Starting from the SFT adapter, the KL reference is the SFT model (a frozen copy of the
    adapter), not the base model: reference and policy agree before training, the reference
    stays put when the trained adapter moves, and the trained adapter stays trainable."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sdlib.training.ppo import PolicyWithValueHead

    params, _, _, summary = rl_run
    base = AutoModelForCausalLM.from_pretrained(summary["base_model"])
    sft = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in sft.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)  # an SFT adapter that changes the model
    sft.save_pretrained(str(tmp_path / "sft" / "model"))
    AutoTokenizer.from_pretrained(summary["base_model"]).save_pretrained(
        str(tmp_path / "sft" / "model")
    )
    peft_model, _, start = policy.load_policy(summary["base_model"], tmp_path, params, "cpu")
    model = PolicyWithValueHead(peft_model, reference_adapter=policy.REFERENCE_ADAPTER)
    ids = torch.tensor([[5, 6, 7, 8]])
    mask = torch.ones_like(ids)

    def logits(m) -> torch.Tensor:
        with torch.no_grad():
            return m(input_ids=ids, attention_mask=mask).logits

    policy_logits = logits(peft_model)
    with model.reference() as ref:
        reference = logits(ref)
    with peft_model.disable_adapter():
        bare = logits(peft_model)
    assert torch.allclose(policy_logits, reference) and not torch.allclose(
        reference, bare, atol=1e-3
    )
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B.default" in name:
                p.add_(0.5)
    with model.reference() as ref:
        assert torch.allclose(logits(ref), reference)
    assert not torch.allclose(logits(peft_model), reference, atol=1e-3)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all(".default." in n for n in trainable)


def test_before_after_check_scores_the_same_prompts(rl_run):
    """rl.eval_prompts: a fixed prompt set scored before and after training, paired by sample;
    what run_rl returns is also in rl/summary.json."""
    _, run_dir, _, summary = rl_run
    check = json.loads((run_dir / "rl" / "eval.json").read_text())
    assert check["before"]["n"] == check["after"]["n"] == 2 == len(check["samples"])
    items = rollouts.load_rl_prompts(run_dir)
    expected = [i.id for i in rollouts.eval_prompt_set(items, 2, 1, seed=1)]
    assert [s["prompt"] for s in check["samples"]] == expected
    diffs = [s["reward_after"] - s["reward_before"] for s in check["samples"]]
    assert check["difference"]["mean"] == pytest.approx(sum(diffs) / 2)
    assert summary["reward_before"] == check["before"]["reward_mean"]
    assert summary["reward_change"] == pytest.approx(
        check["after"]["reward_mean"] - check["before"]["reward_mean"]
    )
    saved = json.loads((run_dir / "rl" / "summary.json").read_text())
    assert saved["reward_after"] == summary["reward_after"] and saved["steps"] == 2


def test_prompt_subsets_and_paired_difference():
    items = [rollouts.RLPrompt(f"p{k}", f"w{k}", "t", "refine", []) for k in range(10)]
    subset = rollouts.limit_prompts(items, 4, seed=0)
    assert len(subset) == 4 and subset == [i for i in items if i in subset]  # order kept
    assert (
        rollouts.limit_prompts(items, 4, seed=0) == subset
        and rollouts.limit_prompts(items, None, 0) == items
    )
    chosen = rollouts.eval_prompt_set(items, 3, 2, seed=0)
    assert len(chosen) == 6 and chosen[0] is chosen[1] and len({i.id for i in chosen}) == 3
    diff = scoring.paired_difference([0.0, 1.0, 2.0], [1.0, 1.0, 4.0])
    assert diff["mean"] == pytest.approx(1.0) and diff["n"] == 3
    assert diff["stderr"] == pytest.approx((1.0 / 3) ** 0.5)


def test_detached_value_head_leaves_the_policy_alone(rl_run):
    """rl.detach_value: the value loss trains the value head only."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from sdlib.training.ppo import PolicyWithValueHead

    _, _, _, summary = rl_run
    base = AutoModelForCausalLM.from_pretrained(summary["base_model"])
    ids = torch.tensor([[5, 6, 7, 8]])
    for detach in (True, False):
        lora = LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM")
        model = PolicyWithValueHead(get_peft_model(base, lora), detach_value=detach)
        _, values = model(ids, torch.ones_like(ids))
        values.pow(2).sum().backward()
        lora_grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
        assert lora_grads and model.value_head.summary.weight.grad is not None
        assert all(g is None for g in lora_grads) == detach
        base = model.policy.unload()  # the plain model again, for the next round


def test_learning_rates_follow_where_the_policy_starts(rl_run):
    """A fresh LoRA on a full SFT model does not train at the full-weight rate (2e-6)."""
    cfg = parse({"rl": {"learning_rate": 2e-6}}).rl
    full = policy.learning_rates(cfg, "sft_full+fresh_lora")
    assert full["policy"] == pytest.approx(2e-5) and full["value_head"] == full["policy"]
    assert "full SFT" in full["rule"]
    assert policy.learning_rates(cfg, "sft_adapter")["policy"] == 2e-6
    own = parse({"rl": {"adapter_learning_rate": 5e-5, "value_head_learning_rate": 1e-3}}).rl
    rates = policy.learning_rates(own, "sft_full+fresh_lora")
    assert (rates["policy"], rates["value_head"]) == (5e-5, 1e-3)
    # the run says which was done, in its summary and its manifest
    params, run_dir, _, summary = rl_run
    expected = policy.learning_rates(params.rl, "base+fresh_lora")
    assert summary["learning_rates"] == expected
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["rl_learning_rates"] == expected
