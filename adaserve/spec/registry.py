"""`--policy` names -> what the engine runs. Plain Python; no torch.

none            continuous batching, no speculation (vLLM)
chunked         no speculation; per-step token budget from the tightest running TPOT (Sarathi-Serve)
chain:K         a K-token draft chain per request (vLLM-Spec)
static-tree     SpecInfer's fixed tree (widths 1,1,3,1,1,1,1,1)
dynamic-tree    EAGLE-2: the top-N nodes per request of an expanded candidate tree
smartspec       one chain length per step, chosen for expected goodput from the cost model
adaserve        SLO-customized trees: SLO quotas first, then throughput (the paper), with the SLO step
                planner (prefill by TPOT slack, TTFT deadlines, overload control: adaserve.sched.planner)
adaserve:finish adaserve with demotion judged at the pace the batch will have as its requests finish
                (not at this step's pace: adaserve.sched.planner, demote_at "finish")
adaserve-cap    the paper's AdaServe as built before the planner: depth clip(B1 // (n + 1) - 1) and the
                fixed SLO prefill cap (for attribution)
adaserve-equal  adaserve's drafting with an equal per-request budget (the paper's ablation)
adaserve-paper  the paper's artifact as published: the paper's depth rule with B1 = 512 tokens, depth
                at least 4, width at most 3, no prefill cap, no planner (`--protocol paper`)
"""

from __future__ import annotations

from dataclasses import dataclass

from adaserve.sched.cost_model import CostModel
from adaserve.sched.planner import DEMOTE_AT
from adaserve.spec.policies import SpecPolicy, make_policy
from adaserve.spec.slo_policies import AdaptiveShape, AdaServeEqualPolicy, AdaServePolicy, SmartSpecPolicy

COST_MODEL_POLICIES = ("chunked", "smartspec", "adaserve", "adaserve-cap", "adaserve-equal", "adaserve-paper")
# The AdaServe artifact's settings (its scripts: B1 512, minimum depth 4, width 3).
ARTIFACT_SHAPE = AdaptiveShape(depth_rule="paper", min_depth=4, max_width=3, top_k=3, verify_budget_tokens=512)
POLICY_NAMES = (
    "none",
    "chunked",
    "chain:K",
    "static-tree",
    "dynamic-tree",
    "smartspec",
    "adaserve",
    "adaserve:finish",
    "adaserve-cap",
    "adaserve-equal",
    "adaserve-paper",
)


@dataclass(frozen=True)
class PolicyChoice:
    name: str
    spec: SpecPolicy | None  # None: no speculation
    # Cap each step's tokens so one iteration fits the tightest running TPOT (chunked prefill
    # sized by the SLO instead of a fixed chunk).
    slo_token_budget: bool
    # Plan each step by both deadlines instead (adaserve.sched.planner), demoting the unattainable.
    planner: bool = False
    demote_at: str = "batch"  # the planner's: "batch" (this step's pace) or "finish" (see its docs)


def speculates(name: str) -> bool:
    """Whether the policy drafts tokens (it needs a draft: a model, n-gram lookup or simulated offers)."""
    return name.partition(":")[0] not in ("none", "chunked")


def needs_cost_model(name: str) -> bool:
    return name.partition(":")[0] in COST_MODEL_POLICIES


def choose_policy(name: str, cost: CostModel | None = None) -> PolicyChoice:
    base = name.partition(":")[0]
    if base in COST_MODEL_POLICIES and cost is None:
        raise ValueError(f"policy {name!r} needs a cost model (run `adaserve profile` or let the engine profile)")
    if base == "chunked":
        return PolicyChoice(name, None, slo_token_budget=True)
    if base == "adaserve":
        demote_at = name.partition(":")[2] or "batch"
        if demote_at not in DEMOTE_AT:
            raise ValueError(f"policy {name!r}: adaserve takes ':finish' or nothing")
        return PolicyChoice(name, AdaServePolicy(cost), slo_token_budget=False, planner=True, demote_at=demote_at)
    if base == "adaserve-cap":
        paper_shape = AdaptiveShape(depth_rule="paper")
        return PolicyChoice(name, AdaServePolicy(cost, paper_shape, name="adaserve-cap"), slo_token_budget=True)
    if base == "adaserve-paper":
        return PolicyChoice(name, AdaServePolicy(cost, ARTIFACT_SHAPE, name="adaserve-paper"), slo_token_budget=False)
    if base == "adaserve-equal":
        return PolicyChoice(name, AdaServeEqualPolicy(cost, AdaptiveShape(depth_rule="paper")), slo_token_budget=True)
    if base == "smartspec":
        return PolicyChoice(name, SmartSpecPolicy(cost), slo_token_budget=True)
    try:
        return PolicyChoice(name, make_policy(name), slo_token_budget=False)
    except ValueError as e:
        raise ValueError(f"{e}; policies: {', '.join(POLICY_NAMES)}") from None


def slo_step_budget(cost: CostModel, tpots_ms: list[float], max_tokens: int, min_tokens: int) -> int:
    """Tokens one iteration may carry so it takes at most the tightest running TPOT, never fewer
    than `min_tokens` (decode roots and a little prefill must still progress) nor more than max."""
    if not tpots_ms:
        return max_tokens
    fits = cost.target.max_tokens_within(min(tpots_ms), limit=max_tokens)
    return max(min_tokens, min(max_tokens, fits))


def prefill_token_cap(
    choice: PolicyChoice, cost: CostModel | None, running_tpots_ms: list[float | None], max_tokens: int, block_size: int
) -> int | None:
    """With an SLO-aware policy: prefill only what keeps this iteration within the tightest
    running TPOT (never less than one block, so prompts still progress); None = no cap.
    Allowing TPOT x the measured tokens per verification lowered TTFT but broke more TPOT
    targets in `make demo`, so an iteration with prefill is held to one TPOT."""
    if not choice.slo_token_budget or cost is None:
        return None
    tpots = [t for t in running_tpots_ms if t is not None]
    if not tpots:
        return None
    fits = slo_step_budget(cost, tpots, max_tokens, 1)
    return max(block_size, fits - len(running_tpots_ms))
