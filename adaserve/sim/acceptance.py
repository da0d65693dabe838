"""Acceptance models: at a node being expanded, the draft's top-k child probabilities (most likely
first) and which child the target will pick there (-1: none of them), as the draft's offer there
(DrawnOffer: synthetic token ids, child i is token i + 1). Plain Python.

  recorded     replays OfferRecords the engine logged for a real draft/target pair (the draft's
               offer and the target's choice at every expanded node on a verified path; record
               them with `adaserve simulate record`). A node at depth d draws a record of depth d
               (deeper nodes share the deepest recorded depth), so per-depth acceptance, the draft's
               confidence and its calibration all come from the real pair. Records tagged with the
               workload category they came from (coding, chat, ...) are drawn for requests of that
               category (the pair agrees more on code than on chat); untagged ones for the rest.
               Records also tagged with their prompt (`simulate record --from-bench`: the prompts
               of a measured run) are drawn for requests of that prompt, replaying that run; and
               as greedy decoding makes a prompt's output and the draft's offers along it fixed,
               a node on the path the target takes is given the record of the very output
               position it predicts (`position`), where one was recorded. Records made off the
               target's path (off_path: the draft's offer below a child the target did not pick)
               serve the simulator's nodes off its path, where recorded (else the pool above).
  parametric   draft top-1 probability ~ Beta with mean `top1`; the other children share the rest
               geometrically (ratio `ratio`); the target picks child i with probability
               min(1, `calibration` x q_i), scaled down if those sum past 1. calibration 1 = the
               draft's probabilities are exact acceptance probabilities.
Spec strings: "recorded:PATH" or "parametric:top1=0.7,calibration=1.0,ratio=0.5,concentration=4".
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Protocol

from adaserve.sim.recorder import OfferRecord
from adaserve.spec.tree import Offer

DEFAULT_RECORDS = Path("benchmarks/results/acceptance_qwen.jsonl")  # `adaserve simulate record` writes here


NO_MATCH = -1  # a target choice that is none of the offered children


@dataclass
class DrawnOffer(Offer):
    """A record as the draft's offer at a node: the record's child i is token i + 1, with log-prob
    log q_i, offered most likely first (as a draft's top-k is)."""

    target_choice: int = NO_MATCH  # the token the target picks after the node
    record: OfferRecord | None = None  # what it was made from

    @classmethod
    def of(cls, record: OfferRecord) -> DrawnOffer:
        logprobs = [math.log(max(p, 1e-12)) for p in record.draft_probs]
        order = sorted(range(len(logprobs)), key=logprobs.__getitem__, reverse=True)  # (recorded: already so)
        return cls(
            [i + 1 for i in order],
            [logprobs[i] for i in order],
            record.hit + 1 if record.hit >= 0 else NO_MATCH,
            record,
        )


class OfferSource(Protocol):
    def offers(
        self, depth: int, top_k: int, rng: random.Random, num_nodes: int, on_path: dict[int, int]
    ) -> list[DrawnOffer]:
        """One offer per node of a frontier at `depth`, in order. on_path: for the nodes on the
        target's path, their index among the num_nodes -> the output position they predict."""
        ...


class AcceptanceModel(Protocol):
    # True if it draws per prompt: requests should name theirs (SimRequest.prompt_key).
    per_prompt: bool

    def source(self, category: str, prompt_key: str) -> OfferSource:
        """What a request of this category and prompt draws its offers from."""
        ...


# A prompt's records thin out with depth (a depth-d record needs a path accepted to depth d); depths
# with fewer than this many draw from the deepest depth that has them.
MIN_PROMPT_RECORDS_PER_DEPTH = 5


class _DepthPool:
    """Records by depth, each cut to the top-k asked for (cached per (depth, top_k))."""

    def __init__(self, records: list[OfferRecord], min_per_depth: int = 1) -> None:
        self.by_depth: dict[int, list[OfferRecord]] = {}
        for r in records:
            self.by_depth.setdefault(r.depth, []).append(r)
        full = [d for d, rs in self.by_depth.items() if len(rs) >= min_per_depth]
        self.max_depth = max(full) if full else min(self.by_depth)
        self._buckets: dict[tuple[int, int], list[DrawnOffer]] = {}

    def bucket(self, depth: int, top_k: int) -> list[DrawnOffer]:
        """The offers a node at `depth` draws from, uniformly (made once)."""
        bucket = self._buckets.get((depth, top_k))
        if bucket is None:  # first draw at this depth; deeper than recorded: the deepest depth's records
            records = self.by_depth.get(min(depth, self.max_depth)) or self.by_depth[self.max_depth]
            bucket = self._buckets[(depth, top_k)] = [DrawnOffer.of(_truncate(r, top_k)) for r in records]
        return bucket


class _RecordedSource:
    """A prompt's records: its trace replays the path's positions, nodes off the path draw from the
    records made off a path (where recorded; else, as unrecorded path positions, from the pool)."""

    def __init__(self, pool: _DepthPool, off_pool: _DepthPool, trace: dict[int, OfferRecord]) -> None:
        self.pool, self.off_pool, self.trace = pool, off_pool, trace
        self._cut: dict[tuple[int, int], DrawnOffer] = {}  # trace records cut to a top-k, per (position, top_k)

    def offers(
        self, depth: int, top_k: int, rng: random.Random, num_nodes: int, on_path: dict[int, int]
    ) -> list[DrawnOffer]:
        off, draw = self.off_pool.bucket(depth, top_k), rng.random
        size = len(off)
        if not on_path:  # (the common case, one C-level loop)
            return [off[int(draw() * size)] for _ in range(num_nodes)]
        return [
            self._on_path(on_path[i], depth, top_k, draw) if i in on_path else off[int(draw() * size)]
            for i in range(num_nodes)
        ]

    def _on_path(self, position: int, depth: int, top_k: int, draw) -> DrawnOffer:
        """The trace's record of the position (no draw), or one drawn from the pool."""
        if position in self.trace:
            if (position, top_k) not in self._cut:
                self._cut[(position, top_k)] = DrawnOffer.of(_truncate(self.trace[position], top_k))
            return self._cut[(position, top_k)]
        bucket = self.pool.bucket(depth, top_k)
        return bucket[int(draw() * len(bucket))]


def _pools(records: list[OfferRecord], categories: list[str], prompt_keys: list[str]):
    """(pool of all records and of each category, pool of each named prompt)."""
    pools = {"": _DepthPool(records)}  # all records: for categories without their own
    for category in sorted(set(categories) - {""}):
        pools[category] = _DepthPool([r for r, c in zip(records, categories, strict=True) if c == category])
    prompt_pools = {
        key: _DepthPool(
            [r for r, k in zip(records, prompt_keys, strict=True) if k == key], MIN_PROMPT_RECORDS_PER_DEPTH
        )
        for key in sorted(set(prompt_keys) - {""})
    }
    return pools, prompt_pools


class RecordedAcceptance:
    def __init__(
        self, records: list[OfferRecord], categories: list[str] | None = None, prompt_keys: list[str] | None = None
    ) -> None:
        """categories[i], prompt_keys[i]: the workload category and prompt record i came from ("" = unknown)."""
        categories = categories or [""] * len(records)
        prompt_keys = prompt_keys or [""] * len(records)
        on, off = ([i for i, r in enumerate(records) if r.off_path == flag] for flag in (False, True))
        if not on:
            raise ValueError("no acceptance records (on a verified path)")
        self.pools, self.prompt_pools = _pools(
            *([column[i] for i in on] for column in (records, categories, prompt_keys))
        )
        self.off_pools, self.off_prompt_pools = (
            _pools(*([column[i] for i in off] for column in (records, categories, prompt_keys))) if off else ({}, {})
        )
        self.traces: dict[str, dict[int, OfferRecord]] = {}  # per prompt: output position -> its record
        for r, key in zip(records, prompt_keys, strict=True):
            if key and r.position >= 0 and not r.off_path:
                self.traces.setdefault(key, {})[r.position] = r
        self._sources: dict[tuple[str, str], _RecordedSource] = {}

    def source(self, category: str, prompt_key: str) -> _RecordedSource:
        key = (category, prompt_key)
        if key not in self._sources:
            pool = self.prompt_pools.get(prompt_key) or self.pools.get(category) or self.pools[""]
            off_pool = (
                self.off_prompt_pools.get(prompt_key) or self.off_pools.get(category) or self.off_pools.get("") or pool
            )
            self._sources[key] = _RecordedSource(pool, off_pool, self.traces.get(prompt_key, {}))
        return self._sources[key]

    def offer(
        self, depth: int, top_k: int, rng: random.Random, category: str = "", prompt_key: str = "", position: int = -1
    ) -> DrawnOffer:
        """One node's offer (position >= 0: the node is on the target's path and predicts it): the
        source's offers() for a frontier of one, for tests and tools."""
        return self.source(category, prompt_key).offers(depth, top_k, rng, 1, {0: position} if position >= 0 else {})[0]

    @property
    def per_prompt(self) -> bool:
        return bool(self.prompt_pools)

    def top1_acceptance(self, category: str = "") -> dict[int, float]:
        """Per depth: how often the target picked the draft's most likely child."""
        by_depth = self.pools[category].by_depth
        return {d: sum(r.hit == 0 for r in rs) / len(rs) for d, rs in sorted(by_depth.items())}

    @classmethod
    def load(cls, path: Path) -> RecordedAcceptance:
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        return cls(
            [
                OfferRecord(
                    row["depth"], row["draft_probs"], row["hit"], row.get("position", -1), row.get("off_path", False)
                )
                for row in rows
            ],
            [row.get("category", "") for row in rows],
            [row.get("prompt", "") for row in rows],
        )


def _truncate(record: OfferRecord, top_k: int) -> OfferRecord:
    if len(record.draft_probs) <= top_k:
        return record
    return replace(record, draft_probs=record.draft_probs[:top_k], hit=record.hit if record.hit < top_k else -1)


def save_records(
    path: Path, records: list[OfferRecord], categories: list[str] | None = None, prompt_keys: list[str] | None = None
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r, category, key in zip(
            records, categories or [""] * len(records), prompt_keys or [""] * len(records), strict=True
        ):
            row = {k: v for k, v in asdict(r).items() if (k != "position" or v >= 0) and (k != "off_path" or v)}
            row |= ({"category": category} if category else {}) | ({"prompt": key} if key else {})
            f.write(json.dumps(row) + "\n")


@dataclass(frozen=True)
class ParametricAcceptance:
    top1: float = 0.7  # mean draft probability of its most likely child
    calibration: float = 1.0  # P(target picks child) = min(1, calibration x draft prob)
    ratio: float = 0.5  # each further child gets `ratio` of the previous one's probability
    concentration: float = 4.0  # Beta(top1 * c, (1 - top1) * c): spread of the top-1 probability
    per_prompt = False

    def __post_init__(self) -> None:
        if not (0 < self.top1 < 1 and 0 < self.ratio < 1 and self.calibration > 0 and self.concentration > 0):
            raise ValueError(
                "parametric acceptance needs 0 < top1 < 1, 0 < ratio < 1, calibration > 0, concentration > 0"
            )

    def source(self, category: str, prompt_key: str) -> ParametricAcceptance:
        return self  # the same for every request

    def offers(
        self, depth: int, top_k: int, rng: random.Random, num_nodes: int, on_path: dict[int, int]
    ) -> list[DrawnOffer]:
        return [self.offer(depth, top_k, rng) for _ in range(num_nodes)]

    def offer(
        self, depth: int, top_k: int, rng: random.Random, category: str = "", prompt_key: str = "", position: int = -1
    ) -> DrawnOffer:
        """One node's offer (the same for every category, prompt and position)."""
        q1 = rng.betavariate(self.top1 * self.concentration, (1 - self.top1) * self.concentration)
        # The rest, 1 - q1, spread geometrically over the next children (a tail is left unoffered).
        rest = [(1 - q1) * (1 - self.ratio) * self.ratio**i for i in range(top_k - 1)]
        probs = [q1] + rest
        picks = [min(1.0, self.calibration * q) for q in probs]
        total = sum(picks)
        if total > 1:
            picks = [p / total for p in picks]
        u, hit = rng.random(), -1
        for i, p in enumerate(picks):
            if u < p:
                hit = i
                break
            u -= p
        return DrawnOffer.of(OfferRecord(depth, probs, hit))


def parse_acceptance(spec: str) -> AcceptanceModel:
    kind, _, arg = spec.partition(":")
    if kind == "recorded":
        if not arg or not Path(arg).exists():
            raise ValueError(f"recorded acceptance needs an existing file: {spec!r}")
        return RecordedAcceptance.load(Path(arg))
    if kind == "parametric":
        try:
            kwargs = {k: float(v) for k, v in (kv.split("=") for kv in arg.split(",") if kv)}
            return ParametricAcceptance(**kwargs)
        except (TypeError, ValueError) as e:
            raise ValueError(f"bad parametric acceptance {spec!r}: {e}") from e
    raise ValueError(f"unknown acceptance model {spec!r} (recorded:PATH, parametric:top1=..,calibration=..)")
