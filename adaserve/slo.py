"""Per-request latency targets (SLOs) and the arithmetic every part of adaserve shares: how many
tokens a request needs this iteration, whether it attained its SLO, attainment and goodput.
Plain Python; no torch. Used by the engine, the server, the benchmark and the simulator alike.

Definitions (AdaServe, EuroSys 2026, with TTFT added):
  TPOT     = (t_last_token - t_first_token) / (num_output_tokens - 1): decode time per token after
             the first (prefill) token, as vLLM and our benchmark measure it. A one-token output has
             no decode phase and meets any TPOT target.
  TTFT     = t_first_token - t_arrival.
  attained = TPOT <= tpot_ms (if set) and TTFT <= ttft_ms (if set): joint attainment, the headline.
             TPOT-only and TTFT-only attainment are kept beside it (the paper ignores TTFT).
  goodput  = output tokens of attained requests / wall time.

Required tokens A(r): a request that has decoded `num_decoded` tokens in `elapsed` seconds since its
first token is on its SLO line after the next iteration (taking `t_iter`) iff it has then decoded
(elapsed + t_iter) / tpot tokens. Worked example: tpot 50 ms, 10 tokens decoded in 0.5 s, next
iteration 0.1 s -> A = (0.5 + 0.1) / 0.05 - 10 = 2 tokens, i.e. the bonus token plus one accepted draft.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class SLO:
    tpot_ms: float | None = None
    ttft_ms: float | None = None

    def __post_init__(self) -> None:
        for name in ("tpot_ms", "ttft_ms"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"SLO {name} must be a positive number of milliseconds, got {value!r}")

    @property
    def is_set(self) -> bool:
        return self.tpot_ms is not None or self.ttft_ms is not None


# A class's relative TTFT target ('ttft:10x') adds this many times the prompt's own prefill time to
# its base, so a long prompt gets a proportionate target (as the benchmark's workloads do).
TTFT_PREFILL_SCALE = 3.0


@dataclass(frozen=True)
class SLOClass:
    """A resolved class: a TPOT target, and a TTFT target of ttft_base_ms plus ttft_prefill_scale x
    the prompt's prefill time. Worked example: base 600 ms, scale 3, a prompt whose prefill takes
    400 ms -> TTFT target 1,800 ms."""

    tpot_ms: float | None = None
    ttft_base_ms: float | None = None
    ttft_prefill_scale: float = 0.0

    def slo(self, prefill_ms: float = 0.0) -> SLO:
        """The SLO of a request of this class whose prompt takes prefill_ms to prefill."""
        ttft = None if self.ttft_base_ms is None else self.ttft_base_ms + self.ttft_prefill_scale * prefill_ms
        return SLO(tpot_ms=self.tpot_ms, ttft_ms=ttft)


@dataclass(frozen=True)
class SLOClassSpec:
    """A named class as configured: tpot either absolute (ms) or a multiple of the unloaded
    per-token latency ('1.2x'); ttft absolute, or relative ('10x': that many unloaded token times
    plus TTFT_PREFILL_SCALE x the prompt's prefill)."""

    name: str
    tpot_ms: float | None = None
    tpot_scale: float | None = None
    ttft_ms: float | None = None
    ttft_scale: float | None = None

    @property
    def is_relative(self) -> bool:
        return self.tpot_scale is not None or self.ttft_scale is not None

    def resolve(self, unloaded_tpot_ms: float | None) -> SLOClass:
        if self.is_relative and unloaded_tpot_ms is None:
            raise ValueError(f"SLO class {self.name!r} is relative (x); it needs a measured latency")
        tpot = self.tpot_ms if self.tpot_scale is None else self.tpot_scale * unloaded_tpot_ms
        if self.ttft_scale is None:
            return SLOClass(tpot, self.ttft_ms)
        return SLOClass(tpot, self.ttft_scale * unloaded_tpot_ms, TTFT_PREFILL_SCALE)


_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|x)\s*$")


def parse_slo_class(text: str) -> SLOClassSpec:
    """'coding=tpot:1.2x' | 'chat=tpot:50ms' | 'batch=tpot:2s,ttft:30s' | 'coding=tpot:1.2x,ttft:10x'."""
    name, sep, body = text.partition("=")
    if not sep or not name.strip() or not body.strip():
        raise ValueError(f"SLO class must look like NAME=tpot:50ms[,ttft:2s], got {text!r}")
    fields: dict[str, float | None] = {"tpot_ms": None, "tpot_scale": None, "ttft_ms": None, "ttft_scale": None}
    for part in body.split(","):
        key, _, value = part.partition(":")
        m = _DURATION.match(value)
        if key.strip() not in ("tpot", "ttft") or not m:
            raise ValueError(f"bad SLO term {part!r} in {text!r}: use tpot:<N>ms|<N>s|<N>x or ttft:<N>ms|<N>s|<N>x")
        number, unit = float(m.group(1)), m.group(2)
        if number <= 0:
            raise ValueError(f"SLO values must be positive: {part!r}")
        if unit == "x":
            fields[f"{key.strip()}_scale"] = number
        else:
            fields[f"{key.strip()}_ms"] = number * (1000.0 if unit == "s" else 1.0)
    return SLOClassSpec(name.strip(), **fields)


def required_tokens(elapsed_decode_s: float, t_iter_s: float, tpot_ms: float, num_decoded: int) -> float:
    """A(r): tokens the request must gain in the next iteration to be on its SLO line after it."""
    return (elapsed_decode_s + t_iter_s) / (tpot_ms / 1000.0) - num_decoded


@dataclass(frozen=True)
class RequestTiming:
    """What the SLO arithmetic needs to know about a finished (or running) request."""

    arrival_time: float
    first_token_time: float | None
    last_token_time: float | None
    num_output_tokens: int
    slo: SLO = SLO()
    category: str = "default"

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time

    @property
    def tpot_s(self) -> float | None:
        if self.first_token_time is None or self.last_token_time is None or self.num_output_tokens < 2:
            return None
        return (self.last_token_time - self.first_token_time) / (self.num_output_tokens - 1)

    @property
    def attained(self) -> bool:
        """Joint attainment: TTFT and TPOT both within target (the headline metric)."""
        return self.attained_ttft and self.attained_tpot

    @property
    def attained_ttft(self) -> bool:
        if self.first_token_time is None:
            return False  # never produced a token (error, abort before the first token)
        return self.slo.ttft_ms is None or self.ttft_s * 1000.0 <= self.slo.ttft_ms

    @property
    def attained_tpot(self) -> bool:
        """TPOT alone (the paper's metric, TTFT excluded)."""
        if self.first_token_time is None:
            return False
        tpot = self.tpot_s
        return self.slo.tpot_ms is None or tpot is None or tpot * 1000.0 <= self.slo.tpot_ms


@dataclass(frozen=True)
class SLOSummary:
    num_requests: int
    num_attained: int  # both TTFT and TPOT within target
    num_output_tokens: int
    num_attained_tokens: int
    wall_time_s: float
    num_attained_tpot: int = 0  # TPOT within target, TTFT ignored (the paper's metric)
    num_attained_ttft: int = 0
    num_attained_tpot_tokens: int = 0

    @property
    def attainment(self) -> float:
        return self.num_attained / self.num_requests if self.num_requests else 0.0

    @property
    def goodput(self) -> float:
        """Output tokens per second of requests that attained their SLO."""
        return self.num_attained_tokens / self.wall_time_s if self.wall_time_s > 0 else 0.0

    @property
    def attainment_tpot(self) -> float:
        return self.num_attained_tpot / self.num_requests if self.num_requests else 0.0

    @property
    def attainment_ttft(self) -> float:
        return self.num_attained_ttft / self.num_requests if self.num_requests else 0.0

    @property
    def goodput_tpot(self) -> float:
        """Goodput by the paper's TPOT-only attainment."""
        return self.num_attained_tpot_tokens / self.wall_time_s if self.wall_time_s > 0 else 0.0

    @property
    def throughput(self) -> float:
        return self.num_output_tokens / self.wall_time_s if self.wall_time_s > 0 else 0.0


def summarize(timings: list[RequestTiming], wall_time_s: float | None = None) -> SLOSummary:
    """Attainment and goodput; the wall time defaults to first arrival -> last token."""
    if wall_time_s is None:
        ends = [t.last_token_time for t in timings if t.last_token_time is not None]
        wall_time_s = max(ends) - min(t.arrival_time for t in timings) if ends else 0.0
    attained = [t for t in timings if t.attained]
    attained_tpot = [t for t in timings if t.attained_tpot]
    return SLOSummary(
        num_requests=len(timings),
        num_attained=len(attained),
        num_output_tokens=sum(t.num_output_tokens for t in timings),
        num_attained_tokens=sum(t.num_output_tokens for t in attained),
        wall_time_s=wall_time_s,
        num_attained_tpot=len(attained_tpot),
        num_attained_ttft=sum(1 for t in timings if t.attained_ttft),
        num_attained_tpot_tokens=sum(t.num_output_tokens for t in attained_tpot),
    )


def summarize_by_category(timings: list[RequestTiming], wall_time_s: float | None = None) -> dict[str, SLOSummary]:
    """Per category (and 'all'), each over the same wall time so goodputs add up."""
    if wall_time_s is None:
        wall_time_s = summarize(timings).wall_time_s
    out = {"all": summarize(timings, wall_time_s)}
    for category in sorted({t.category for t in timings}):
        out[category] = summarize([t for t in timings if t.category == category], wall_time_s)
    return out
