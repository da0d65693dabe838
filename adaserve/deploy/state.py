"""What one engine replica tells the router about itself: its step time and marginal costs from its
cost model, its SLO demand, the prompt tokens waiting to be prefilled, free KV blocks and accepted
tokens per step. Plain data (it travels as Ray Serve routing stats, a dict); `from_engine` reads it
off an EngineCore, real or simulated. No torch, no Ray."""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, fields

from adaserve.sched.cost_model import CostModel

CONTEXT_PROBE_TOKENS = 1024  # the marginal cost per context token is measured over this many
RECENT_STEPS = 16  # tokens per step is their mean: it follows the load (trees shrink as it grows)


@dataclass(frozen=True)
class ReplicaState:
    replica_id: str
    # The next decoding step as the replica runs it now (draft passes + verification), or the mean
    # time between its recent steps if longer (they carry prompt chunks too, which slow every decode).
    step_ms: float
    plain_step_ms: float  # the same requests decoding one token each, no draft
    ms_per_request: float  # what one more decoding request adds to that step
    ms_per_context_token: float  # what one more token of context adds to that step
    prefill_step_ms: float  # a step that also carries a full chunk of prompt tokens
    prefill_ms_per_token: float  # how fast queued prompts drain: measured while they wait, else the cost model's
    tokens_per_step: float  # tokens a decoding request gains per step, recently (accepted drafts + bonus)
    num_waiting_prefill_tokens: int  # prompt tokens admitted or queued but not yet prefilled
    num_free_kv_blocks: int
    block_size: int
    num_running: int
    num_waiting: int
    max_num_seqs: int
    tightest_tpot_ms: float | None = None  # the smallest TPOT target among requests keeping theirs
    ms_to_free_slot: float = 0.0  # when full (max_num_seqs running): until the nearest one finishes
    slo_demand: float = 0.0  # sum over running requests of step_ms / their TPOT target
    slo_pressure: float = 0.0  # max over them of step_ms / (TPOT target x tokens_per_step); > 1: missing

    @property
    def num_ongoing(self) -> int:
        """What Ray's power-of-two-choices router balances: requests on the replica."""
        return self.num_running + self.num_waiting

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ReplicaState:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def from_engine(engine, cost: CostModel, replica_id: str) -> ReplicaState:
    """The state of `engine` (an EngineCore) now, priced by `cost`."""
    scheduler, config = engine.scheduler, engine.config
    running, waiting = list(scheduler.running), list(scheduler.waiting)
    load = engine.step_load()
    context = sum(r.num_computed_tokens for r in running)
    num_seqs = max(1, len(running))
    num_tokens = max(1, load.num_decode_tokens)
    modelled_step_ms = load.draft_ms + cost.verify_ms(num_tokens, context, num_seqs)
    step_ms = max(modelled_step_ms, _recent_step_ms(engine))
    # Where steps run slower than the cost model says (prompt chunks in them, a busy machine, a
    # profile from another one), the plain pace and the marginal cost run slower by as much: else the
    # plain pace, priced by the model alone, looks fast and wins the min in the router's prediction.
    slowdown = step_ms / modelled_step_ms
    tree = max(1.0, load.num_decode_tokens / max(1, load.num_decoding))
    more_tokens = num_tokens + math.ceil(tree)
    extra_draft_ms = load.draft_ms / max(1, load.num_decoding) if load.num_decoding else 0.0
    ms_per_request = cost.verify_ms(more_tokens, context, num_seqs + 1) - cost.verify_ms(num_tokens, context, num_seqs)
    longer = cost.verify_ms(num_tokens, context + CONTEXT_PROBE_TOKENS, num_seqs)
    prefill_tokens = max(1, config.max_num_batched_tokens - load.num_decode_tokens)
    g = _recent_tokens_per_step(engine, load.mean_tokens_per_step)
    prefill_step_ms = load.draft_ms + cost.verify_ms(num_tokens + prefill_tokens, context, num_seqs + 1)
    backlog = sum(r.num_pending_tokens for r in running if r.num_pending_tokens > 1)
    backlog += sum(r.num_uncached_tokens for r in waiting)
    keeping = [r for r in running if r.params.slo.tpot_ms is not None and not r.best_effort]
    tpots = [r.params.slo.tpot_ms for r in keeping]
    return ReplicaState(
        replica_id=replica_id,
        step_ms=step_ms,
        plain_step_ms=slowdown * cost.verify_ms(max(1, load.num_decoding), context, num_seqs),
        ms_per_request=slowdown * (max(0.0, ms_per_request) + extra_draft_ms),
        ms_per_context_token=max(0.0, longer - cost.verify_ms(num_tokens, context, num_seqs)) / CONTEXT_PROBE_TOKENS,
        prefill_step_ms=prefill_step_ms,
        prefill_ms_per_token=_prefill_ms_per_token(engine, backlog, prefill_step_ms / prefill_tokens),
        tokens_per_step=g,
        num_waiting_prefill_tokens=backlog,
        num_free_kv_blocks=engine.kv.num_free_blocks,
        block_size=config.block_size,
        num_running=len(running),
        num_waiting=len(waiting),
        max_num_seqs=config.max_num_seqs,
        tightest_tpot_ms=min(tpots, default=None),
        ms_to_free_slot=_ms_to_free_slot(running, config.max_num_seqs, step_ms / g),
        slo_demand=sum(step_ms / t for t in tpots),
        slo_pressure=max((step_ms / (t * g) for t in tpots), default=0.0),
    )


def _ms_to_free_slot(running: list, max_num_seqs: int, ms_per_token: float) -> float:
    if len(running) < max_num_seqs:
        return 0.0
    left = min((r.params.max_tokens - r.num_output_tokens for r in running), default=0)
    return max(0, left) * ms_per_token


def _recent_tokens_per_step(engine, fallback: float) -> float:
    """Over the last RECENT_STEPS steps with trees: (accepted drafts + one bonus per tree) / trees."""
    spec = engine.spec
    if spec is None:
        return 1.0
    steps = list(itertools.islice(reversed(spec.stats.steps), RECENT_STEPS))
    num_trees = sum(s.num_verified_tokens - s.num_proposed for s in steps)
    if num_trees == 0:
        return max(1.0, fallback)
    return max(1.0, (num_trees + sum(s.num_accepted for s in steps)) / num_trees)


def _prefill_ms_per_token(engine, backlog: int, modelled: float) -> float:
    """With prompts queued, the pace they drained at over the recent steps (the planner gives them
    only what the running requests' TPOT slack leaves, so the cost model's pace is far too fast
    then); with none queued, or nothing measured, the cost model's."""
    spec = engine.spec
    if backlog == 0 or spec is None:
        return modelled
    steps = list(itertools.islice(reversed(spec.stats.steps), RECENT_STEPS))
    if len(steps) < 2:
        return modelled
    num_tokens = sum(s.num_prefill_tokens for s in steps[:-1])  # the steps after the oldest one's end
    span_ms = 1000 * (steps[0].time - steps[-1].time)
    return max(modelled, span_ms / num_tokens) if num_tokens else max(modelled, span_ms)


def _recent_step_ms(engine) -> float:
    if engine.spec is None or not engine.scheduler.running:
        return 0.0
    steps = list(itertools.islice(reversed(engine.spec.stats.steps), RECENT_STEPS))
    if len(steps) < 2:
        return 0.0
    return 1000 * (steps[0].time - steps[-1].time) / (len(steps) - 1)
