"""Turn a params ``ModelSpec`` into a ready ``Generator`` (backend + tokenizer + prompt style).

Base models (the paper's CodeLlama/StarCoder checkpoints, and the embedded tiny model) are
prompted few-shot and see refinement chats in sdlib's plain layout; chat models
(``chat: true``) get their tokenizer's chat template.
"""

from __future__ import annotations

import os
from pathlib import Path

from .collect import Generator
from .params import ModelSpec, RunParams
from .sandbox import Sandbox


def model_path(spec: ModelSpec, params: RunParams, sandbox: Sandbox | None) -> str:
    """Where the weights are: the built tiny model, or the hub id / local path given."""
    if spec.kind == "tiny":
        if sandbox is None:
            raise ValueError("building the tiny model needs a sandbox (it executes mutants)")
        from .default_model import build_default_model

        return str(build_default_model(params, sandbox))
    if not spec.path:
        raise ValueError(f"model kind {spec.kind!r} needs a path")
    return spec.path


def make_generator(
    spec: ModelSpec,
    params: RunParams,
    sandbox: Sandbox | None = None,
    adapter: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> Generator:
    from .generation import HFBackend, OpenAIBackend, VLLMBackend

    if spec.kind == "openai":
        key = os.environ.get(spec.api_key_env) if spec.api_key_env else None
        backend = OpenAIBackend(
            spec.base_url, spec.model, api_key=key, concurrency=spec.concurrency
        )
        return Generator(backend, f"openai:{spec.model}", None, "chat", chat_api=True)
    path = model_path(spec, params, sandbox)
    adapter = adapter or spec.adapter
    if spec.kind == "vllm":
        backend = VLLMBackend(path, adapter_path=adapter)
        tokenizer = backend.llm.get_tokenizer() if spec.chat else None
    else:
        backend = HFBackend(
            path,
            adapter_path=adapter,
            dtype=spec.dtype,
            batch_size=spec.batch_size,
            progress=progress,
        )
        tokenizer = backend.tokenizer if spec.chat else None
    name = f"{spec.kind}:{Path(path).name}" + (f"+{Path(adapter).name}" if adapter else "")
    return Generator(backend, name, tokenizer, "chat" if spec.chat else "base")


def make_teacher(params: RunParams, model: Generator, sandbox: Sandbox | None) -> Generator:
    """The teacher that writes refinements: the model itself (self-bootstrap) or another."""
    if params.teacher.kind == "self":
        return model
    return make_generator(params.teacher, params, sandbox)
