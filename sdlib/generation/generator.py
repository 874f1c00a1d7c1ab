"""A model as the stages see it: a backend plus how it is prompted (tokenizer, style, chat
endpoint), with the one rule for a first attempt's prompt and stop strings, and the one way to
ask any backend for completions."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sdlib.execution.problems import Problem
from sdlib.generation.backends import Backend, Completion, SamplingParams
from sdlib.prompting import prompts


@dataclass
class Generator:
    """A backend plus what prompting it needs: its tokenizer (chat template) and its style."""

    backend: Backend
    name: str
    tokenizer: Any = None
    style: str = "base"  # initial prompts: "base" (few-shot completion) or "chat"
    chat_api: bool = False  # an OpenAI-style chat endpoint takes messages, not text


def seed_for(*parts: object) -> int:
    """A stable per-unit seed, so a resumed run samples exactly what the first would have."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()
    return int(digest[:8], 16)


def initial_request(
    problem: Problem, few_shot: Sequence[Problem], model: Generator
) -> tuple[list[prompts.Message], str]:
    """(messages, prompt text) of a first attempt: chat endpoints take the messages, every
    other backend the text (few-shot completion for base models, the chat template else)."""
    messages = prompts.initial_messages(problem, few_shot)
    if model.chat_api:
        return messages, prompts.render_chat(messages)
    return messages, prompts.initial_prompt(problem, few_shot, model.tokenizer, model.style)


def initial_stop(model: Generator) -> list[str]:
    return list(prompts.STOP_BASE) if model.style == "base" else []


def chat_stop(model: Generator) -> list[str]:
    """sdlib's plain chat layout needs stop strings; a chat template or endpoint ends turns."""
    if model.chat_api or model.tokenizer is not None:
        return []
    return list(prompts.STOP_PLAIN_CHAT)


def complete(
    model: Generator,
    requests: Sequence[tuple[list[prompts.Message], str]],
    params: SamplingParams,
) -> list[list[Completion]]:
    """Completions for (messages, prompt) requests, whatever kind of backend ``model`` is."""
    if model.chat_api:
        return model.backend.generate_chat([list(m) for m, _ in requests], params)
    return model.backend.generate([p for _, p in requests], params)
