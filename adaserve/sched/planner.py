"""The SLO step planner: before each step, how many prompt tokens the step may carry, and which
requests can no longer meet their SLO (demoted to best-effort, or refused when they asked to be).
Both come from the cost model and every request's two deadlines. Plain Python; no torch.

TPOT (running requests past their first token). TPOT is an average, so a long step need not break
it: the request only has to be back on its TPOT line within its next h tokens (h = recovery_tokens,
or half what it has left). A request that has decoded k tokens e seconds after its first token, gains g
tokens a step (its measured mean: accepted drafts + the bonus token; at first the mean of all), and
decodes in steps of d seconds after this one, has gained h tokens after this step of t seconds and
h / g - 1 more steps; it is on its line then iff e + t + (h / g - 1) * d <= (k + h) * tpot. So its
slack for this step is (k + h) * tpot - e - max(0, h / g - 1) * d, and the step may last as long as
the smallest slack: prompt tokens fill what that leaves after the decoding requests' own tokens.
Worked example: tpot 50 ms, 10 tokens decoded in 0.4 s, g = 2, d = 40 ms, h = 4 tokens ->
slack (10 + 4) * 0.05 - 0.4 - (4 / 2 - 1) * 0.04 = 0.26 s (h = 1, g = 1: one step, 0.15 s).

TTFT (waiting requests, and running ones still prefilling). Prompts are prefilled earliest deadline
first at the rate the planned steps carry prompt tokens. Whenever the order makes a request late, the
longest prefill taken so far is dropped (Moore-Hodgson: the most requests on time on one machine);
the dropped ones cannot make their deadline behind the others and are demoted.

Two paces are open to the decoding requests: the current one (draft passes plus a verification of
last step's trees, g tokens a step) and plain decoding (one token a step, no draft). The speculation
policy may switch to either, so a request's slack is the larger of the two: a slow tree step must
not make a request look lost that plain steps would keep on its line. A running request is demoted
when its slack by max_tokens is negative at both paces: it will miss its TPOT whatever the policy
does. New requests start only while decoding stays within every running request's slack (at either
pace), and best-effort requests run only while no request keeps a TPOT.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from adaserve.request import Request
from adaserve.sched.cost_model import CostModel
from adaserve.sched.scheduler import StepLimits

RECOVERY_TOKENS = 64  # a long step must be made good within this many tokens (see above)
MAX_ADMISSIONS = 64  # new requests one step may start (the planner checks each against the slack)
# Steps are planned to keep each request on a line this fraction of its TPOT: acceptance is random
# and the cost model an estimate, so a plan that spends every predicted ms ends late half the time.
# Demotion is judged on the TPOT itself.
TPOT_HEADROOM = 0.9
DEMOTE_AT = ("batch", "finish")  # the demotion rules (StepPlanner's demote_at)
MIN_OWN_VERIFICATIONS = 4  # before that many, a request's tokens per step is the all-request mean


@dataclass
class StepPlan:
    """The step's limits for the scheduler, and who can no longer meet their SLO. The limits: prompt
    tokens and all the step's tokens within the smallest slack (so the selection too keeps each step
    within every running TPOT); per decoding request last step's mean tree held back before prompts
    take theirs; new requests only while decoding stays within every running TPOT; and running
    best-effort requests wait while any request keeps a TPOT (strict priority: they slow none)."""

    limits: StepLimits = field(default_factory=StepLimits)
    demote: list[Request] = field(default_factory=list)  # newly best-effort
    refuse: list[Request] = field(default_factory=list)  # no first token yet, slo_policy "reject"


@dataclass(frozen=True)
class Pace:
    """A way the decoding requests may run from now on: steps of step_ms, speculating (each request
    gains its measured tokens per step) or not (one token a step)."""

    step_ms: float
    speculating: bool = False
    # The steps after this one, if not all of step_ms: (from step, ms by then, ms a step) segments.
    segments: tuple[tuple[float, float, float], ...] = ()

    def later_ms(self, num_steps: float) -> float:
        """The time of the next num_steps steps after this one."""
        if not self.segments:
            return num_steps * self.step_ms
        i = bisect.bisect_right(self.segments, (num_steps, math.inf, math.inf)) - 1
        from_step, ms, step_ms = self.segments[max(0, i)]
        return ms + (num_steps - from_step) * step_ms


@dataclass(frozen=True)
class StepLoad:
    """What the decoding requests will put into this step (the engine's estimate)."""

    num_decode_tokens: int  # tree tokens (roots + drafted nodes) of the decoding requests
    num_decoding: int = 0  # decoding requests
    draft_ms: float = 0.0  # the draft passes before the target's
    mean_tokens_per_step: float = 1.0  # tokens a request gains per step, on average over all of them


class StepPlanner:
    def __init__(
        self,
        cost: CostModel,
        max_num_batched_tokens: int,
        block_size: int,
        recovery_tokens: int = RECOVERY_TOKENS,
        tpot_headroom: float = TPOT_HEADROOM,
        defer_prompts: bool = True,
        demote_at: str = "batch",
    ) -> None:
        self.cost = cost
        self.max_num_batched_tokens = max_num_batched_tokens
        self.block_size = block_size
        self.recovery_tokens = recovery_tokens
        self.tpot_headroom = tpot_headroom
        self.defer_prompts = defer_prompts
        if demote_at not in DEMOTE_AT:
            raise ValueError(f"demote_at must be 'batch' or 'finish', not {demote_at!r}")
        self.demote_at = demote_at

    def plan(self, now: float, running: list[Request], waiting: Iterable[Request], load: StepLoad) -> StepPlan:
        context = sum(r.num_computed_tokens for r in running)
        decode_ms = load.draft_ms + self.cost.verify_ms(max(1, load.num_decode_tokens), context, len(running))
        paces = (Pace(decode_ms, True), Pace(self.cost.verify_ms(max(1, load.num_decoding), context, len(running))))
        if self.demote_at == "finish":
            paces = self._finish_paces([r for r in running if _keeps_tpot(r)], load, context, paces)
        plan = StepPlan()
        keeping = []  # running requests that can still meet their TPOT
        for r in running:
            if not _keeps_tpot(r):
                continue
            if self._slack_ms(r, now, paces, load.mean_tokens_per_step, None, headroom=1.0) < 0:
                plan.demote.append(r)  # its tokens are flowing: served on, best-effort, never cut off
            else:
                keeping.append(r)
        prefilling = [r for r in running if r.first_token_time is None] + list(waiting)
        # Unattainable: late even if every step from now on gave prompts all the budget they can take.
        given_up = _late_prefills(prefilling, now, self._full_prompt_rate(load, context, len(running)))
        for r in given_up:
            _give_up(plan, r)
        mean_tree = -(-max(0, load.num_decode_tokens - load.num_decoding) // max(1, load.num_decoding))
        fits = self._fits(keeping, now, load, paces, context, self.recovery_tokens)
        if fits is None:
            plan.limits = StepLimits(num_spec_tokens_per_seq=mean_tree)
            return plan
        cap = self._prompt_budget(fits, keeping, prefilling, given_up, now, load, (context, len(running), paces))
        num_new = self._admissible(keeping, now, load, context, len(running))
        # Best-effort requests come strictly last: they run only while no request keeps a TPOT.
        plan.limits = StepLimits(cap, mean_tree, max(fits, load.num_decoding + cap), num_new, True)
        return plan

    def _finish_paces(
        self, requests: list[Request], load: StepLoad, context: int, paces: tuple[Pace, ...]
    ) -> tuple[Pace, ...]:
        """The paces with later steps priced by who is left: the requests leave the batch as they
        reach their max_tokens (no newcomers: the planner admits one only within every running
        slack), and a step of m requests costs m average trees and m average contexts. Worked
        example: requests 2 and 5 steps from their end at 30 ms a step of two and 20 ms of one ->
        segments (0 steps, 0 ms, 30 ms a step), (2 steps, 60 ms, 20 ms a step)."""
        n = max(1, load.num_decoding)
        context_per_seq = context / max(1, len(requests))
        out = []
        for pace in paces:
            tokens_per_seq = load.num_decode_tokens / n if pace.speculating else 1.0
            draft_per_seq = load.draft_ms / n if pace.speculating else 0.0
            mean_tokens = load.mean_tokens_per_step if pace.speculating else None
            # The steps after this one each request needs to reach max_tokens (the per-step term).
            ends = sorted(self._slack_terms(r, r.first_token_time, mean_tokens, None)[1] for r in requests)
            segments, done_steps, done_ms = [], 0.0, 0.0
            for m, end in zip(range(len(ends), 0, -1), ends):  # m requests run until the next end
                num_tokens = max(1, round(m * tokens_per_seq))
                step_ms = m * draft_per_seq + self.cost.verify_ms(num_tokens, round(m * context_per_seq), m)
                segments.append((done_steps, done_ms, step_ms))
                done_ms += (end - done_steps) * step_ms
                done_steps = end
            out.append(Pace(pace.step_ms, pace.speculating, tuple(segments)))
        return tuple(out)

    def _prompt_budget(
        self,
        fits: int,
        keeping: list[Request],
        prefilling: list[Request],
        given_up: list[Request],
        now: float,
        load: StepLoad,
        batch: tuple[int, int, float],
    ) -> int:
        """Prompts get the running requests' comfortable slack (back on their line within
        recovery_tokens: `fits` tokens in all), or all of it (by max_tokens) when a prompt would be
        late otherwise; best-effort prompts alone get one step's slack (back on the line after it)."""
        context, num_seqs, paces = batch  # the running requests' cached tokens, count, decode paces
        given_up_ids = {id(r) for r in given_up}
        if not any(not r.best_effort and id(r) not in given_up_ids for r in prefilling):
            return self._prefill_cap(self._fits(keeping, now, load, paces, context, 1), load)
        if fits - load.num_decode_tokens < self.block_size and self._prompts_may_wait(
            prefilling, given_up_ids, now, load, context, num_seqs
        ):
            return 0
        cap = self._prefill_cap(fits, load)
        if len(_late_prefills(prefilling, now, cap / self._step_ms(load, cap, context, num_seqs))) > len(given_up):
            cap = self._prefill_cap(self._fits(keeping, now, load, paces, context, None), load)
        return cap

    def _prompts_may_wait(
        self, prefilling: list[Request], given_up_ids: set[int], now: float, load: StepLoad, context: int, num_seqs: int
    ) -> bool:
        """Whether prompts may skip this step. Asked only when the running requests' slack cannot
        fund one block; they skip it when that block would cost more than the decode step it joins
        (on this CPU 16 prompt tokens cost 2.5x a one-token step; on a GPU next to nothing), every
        prompt has a TTFT deadline (none waits unbounded), and all would still make theirs starting
        a step later at a full step's prompt rate. The running requests then keep their TPOT while
        the prompts spend TTFT slack they have to spare. (Deferring cheap blocks too was tried: at
        paper scale in overload the prompts, started at their last moment, ended late.)"""
        if not self.defer_prompts:
            return False
        decode_ms = self._step_ms(load, 0, context, num_seqs)
        if self._step_ms(load, self.block_size, context, num_seqs) - decode_ms <= decode_ms:
            return False  # a block is cheap beside the step (a GPU): it breaks little, so it runs
        if any(r.params.slo.ttft_ms is None for r in prefilling if not r.best_effort and id(r) not in given_up_ids):
            return False
        later = now + decode_ms / 1000.0
        num_late = len(_late_prefills(prefilling, later, self._full_prompt_rate(load, context, num_seqs)))
        return num_late <= len(given_up_ids)

    def _full_prompt_rate(self, load: StepLoad, context: int, num_seqs: int) -> float:
        """Prompt tokens per ms when every step gives prompts all the budget the decodes leave."""
        full = max(1, self.max_num_batched_tokens - load.num_decode_tokens)
        return full / self._step_ms(load, full, context, num_seqs)

    def _prefill_cap(self, fits: int, load: StepLoad) -> int:
        return max(self.block_size, fits - load.num_decode_tokens)

    def _step_ms(self, load: StepLoad, num_prefill_tokens: int, context: int, num_seqs: int) -> float:
        return load.draft_ms + self.cost.verify_ms(load.num_decode_tokens + num_prefill_tokens, context, num_seqs)

    def _fits(
        self, keeping: list[Request], now: float, load: StepLoad, paces: tuple[Pace, ...], context: int, h: int | None
    ) -> int | None:
        """The tokens a step may carry within the smallest slack (None: no running request has one)."""
        g = load.mean_tokens_per_step
        slack_ms = min((self._slack_ms(r, now, paces, g, h) for r in keeping), default=math.inf)
        if not math.isfinite(slack_ms):
            return None
        return self.cost.target.max_tokens_within(slack_ms - load.draft_ms, context, self.max_num_batched_tokens)

    def _slack_ms(
        self,
        r: Request,
        now: float,
        paces: tuple[Pace, ...],
        mean_tokens: float,
        h: int | None,
        headroom: float | None = None,
    ) -> float:
        """How long this step may take with r back on its TPOT line within its next h tokens (None:
        by max_tokens), at the better of the paces."""
        slacks = []
        for pace in paces:
            fixed_ms, per_step = self._slack_terms(r, now, mean_tokens if pace.speculating else None, h, headroom)
            slacks.append(fixed_ms - pace.later_ms(per_step))
        return max(slacks)

    def _slack_terms(
        self, r: Request, now: float, mean_tokens: float | None, h: int | None, headroom: float | None = None
    ) -> tuple[float, float]:
        """The slack as fixed_ms - per_step x (decode step ms): it falls with longer decode steps.
        mean_tokens None: plain decoding (one token a step, whatever r's speculation gained)."""
        num_decoded, left = r.num_output_tokens - 1, r.params.max_tokens - r.num_output_tokens
        # A horizon given is capped at half the tokens left: the reserve for a pace slower than
        # predicted (with short outputs, recovering "by max_tokens" would spend every last ms).
        h = max(1, left if h is None else min(h, left // 2))
        stats = r.spec_stats
        g = 1.0
        if mean_tokens is not None:
            g = stats.mean_accepted_tokens if stats.num_verifications >= MIN_OWN_VERIFICATIONS else mean_tokens
        g = max(1.0, g)
        elapsed_ms = 1000.0 * (now - r.first_token_time)
        tpot_ms = r.params.slo.tpot_ms * (self.tpot_headroom if headroom is None else headroom)
        return (num_decoded + h) * tpot_ms - elapsed_ms, max(0.0, h / g - 1.0)

    def _admissible(self, keeping: list[Request], now: float, load: StepLoad, context: int, num_seqs: int) -> int:
        """How many more requests may start decoding without a running one missing its TPOT by
        max_tokens: each brings the average tree (or, decoding plainly, one token) and context to
        every later decode step. The more of the two paces allows."""
        n = max(1, load.num_decoding)
        seq_context = context / max(1, num_seqs)
        plain = (None, 0.0, 1.0)  # (mean tokens a step, draft ms per request, tokens per request)
        spec = (load.mean_tokens_per_step, load.draft_ms / n, load.num_decode_tokens / n)
        best = 0
        for mean_tokens, draft_ms_per_seq, tokens_per_seq in (spec, plain):
            longest_ms = math.inf  # the decode step every running request tolerates from now on
            for r in keeping:
                fixed_ms, per_step = self._slack_terms(r, now, mean_tokens, None)
                if per_step > 0:
                    longest_ms = min(longest_ms, fixed_ms / per_step)
            m = 0
            while m < MAX_ADMISSIONS:
                num = n + m + 1  # decoding requests with one more admitted
                step_ms = draft_ms_per_seq * num + self.cost.verify_ms(
                    round(num * tokens_per_seq), round(context + (m + 1) * seq_context), num_seqs + m + 1
                )
                if step_ms > longest_ms:
                    break
                m += 1
            best = max(best, m)
        return best


def _keeps_tpot(r: Request) -> bool:
    return r.first_token_time is not None and r.params.slo.tpot_ms is not None and not r.best_effort


def _late_prefills(requests: list[Request], now: float, tokens_per_ms: float) -> list[Request]:
    """Of the requests with a TTFT deadline still to meet, those an earliest-deadline-first prefill
    at `tokens_per_ms` makes late, chosen so that as many as possible meet theirs (Moore-Hodgson)."""
    jobs = sorted(
        (r.arrival_time * 1000.0 + r.params.slo.ttft_ms, i, r)
        for i, r in enumerate(requests)
        if r.params.slo.ttft_ms is not None and not r.best_effort and r.first_token_time is None
    )
    taken: list[tuple[float, int, Request]] = []  # max-heap by prefill time: (-ms, i, request)
    finish_ms, late = now * 1000.0, []
    for deadline_ms, i, r in jobs:
        ms = r.num_uncached_tokens / tokens_per_ms
        heapq.heappush(taken, (-ms, i, r))
        finish_ms += ms
        if finish_ms > deadline_ms:
            neg_ms, _, longest = heapq.heappop(taken)
            finish_ms += neg_ms
            late.append(longest)
    return late


def _give_up(plan: StepPlan, r: Request) -> None:
    """Before its first token: refused if it asked to be, else demoted."""
    (plan.refuse if r.params.slo_policy == "reject" else plan.demote).append(r)
