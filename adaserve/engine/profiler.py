"""Measure the cost model: target and draft forward latency vs tokens, and the attention cost of
context. Cached per model pair and machine as JSON (adaserve.sched.cost_model.CostModel).

Each point is the median of `reps` timed forwards (one, for passes of LONG_PASS_TOKENS or more) of
one sequence of N new tokens (causal, like a chain or a prefill chunk) over a `context`-token prefix,
run through the engine's own executor and KV cache; prefixes are reserved in the cache, not computed.
The context term is the latency difference of a 1-token pass over a long vs short prefix, the
context-pair term that of a multi-token pass (less the context term); the per-sequence term
compares B one-token sequences with one sequence of B tokens; the logits-row term times the lm_head
over 64 rows against one.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from adaserve.engine.executor import ModelExecutor
from adaserve.kernels import cpu_flags, cpu_model, kernel_version
from adaserve.models.sources import cache_root
from adaserve.sched.cost_model import CostModel, LatencyCurve

log = logging.getLogger(__name__)
PROFILE_ID = "__profile__"
DEFAULT_GRID = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
PAIR_TOKENS = 64  # new tokens of the pass that measures the context-pair term
# Passes this long take a second or more and vary by a few percent run to run: one timing each is
# enough, and the profile (which `make demo` waits for on a fresh machine) stays short.
LONG_PASS_TOKENS = 128


def _timed_forward(executor: ModelExecutor, context: int, num_tokens: int) -> float:
    """One pass of num_tokens new tokens after `context` cached tokens; leaves the cache at context."""
    slots = executor.kv.reserve(PROFILE_ID, num_tokens)
    seq = executor.seq_input(PROFILE_ID, [11] * num_tokens, list(range(context, context + num_tokens)), slots, context)
    start = time.perf_counter()
    hidden = executor.forward([seq])
    executor.logits(hidden, [num_tokens - 1])
    elapsed = time.perf_counter() - start
    executor.kv.truncate(PROFILE_ID, context)
    return elapsed * 1000.0


def _reserve_context(executor: ModelExecutor, context: int, request_id: str = PROFILE_ID) -> None:
    """Give the request `context` cached positions. Their KV is not computed: what a pass costs
    does not depend on the values it reads, and prefilling 4096 tokens to time a decode over them
    was most of the profile's time (which `make demo` waits for on a fresh machine)."""
    executor.kv.free(request_id)
    executor.kv.reserve(request_id, context)


def _timed_batch(executor: ModelExecutor, context: int, num_seqs: int, reps: int) -> float:
    """Median ms of one decode pass over num_seqs sequences of `context` cached tokens each."""
    ids = [f"{PROFILE_ID}{i}" for i in range(num_seqs)]
    try:
        for rid in ids:
            _reserve_context(executor, context, rid)
        times = []
        for _ in range(reps + 1):
            seqs = [executor.seq_input(rid, [11], [context], executor.kv.reserve(rid, 1), context) for rid in ids]
            start = time.perf_counter()
            executor.logits(executor.forward(seqs), list(range(num_seqs)))
            times.append((time.perf_counter() - start) * 1000.0)
            for rid in ids:
                executor.kv.truncate(rid, context)
        return statistics.median(times[1:])
    finally:
        for rid in ids:
            executor.kv.free(rid)


def profile_curve(
    executor: ModelExecutor, grid: tuple[int, ...], context: int = 128, long_context: int = 4096, reps: int = 3
) -> LatencyCurve:
    room = min(executor.kv.capacity_tokens, executor.max_positions)
    long_context = min(long_context, room - max(grid) - executor.kv.block_size)
    grid = tuple(n for n in grid if context + n <= room)
    try:
        _reserve_context(executor, context)
        _timed_forward(executor, context, 1)  # warm-up
        medians = [
            statistics.median(_timed_forward(executor, context, n) for _ in range(reps if n < LONG_PASS_TOKENS else 1))
            for n in grid
        ]
        beta, delta = _context_terms(executor, grid, medians, context, long_context, reps)
    finally:
        executor.kv.free(PROFILE_ID)
    # The curve is for `context` cached tokens; store it as if context-free (its pairs included).
    base = [m - beta * context - delta * (n - 1) * context for n, m in zip(grid, medians)]
    curve = LatencyCurve(grid, tuple(max(1e-3, b) for b in base), beta, 0.0, delta, logit_row_ms(executor, reps=reps))
    # Sequences of a few hundred tokens each, as in a busy batch: gamma also carries the per-sequence
    # KV gathering that a single sequence's pass does not pay.
    seq_context = 2 * context
    num_seqs = max((n for n in grid if n <= 16 and _num_seqs_fit(executor, n, seq_context)), default=1)
    if num_seqs < 2:
        return curve
    batch = _timed_batch(executor, seq_context, num_seqs, reps)
    gamma = max(0.0, (batch - curve(num_seqs, num_seqs * seq_context)) / (num_seqs - 1))
    return replace(curve, ms_per_seq=gamma)


def logit_row_ms(executor: ModelExecutor, num_rows: int = 64, reps: int = 3) -> float:
    """ms per logits row beyond the first: the lm_head over num_rows hidden states vs over one."""
    hidden = torch.randn(
        num_rows, executor.model.cfg.hidden_size, device=executor.device, dtype=executor.kv_cache.k.dtype
    )
    rows = list(range(num_rows))

    def timed(wanted: list[int]) -> float:
        start = time.perf_counter()
        executor.logits(hidden, wanted)
        return (time.perf_counter() - start) * 1000.0

    timed(rows)  # warm-up
    many = statistics.median(timed(rows) for _ in range(reps))
    one = statistics.median(timed([0]) for _ in range(reps))
    return max(0.0, (many - one) / (num_rows - 1))


def _context_terms(
    executor: ModelExecutor, grid: tuple[int, ...], medians: list[float], context: int, long_context: int, reps: int
) -> tuple[float, float]:
    """(beta, delta): ms per cached token read, from a 1-token pass over `long_context` vs `context`
    cached tokens, and ms per further query x cached-token pair, from a PAIR_TOKENS-token pass
    (what beta does not explain, spread over its (q - 1) x extra-context pairs)."""
    if long_context <= context:
        return 0.0, 0.0
    short = statistics.median(_timed_forward(executor, context, 1) for _ in range(reps + 2))
    _reserve_context(executor, long_context)
    long = statistics.median(_timed_forward(executor, long_context, 1) for _ in range(reps + 2))
    beta = max(0.0, (long - short) / (long_context - context))
    q = grid[min(len(grid) - 1, bisect.bisect_left(grid, PAIR_TOKENS))]
    if q < 2:
        return beta, 0.0
    long_q = statistics.median(_timed_forward(executor, long_context, q) for _ in range(reps))
    extra = long_q - medians[grid.index(q)] - beta * (long_context - context)
    return beta, max(0.0, extra / ((q - 1) * (long_context - context)))


def _num_seqs_fit(executor: ModelExecutor, num_seqs: int, context: int) -> bool:
    blocks_each = -(-(context + 1) // executor.kv.block_size)
    return num_seqs * blocks_each <= executor.kv.pool.num_blocks


def profile_key(
    target_dir: Path, draft_dir: Path | None, draft_num_layers: int | None, device: str, dtype: str, weights: str
) -> str:
    """Everything the latencies depend on: the models (a draft cut to its first layers is another
    model), the device, the weight format and number format, the machine with its ISA flags, and
    our kernels' code (a change of any of them is a new key, so the profile is measured again)."""
    parts = [
        str(target_dir),
        str(draft_dir),
        str(draft_num_layers),
        device,
        dtype,
        weights,
        cpu_model(),
        " ".join(cpu_flags()),
        str(torch.get_num_threads()),
        torch.__version__,
        str(os.cpu_count()),
        kernel_version(),
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def profile_path(key: str) -> Path:
    return cache_root() / "profiles" / f"{key}.json"


def profile_models(
    target: ModelExecutor, draft: ModelExecutor | None, max_tokens: int, reps: int = 3, meta: dict | None = None
) -> CostModel:
    grid = tuple(n for n in DEFAULT_GRID if n <= max_tokens) or (1,)
    start = time.perf_counter()
    target_curve = profile_curve(target, grid, reps=reps)
    draft_curve = profile_curve(draft, grid, reps=reps) if draft is not None else None
    meta = dict(
        meta or {},
        seconds=round(time.perf_counter() - start, 1),
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        created=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    return CostModel(target_curve, draft_curve, meta)


def load_or_profile(
    target: ModelExecutor,
    draft: ModelExecutor | None,
    key: str,
    max_tokens: int,
    meta: dict | None = None,
    refresh: bool = False,
) -> CostModel:
    path = profile_path(key)
    if path.exists() and not refresh:
        try:
            return CostModel.load(path)
        except (ValueError, KeyError, TypeError, AttributeError, OSError) as e:  # torn, foreign, stale
            log.warning("ignoring unreadable profile %s (measuring again): %s", path, e)
    log.warning("profiling this model pair on this machine (once; cached in %s)", path)
    cost = profile_models(target, draft, max_tokens, meta=meta)
    cost.save(path)
    return cost
