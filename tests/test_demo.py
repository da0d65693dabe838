"""`make demo`'s calibration: the load's rate comes from the latency each class has alone."""

import asyncio

import pytest

from adaserve.bench import demo
from adaserve.bench.client import BenchRecord, BenchRequest
from adaserve.slo import SLO

ALONE_S = {"chat": 2.0, "coding": 5.0}


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_calibration_times_the_first_request_of_each_class_alone_and_averages_by_the_mix(monkeypatch):
    sent = []

    async def fake_run_load(url, model, requests, **kwargs):
        sent.append(list(requests))
        (req,) = requests
        return [BenchRecord(req.category, req.slo, 100.0, 100.5, [100.5, 100.0 + ALONE_S[req.category]], 6)]

    monkeypatch.setattr(demo, "run_load", fake_run_load)
    load = [
        BenchRequest(9.0, "chat", ask("Hi!"), 6, SLO()),
        BenchRequest(2.0, "coding", ask("def f():"), 6, SLO()),
        BenchRequest(5.0, "chat", ask("Hello?"), 6, SLO()),
    ]
    latency = asyncio.run(demo.unloaded_latency_s("http://unused", "m", load))
    assert latency == (2.0 + 5.0 + 2.0) / 3  # weighted by the load's classes
    # One probe per class, sent alone at once, behind the note that keeps it out of the load's cached
    # prefixes.
    assert [[(r.category, r.arrival_s, r.messages) for r in batch] for batch in sent] == [
        [("chat", 0.0, [demo.CALIBRATION_NOTE, *ask("Hi!")])],
        [("coding", 0.0, [demo.CALIBRATION_NOTE, *ask("def f():")])],
    ]


def test_a_failed_calibration_request_is_an_error_not_a_rate(monkeypatch):
    async def failing_run_load(url, model, requests, **kwargs):
        return [BenchRecord(requests[0].category, SLO(), 1.0, error="HTTP 500")]

    monkeypatch.setattr(demo, "run_load", failing_run_load)
    with pytest.raises(RuntimeError, match="HTTP 500"):
        asyncio.run(demo.unloaded_latency_s("http://unused", "m", [BenchRequest(0.0, "chat", ask("Hi"), 4, SLO())]))


def test_the_demo_load_has_the_same_prompts_at_any_rate():
    slow, fast = demo.demo_requests(12, 0.1, 48), demo.demo_requests(12, 1.0, 48)
    assert [(r.category, r.messages) for r in slow] == [(r.category, r.messages) for r in fast]
    assert [round(r.arrival_s, 9) for r in slow] == [round(10 * r.arrival_s, 9) for r in fast]
