"""Graceful drain of `adaserve serve` (a real process, SmolLM2): on SIGTERM every stream in flight
finishes, new requests get 503 + Retry-After, /health says draining, and the process exits 0; past
--drain-timeout the remaining requests end with an explicit error; a second signal exits at once."""

import json
import signal
import threading
import time

import httpx
import pytest

from tests.factories import ServerProcess


@pytest.fixture
def server(request):
    proc = ServerProcess(*getattr(request, "param", ()))
    yield proc
    proc.kill()


class Stream(threading.Thread):
    """One streaming completion; records its events, whether it finished and how."""

    def __init__(self, url: str, max_tokens: int) -> None:
        super().__init__(daemon=True)
        self.url, self.max_tokens = url, max_tokens
        self.events: list[dict] = []
        self.done = False
        self.cut: Exception | None = None
        self.started = threading.Event()

    def run(self) -> None:
        body = {"prompt": "Tell me a long story.", "max_tokens": self.max_tokens, "ignore_eos": True, "stream": True}
        try:
            with httpx.stream("POST", self.url + "/v1/completions", json=body, timeout=120) as r:
                for line in r.iter_lines():
                    if line == "data: [DONE]":
                        self.done = True
                    elif line.startswith("data: "):
                        self.events.append(json.loads(line[6:]))
                        self.started.set()
        except httpx.HTTPError as e:  # (a forced exit cuts the stream)
            self.cut = e
        self.started.set()

    @property
    def text(self) -> str:
        return "".join(e["choices"][0]["text"] for e in self.events if e.get("choices"))


def _start_streams(url: str, n: int, max_tokens: int) -> list[Stream]:
    streams = [Stream(url, max_tokens) for _ in range(n)]
    for s in streams:
        s.start()
    for s in streams:
        assert s.started.wait(timeout=120)
    return streams


def test_sigterm_finishes_every_stream_in_flight_then_exits_0(server):
    streams = _start_streams(server.url, 8, max_tokens=200)
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    refused = httpx.post(server.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=30)
    assert refused.status_code == 503 and refused.headers["retry-after"]
    assert refused.json()["error"]["type"] == "service_unavailable"
    health = httpx.get(server.url + "/health", timeout=30)
    assert health.status_code == 503 and health.json() == {"status": "draining"}
    assert any(s.is_alive() for s in streams)  # (the drain really waited for them)
    assert server.proc.wait(timeout=180) == 0
    for s in streams:
        s.join(timeout=10)
        assert s.done and s.events[-1]["choices"][0]["finish_reason"] == "length"
        assert not any("error" in e for e in s.events)


@pytest.mark.parametrize("server", [("--drain-timeout", "1")], indirect=True)
def test_past_the_drain_timeout_requests_end_with_an_error(server):
    streams = _start_streams(server.url, 2, max_tokens=900)
    blocking: list[httpx.Response] = []
    body = {"prompt": "Tell me a long story.", "max_tokens": 900, "ignore_eos": True}
    post = threading.Thread(
        target=lambda: blocking.append(httpx.post(server.url + "/v1/completions", json=body, timeout=120))
    )
    post.start()
    time.sleep(1.0)  # (it is running)
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=60) == 0
    for s in streams:
        s.join(timeout=10)
        assert "shutting down" in s.events[-1]["error"]["message"]
    post.join(timeout=10)
    assert blocking[0].status_code == 503 and "shutting down" in blocking[0].json()["error"]["message"]


def test_a_second_signal_exits_at_once(server):
    streams = _start_streams(server.url, 2, max_tokens=900)
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    start = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=30) != 0
    assert time.monotonic() - start < 10
    for s in streams:
        s.join(timeout=10)
        assert s.cut is not None and not s.done
