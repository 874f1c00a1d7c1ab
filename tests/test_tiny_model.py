"""The embedded tiny model: builds from MBPP text, saves, reloads with Auto*, generates, is
reused when nothing changed, and rebuilds bit-identically from its seed."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_fixtures import small_config, tiny_corpus

from sdlib.generation.tiny_model import (
    INFO_FILE,
    TinyModelConfig,
    build_tiny_model,
    load_build_info,
    train_tokenizer,
)

SMALL = small_config(steps=20)
TEXTS, PAIRS = tiny_corpus(with_validation=True)


def test_default_config_is_the_measured_recipe() -> None:
    c = TinyModelConfig()
    assert (c.vocab_size, c.hidden, c.intermediate, c.layers, c.heads) == (4096, 128, 384, 2, 4)
    assert (c.lr, c.batch, c.n_problems) == (3e-3, 16, 24)
    assert 60 < c.steps < 250
    assert c.hash() == TinyModelConfig().hash() != TinyModelConfig(seed=1).hash()


def test_prompt_ends_on_a_token_boundary() -> None:
    """Training tokenizes prompt and target apart: that must equal tokenizing them together."""
    tok = train_tokenizer(TEXTS, 512)
    for prompt, target in PAIRS[:8]:
        whole = tok(prompt + target)["input_ids"]
        apart = tok(prompt)["input_ids"] + tok(target, add_special_tokens=False)["input_ids"]
        assert whole == apart


def test_builds_saves_reloads_generates_and_is_reused(tmp_path: Path, capsys) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "tiny"
    path = build_tiny_model(TEXTS, PAIRS, out, SMALL, progress=False)
    assert path == out
    info = load_build_info(out)
    assert info["config"]["steps"] == 20 and len(info["losses"]) == 20
    assert info["losses"][-1] < info["losses"][0] - 0.5  # it learned something
    assert "loss curve" in capsys.readouterr().out

    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert tok.padding_side == "left"
    assert None not in (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id)
    assert len({tok.pad_token_id, tok.eos_token_id, tok.bos_token_id}) == 3
    assert tok("def f():")["input_ids"][0] == tok.bos_token_id
    assert tok.decode(tok("def f(x):\n\treturn x", add_special_tokens=False)["input_ids"]) == (
        "def f(x):\n\treturn x"
    )
    chat = [{"role": "user", "content": "Fix it."}, {"role": "assistant", "content": "def f(): 1"}]
    rendered = tok.apply_chat_template(chat, tokenize=False)
    assert rendered.startswith(tok.bos_token) and "<|user|>\nFix it.<|end|>" in rendered
    assert "<|assistant|>\ndef f(): 1<|end|>" in rendered
    gen_prompt = tok.apply_chat_template(chat[:1], tokenize=False, add_generation_prompt=True)
    assert gen_prompt.endswith("<|assistant|>\n")

    batch = tok([PAIRS[0][0], PAIRS[1][0]], return_tensors="pt", padding=True)
    assert batch["attention_mask"][:, -1].all()  # left padding: the prompts end together
    with torch.inference_mode():
        ids = model.generate(**batch, max_new_tokens=8, do_sample=False)
    assert ids.shape[0] == 2 and batch["input_ids"].shape[1] < ids.shape[1]
    assert ids.shape[1] <= batch["input_ids"].shape[1] + 8
    assert all(isinstance(t, str) for t in tok.batch_decode(ids, skip_special_tokens=True))

    # Same config and data: reused, nothing rewritten.
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    build_tiny_model(TEXTS, PAIRS, out, SMALL, progress=False)
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    assert "reusing" in capsys.readouterr().out

    # Another config (or other data) in the same place: rebuilt.
    build_tiny_model(TEXTS, PAIRS[:12], out, SMALL, progress=False, verbose=False)
    assert load_build_info(out)["train_pairs"] == 12
    assert load_build_info(out)["hash"] != info["hash"]


def test_same_seed_gives_identical_weights(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    few = TinyModelConfig(**{**SMALL.__dict__, "steps": 3})
    a = build_tiny_model(TEXTS, PAIRS, tmp_path / "a", few, progress=False, verbose=False)
    b = build_tiny_model(TEXTS, PAIRS, tmp_path / "b", few, progress=False, verbose=False)
    other = TinyModelConfig(**{**few.__dict__, "seed": 1})
    c = build_tiny_model(TEXTS, PAIRS, tmp_path / "c", other, progress=False, verbose=False)
    wa, wb, wc = (load_file(p / "model.safetensors") for p in (a, b, c))
    assert wa.keys() == wb.keys() == wc.keys()
    assert all((wa[k] == wb[k]).all() for k in wa)
    assert any(not (wa[k] == wc[k]).all() for k in wa)
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    assert load_build_info(a)["losses"] == load_build_info(b)["losses"]


def test_refuses_to_overwrite_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        build_tiny_model(TEXTS, PAIRS, tmp_path, SMALL, progress=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert not (tmp_path / INFO_FILE).exists()


def test_rejects_empty_training_data(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        build_tiny_model(TEXTS, [], tmp_path / "m", SMALL, progress=False)


def test_target_loss_equals_the_models_own_loss() -> None:
    """The warm-start loss (head on target positions only) is HF's label loss, padding and all."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from sdlib.generation.tiny_model import _target_loss

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=97,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
    )
    ids = torch.randint(1, 97, (3, 40))
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0  # a padded row
    labels = torch.full_like(ids, -100)
    labels[0, 10:] = ids[0, 10:]
    labels[1, 25:30] = ids[1, 25:30]
    labels[2, 39:] = ids[2, 39:]  # a single target token, the last position
    ours = _target_loss(model, ids, mask, labels)
    theirs = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6, abs=1e-6)
    assert ours.requires_grad
