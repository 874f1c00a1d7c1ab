"""A small OpenAI-compatible HTTP server for a local HF model (stdlib ``http.server`` only).

It lets every stage talk to a local model exactly as it would talk to vLLM or a hosted API, and
gives the tests a real server process::

    python -m sdlib.generation.server --model outputs/tiny_model --port 8000

Endpoints: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions``,
``GET /health`` and ``GET /stats`` (request counters, the most requests seen in flight at once;
``/stats?reset=1`` starts a new high-water mark).
Generation is serialized by a lock (one model, one batch at a time); requests wait their turn.
``--fail-first K`` answers the first K POST requests with 503, to exercise client retries.
It binds to 127.0.0.1 unless told otherwise, and has no authentication: keep it on loopback.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sdlib.generation.backends import Backend, Completion, SamplingParams


class OpenAIServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        backend: Backend,
        model_name: str,
        host: str = "127.0.0.1",
        port: int = 0,
        fail_first: int = 0,
        verbose: bool = False,
    ) -> None:
        super().__init__((host, port), _Handler)
        self.backend = backend
        self.model_name = model_name
        self.fail_first = fail_first
        self.verbose = verbose
        self.created = int(time.time())
        self.generate_lock = threading.Lock()
        self.stats_lock = threading.Lock()
        self.stats = {"requests": 0, "failed_on_purpose": 0, "ok": 0, "errors": 0}
        self.in_flight = 0
        self.max_in_flight = 0

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def _given(body: dict[str, Any], key: str, default: Any) -> Any:
    """The request's value, or the API's default when the key is missing or null."""
    value = body.get(key)
    return default if value is None else value


def _error_payload(status: int, message: str, kind: str = "invalid_request_error") -> dict:
    """The error body OpenAI's API (and vLLM) send."""
    return {"error": {"message": message, "type": kind, "code": status}}


class _Handler(BaseHTTPRequestHandler):
    server: OpenAIServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        self._send(status, _error_payload(status, message, kind))

    def do_GET(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        if path == "/v1/models":
            model = {
                "id": self.server.model_name,
                "object": "model",
                "created": self.server.created,
                "owned_by": "sdlib",
            }
            self._send(200, {"object": "list", "data": [model]})
        elif path == "/health":
            self._send(200, {"status": "ok"})
        elif path == "/stats":  # ?reset=1 restarts the in-flight high-water mark
            with self.server.stats_lock:
                stats = dict(self.server.stats, max_in_flight=self.server.max_in_flight)
                if "reset=1" in self.path:
                    self.server.max_in_flight = self.server.in_flight
            self._send(200, stats)
        else:
            self._error(404, f"no route GET {path}")

    def do_POST(self) -> None:
        server = self.server
        with server.stats_lock:
            server.stats["requests"] += 1
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
            fail = server.stats["requests"] <= server.fail_first
        status, payload = 500, _error_payload(500, "request handling failed", "server_error")
        try:
            status, payload = self._post(fail)
        finally:  # before the answer goes out, so that a client's next request never overlaps
            with server.stats_lock:
                server.in_flight -= 1
                key = "failed_on_purpose" if fail else "ok" if status == 200 else "errors"
                server.stats[key] += 1
        self._send(status, payload)

    def _post(self, fail: bool) -> tuple[int, dict[str, Any]]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if fail:
            return 503, _error_payload(503, "failing on purpose (--fail-first)", "server_error")
        path = self.path.split("?")[0].rstrip("/")
        if path not in ("/v1/completions", "/v1/chat/completions"):
            return 404, _error_payload(404, f"no route POST {path}")
        try:
            body = json.loads(raw or b"{}")
            return self._complete(body, chat=path.endswith("chat/completions"))
        except (ValueError, TypeError, KeyError) as e:
            return 400, _error_payload(400, f"bad request: {e!r}")
        except Exception as e:  # the model failed: a server error, as vLLM reports it
            return 500, _error_payload(500, repr(e), "server_error")

    def _complete(self, body: dict[str, Any], chat: bool) -> tuple[int, dict[str, Any]]:
        server = self.server
        model = body.get("model")
        if model is not None and model != server.model_name:
            message = f"model {model!r} not served here; this server has {server.model_name!r}"
            return 404, _error_payload(404, message, "not_found_error")
        stop = body.get("stop") or []
        params = SamplingParams(
            n=int(_given(body, "n", 1)),
            temperature=float(_given(body, "temperature", 1.0)),
            top_p=float(_given(body, "top_p", 1.0)),
            max_new_tokens=int(_given(body, "max_tokens", 16)),
            stop=[stop] if isinstance(stop, str) else list(stop),
            seed=body.get("seed"),
        )
        if chat:
            messages = body["messages"]
            if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
                raise ValueError("messages must be a list of {role, content} objects")
            with server.generate_lock:
                results = server.backend.generate_chat([messages], params)
        else:
            prompt = body["prompt"]
            prompts = [prompt] if isinstance(prompt, str) else prompt
            if not prompts or not all(isinstance(p, str) for p in prompts):
                raise ValueError("prompt must be a string or a list of strings (no token ids)")
            with server.generate_lock:
                results = server.backend.generate(prompts, params)
        return 200, self._response(results, chat)

    def _response(self, results: list[list[Completion]], chat: bool) -> dict[str, Any]:
        choices = []
        for row in results:
            for c in row:
                choice: dict[str, Any] = {"index": len(choices), "finish_reason": c.finish_reason}
                if chat:
                    choice["message"] = {"role": "assistant", "content": c.text}
                else:
                    choice["text"] = c.text
                    choice["logprobs"] = None
                choices.append(choice)
        prompt_tokens = sum(row[0].prompt_tokens for row in results if row)
        completion_tokens = sum(c.completion_tokens for row in results for c in row)
        return {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": self.server.model_name,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="HF model directory or name")
    parser.add_argument("--adapter", default=None, help="LoRA adapter directory (peft)")
    parser.add_argument("--served-model-name", default=None, help="model id (default: --model)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--fail-first", type=int, default=0, help="answer the first K POSTs 503")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)

    from sdlib.generation.backends import HFBackend

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    backend = HFBackend(
        args.model,
        adapter_path=args.adapter,
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        progress=False,
    )
    server = OpenAIServer(
        backend,
        args.served_model_name or args.model,
        host=args.host,
        port=args.port,
        fail_first=args.fail_first,
        verbose=args.verbose,
    )
    # Tests and scripts read the port from this line (with --port 0 the OS picks it).
    print(f"sdlib.generation.server listening on {server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    sys.exit(0)


if __name__ == "__main__":
    main()
