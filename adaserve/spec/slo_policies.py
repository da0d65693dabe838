"""Policies that use the cost model: AdaServe, its equal-budget ablation, and SmartSpec.
Plain Python; no torch. They implement adaserve.spec.policies.SpecPolicy.

AdaServe, each step (docs/method.md):
  begin_step  adaptive shape from the number n of decoding requests:
                width w = clip(B2 // n + c2, 1, max_width)
                depth d, by `depth_rule`:
                  "goodput"  (default) the most expected tokens per second, 0 (no drafting) to
                             max_depth: on a CPU a draft pass costs half the target's
                  "paper"    clip(B1 // (n + c1) - 1, min_depth, max_depth)
              B1 / B2 = profiled verify / draft budgets (tokens one pass takes within
              `budget_factor` x its one-token latency).
  expand      per request and layer, keep the w children with the highest path probability.
  select      A(r) for each request with a TPOT target, from the predicted iteration time; the SLO
              phase serves the quotas, the throughput phase adds the globally best nodes while each
              one raises expected tokens per second of the whole pass (cost model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from adaserve.sched.cost_model import CostModel
from adaserve.slo import required_tokens
from adaserve.spec.policies import LayerCandidates, SelectionContext, SeqState, top_by_path_prob
from adaserve.spec.selection import select_nodes, throughput_phase
from adaserve.spec.tree import CandidateTree


@dataclass(frozen=True)
class AdaptiveShape:
    """The constants of the adaptive depth/width rule."""

    c1: int = 1
    c2: int = 1
    min_depth: int = 1
    max_depth: int = 8
    max_width: int = 4
    # Children each frontier node offers. A layer keeps at most max_width nodes in all, so no
    # parent can contribute more than max_width: offering more would change nothing.
    top_k: int = 4
    budget_factor: float = 2.0
    n_max_factor: float = 1.2  # per-request cap in the SLO phase: n_max = factor * B1 / n
    # How depth follows the load: "goodput" picks the depth of highest expected tokens per second
    # (cost model, measured acceptance; 0 = no drafting is a choice); "paper" is the paper's
    # clip(B1 // (n + c1) - 1), which falls to 1 once n approaches B1 whatever the acceptance.
    depth_rule: str = "goodput"
    # B1 fixed instead of profiled (the paper's artifact used 512 tokens on 4 x A100).
    verify_budget_tokens: int | None = None


DEPTH_RULES = ("goodput", "paper")


def clip(x: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, x))


class ChainGoodput:
    """Expected tokens per ms of a step that drafts a k-deep chain (or tree of that depth) for each
    of n requests, from the cost model and a running estimate of the draft's acceptance rate alpha
    (geometric: E[tokens | k] = sum_{j<=k} alpha^j; decayed counts of verified chains)."""

    def __init__(self, cost: CostModel, prior_alpha: float = 0.6, decay: float = 0.98) -> None:
        self.cost, self.decay = cost, decay
        self._accepted, self._trials = prior_alpha * 10, 10.0

    @property
    def alpha(self) -> float:
        return min(0.99, self._accepted / self._trials)

    def expected_rate(self, k: int, num_seqs: int, num_context_tokens: int, width: int = 1) -> float:
        tokens = num_seqs * sum(self.alpha**j for j in range(k + 1))
        ms = self.cost.verify_ms(num_seqs * (k + 1), num_context_tokens, num_seqs)
        if k > 0:
            ms += self.cost.speculation_ms(num_seqs, k, width, num_context_tokens)
        return tokens / ms

    def best_depth(self, depths: range, num_seqs: int, num_context_tokens: int, width: int = 1) -> int:
        return max(depths, key=lambda k: self.expected_rate(k, num_seqs, num_context_tokens, width))

    def record(self, num_proposed_depth: int, num_accepted: int) -> None:
        rejected = 1.0 if num_accepted < num_proposed_depth else 0.0
        self._accepted = self.decay * self._accepted + num_accepted
        self._trials = self.decay * self._trials + num_accepted + rejected


@dataclass
class StepYield:
    """One step's drafting and what it brought: its depth, requests, and tokens gained in all."""

    depth: int = 0
    num_seqs: int = 0
    num_tokens: int = 0  # accepted drafts + bonus tokens (record() adds each request's)


class DepthOutcomes:
    """What drafting d layers has yielded per request and step (decayed means): tokens gained
    (accepted drafts + the bonus token) and drafted nodes verified. AdaServe's selection verifies
    more than a chain of d (wider trees, SLO quotas) and the draft's path probabilities are not the
    target's acceptance, so a depth is judged by what it did, once it was tried."""

    def __init__(self, decay: float = 0.9) -> None:
        self.decay = decay
        self._sums: dict[int, list[float]] = {}  # depth -> [tokens, nodes, weight]

    def record(self, depth: int, tokens_per_seq: float, nodes_per_seq: float) -> None:
        sums = self._sums.setdefault(depth, [0.0, 0.0, 0.0])
        sums[0] = self.decay * sums[0] + tokens_per_seq
        sums[1] = self.decay * sums[1] + nodes_per_seq
        sums[2] = self.decay * sums[2] + 1.0

    def means(self, depth: int) -> tuple[float, float] | None:
        """(tokens, verified drafted nodes) per request and step at `depth`; None: never tried."""
        sums = self._sums.get(depth)
        return (sums[0] / sums[2], sums[1] / sums[2]) if sums else None


class AdaServePolicy:
    def __init__(self, cost: CostModel, shape: AdaptiveShape = AdaptiveShape(), name: str = "adaserve") -> None:
        if shape.depth_rule not in DEPTH_RULES:
            raise ValueError(f"depth_rule must be one of {DEPTH_RULES}, got {shape.depth_rule!r}")
        self.cost, self.shape, self.name = cost, shape, name
        self.goodput = ChainGoodput(cost)
        self.verify_budget = shape.verify_budget_tokens or cost.verify_budget(shape.budget_factor)
        self.draft_budget = max(1, cost.draft_budget(shape.budget_factor))
        self.top_k = shape.top_k
        self.max_tokens_per_seq = shape.max_depth * shape.max_width
        self.depth, self.width = shape.max_depth, shape.max_width
        self._num_context_tokens = 0
        self._last_num_selected = 0  # drafted nodes verified last step: the guess for this one
        self.outcomes = DepthOutcomes()
        self._step = StepYield()  # the last step's, until the next begins

    def begin_step(self, ctx: SelectionContext) -> None:
        n, s = max(1, len(ctx.seqs)), self.shape
        self._num_context_tokens = ctx.num_context_tokens
        self.width = clip(self.draft_budget // n + s.c2, 1, s.max_width)
        if s.depth_rule == "paper":
            self.depth = clip(self.verify_budget // (n + s.c1) - 1, s.min_depth, s.max_depth)
        else:  # 0 is a choice: drafting nothing when no depth pays
            self._close_step()
            self.depth = max(range(0, s.max_depth + 1), key=lambda d: self.expected_rate(d, n))

    def expected_rate(self, depth: int, num_seqs: int) -> float:
        """Expected tokens per ms of a step drafting `depth` layers for num_seqs requests: as
        measured at that depth (DepthOutcomes), else the chain model (ChainGoodput)."""
        measured = self.outcomes.means(depth) if depth > 0 else (1.0, 0.0)
        if measured is None:
            return self.goodput.expected_rate(depth, num_seqs, self._num_context_tokens, self.width)
        tokens, nodes = measured
        ms = self.cost.verify_ms(round(num_seqs * (1 + nodes)), self._num_context_tokens, num_seqs)
        ms += self.cost.speculation_ms(num_seqs, depth, self.width, self._num_context_tokens)
        return num_seqs * tokens / ms

    def _close_step(self) -> None:
        """Record what the last step's depth yielded (its tokens arrive through record())."""
        depth, num_seqs, num_tokens = self._step.depth, self._step.num_seqs, self._step.num_tokens
        if depth > 0 and num_seqs > 0:
            self.outcomes.record(depth, num_tokens / num_seqs, self._last_num_selected / num_seqs)
        self._step = StepYield()

    def expand(self, layer: int, children: LayerCandidates) -> list[int]:
        return top_by_path_prob(children, self.width)

    def predicted_step_ms(self, num_seqs: int, num_tokens: int) -> float:
        """Draft (this step's shape) plus verification of num_tokens over the batch's context."""
        spec = self.cost.speculation_ms(num_seqs, self.depth, self.width, self._num_context_tokens)
        return spec + self.cost.verify_ms(num_tokens, self._num_context_tokens, num_seqs)

    def requirements(self, ctx: SelectionContext, t_iter_s: float) -> list[float | None]:
        return [_requirement(seq, ctx.now, t_iter_s) for seq in ctx.seqs]

    def select(self, trees: list[CandidateTree], ctx: SelectionContext) -> list[list[int]]:
        n = len(trees)
        if n == 0:
            return []
        t_iter_s = self.predicted_step_ms(n, ctx.num_batched_tokens + self._last_num_selected) / 1000.0
        n_max = max(1, math.ceil(self.shape.n_max_factor * self.verify_budget / n))
        chosen = select_nodes(
            trees, self.requirements(ctx, t_iter_s), ctx.budget, self.depth, n_max, self._pays_off(n, ctx)
        )
        self._last_num_selected = sum(len(c) for c in chosen)
        self._step = StepYield(self.depth, n)
        return chosen

    def _pays_off(self, num_seqs: int, ctx: SelectionContext):
        """Throughput-phase stop rule: add a node of acceptance probability f iff it raises
        expected tokens per second of the step: (E + f) / T(N + 1) > E / T(N)."""
        spec_ms = self.cost.speculation_ms(num_seqs, self.depth, self.width, self._num_context_tokens)
        verify_ms = self.cost.verify_ms_at(self._num_context_tokens, num_seqs)
        step_ms: dict[int, float] = {}

        def t(num_tokens: int) -> float:
            if num_tokens not in step_ms:
                step_ms[num_tokens] = spec_ms + verify_ms(num_tokens)
            return step_ms[num_tokens]

        def keep_going(f: float, num_selected: int, expected: float) -> bool:
            n = ctx.num_batched_tokens + num_selected
            return (expected + f) * t(n) > expected * t(n + 1)

        return keep_going

    def record(self, num_proposed_depth: int, num_accepted: int) -> None:
        self.goodput.record(num_proposed_depth, num_accepted)
        self._step.num_tokens += num_accepted + 1


class AdaServeEqualPolicy(AdaServePolicy):
    """Ablation: the same drafting, but every request gets an equal share of the budget (its best
    nodes), with no SLO phase and no global merge."""

    def __init__(self, cost: CostModel, shape: AdaptiveShape = AdaptiveShape()) -> None:
        super().__init__(cost, shape, name="adaserve-equal")

    def select(self, trees: list[CandidateTree], ctx: SelectionContext) -> list[list[int]]:
        if not trees:
            return []
        share = min(ctx.budget, max(0, self.verify_budget - len(trees))) // len(trees)
        return [t.ranked_nodes()[:share] for t in trees]


def _requirement(seq: SeqState, now: float, t_iter_s: float) -> float | None:
    if seq.tpot_ms is None or seq.first_token_time is None:
        return None
    return required_tokens(now - seq.first_token_time, t_iter_s, seq.tpot_ms, seq.num_output_tokens - 1)


class SmartSpecPolicy:
    """SmartSpec: one chain length k for the whole batch each step, the k in [0, max_depth] that
    maximises expected goodput n * E[tokens | k] / (draft time + verification time), with the
    acceptance rate alpha a running estimate from verified chains (ChainGoodput)."""

    def __init__(self, cost: CostModel, max_depth: int = 8, prior_alpha: float = 0.6, decay: float = 0.98) -> None:
        self.cost, self.max_depth = cost, max_depth
        self.name, self.top_k, self.max_tokens_per_seq = "smartspec", 1, max_depth
        self.depth = max_depth
        self.goodput = ChainGoodput(cost, prior_alpha, decay)

    @property
    def alpha(self) -> float:
        return self.goodput.alpha

    def expected_rate(self, k: int, num_seqs: int, num_context_tokens: int) -> float:
        """Expected tokens per ms of a step verifying a k-chain for every request."""
        return self.goodput.expected_rate(k, num_seqs, num_context_tokens)

    def begin_step(self, ctx: SelectionContext) -> None:
        self.depth = self.goodput.best_depth(range(self.max_depth + 1), max(1, len(ctx.seqs)), ctx.num_context_tokens)

    def expand(self, layer: int, children: LayerCandidates) -> list[int]:
        return top_by_path_prob(children, 1)

    def select(self, trees: list[CandidateTree], ctx: SelectionContext) -> list[list[int]]:
        return throughput_phase(trees, [t.ranked_nodes() for t in trees], [[] for _ in trees], ctx.budget)

    def record(self, num_proposed_depth: int, num_accepted: int) -> None:
        self.goodput.record(num_proposed_depth, num_accepted)
