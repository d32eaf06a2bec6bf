"""Judge fixtures: a scripted OpenAI-compatible server on loopback, a closed port, and a tiny local judge model."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

SERVER_LIFETIME_S = 60.0  # the server shuts itself down after this, even if a test never tears it down


@dataclass
class JudgeServer:
    """Scripted endpoint state: `mode` picks the behaviour, `answer` maps a request payload to the reply text."""

    url: str = ""
    mode: str = "ok"  # ok | slow | garbage | error500 | malformed | flaky | ratelimited
    answer: Callable[[dict[str, Any]], str] = lambda payload: "no"
    delay_s: float = 1.0
    flaky_failures: int = 1  # with mode "flaky": 503s before the first success (429s with mode "ratelimited")
    retry_after: str | None = None  # with mode "ratelimited": the Retry-After header of each 429
    requests: list[tuple[str, dict[str, Any], dict[str, str]]] = field(default_factory=list)
    client_ports: list[int] = field(default_factory=list)  # the client's port per request: one per connection
    in_flight: int = 0
    max_in_flight: int = 0  # most requests handled at once
    lock: threading.Lock = field(default_factory=threading.Lock)

    @staticmethod
    def text(payload: dict[str, Any]) -> str:
        """Everything the judge sent: the messages' contents (chat API) or the prompt (completions API)."""
        if "messages" in payload:
            return "\n".join(m["content"] for m in payload["messages"])
        return payload["prompt"]

    def record(self, path: str, payload: dict[str, Any], headers: dict[str, str], port: int) -> int:
        with self.lock:
            self.requests.append((path, payload, headers))
            self.client_ports.append(port)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return len(self.requests)

    def done(self) -> None:
        with self.lock:
            self.in_flight -= 1


def _handler(state: JudgeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as vLLM and hosted APIs serve

        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            pass

        def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            try:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                pass

        def do_POST(self) -> None:
            payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            count = state.record(self.path, payload, dict(self.headers), self.client_address[1])
            try:
                self._answer(payload, count)
            finally:
                state.done()

        def _answer(self, payload: dict[str, Any], count: int) -> None:
            if state.mode == "ratelimited" and count <= state.flaky_failures:
                headers = {"Retry-After": state.retry_after} if state.retry_after is not None else {}
                self._reply(429, b'{"error": "rate limited"}', headers)
                return
            if state.mode == "error500" or (state.mode == "flaky" and count <= state.flaky_failures):
                self._reply(500 if state.mode == "error500" else 503, b'{"error": "scripted failure"}')
                return
            if state.mode == "malformed":
                self._reply(200, b"<html>not json</html>")
                return
            if state.mode == "slow":
                time.sleep(state.delay_s)
            text = "I am a teapot; no verdict from me." if state.mode == "garbage" else state.answer(payload)
            if self.path.endswith("/chat/completions"):
                choice: dict[str, Any] = {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            else:
                choice = {"index": 0, "text": text, "finish_reason": "stop"}
            self._reply(
                200,
                json.dumps({"object": "chat.completion", "model": payload.get("model"), "choices": [choice]}).encode(),
            )

    return Handler


@pytest.fixture
def judge_server() -> Iterator[JudgeServer]:
    """A threaded HTTP server on 127.0.0.1 (free port); bounded by SERVER_LIFETIME_S and stopped at teardown."""
    state = JudgeServer()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    watchdog = threading.Timer(SERVER_LIFETIME_S, server.shutdown)
    watchdog.daemon = True
    thread.start()
    watchdog.start()
    try:
        yield state
    finally:
        watchdog.cancel()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def closed_port_url() -> str:
    """A loopback URL nothing listens on: connections are refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@pytest.fixture
def fast_http() -> dict[str, Any]:
    """Backend settings that keep failure tests short: small timeout, one quick retry."""
    return {"model": "judge", "timeout_s": 0.3, "max_retries": 1, "backoff_s": 0.01, "concurrency": 4}


@pytest.fixture(scope="session")
def tiny_judge_model():
    """A random-weight tiny MoE with a byte-level tokenizer: its answers are garbage by construction."""
    from moe_defense.models.loading import build_tiny

    return build_tiny("mixtral", max_position_embeddings=4096)
