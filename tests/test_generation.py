"""Sampling backends on a real tiny model: HFBackend in process, OpenAIBackend against the real
``sdlib.generation.server`` process on loopback (retries, timeouts, concurrency)."""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from tiny_fixtures import small_config, tiny_corpus

from sdlib.generation.backends import (
    Backend,
    BackendError,
    HFBackend,
    OpenAIBackend,
    RequestTimeout,
    SamplingParams,
    VLLMBackend,
    make_backend,
    request_seed,
    truncate_at_stop,
    vllm_sampling_kwargs,
)
from sdlib.generation.tiny_model import build_tiny_model

ROOT = Path(__file__).resolve().parents[1]
SMALL = small_config(steps=30)
SERVED = "tiny"
TEXTS, PAIRS = tiny_corpus()
PROMPTS = [p for p, _ in PAIRS[:3]]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One thread here and in the servers: on shared CPUs, oversubscribed threads crawl."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gen") / "tiny"
    return build_tiny_model(TEXTS, PAIRS, out, SMALL, progress=False, verbose=False)


@pytest.fixture(scope="module")
def hf(model_dir: Path) -> HFBackend:
    return HFBackend(model_dir, device="cpu", batch_size=4, progress=False)


def _start_server(model_dir: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """The real server in its own process; with --port 0 it prints the port it got."""
    import torch

    cmd = [
        sys.executable,
        "-m",
        "sdlib.generation.server",
        "--model",
        str(model_dir),
        "--port",
        "0",
    ]
    cmd += ["--served-model-name", SERVED, "--threads", str(torch.get_num_threads()), *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    deadline, seen = time.monotonic() + 90, []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            line = proc.stdout.readline().decode()
            seen.append(line)
            if "listening on " in line:
                url = line.split("listening on ")[1].strip()
                # Keep draining its output so that the server never blocks on a full pipe.
                threading.Thread(target=proc.stdout.read, daemon=True).start()
                return proc, url
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("server did not start:\n" + "".join(seen))


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[str]:
    proc, url = _start_server(model_dir)
    yield url
    _stop(proc)


def _stats(url: str, reset: bool = False) -> dict:
    with urllib.request.urlopen(url + "/stats" + ("?reset=1" if reset else ""), timeout=10) as r:
        return json.loads(r.read())


def _client(url: str, **kw) -> OpenAIBackend:
    return OpenAIBackend(url, SERVED, **{"progress": False, "backoff": 0.01, **kw})


# ------------------------------------------------------------------------------------- basics


def test_sampling_params_validate() -> None:
    assert SamplingParams(stop="\n").stop == ["\n"]
    assert SamplingParams(temperature=0).greedy
    for bad in ({"n": 0}, {"temperature": -1}, {"top_p": 0}, {"max_new_tokens": 0}):
        with pytest.raises(ValueError):
            SamplingParams(**bad)


def test_truncate_at_stop_cuts_at_the_earliest_stop() -> None:
    assert truncate_at_stop("a\nb###c", ["###", "\n"]) == ("a", True)
    assert truncate_at_stop("abc", ["x"]) == ("abc", False)
    assert truncate_at_stop("abc", []) == ("abc", False)


def test_make_backend_kinds(model_dir: Path) -> None:
    backend = make_backend({"kind": "hf", "model": str(model_dir), "progress": False})
    assert isinstance(backend, HFBackend) and isinstance(backend, Backend)
    client = make_backend({"kind": "openai", "base_url": "http://127.0.0.1:1/", "model": "m"})
    assert isinstance(client, OpenAIBackend) and client.base_url == "http://127.0.0.1:1/v1"
    with pytest.raises(ValueError, match="unknown backend kind"):
        make_backend({"kind": "nope"})


def test_vllm_backend_explains_how_to_install() -> None:
    with pytest.raises(ImportError, match="pip install vllm"):
        VLLMBackend("any")
    with pytest.raises(ImportError, match="pip install vllm"):
        make_backend({"kind": "vllm", "model": "any"})


# ----------------------------------------------------------------------------------- HFBackend


def test_hf_batched_n_completions_with_stops(hf: HFBackend) -> None:
    free = SamplingParams(n=3, temperature=1.0, max_new_tokens=40, seed=7)
    stopped = SamplingParams(n=3, temperature=1.0, max_new_tokens=40, seed=7, stop=["\n", "##"])
    a = hf.generate(PROMPTS, free)
    b = hf.generate(PROMPTS, stopped)
    assert [len(row) for row in a] == [len(row) for row in b] == [3, 3, 3]
    assert any("\n" in c.text for row in a for c in row)  # the stop really had work to do
    for prompt, row_a, row_b in zip(PROMPTS, a, b, strict=True):
        n_prompt = len(hf.tokenizer(prompt)["input_ids"])
        for ca, cb in zip(row_a, row_b, strict=True):
            # Stopping changes nothing before the stop: same seed, same batches, same draws.
            assert cb.text == truncate_at_stop(ca.text, ["\n", "##"])[0]
            assert "\n" not in cb.text and "##" not in cb.text
            assert cb.prompt_tokens == ca.prompt_tokens == n_prompt
            assert 0 < cb.completion_tokens <= ca.completion_tokens <= 40
            assert cb.finish_reason in ("stop", "length")
            if cb.text != ca.text:
                assert cb.finish_reason == "stop" and cb.completion_tokens < 40
            if ca.completion_tokens < 40:  # ended before the limit: EOS
                assert ca.finish_reason == "stop"


def test_hf_seeded_and_leaves_global_rng_alone(hf: HFBackend) -> None:
    import torch

    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=24, seed=3)
    state = torch.random.get_rng_state()
    first = hf.generate(PROMPTS, params)
    assert torch.equal(state, torch.random.get_rng_state())
    again = hf.generate(PROMPTS, params)
    other = hf.generate(PROMPTS, SamplingParams(n=2, temperature=1.0, max_new_tokens=24, seed=4))
    texts = [[c.text for c in row] for row in first]
    assert texts == [[c.text for c in row] for row in again]
    assert texts != [[c.text for c in row] for row in other]
    assert len({c.text for row in first for c in row}) > 1  # samples differ from each other


def test_hf_greedy_is_one_answer_n_times(hf: HFBackend) -> None:
    out = hf.generate(PROMPTS, SamplingParams(n=2, temperature=0, max_new_tokens=16))
    assert all(len(row) == 2 and row[0] == row[1] for row in out)


def test_hf_refill_continues_rows_across_calls(hf: HFBackend) -> None:
    """Rows that outlive a generate call continue from their tokens: greedy text is unchanged."""
    params = SamplingParams(temperature=0, max_new_tokens=30)
    whole = HFBackend.from_model(hf.model, hf.tokenizer, batch_size=4, refill_every=None)
    pieces = HFBackend.from_model(hf.model, hf.tokenizer, batch_size=2, refill_every=7)
    want, got = whole.generate(PROMPTS, params), pieces.generate(PROMPTS, params)
    assert [r[0].text for r in got] == [r[0].text for r in want]
    assert [r[0].completion_tokens for r in got] == [r[0].completion_tokens for r in want]
    assert max(r[0].completion_tokens for r in got) > 7  # some row really spanned calls
    sampled = pieces.generate(PROMPTS, SamplingParams(n=3, temperature=1.0, max_new_tokens=30))
    for row in sampled:
        assert len(row) == 3
        for c in row:
            assert 0 < c.completion_tokens <= 30
            if c.completion_tokens < 30:  # ended early: EOS
                assert c.finish_reason == "stop"


def test_hf_chat(hf: HFBackend) -> None:
    chat = [
        {"role": "user", "content": PAIRS[0][0]},
        {"role": "assistant", "content": "def f(x):\n\treturn x"},
        {"role": "user", "content": "Wrong answer. Explain and fix it."},
    ]
    (row,) = hf.generate_chat([chat], SamplingParams(n=2, temperature=1.0, max_new_tokens=12))
    assert len(row) == 2
    rendered = hf.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    n_prompt = len(hf.tokenizer(rendered, add_special_tokens=False)["input_ids"])
    assert all(c.prompt_tokens == n_prompt and c.completion_tokens > 0 for c in row)


def test_hf_loads_and_merges_a_lora_adapter(model_dir: Path, tmp_path: Path, hf) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(base, lora)
    peft_model.save_pretrained(tmp_path / "adapter")
    tuned = HFBackend(model_dir, adapter_path=tmp_path / "adapter", device="cpu", progress=False)
    ids = hf.tokenizer(PROMPTS[0], return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        want = peft_model(ids).logits
        got = tuned.model(ids).logits
        plain = hf.model(ids).logits
    assert torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(got, plain, atol=1e-3)
    assert tuned.generate(PROMPTS[:1], SamplingParams(max_new_tokens=4))[0][0].completion_tokens


# ---------------------------------------------------------------------- OpenAIBackend + server


def test_server_lists_models_and_rejects_unknown_ones(server: str) -> None:
    client = _client(server)
    assert client.list_models() == [SERVED]
    before = _stats(server)["requests"]
    wrong = OpenAIBackend(server, "other-model", progress=False, backoff=0.01)
    with pytest.raises(BackendError, match="404"):
        wrong.generate(PROMPTS[:1], SamplingParams(max_new_tokens=4))
    assert _stats(server)["requests"] == before + 1  # a 4xx is not retried
    bad = urllib.request.Request(
        server + "/v1/completions",
        data=json.dumps({"model": SERVED, "prompt": "x", "n": 0}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(bad, timeout=10)
    assert info.value.code == 400 and "n must be >= 1" in info.value.read().decode()


def test_openai_greedy_matches_in_process_hf(server: str, hf: HFBackend) -> None:
    params = SamplingParams(temperature=0, max_new_tokens=30, stop=["\n"])
    remote = _client(server).generate(PROMPTS, params)
    local = [hf.generate([p], params)[0] for p in PROMPTS]  # one prompt per batch, like the server
    assert [[c.text for c in row] for row in remote] == [[c.text for c in row] for row in local]
    for (r,), (h,) in zip(remote, local, strict=True):
        assert (r.prompt_tokens, r.completion_tokens) == (h.prompt_tokens, h.completion_tokens)
        assert r.finish_reason == h.finish_reason


def test_openai_samples_n_per_prompt_reproducibly(server: str) -> None:
    client = _client(server)
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=20, seed=11, stop=["\n"])
    first = client.generate(PROMPTS, params)
    again = client.generate(PROMPTS, params)
    assert [len(row) for row in first] == [3, 3, 3]
    assert [[c.text for c in r] for r in first] == [[c.text for c in r] for r in again]
    assert all("\n" not in c.text and c.prompt_tokens > 0 for row in first for c in row)
    assert len({c.text for row in first for c in row}) > 1


# ------------------------------------------------------------------- the seeding contract
# The resampling baseline sends the *same* prompt for every failing sample of a task: each
# request must sample on its own seed, or every "fresh" sample is a copy.

SAME_PROMPT = [PROMPTS[0]] * 4
SAMPLING = SamplingParams(n=1, temperature=1.0, max_new_tokens=24, seed=5)


def _texts(rows) -> list[str]:
    return [row[0].text for row in rows]


def test_hf_identical_prompts_sample_differently(hf: HFBackend) -> None:
    texts = _texts(hf.generate(SAME_PROMPT, SAMPLING))
    assert len(set(texts)) > 1 and texts == _texts(hf.generate(SAME_PROMPT, SAMPLING))


def test_openai_identical_prompts_sample_differently(server: str) -> None:
    client = _client(server)
    texts = _texts(client.generate(SAME_PROMPT, SAMPLING))
    assert len(set(texts)) > 1 and texts == _texts(client.generate(SAME_PROMPT, SAMPLING))
    assert [client._sampling_body(SAMPLING, i)["seed"] for i in range(3)] == [5, 6, 7]


def test_vllm_gets_one_seed_per_request() -> None:
    """vLLM cannot be installed here: its arguments are built by a pure function, and the
    backend hands vLLM one SamplingParams per prompt (checked with a recording engine)."""
    kwargs = vllm_sampling_kwargs(SAMPLING, 4)
    assert (
        [k["seed"] for k in kwargs] == [5, 6, 7, 8] == [request_seed(SAMPLING, i) for i in range(4)]
    )
    assert all(k["max_tokens"] == 24 and k["temperature"] == 1.0 for k in kwargs)
    unseeded = SamplingParams(n=1, temperature=1.0, max_new_tokens=8, seed=None)
    assert [k["seed"] for k in vllm_sampling_kwargs(unseeded, 2)] == [None, None]

    class Engine:  # records what vLLM's LLM.generate would receive
        def generate(self, prompts, sampling, lora_request=None):
            self.sampling = sampling
            return []

    backend = VLLMBackend.__new__(VLLMBackend)
    backend._vllm, backend.llm, backend.lora = (
        type("vllm", (), {"SamplingParams": dict}),
        Engine(),
        None,
    )
    backend.generate(SAME_PROMPT, SAMPLING)
    assert [s["seed"] for s in backend.llm.sampling] == [5, 6, 7, 8]


def test_openai_chat(server: str) -> None:
    chat = [{"role": "user", "content": "Write a function that adds two numbers."}]
    (row,) = _client(server).generate_chat([chat], SamplingParams(n=2, max_new_tokens=8))
    assert len(row) == 2 and all(isinstance(c.text, str) for c in row)
    assert all(c.completion_tokens > 0 and c.prompt_tokens > 0 for c in row)


def test_openai_concurrent_requests_keep_prompt_order(server: str) -> None:
    prompts = [p for p, _ in PAIRS[:8]]
    params = SamplingParams(temperature=0, max_new_tokens=12)
    _stats(server, reset=True)
    serial = _client(server, concurrency=1).generate(prompts, params)
    assert _stats(server, reset=True)["max_in_flight"] == 1
    parallel = _client(server, concurrency=4).generate(prompts, params)
    assert 2 <= _stats(server)["max_in_flight"] <= 4  # requests really overlapped at the server
    assert [r[0].text for r in parallel] == [r[0].text for r in serial]
    assert [r[0].prompt_tokens for r in parallel] == [r[0].prompt_tokens for r in serial]


def test_openai_retries_503_then_succeeds(model_dir: Path) -> None:
    proc, url = _start_server(model_dir, "--fail-first", "3")
    try:
        params = SamplingParams(temperature=0, max_new_tokens=4)
        with pytest.raises(BackendError, match="503"):
            _client(url, max_retries=1).generate(PROMPTS[:1], params)  # 2 tries, both 503
        (row,) = _client(url, max_retries=4).generate(PROMPTS[:1], params)  # 1 more 503, then ok
        assert row[0].completion_tokens > 0
        stats = _stats(url)
        assert (stats["failed_on_purpose"], stats["ok"], stats["requests"]) == (3, 1, 4)
    finally:
        _stop(proc)


def test_openai_times_out_on_a_server_that_never_answers() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted: list[socket.socket] = []

    def accept_and_hold() -> None:
        while True:
            try:
                accepted.append(listener.accept()[0])  # never reply
            except OSError:
                return

    threading.Thread(target=accept_and_hold, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    client = OpenAIBackend(url, "m", timeout=0.5, max_retries=1, backoff=0.01, progress=False)
    start = time.monotonic()
    try:
        with pytest.raises(RequestTimeout) as info:
            client.generate(["x"], SamplingParams(max_new_tokens=4))
    finally:
        listener.close()
        for conn in accepted:
            conn.close()
    assert isinstance(info.value, TimeoutError)
    assert 0.9 < time.monotonic() - start < 10
    assert len(accepted) == 2  # the timeout was retried once


def test_openai_connection_refused_fails_after_retries() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nobody listens there
    client = OpenAIBackend(f"http://127.0.0.1:{port}", "m", max_retries=2, backoff=0.01)
    with pytest.raises(BackendError, match="after 3 tries"):
        client.generate(["x"], SamplingParams(max_new_tokens=4))
