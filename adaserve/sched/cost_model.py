"""Hardware cost model: predicted latency of a target or draft forward pass, from profiled points.
Plain Python; no torch (the measuring lives in adaserve.engine.profiler).

A forward's latency (with its logits) is modelled as
    f(num_tokens) + beta * num_context_tokens + delta * num_context_pairs + gamma * (num_seqs - 1)
    + lam * num_extra_logit_rows:
  f     monotone piecewise-linear through the profiled medians (isotonic regression removes noise
        dips; past the last point it extends the last segment's slope);
  beta  ms per KV token read by attention (sum of the context lengths of the batch's sequences);
  delta ms per further query x cached-token pair: sum over sequences of (new tokens - 1) x cached
        tokens; a prefill chunk or a tree over a long context computes attention for each of its
        tokens (a decode token is all beta), from a multi-token pass over a long vs short prefix;
  gamma ms per extra sequence in the batch (per-sequence attention and logits work), from a pass
        of B one-token sequences against one sequence of B tokens;
  lam   ms per logits row beyond one per sequence: a tree's every node, a draft layer's every new
        node (the lm_head of a 150k vocabulary is a large matrix), from 64 rows against 1.
Worked example: points (1, 30 ms), (8, 40 ms), (16, 60 ms), beta 0.001 ->
  f(12) = 40 + (12 - 8) * (60 - 40) / (16 - 8) = 50 ms; 12 tokens over 1000 context tokens: 51 ms;
  with delta 1e-5 add 11 x 1000 x 1e-5 = 0.11 ms; verifying them as one tree (logits for all 12
  nodes) with lam 0.5 adds 11 x 0.5 = 5.5 ms.

The verification budget is where the curve stops being flat: the most tokens one pass can verify
within `budget_factor` x the one-token latency (memory-bound region of the hardware).
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path


def isotonic(ys: list[float]) -> list[float]:
    """The closest non-decreasing sequence (least squares; pool adjacent violators): a noise spike
    is averaged with its neighbours instead of lifting everything after it."""
    blocks: list[list[float]] = []  # [sum, count]
    for y in ys:
        blocks.append([y, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    return [total / count for total, count in blocks for _ in range(int(count))]


@dataclass(frozen=True)
class PassTerms:
    """One pass's predicted latency split into the cost model's terms (ms). Worked example (the
    module's): 12 tokens over 1000 context tokens, delta 1e-5, as a tree with lam 0.5 ->
    base 30, tokens 20, context 1, pairs 0.11, rows 5.5; total 56.61 ms."""

    base_ms: float  # f(1): one token's pass (on CPU mostly reading the weights)
    tokens_ms: float  # f(num_tokens) - f(1): the further tokens
    context_ms: float  # beta x KV tokens read
    pairs_ms: float  # delta x query x cached-token pairs
    rows_ms: float  # lam x logits rows beyond one per sequence
    seqs_ms: float  # gamma x (sequences - 1)
    num_extra_seqs: int  # sequences - 1

    @property
    def total_ms(self) -> float:
        return self.base_ms + self.tokens_ms + self.context_ms + self.pairs_ms + self.rows_ms + self.seqs_ms


@dataclass(frozen=True)
class LatencyCurve:
    num_tokens: tuple[int, ...]
    latency_ms: tuple[float, ...]
    ms_per_context_token: float = 0.0
    ms_per_seq: float = 0.0
    ms_per_context_pair: float = 0.0
    ms_per_logit_row: float = 0.0

    def __post_init__(self) -> None:
        if not self.num_tokens or len(self.num_tokens) != len(self.latency_ms):
            raise ValueError("a latency curve needs matching, non-empty token and latency lists")
        if list(self.num_tokens) != sorted(set(self.num_tokens)) or self.num_tokens[0] < 1:
            raise ValueError("token counts must be increasing and >= 1")
        if not all(0 < ms < float("inf") for ms in self.latency_ms):
            raise ValueError("latencies must be positive and finite")
        object.__setattr__(self, "latency_ms", tuple(isotonic(list(self.latency_ms))))

    def __call__(
        self,
        num_tokens: int,
        num_context_tokens: int = 0,
        num_seqs: int = 1,
        num_context_pairs: int = 0,
        num_extra_logit_rows: int = 0,
    ) -> float:
        return self._curve(num_tokens) + self._batch_ms(
            num_context_tokens, num_seqs, num_context_pairs, num_extra_logit_rows
        )

    def at(self, num_context_tokens: int = 0, num_seqs: int = 1) -> Callable[[int], float]:
        """The latency as a function of num_tokens alone, for one batch's context: the same values as
        __call__(num_tokens, num_context_tokens, num_seqs) (no pairs or extra logit rows), without
        recomputing the batch terms: the policies' inner loop calls it per node."""
        batch_ms, curve = self._batch_ms(num_context_tokens, num_seqs, 0, 0), self._curve
        return lambda num_tokens: curve(num_tokens) + batch_ms

    def _batch_ms(
        self, num_context_tokens: int, num_seqs: int, num_context_pairs: int, num_extra_logit_rows: int
    ) -> float:
        """The terms beyond the token curve."""
        return (
            self.ms_per_context_token * max(0, num_context_tokens)
            + self.ms_per_seq * max(0, num_seqs - 1)
            + self.ms_per_context_pair * max(0, num_context_pairs)
            + self.ms_per_logit_row * max(0, num_extra_logit_rows)
        )

    def terms(
        self,
        num_tokens: int,
        num_context_tokens: int = 0,
        num_seqs: int = 1,
        num_context_pairs: int = 0,
        num_extra_logit_rows: int = 0,
    ) -> PassTerms:
        """The same latency, term by term (what a calibration against measured passes re-weighs)."""
        base = self._curve(1)
        return PassTerms(
            base,
            self._curve(num_tokens) - base,
            self.ms_per_context_token * max(0, num_context_tokens),
            self.ms_per_context_pair * max(0, num_context_pairs),
            self.ms_per_logit_row * max(0, num_extra_logit_rows),
            self.ms_per_seq * max(0, num_seqs - 1),
            max(0, num_seqs - 1),
        )

    def _curve(self, num_tokens: int) -> float:
        """f(num_tokens): the piecewise-linear curve alone."""
        xs, ys = self.num_tokens, self.latency_ms
        if num_tokens <= xs[0] or len(xs) == 1:
            return ys[0]
        i = min(bisect.bisect_left(xs, num_tokens), len(xs) - 1)  # segment (i-1, i)
        slope = (ys[i] - ys[i - 1]) / (xs[i] - xs[i - 1])
        return ys[i - 1] + slope * (num_tokens - xs[i - 1])

    def max_tokens_within(self, latency_ms: float, num_context_tokens: int = 0, limit: int = 4096) -> int:
        """The most tokens one pass handles within `latency_ms` (at least 1)."""
        lo, hi = 1, limit
        while lo < hi:  # f is monotone: binary search
            mid = (lo + hi + 1) // 2
            if self(mid, num_context_tokens) <= latency_ms:
                lo = mid
            else:
                hi = mid - 1
        return lo


@dataclass(frozen=True)
class CostModel:
    target: LatencyCurve
    draft: LatencyCurve | None = None
    meta: dict = field(default_factory=dict, compare=False)

    def verify_ms(
        self,
        num_tokens: int,
        num_context_tokens: int = 0,
        num_seqs: int = 1,
        num_context_pairs: int = 0,
        num_extra_logit_rows: int = 0,
    ) -> float:
        return self.target(num_tokens, num_context_tokens, num_seqs, num_context_pairs, num_extra_logit_rows)

    def verify_ms_at(self, num_context_tokens: int = 0, num_seqs: int = 1) -> Callable[[int], float]:
        """verify_ms as a function of num_tokens, for a fixed batch (LatencyCurve.at)."""
        return self.target.at(num_context_tokens, num_seqs)

    def draft_ms(
        self,
        num_tokens: int,
        num_context_tokens: int = 0,
        num_seqs: int = 1,
        num_context_pairs: int = 0,
        num_extra_logit_rows: int = 0,
    ) -> float:
        if self.draft is None:
            return 0.0
        return self.draft(num_tokens, num_context_tokens, num_seqs, num_context_pairs, num_extra_logit_rows)

    def speculation_ms(self, num_seqs: int, depth: int, width: int, num_context_tokens: int = 0) -> float:
        """A speculate phase: one sync pass (about 2 committed tokens per request) and `depth - 1`
        passes over each request's kept frontier (`width` nodes)."""
        if self.draft is None or depth < 1 or num_seqs < 1:
            return 0.0
        sync = self.draft_ms(2 * num_seqs, num_context_tokens, num_seqs)
        return sync + (depth - 1) * self.draft_ms(num_seqs * width, num_context_tokens, num_seqs)

    def verify_budget(self, budget_factor: float = 2.0, limit: int = 4096) -> int:
        """B: tokens one verification pass takes within budget_factor x the 1-token latency."""
        return self.target.max_tokens_within(budget_factor * self.target(1), limit=limit)

    def draft_budget(self, budget_factor: float = 2.0, limit: int = 4096) -> int:
        if self.draft is None:
            return 0
        return self.draft.max_tokens_within(budget_factor * self.draft(1), limit=limit)

    # -- persistence -----------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(
            {"target": asdict(self.target), "draft": asdict(self.draft) if self.draft else None, "meta": self.meta},
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> CostModel:
        data = json.loads(text)

        def curve(d: dict | None) -> LatencyCurve | None:
            if d is None:
                return None
            return LatencyCurve(
                tuple(d["num_tokens"]),
                tuple(d["latency_ms"]),
                d.get("ms_per_context_token", 0.0),
                d.get("ms_per_seq", 0.0),
                d.get("ms_per_context_pair", 0.0),
                d.get("ms_per_logit_row", 0.0),
            )

        return cls(curve(data["target"]), curve(data.get("draft")), data.get("meta", {}))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> CostModel:
        return cls.from_json(Path(path).read_text())

    @classmethod
    def from_table(cls, points: dict[int, float], draft_points: dict[int, float] | None = None) -> CostModel:
        """A measured table (tokens -> ms), e.g. a published one."""

        def curve(p):
            return LatencyCurve(tuple(sorted(p)), tuple(p[k] for k in sorted(p))) if p else None

        return cls(curve(points), curve(draft_points))
