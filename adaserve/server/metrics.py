"""Prometheus metrics: latency per SLO class, attainment and goodput per class (server-side),
speculation acceptance, KV usage and queue sizes."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from adaserve.engine.core import EngineCore
from adaserve.request import Request
from adaserve.slo import RequestTiming

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 60.0)


class ServerMetrics:
    def __init__(self, engine: EngineCore | None) -> None:
        self.registry = r = CollectorRegistry()
        self.started = time.monotonic()
        cls = ["slo_class"]
        self.requests = Counter("adaserve_requests", "Finished requests", cls + ["finish_reason"], registry=r)
        self.ttft = Histogram("adaserve_ttft_seconds", "Time to first token", cls, buckets=LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram(
            "adaserve_tpot_seconds", "Decode time per output token", cls, buckets=LATENCY_BUCKETS, registry=r
        )
        self.attained = Counter("adaserve_slo_attained_requests", "Requests that met their SLO", cls, registry=r)
        self.attainment = Gauge("adaserve_slo_attainment", "Attained / finished requests", cls, registry=r)
        self.output_tokens = Counter("adaserve_output_tokens", "Output tokens", cls, registry=r)
        self.attained_tokens = Counter(
            "adaserve_attained_output_tokens", "Output tokens of attained requests", cls, registry=r
        )
        self.goodput = Gauge(
            "adaserve_goodput_tokens_per_second",
            "Output tokens of attained requests per second since the server started",
            cls,
            registry=r,
        )
        self.prompt_tokens = Counter("adaserve_prompt_tokens", "Prompt tokens", registry=r)
        self.proposed = Counter("adaserve_spec_proposed_tokens", "Drafted tokens verified", registry=r)
        self.accepted = Counter("adaserve_spec_accepted_tokens", "Drafted tokens accepted", registry=r)
        self.demoted = Counter(
            "adaserve_slo_demoted_requests",
            "Requests served best-effort: their SLO became unattainable",
            cls,
            registry=r,
        )
        self.refused = Counter(
            "adaserve_slo_refused_requests", "Requests refused: SLO unattainable, slo_policy reject", cls, registry=r
        )
        self.rejected_requests = Counter(
            "adaserve_rejected_requests", "Requests refused before running", ["reason"], registry=r
        )
        if engine is not None:  # (an ingress in front of engine replicas has no engine of its own)
            self._engine_gauges(engine)
        self._finished: dict[str, int] = {}
        self._attained: dict[str, int] = {}
        self._attained_tokens: dict[str, int] = {}

    def _engine_gauges(self, engine: EngineCore) -> None:
        r = self.registry
        Gauge("adaserve_running_requests", "Running requests", registry=r).set_function(
            lambda: len(engine.scheduler.running)
        )
        Gauge("adaserve_waiting_requests", "Waiting requests", registry=r).set_function(
            lambda: len(engine.scheduler.waiting)
        )
        Gauge("adaserve_kv_cache_usage", "Fraction of KV blocks in use", registry=r).set_function(
            lambda: engine.kv.usage
        )
        Gauge("adaserve_kv_blocks_used", "Target KV blocks held by requests", registry=r).set_function(
            lambda: engine.kv.num_used_blocks
        )
        draft_kv = getattr(engine.runner.proposer, "kv", None)
        if draft_kv is not None:
            Gauge("adaserve_draft_kv_blocks_used", "Draft KV blocks held by requests", registry=r).set_function(
                lambda: draft_kv.num_used_blocks
            )
        r.register(_EngineCounters(engine))

    def observe_finished(self, sequences: list[tuple[RequestTiming, Request]]) -> None:
        """One API request, finished: its sequences (n of them). It attained its SLO only if every
        sequence did; latencies are observed per sequence."""
        timings = [timing for timing, _ in sequences]
        c = timings[0].category
        request = sequences[0][1]
        self.requests.labels(c, request.finish_reason.value if request.finish_reason else "unknown").inc()
        if any(r.best_effort for _, r in sequences):
            self.demoted.labels(c).inc()
        self.prompt_tokens.inc(len(request.prompt_ids))
        num_tokens = sum(t.num_output_tokens for t in timings)
        self.output_tokens.labels(c).inc(num_tokens)
        for timing, r in sequences:
            if timing.ttft_s is not None:
                self.ttft.labels(c).observe(timing.ttft_s)
            if timing.tpot_s is not None:
                self.tpot.labels(c).observe(timing.tpot_s)
            self.proposed.inc(r.spec_stats.num_proposed)
            self.accepted.inc(r.spec_stats.num_accepted)
        self._finished[c] = self._finished.get(c, 0) + 1
        if all(t.attained for t in timings):
            self.attained.labels(c).inc()
            self.attained_tokens.labels(c).inc(num_tokens)
            self._attained[c] = self._attained.get(c, 0) + 1
            self._attained_tokens[c] = self._attained_tokens.get(c, 0) + num_tokens
        self.attainment.labels(c).set(self._attained.get(c, 0) / self._finished[c])
        elapsed = max(1e-9, time.monotonic() - self.started)
        for name in self._finished:
            self.goodput.labels(name).set(self._attained_tokens.get(name, 0) / elapsed)


class _EngineCounters(Collector):
    """The engine's running counts, read at scrape time (the engine thread owns them)."""

    def __init__(self, engine: EngineCore) -> None:
        self.engine = engine

    def collect(self):
        yield CounterMetricFamily(
            "adaserve_preemptions", "Requests preempted for KV room (recomputed later)", self.engine.num_preemptions
        )
        stats = self.engine.kv.prefix_stats
        yield CounterMetricFamily(
            "adaserve_prefix_cache_queries",
            "Tokens of started requests looked up in the prefix cache",
            stats.num_queried_tokens,
        )
        yield CounterMetricFamily(
            "adaserve_prefix_cache_hits", "Tokens found in the prefix cache (not recomputed)", stats.num_hit_tokens
        )
        yield GaugeMetricFamily(
            "adaserve_prefix_cache_hit_rate", "Prefix cache hits / queries since start", stats.hit_rate
        )
