"""Producing text: sampling backends (transformers, OpenAI-compatible, vLLM), model specs, the OpenAI-compatible server, the tiny default model."""
