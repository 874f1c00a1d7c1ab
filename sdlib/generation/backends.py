"""One sampling interface for every backend, so that collection, RL and evaluation code never
care whether samples come from a local HF model, vLLM, or any OpenAI-compatible server.

* :class:`HFBackend`: transformers ``generate`` in this process (CPU or GPU), batched, with an
  optional LoRA adapter.
* :class:`OpenAIBackend`: any server speaking ``/v1/completions`` and ``/v1/chat/completions``
  (vLLM, TGI, llama.cpp, OpenAI, ``python -m sdlib.generation.server``), stdlib HTTP only.
* :class:`VLLMBackend`: vLLM in this process, when it is installed.

Every backend returns, per prompt, ``n`` :class:`Completion` objects, with the text already cut at
the first stop string. Heavy packages are imported inside functions: importing this module is
cheap.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol, runtime_checkable

Message = dict[str, str]  # {"role": "user" | "assistant" | "system", "content": "..."}
FinishReason = Literal["stop", "length"]


@dataclass
class SamplingParams:
    """What to sample. ``temperature == 0`` means greedy; ``seed=None`` means unseeded."""

    n: int = 1
    temperature: float = 0.8
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    seed: int | None = 0

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [s for s in self.stop if s]
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Completion:
    text: str  # cut before the first stop string
    prompt_tokens: int
    completion_tokens: (
        int  # tokens generated (EOS included; estimated per choice when n > 1 via HTTP)
    )
    finish_reason: FinishReason  # "stop": EOS or a stop string; "length": max_new_tokens hit


@runtime_checkable
class Backend(Protocol):
    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        """``params.n`` completions for each prompt, in prompt order."""
        ...

    def generate_chat(
        self, conversations: list[list[Message]], params: SamplingParams
    ) -> list[list[Completion]]:
        """The next assistant turn of each conversation, ``params.n`` times."""
        ...


class BackendError(RuntimeError):
    """A request failed for good (after retries, or with an error that retrying cannot fix)."""


class RequestTimeout(BackendError, TimeoutError):
    """The server did not answer within the timeout, on every try."""


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` before the earliest stop string; also say whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


# --------------------------------------------------------------------------------------------
# transformers, in process


def request_seed(params: SamplingParams, index: int) -> int | None:
    """The seed of request ``index`` of a call: ``seed + index`` (None stays unseeded), so
    every request of a call samples differently and a rerun samples the same again. The
    OpenAI-compatible and vLLM backends use it per prompt; the HF backend seeds its
    ``generate`` calls the same way (``seed + call``)."""
    return None if params.seed is None else params.seed + index


def vllm_sampling_kwargs(params: SamplingParams, count: int) -> list[dict[str, Any]]:
    """vLLM ``SamplingParams`` arguments for ``count`` requests (kept apart from vLLM so the
    seeding contract is tested where vLLM cannot be installed)."""
    return [
        {
            "n": params.n,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_new_tokens,
            "stop": params.stop or None,
            "seed": request_seed(params, i),
        }
        for i in range(count)
    ]


def _resolve_device(device: str) -> str:
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _resolve_dtype(dtype: Any, device: str) -> Any:
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, str(dtype))


def _stop_string_criteria(tokenizer: Any, stop: list[str], starts: list[int]) -> Any:
    """Stop each row once its generated text (from ``starts[row]`` on) contains a stop string.

    Only the last few tokens are decoded each step: a stop string that just completed lies
    within the last ``len(stop)`` characters, and every token decodes to at least one character.
    """
    import torch
    from transformers import StoppingCriteria

    tail = max(len(s) for s in stop) + 2

    class StopOnStrings(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            end = input_ids.shape[1]
            windows = [input_ids[r, max(s, end - tail) :].tolist() for r, s in enumerate(starts)]
            texts = tokenizer.batch_decode(windows, skip_special_tokens=True)
            done = [any(s in t for s in stop) for t in texts]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StopOnStrings()


@dataclass
class _Row:
    """One sample being generated: which prompt, which copy, and its tokens so far."""

    prompt_index: int
    copy: int
    prompt: list[int]
    generated: list[int] = field(default_factory=list)
    finish: FinishReason | None = None


class HFBackend:
    """Batched sampling with transformers ``generate`` (left padding, stop strings, seeds).

    Samples finish at very different lengths, and ``generate`` keeps computing finished rows
    until the longest one ends. So each ``generate`` call makes at most ``refill_every`` new
    tokens; then finished rows leave the batch, queued ones take their places, and unfinished
    ones continue from their tokens so far (a cheap re-prefill). ``refill_every=None``: one call
    per batch.

    Results are reproducible for the same prompts, params, ``batch_size``, ``refill_every``,
    device and thread count: call ``k`` samples under ``seed + k``. Greedy sampling runs each
    prompt once and copies it ``n`` times.
    """

    def __init__(
        self,
        model_name_or_path: str | os.PathLike[str],
        adapter_path: str | os.PathLike[str] | None = None,
        device: str = "auto",
        dtype: Any = "auto",
        batch_size: int = 16,
        merge_adapter: bool = True,
        progress: bool = True,
        attn_implementation: str | None = None,
        refill_every: int | None = 64,
        prefix_cache: bool = False,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = _resolve_device(device)
        tokenizer = AutoTokenizer.from_pretrained(str(model_name_or_path))
        extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
        model = AutoModelForCausalLM.from_pretrained(
            str(model_name_or_path), dtype=_resolve_dtype(dtype, device), **extra
        )
        if adapter_path is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter_path))
            if merge_adapter:  # one matmul per layer instead of three: faster sampling
                model = model.merge_and_unload()
        self._setup(model.to(device), tokenizer, device, batch_size, progress, refill_every)
        self.name = str(model_name_or_path)
        self.use_prefix_cache(prefix_cache)

    @classmethod
    def from_model(
        cls,
        model: Any,
        tokenizer: Any,
        batch_size: int = 16,
        progress: bool = True,
        refill_every: int | None = 64,
        prefix_cache: bool = False,
    ) -> HFBackend:
        """Wrap a model already in memory (just trained in a notebook, say)."""
        self = cls.__new__(cls)
        self._setup(model, tokenizer, str(model.device), batch_size, progress, refill_every)
        self.name = getattr(model, "name_or_path", "") or "in-memory"
        self.use_prefix_cache(prefix_cache)
        return self

    def use_prefix_cache(self, enabled: bool = True) -> None:
        """Prefill the prompts' shared prefix once and each prompt once for all its rows
        (``kv_cache``); each batch is then sampled in one ``generate`` call, without refills."""
        from sdlib.generation.kv_cache import PrefixCache

        self.prefix_cache = PrefixCache(self.model) if enabled else None

    def _setup(
        self,
        model: Any,
        tokenizer: Any,
        device: str,
        batch_size: int,
        progress: bool,
        refill_every: int | None,
    ) -> None:
        if batch_size < 1 or (refill_every is not None and refill_every < 1):
            raise ValueError("batch_size and refill_every must be >= 1")
        self.refill_every = refill_every
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = device
        self.batch_size = batch_size
        self.progress = progress
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self.eos_ids = sorted(eos_ids)

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        ids = [self.tokenizer(p)["input_ids"] for p in prompts]
        return self._generate_ids(ids, params)

    def generate_chat(
        self, conversations: list[list[Message]], params: SamplingParams
    ) -> list[list[Completion]]:
        texts = [
            self.tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
            for c in conversations
        ]
        # The chat template writes its own BOS.
        ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        return self._generate_ids(ids, params)

    def _generate_ids(self, ids: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        import torch
        from tqdm.auto import tqdm

        copies = 1 if params.greedy else params.n
        queue = deque(
            sorted(  # similar prompt lengths together: less padding
                (_Row(i, j, ids[i]) for i in range(len(ids)) for j in range(copies)),
                key=lambda r: -len(r.prompt),
            )
        )
        results: list[list[Completion | None]] = [[None] * copies for _ in ids]
        cached = self.prefix_cache is not None
        step = params.max_new_tokens if cached else self.refill_every or params.max_new_tokens
        active: list[_Row] = []
        cuda = [torch.device(self.device)] if self.device.startswith("cuda") else []
        bar = tqdm(total=len(queue), desc="generate", disable=not self.progress or len(queue) < 2)
        with torch.random.fork_rng(devices=cuda), torch.inference_mode():  # caller's RNG untouched
            for call in itertools.count():
                while queue and len(active) < self.batch_size:  # refill the batch
                    active.append(queue.popleft())
                if not active:
                    break
                if params.seed is not None:
                    torch.manual_seed(params.seed + call)
                budget = max(params.max_new_tokens - len(r.generated) for r in active)
                outs = self._generate_batch(active, params, min(step, budget))
                for row, tokens in zip(active, outs, strict=True):
                    self._extend(row, tokens, params)
                    if row.finish:
                        results[row.prompt_index][row.copy] = self._completion(row, params)
                        bar.update(1)
                active = [r for r in active if not r.finish]
        bar.close()
        if copies == 1:  # greedy: n equal answers, as separate objects
            return [[replace(r[0]) for _ in range(params.n)] for r in results]  # type: ignore[type-var]
        return [list(r) for r in results]  # type: ignore[misc]

    def _generate_batch(
        self, rows: list[_Row], params: SamplingParams, max_new: int
    ) -> list[list[int]]:
        """Up to ``max_new`` more tokens for each row (prompt + tokens so far, left-padded)."""
        import torch
        from transformers import StoppingCriteriaList

        pad = self.tokenizer.pad_token_id
        batch = [r.prompt + r.generated for r in rows]
        width = max(len(x) for x in batch)
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in batch], device=self.device)
        mask = torch.tensor(
            [[0] * (width - len(x)) + [1] * len(x) for x in batch], device=self.device
        )
        kwargs: dict[str, Any] = {"do_sample": False}
        if not params.greedy:
            # top_k=0: no top-k cut (transformers would default to 50), as in the OpenAI API.
            kwargs = {
                "do_sample": True,
                "temperature": params.temperature,
                "top_p": params.top_p,
                "top_k": 0,
            }
        if self.prefix_cache is not None and not any(r.generated for r in rows):
            from sdlib.generation.kv_cache import stack_left_padded

            caches = self.prefix_cache.rows([r.prompt for r in rows])
            if caches is not None:
                kwargs["cache"] = stack_left_padded(caches, [len(r.prompt) - 1 for r in rows])
        if params.stop:
            starts = [width - len(r.generated) for r in rows]
            kwargs["stopping_criteria"] = StoppingCriteriaList(
                [_stop_string_criteria(self.tokenizer, params.stop, starts)]
            )
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            max_new_tokens=max_new,
            pad_token_id=pad,
            eos_token_id=self.eos_ids,
            **kwargs,
        )
        return out[:, width:].tolist()

    def _extend(self, row: _Row, tokens: list[int], params: SamplingParams) -> None:
        """Append new tokens; decide whether the row is finished (EOS, stop string, length)."""
        pad = self.tokenizer.pad_token_id
        for tok in tokens:
            if len(row.generated) >= params.max_new_tokens:
                break
            if tok in self.eos_ids:
                row.generated.append(tok)
                row.finish = "stop"
                return
            if tok == pad:  # generate pads rows its stopping criteria ended
                row.finish = "stop"
                return
            row.generated.append(tok)
        if params.stop and truncate_at_stop(self._decode(row), params.stop)[1]:
            row.finish = "stop"
        elif len(row.generated) >= params.max_new_tokens:
            row.finish = "length"

    def _decode(self, row: _Row) -> str:
        return self.tokenizer.decode(row.generated, skip_special_tokens=True)

    def _completion(self, row: _Row, params: SamplingParams) -> Completion:
        text, hit = truncate_at_stop(self._decode(row), params.stop)
        return Completion(
            text=text,
            prompt_tokens=len(row.prompt),
            completion_tokens=len(row.generated),
            finish_reason="stop" if hit else row.finish or "length",
        )


# --------------------------------------------------------------------------------------------
# any OpenAI-compatible HTTP server


class OpenAIBackend:
    """Client for OpenAI-compatible servers, with concurrency, retries and timeouts.

    One request per prompt (carrying ``n``), ``concurrency`` in flight at once. Connection
    errors, timeouts, 429 and 5xx are retried ``max_retries`` times with exponential backoff and
    jitter (honouring ``Retry-After``); other 4xx fail at once. ``timeout`` bounds each socket
    operation (connect, each read), in seconds. Prompt ``i`` is sampled with ``seed + i``.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout: float = 60.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 20.0,
        progress: bool = True,
    ) -> None:
        base = base_url.rstrip("/")
        self.base_url = base if base.endswith("/v1") else base + "/v1"
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        if concurrency < 1 or max_retries < 0 or timeout <= 0:
            raise ValueError("need concurrency >= 1, max_retries >= 0, timeout > 0")
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.progress = progress
        self._rng = random.Random()
        self._rng_lock = threading.Lock()

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        def request(i: int) -> list[Completion]:
            body = {"prompt": prompts[i], **self._sampling_body(params, i)}
            data = self._request("/completions", body)
            return self._completions(data, params, lambda c: c.get("text") or "")

        return self._run_all(request, len(prompts), "completions")

    def generate_chat(
        self, conversations: list[list[Message]], params: SamplingParams
    ) -> list[list[Completion]]:
        def request(i: int) -> list[Completion]:
            body = {"messages": conversations[i], **self._sampling_body(params, i)}
            data = self._request("/chat/completions", body)
            return self._completions(
                data, params, lambda c: (c.get("message") or {}).get("content") or ""
            )

        return self._run_all(request, len(conversations), "chat")

    def list_models(self) -> list[str]:
        """Model ids the server offers (``GET /v1/models``)."""
        return [m["id"] for m in self._request("/models", None).get("data", [])]

    def _sampling_body(self, params: SamplingParams, i: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "n": params.n,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_new_tokens,
        }
        if params.stop:
            body["stop"] = params.stop
        seed = request_seed(params, i)
        if seed is not None:
            body["seed"] = seed
        return body

    @staticmethod
    def _completions(
        data: dict[str, Any], params: SamplingParams, text_of: Any
    ) -> list[Completion]:
        choices = sorted(data.get("choices", []), key=lambda c: c.get("index", 0))
        if len(choices) != params.n:
            raise BackendError(f"asked for {params.n} choices, server sent {len(choices)}")
        usage = data.get("usage") or {}
        texts = [text_of(c) for c in choices]
        # usage counts all choices together: split it by text length (exact when n == 1).
        total = int(usage.get("completion_tokens") or 0)
        chars = sum(len(t) for t in texts)
        shares = [round(total * len(t) / chars) if chars else total // len(texts) for t in texts]
        shares[-1] += total - sum(shares)
        out = []
        for choice, text, tokens in zip(choices, texts, shares, strict=True):
            text, hit = truncate_at_stop(text, params.stop)  # servers may ignore some stops
            reason = "stop" if hit or choice.get("finish_reason") != "length" else "length"
            out.append(Completion(text, int(usage.get("prompt_tokens") or 0), tokens, reason))
        return out

    def _run_all(self, request: Any, count: int, what: str) -> list[list[Completion]]:
        from tqdm.auto import tqdm

        results: list[list[Completion] | None] = [None] * count
        with ThreadPoolExecutor(max_workers=min(self.concurrency, max(count, 1))) as pool:
            futures = {pool.submit(request, i): i for i in range(count)}
            bar = tqdm(total=count, desc=what, disable=not self.progress or count < 2)
            pending = set(futures)
            try:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for f in done:
                        results[futures[f]] = f.result()  # re-raises the first failure
                        bar.update(1)
            except BaseException:
                for f in pending:
                    f.cancel()
                raise
            finally:
                bar.close()
        return results  # type: ignore[return-value]

    def _request(self, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        url = self.base_url + path
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else json.dumps(body).encode()
        error: BackendError | None = None
        retry_after: float | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self._delay(attempt, retry_after))
            retry_after = None
            request = urllib.request.Request(
                url, data=data, headers=headers, method="GET" if data is None else "POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as e:
                detail = e.read()[:500].decode(errors="replace")
                error = BackendError(f"HTTP {e.code} from {url}: {detail}")
                if e.code != 429 and e.code < 500:
                    raise error from e
                retry_after = _seconds(e.headers.get("Retry-After"))
            except TimeoutError as e:
                error = RequestTimeout(f"no answer from {url} within {self.timeout} s")
                error.__cause__ = e
            except urllib.error.URLError as e:
                if isinstance(e.reason, TimeoutError):
                    error = RequestTimeout(f"no answer from {url} within {self.timeout} s")
                else:
                    error = BackendError(f"cannot reach {url}: {e.reason}")
                error.__cause__ = e
            except (ConnectionError, http.client.HTTPException) as e:
                error = BackendError(f"connection to {url} failed: {e!r}")
                error.__cause__ = e
            except json.JSONDecodeError as e:
                raise BackendError(f"{url} did not answer with JSON: {e}") from e
        assert error is not None
        raise type(error)(f"{error} (after {self.max_retries + 1} tries)") from error.__cause__

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_backoff)
        with self._rng_lock:
            jitter = 0.5 + self._rng.random() / 2
        return min(self.backoff * 2 ** (attempt - 1), self.max_backoff) * jitter


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to exponential backoff


# --------------------------------------------------------------------------------------------
# vLLM, in process


class VLLMBackend:
    """vLLM's offline engine in this process (a CUDA GPU; optional LoRA adapter)."""

    def __init__(
        self,
        model: str,
        adapter_path: str | None = None,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.85,
        max_model_len: int | None = None,
        **engine_kwargs: Any,
    ) -> None:
        try:
            import vllm
        except ImportError as e:
            raise ImportError(
                "VLLMBackend needs vllm, which is not installed. Install it on a Linux machine "
                "with a CUDA GPU (`pip install vllm`), or serve the model with "
                "`vllm serve MODEL` (or `python -m sdlib.generation.server --model MODEL`) and use "
                "{'kind': 'openai', 'base_url': 'http://HOST:PORT', 'model': 'MODEL'}."
            ) from e
        self._vllm = vllm
        self.llm = vllm.LLM(
            model=model,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            enable_lora=adapter_path is not None,
            **engine_kwargs,
        )
        self.lora = None
        if adapter_path is not None:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest("adapter", 1, adapter_path)

    def _params(self, params: SamplingParams, count: int) -> list[Any]:
        """One vLLM ``SamplingParams`` per request, each with its own seed: one seed for all
        would make identical prompts (the resampling baseline) return identical samples."""
        return [self._vllm.SamplingParams(**kw) for kw in vllm_sampling_kwargs(params, count)]

    def _convert(self, outputs: Any, params: SamplingParams) -> list[list[Completion]]:
        results = []
        for out in outputs:
            row = []
            for o in out.outputs:
                text, hit = truncate_at_stop(o.text, params.stop)
                reason = "length" if o.finish_reason == "length" and not hit else "stop"
                row.append(Completion(text, len(out.prompt_token_ids), len(o.token_ids), reason))
            results.append(row)
        return results

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        outs = self.llm.generate(
            prompts, self._params(params, len(prompts)), lora_request=self.lora
        )
        return self._convert(outs, params)

    def generate_chat(
        self, conversations: list[list[Message]], params: SamplingParams
    ) -> list[list[Completion]]:
        sampling = self._params(params, len(conversations))
        outs = self.llm.chat(conversations, sampling, lora_request=self.lora)
        return self._convert(outs, params)


BACKENDS: dict[str, type] = {"hf": HFBackend, "openai": OpenAIBackend, "vllm": VLLMBackend}


def make_backend(spec: dict[str, Any]) -> Backend:
    """Build a backend from a params dict: ``{"kind": "hf" | "openai" | "vllm", ...}``.

    The other keys are the backend's constructor arguments, e.g. ``{"kind": "hf", "model": path}``
    or ``{"kind": "openai", "base_url": "http://127.0.0.1:8000", "model": "tiny"}``.
    """
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind not in BACKENDS:
        raise ValueError(f"unknown backend kind {kind!r}; choose one of {sorted(BACKENDS)}")
    if kind == "hf" and "model" in spec:
        spec["model_name_or_path"] = spec.pop("model")
    return BACKENDS[kind](**spec)
