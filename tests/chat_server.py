"""A real HTTP server on 127.0.0.1 that speaks the chat-completions protocol.

It answers canned descriptions and, per concept, plays a scripted list of faults: HTTP
429/500/401, a hang past the client timeout, a reply that is not JSON, a reply of the wrong
shape, an HTTP body that is not JSON. It counts requests and the peak number in flight.
The server stops by itself at the end of each test (hangs wake on a stop event).
"""
from __future__ import annotations

import http.server
import json
import re
import threading
import time
from dataclasses import dataclass, field

import pytest

HANG_S = 10.0  # far past the tests' client timeout; teardown wakes it early


@dataclass
class FakeChat:
    """Script and record of the fake endpoint; `plan[label]` is consumed one action per request."""

    plan: dict[str, list] = field(default_factory=dict)
    requests: list[dict] = field(default_factory=list)
    delay: float = 0.0
    echo_auth_on_error: bool = False
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    inflight: int = 0
    max_inflight: int = 0
    base_url: str = ""

    def count(self, label: str) -> int:
        return sum(r["concept"] == label for r in self.requests)

    def labels(self) -> list[str]:
        return [r["concept"] for r in self.requests]

    @staticmethod
    def descriptions(label: str, k: int) -> list[str]:
        return [f"Canned description {i + 1} of {label}." for i in range(k)]


def _completion(model: str, content: str) -> dict:
    return {
        "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30},
    }


class _Handler(http.server.BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        fake = self.server.fake
        if fake.echo_auth_on_error:
            message += f" (you sent {self.headers.get('Authorization')})"
        body = {"error": {"message": message, "type": "test_error", "code": status}}
        self._send(status, json.dumps(body).encode(), headers)

    def do_POST(self) -> None:
        fake = self.server.fake
        if self.path != "/v1/chat/completions":
            return self._error(404, f"no route {self.path}")
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        user = payload["messages"][-1]["content"]
        label = re.search(r"^Concept: (.+)$", user, re.M).group(1)
        k = int(re.search(r"exactly (\d+)", user).group(1))
        with fake.lock:
            script = fake.plan.get(label, [])
            action = script.pop(0) if script else "ok"
            fake.requests.append({"concept": label, "auth": self.headers.get("Authorization"), "action": action,
                                  "model": payload["model"]})
            fake.inflight += 1
            fake.max_inflight = max(fake.max_inflight, fake.inflight)
        try:
            if fake.delay:
                fake.stop.wait(fake.delay)
            self._act(action, payload["model"], label, k)
        finally:
            with fake.lock:
                fake.inflight -= 1

    def _act(self, action, model: str, label: str, k: int) -> None:
        if action == "ok":
            content = json.dumps({"descriptions": FakeChat.descriptions(label, k)})
        elif action == "fenced":
            content = "```json\n" + json.dumps({"descriptions": FakeChat.descriptions(label, k)}) + "\n```"
        elif action == "bad_content":
            content = "Sure! Here are some descriptions: the lung is white."
        elif action == "wrong_shape":
            content = json.dumps({"text": "a single string"})
        elif action == "bad_body":
            return self._send(200, b'{"id": "chatcmpl-test", "choices": [ {"index": 0,')
        elif action == "hang":
            self.server.fake.stop.wait(HANG_S)
            return
        elif action == 429:
            return self._error(429, "rate limited", {"Retry-After": "0"})
        else:
            return self._error(int(action), f"scripted HTTP {action}")
        self._send(200, json.dumps(_completion(model, content)).encode())


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeChat

    def handle_error(self, request, client_address) -> None:
        pass  # a client that timed out leaves a broken pipe behind: expected here


@pytest.fixture
def fake_chat():
    """Start the fake endpoint on an ephemeral port; stop it (and wake any hang) at test end."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.fake = FakeChat(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.fake
    finally:
        server.fake.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        assert not thread.is_alive(), "fake chat server did not stop"


@pytest.fixture
def api_key(monkeypatch) -> str:
    """A random key in a custom env var; proxies cleared so requests to 127.0.0.1 go direct."""
    import secrets

    key = "sk-tgcnet-test-" + secrets.token_hex(12)
    monkeypatch.setenv("TGCNET_TEST_KEY", key)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
                "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    return key
