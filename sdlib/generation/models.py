"""Turn a params ``ModelSpec`` into a ready ``Generator`` (backend + tokenizer + prompt style).

Base models (the paper's CodeLlama/StarCoder checkpoints, and the embedded tiny model) are
prompted few-shot and see refinement chats in sdlib's plain layout; chat models
(``chat: true``) get their tokenizer's chat template.
"""

from __future__ import annotations

import os
from pathlib import Path

from sdlib.execution.sandbox import Sandbox
from sdlib.generation.generator import Generator
from sdlib.runs.layout import RunLayout
from sdlib.runs.params import ModelSpec, NamedModel, RunParams


def model_path(spec: ModelSpec, params: RunParams, sandbox: Sandbox | None) -> str:
    """Where the weights are: the built tiny model, or the hub id / local path given."""
    if spec.kind == "tiny":
        if sandbox is None:
            raise ValueError("building the tiny model needs a sandbox (it executes mutants)")
        from sdlib.generation.default_model import build_default_model

        return str(build_default_model(params, sandbox, tiny=spec.tiny))
    if not spec.path:
        raise ValueError(f"model kind {spec.kind!r} needs a path")
    from sdlib.generation import gguf

    cache = params.run_dir().parent / "_models"
    path, gguf_file = spec.path, spec.gguf_file
    if path == gguf.GEMMA_PACKAGE:
        path = str(gguf.gemma_file(cache))
    found = gguf.split_gguf(path, gguf_file)
    if found is not None and spec.kind == "hf":  # dequantized once into a model folder
        return str(gguf.as_model_folder(*found, cache))
    return path


def saved_model(folder: Path) -> str | None:
    """What a stage's ``model/`` folder holds: ``"adapter"`` (LoRA, on its base model),
    ``"full"`` (whole weights) or None (nothing yet). The one place that decides it."""
    if (folder / "adapter_config.json").is_file():
        return "adapter"
    if (folder / "config.json").is_file():
        return "full"
    return None


def make_generator(
    spec: ModelSpec,
    params: RunParams,
    sandbox: Sandbox | None = None,
    adapter: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> Generator:
    from sdlib.generation.backends import HFBackend, OpenAIBackend, VLLMBackend

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
            prefix_cache=spec.prefix_cache,
        )
        tokenizer = backend.tokenizer if spec.chat else None
    name = f"{spec.kind}:{Path(path).name}" + (f"+{Path(adapter).name}" if adapter else "")
    return Generator(backend, name, tokenizer, "chat" if spec.chat else "base")


def make_teacher(params: RunParams, model: Generator, sandbox: Sandbox | None) -> Generator:
    """The teacher that writes refinements: the model itself (self-bootstrap) or another."""
    if params.teacher.kind == "self":
        return model
    return make_generator(params.teacher, params, sandbox)


def model_label(entry: str | NamedModel) -> str:
    return entry if isinstance(entry, str) else entry.name


def stage_generator(
    entry: str | NamedModel,
    params: RunParams,
    run_dir: str | os.PathLike[str],
    sandbox: Sandbox | None = None,
    progress: bool = True,
) -> Generator:
    """The generator a name stands for in a run: ``base`` (the params' model), ``sft`` and
    ``rl`` (that stage's ``model/`` folder: a LoRA adapter on the base, or a full model),
    ``teacher``, or any ``NamedModel``. Its ``name`` becomes the label."""
    label = model_label(entry)
    if isinstance(entry, NamedModel):
        generator = make_generator(entry, params, sandbox, progress=progress)
    elif entry == "base":
        generator = make_generator(params.model, params, sandbox, progress=progress)
    elif entry == "teacher":
        spec = params.model if params.teacher.kind == "self" else params.teacher
        generator = make_generator(spec, params, sandbox, progress=progress)
    elif entry in ("sft", "rl"):
        layout = RunLayout.of(run_dir)
        folder = layout.sft_model if entry == "sft" else layout.rl_model
        if saved_model(folder) is None:
            raise FileNotFoundError(
                f"the model {entry!r} is named in the params but {folder} holds no model: run "
                f"the {entry} stage first (sdlib run PARAMS --stages {entry}) or remove "
                f"{entry!r} from the list of models"
            )
        if saved_model(folder) == "adapter":
            # RL trains a fresh adapter on a full SFT model when SFT was not LoRA
            if entry == "rl" and saved_model(layout.sft_model) == "full":
                spec = params.model.model_copy(update={"kind": "hf", "path": str(layout.sft_model)})
            else:
                spec = params.model
            generator = make_generator(spec, params, sandbox, adapter=folder, progress=progress)
        else:
            spec = params.model.model_copy(update={"kind": "hf", "path": str(folder)})
            generator = make_generator(spec, params, sandbox, progress=progress)
    else:
        raise ValueError(f"unknown model {entry!r}: use base, sft, rl, teacher or a model spec")
    generator.name = label
    return generator
