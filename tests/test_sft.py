"""SFT (method §3) through TRL's own data path: the label mask (no loss on the prompt, which
holds the task, the wrong solution and the feedback; loss on every token of the final answer),
a real small LoRA run that lowers held-out loss, and QLoRA's clear error without CUDA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdlib.data import benchmarks
from sdlib.data.mutants import mutants
from sdlib.prompting import prompts
from sdlib.runs import params as P
from sdlib.stages import trajectories
from sdlib.training import sft


@pytest.fixture(scope="module")
def mbpp_train(data_dir) -> list:
    return benchmarks.load("mbpp", split="train", directory=str(data_dir))


@pytest.fixture(scope="module")
def records(mbpp_train) -> list[dict]:
    """SFT records shaped as the filter stage writes them: refinements (both instruction types)
    of real mutants of MBPP train references, and plain code generation."""
    out = []
    for problem in mbpp_train[:16]:
        wrong = next(iter(mutants(problem.reference, problem.entry_point).values()))
        feedback = prompts.FEEDBACK_FAILED_TEST.format(test=problem.visible_tests[0])
        mode = ("refine", "expl_refine")[len(out) % 2]
        explanation = "The comparison is reversed." if mode == "expl_refine" else ""
        out.append(
            {
                "id": f"{problem.key}/r",
                "source": mode,
                "task_id": problem.task_id,
                "messages": prompts.refine_messages(problem, wrong, feedback, mode),
                "final_answer": prompts.format_answer(problem.reference, explanation),
                "wrong": wrong,
                "feedback": feedback,
            }
        )
    initial = [
        {
            "id": f"{p.key}/s0",
            "task_id": p.task_id,
            "verdict": {"status": "pass"},
            "code": p.reference,
        }
        for p in mbpp_train[16:20]
    ]
    by_id = {p.task_id: p for p in mbpp_train[16:20]}
    return out + trajectories.sft_records(initial, [], by_id)  # as the filter stage writes them


def test_sft_trains_first_attempts_in_the_layout_eval_prompts_them(mbpp_train, data_dir):
    """A correct first attempt is trained on exactly the prompt collection and evaluation
    show the same model: few-shot completion text for a base model, the chat template's
    rendering of the same few-shot chat for a chat model."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from sdlib.generation.generator import Generator, initial_request

    few_shot = benchmarks.load("mbpp", split="prompt", directory=str(data_dir))[:3]
    problem = mbpp_train[0]
    initial = [
        {
            "id": "a",
            "task_id": problem.task_id,
            "verdict": {"status": "pass"},
            "code": problem.reference,
        }
    ]
    (record,) = trajectories.sft_records(initial, [], {problem.task_id: problem}, True, few_shot)

    base = Generator(backend=None, name="base", tokenizer=None, style="base")
    prompt, completion = sft.training_pair(record, None)
    assert prompt == initial_request(problem, few_shot, base)[1]
    assert prompt.endswith("```python\n") and prompt.count("```python") == 4  # 3 shots + task
    assert completion == prompts.base_completion(problem.reference)

    core = Tokenizer(models.WordLevel({"[UNK]": 0, "<s>": 1, "</s>": 2}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="[UNK]", bos_token="<s>", eos_token="</s>"
    )
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n"
        "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    chat = Generator(backend=None, name="chat", tokenizer=tokenizer, style="chat")
    prompt, completion = sft.training_pair(record, tokenizer)
    assert prompt == initial_request(problem, few_shot, chat)[1]
    assert prompts.clean_block(problem.reference) in completion

    old = {k: v for k, v in record.items() if k not in ("completion_prompt", "completion")}
    with pytest.raises(ValueError, match="rerun the filter stage"):
        sft.training_pair(old, None)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, mbpp_train) -> Path:
    """A small random Llama with sdlib's tiny-model tokenizer (no hub needed)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from sdlib.generation.tiny_model import train_tokenizer

    folder = tmp_path_factory.mktemp("model")
    texts = ["\n".join([p.text, p.reference, *p.visible_tests]) for p in mbpp_train]
    tokenizer = train_tokenizer(texts, 1024)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _params(model_dir: Path, tmp_path: Path, **sft_fields) -> P.RunParams:
    return P.parse(
        {
            "seed": 1,
            "output_dir": str(tmp_path),
            "model": {"kind": "hf", "path": str(model_dir)},
            "sft": {"max_length": 1024, "batch_size": 4, **sft_fields},
        }
    )


def test_loss_falls_only_on_the_final_answer(records, model_dir, tmp_path):
    from transformers import AutoTokenizer

    params = _params(model_dir, tmp_path)
    dataset = sft.sft_dataset(records, None)
    assert set(dataset["source"]) == {"initial", "refine", "expl_refine"}
    trainer = sft.build_trainer(params, str(model_dir), dataset, None, tmp_path / "t", False)
    prepared = trainer.train_dataset
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert len(prepared) == len(records)
    for record, example in zip(records, prepared):
        ids, labels = example["input_ids"], example["labels"]
        prompt, completion = sft.training_pair(record, None)
        n_prompt = len(tokenizer(prompt)["input_ids"])
        # Every prompt token is masked: the task turn, the wrong solution, the feedback turn.
        assert all(label == -100 for label in labels[:n_prompt]), record["id"]
        masked_text = tokenizer.decode(ids[:n_prompt])
        if record["source"] == "initial":  # a base model's first attempt: completion layout
            assert masked_text.rstrip().endswith("```python")
        for message in record["messages"] if record["source"] != "initial" else []:
            assert prompts.clean_block(message["content"]) in masked_text
        if "wrong" in record:
            assert prompts.format_answer(record["wrong"]) in masked_text
            assert record["feedback"] in masked_text
        # Every token of the final answer (and the EOS after it) carries loss.
        assert labels[n_prompt:] == ids[n_prompt:] and len(ids) > n_prompt
        trained = tokenizer.decode(ids[n_prompt:])
        assert trained == completion + tokenizer.eos_token
        target = record["completion"] if record["source"] == "initial" else record["final_answer"]
        assert completion == target
        assert prompts.format_answer(record.get("wrong", "\0")) not in trained


def test_run_sft_trains_lora_and_writes_outputs(records, model_dir, tmp_path):
    params = _params(
        model_dir,
        tmp_path,
        learning_rate=1e-2,
        epochs=2,
        held_out_fraction=0.2,
        lora_r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        merge=True,
        warmup_steps=2,
    )
    run_dir = tmp_path / "run"
    (run_dir / "filter").mkdir(parents=True)
    with open(run_dir / "filter" / "sft.jsonl", "w") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    summary = sft.run_sft(params, run_dir, progress=False)
    out = run_dir / "sft"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["records"]["held_out"] == 4 and metrics["records"]["train"] == 16
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"], metrics
    # the held-out refinements alone (what the method is about) are measured too
    assert metrics["records"]["held_out_refinements"] >= 1
    refine_before = metrics["eval_loss_refinement_before"]
    assert metrics["eval_loss_refinement_after"] < refine_before, metrics
    assert metrics["processes"] == 1 and metrics["global_batch_size"] == 4
    assert summary["eval_loss_after"] == metrics["eval_loss_after"]
    # not the tiny model: the warm-up asked for is kept (no 10% cap), and the plan is exact
    assert metrics["warmup_steps"] == 2 and "warmup_note" not in metrics
    assert metrics["planned_steps"] == metrics["optimizer_steps"]
    assert len(metrics["train_losses"]) == metrics["optimizer_steps"] > 0
    assert (out / "model" / "adapter_model.safetensors").is_file()
    assert (out / "model" / "tokenizer.json").is_file()
    assert (out / "merged" / "model.safetensors").is_file()
    assert (out / "loss.png").stat().st_size > 1000
    assert 0 < metrics["trainable_parameters"] < metrics["parameters"]


def test_missing_sft_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="filter/sft.jsonl"):
        sft.run_sft(P.parse({}), tmp_path / "nowhere", progress=False)


def test_qlora_without_cuda_says_what_to_do(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match=r"needs a CUDA GPU.*sft\.method: lora"):
        sft.run_sft(P.parse({"sft": {"method": "qlora"}}), tmp_path, progress=False)


def test_held_out_split_and_warmup_cap():
    train, held = sft.held_out_split(20, 0.1, seed=0)
    assert len(held) == 2 and sorted(train + held) == list(range(20))
    assert sft.held_out_split(20, 0.1, seed=0) == (train, held)
    assert len(sft.held_out_split(3, 0.1, seed=0)[1]) == 1  # at least one when possible
    assert sft.held_out_split(1, 0.5, seed=0) == ([0], [])
    assert sft.capped_warmup(500, 18)[0] == 1 and sft.capped_warmup(5, 1000) == (5, "")
    # only the tiny model's short runs are capped; a real run keeps its warm-up, with a note
    steps, note = sft.capped_warmup(500, 18, tiny=False)
    assert steps == 500 and "never reaches" in note
    assert sft.capped_warmup(50, 1000, tiny=False) == (50, "")
    assert sft.optimizer_steps(16, 4, 1, 3) == 12 and sft.optimizer_steps(16, 4, 3, 2) == 4
    # 8 processes share the records: 8x fewer steps than one process would take
    assert (
        sft.optimizer_steps(640, 4, 1, 1, processes=8) == 20 == sft.optimizer_steps(640, 32, 1, 1)
    )
    assert sft.optimizer_steps(10, 2, 1, 1, processes=4) == 2  # ceil(10/4)=3 records -> 2 batches


def test_chat_template_prompt_gets_one_bos(records, model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)  # its chat template writes <|bos|>
    dataset = sft.sft_dataset(records[:2], tokenizer)
    rendered = prompts.render_chat(records[0]["messages"], tokenizer)
    assert rendered.startswith(tokenizer.bos_token)
    assert dataset[0]["prompt"] == rendered[len(tokenizer.bos_token) :]
    ids = tokenizer(dataset[0]["prompt"] + dataset[0]["completion"])["input_ids"]
    assert ids.count(tokenizer.bos_token_id) == 1
