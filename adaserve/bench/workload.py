"""Workloads: which requests arrive when, in which category, with which SLO. Deterministic for a
seed; saved as JSON lines and replayed as-is. Plain Python.

Arrivals (requests per second `rate`):
  poisson      exponential gaps with mean 1/rate
  gamma        gamma gaps with mean 1/rate and coefficient of variation `cv` (cv > 1: bursty)
  fluctuating  Poisson within pieces of a piecewise-constant rate, e.g. "30:0.5,30:2,30:0.5"
               (seconds:rate, repeated until the duration or request count is reached)
SLOs: each category's TPOT target is `slo_multiples[category] x unloaded_tpot_ms x slo_scale`,
where unloaded_tpot_ms is the per-token latency of one request on an idle server (measured by a
calibration run). The paper's categories: coding 1.2x, chat and summarization looser.
Given the unloaded prefill time of a prompt (`prefill_ms(num_prompt_tokens)`: a calibration run or
the cost model), each request also gets a TTFT target that grows with its prompt:
    ttft = (ttft_multiples[category] x unloaded_tpot_ms + ttft_prefill_scale x prefill_ms) x slo_scale
(prompt tokens estimated at CHARS_PER_TOKEN; prefill_ms from the spec's calibrated
prefill_ms_per_token, or a cost model). Without it, TTFT has no target (the paper's protocol).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from adaserve.bench.client import BenchRequest
from adaserve.slo import SLO

DEFAULT_MIX = {"coding": 0.6, "chat": 0.2, "summarization": 0.2}
# The paper: coding 1.2x the unloaded latency, chat 50 ms, summarization 150 ms on GPUs whose
# unloaded per-token latency is ~25 ms: about 2x and 6x.
DEFAULT_SLO_MULTIPLES = {"coding": 1.2, "chat": 2.0, "summarization": 6.0}
# TTFT: a queueing allowance of 10 / 20 / 40 unloaded token times (urgent classes wait least), plus
# three times the prompt's own prefill, so a long prompt gets a proportionate target.
DEFAULT_TTFT_MULTIPLES = {"coding": 10.0, "chat": 20.0, "summarization": 40.0}
DEFAULT_TTFT_PREFILL_SCALE = 3.0
CHARS_PER_TOKEN = 4.0  # a prompt's token count, estimated from its text


def estimated_tokens(text: str) -> int:
    return max(1, round(len(text) / CHARS_PER_TOKEN))


@dataclass(frozen=True)
class WorkloadSpec:
    rate: float = 0.5
    num_requests: int | None = 50
    duration_s: float | None = None
    arrival: str = "poisson"
    cv: float = 2.0
    pieces: str = "30:0.25,30:1.0"  # for arrival="fluctuating"
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    urgent_share: float | None = None  # if set: this share is coding (urgent), the rest split as in mix
    output_tokens: int = 128
    slo_multiples: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SLO_MULTIPLES))
    slo_scale: float = 1.0
    seed: int = 0
    ttft_multiples: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TTFT_MULTIPLES))
    ttft_prefill_scale: float = DEFAULT_TTFT_PREFILL_SCALE
    # The server's unloaded prefill time per prompt token (`adaserve bench` calibrates it):
    # with it, requests get TTFT targets (see the module docstring); None: TTFT has no target.
    prefill_ms_per_token: float | None = None

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.output_tokens < 1 or self.slo_scale <= 0 or self.cv <= 0:
            raise ValueError("rate, output_tokens, slo_scale and cv must be positive")
        if self.num_requests is None and self.duration_s is None:
            raise ValueError("give num_requests or duration_s")
        if self.arrival not in ("poisson", "gamma", "fluctuating"):
            raise ValueError(f"unknown arrival process {self.arrival!r} (poisson, gamma, fluctuating)")
        if self.urgent_share is not None and not 0.0 <= self.urgent_share <= 1.0:
            raise ValueError("urgent_share must be in [0, 1]")
        if any(w < 0 for w in self.mix.values()) or sum(self.mix.values()) <= 0:
            raise ValueError("mix weights must be >= 0 and not all 0")

    def category_weights(self) -> dict[str, float]:
        total = sum(self.mix.values())
        weights = {c: w / total for c, w in self.mix.items()}
        if self.urgent_share is None:
            return weights
        rest = {c: w for c, w in weights.items() if c != "coding"}
        rest_total = sum(rest.values()) or 1.0
        return {"coding": self.urgent_share, **{c: (1 - self.urgent_share) * w / rest_total for c, w in rest.items()}}


def parse_pieces(text: str) -> list[tuple[float, float]]:
    """'30:0.5,30:2' -> [(30.0, 0.5), (30.0, 2.0)]: (seconds, requests per second)."""
    try:
        pieces = [(float(a), float(b)) for a, b in (p.split(":") for p in text.split(","))]
    except ValueError as e:
        raise ValueError(f"pieces must look like '30:0.5,30:2' (seconds:rate), got {text!r}") from e
    if not pieces or any(d <= 0 or r < 0 for d, r in pieces) or all(r == 0 for _, r in pieces):
        raise ValueError(f"bad pieces {text!r}: durations > 0, rates >= 0, not all 0")
    return pieces


def arrival_times(spec: WorkloadSpec, rng: random.Random) -> list[float]:
    limit_n = spec.num_requests if spec.num_requests is not None else float("inf")
    limit_t = spec.duration_s if spec.duration_s is not None else float("inf")
    times: list[float] = []
    if spec.arrival == "fluctuating":
        pieces, start, i = parse_pieces(spec.pieces), 0.0, 0
        while len(times) < limit_n and start < limit_t:
            length, rate = pieces[i % len(pieces)]
            t = start
            while rate > 0:
                t += rng.expovariate(rate)
                if t >= start + length or t >= limit_t or len(times) >= limit_n:
                    break
                times.append(t)
            start, i = start + length, i + 1
        return times
    t = 0.0
    while len(times) < limit_n:
        if spec.arrival == "poisson":
            t += rng.expovariate(spec.rate)
        else:  # gamma with mean 1/rate and the given cv: shape 1/cv^2, scale cv^2/rate
            t += rng.gammavariate(1.0 / spec.cv**2, spec.cv**2 / spec.rate)
        if t >= limit_t:
            break
        times.append(t)
    return times


def build_workload(
    spec: WorkloadSpec,
    unloaded_tpot_ms: float,
    prompts: dict[str, list[str]],
    prefill_ms: Callable[[int], float] | None = None,
) -> list[BenchRequest]:
    """`prompts[category]` lists the texts to draw from (see adaserve.bench.datasets); with
    `prefill_ms` (unloaded prefill time of a prompt of that many tokens) requests get TTFT targets."""
    rng = random.Random(spec.seed)
    if prefill_ms is None and spec.prefill_ms_per_token is not None:
        ms_per_token = spec.prefill_ms_per_token
        prefill_ms = lambda n: ms_per_token * n
    weights = spec.category_weights()
    categories, probs = list(weights), list(weights.values())
    requests = []
    for t in arrival_times(spec, rng):
        category = rng.choices(categories, probs)[0]
        tpot = spec.slo_multiples[category] * unloaded_tpot_ms * spec.slo_scale
        text = rng.choice(prompts[category])
        ttft = None
        if prefill_ms is not None:
            base_ms = spec.ttft_multiples[category] * unloaded_tpot_ms
            ttft = round((base_ms + spec.ttft_prefill_scale * prefill_ms(estimated_tokens(text))) * spec.slo_scale, 3)
        requests.append(
            BenchRequest(
                round(t, 6),
                category,
                [{"role": "user", "content": text}],
                spec.output_tokens,
                SLO(tpot_ms=round(tpot, 3), ttft_ms=ttft),
            )
        )
    return requests


def save_workload(path: Path, requests: list[BenchRequest]) -> None:
    with open(path, "w") as f:
        for r in requests:
            f.write(json.dumps(asdict(r)) + "\n")


def load_workload(path: Path) -> list[BenchRequest]:
    out = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            d = json.loads(line)
            d["slo"] = SLO(**d["slo"])
            out.append(BenchRequest(**d))
    return out
