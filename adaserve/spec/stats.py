"""Speculation statistics, per request and per engine. Plain Python."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class SpecStats:
    num_verifications: int = 0  # target passes that verified a tree (root + >= 0 drafted nodes)
    num_proposed: int = 0  # drafted nodes verified
    num_accepted: int = 0  # drafted nodes accepted (bonus tokens not counted)
    proposed_per_depth: list[int] = field(default_factory=list)
    accepted_per_depth: list[int] = field(default_factory=list)

    def record(self, depths_proposed: list[int], num_accepted: int) -> None:
        """One verification: the depths of its drafted nodes, and how long the accepted path was."""
        self.num_verifications += 1
        self.num_proposed += len(depths_proposed)
        self.num_accepted += num_accepted
        proposed, accepted = self.proposed_per_depth, self.accepted_per_depth
        need = max(depths_proposed, default=0)
        if need > len(proposed):
            proposed.extend([0] * (need - len(proposed)))
            accepted.extend([0] * (need - len(accepted)))
        for d in depths_proposed:
            proposed[d - 1] += 1
        for d in range(num_accepted):  # the accepted path has exactly one node per depth
            accepted[d] += 1

    @property
    def mean_accepted_tokens(self) -> float:
        """Tokens emitted per verification: accepted drafts plus the bonus token."""
        return (self.num_accepted + self.num_verifications) / max(1, self.num_verifications)

    @property
    def acceptance_rate(self) -> float:
        return self.num_accepted / max(1, self.num_proposed)

    def to_dict(self) -> dict:
        return {
            "num_verifications": self.num_verifications,
            "num_proposed": self.num_proposed,
            "num_accepted": self.num_accepted,
            "mean_accepted_tokens": self.mean_accepted_tokens,
            "acceptance_rate": self.acceptance_rate,
            "proposed_per_depth": self.proposed_per_depth,
            "accepted_per_depth": self.accepted_per_depth,
        }


@dataclass
class StepStats:
    """One engine iteration."""

    time: float
    num_requests: int
    num_prefill_tokens: int
    num_verified_tokens: int  # tree tokens (roots + drafted nodes)
    num_proposed: int
    num_accepted: int
    draft_seconds: float
    verify_seconds: float


class EngineSpecStats:
    """Engine-wide totals and recent steps (bounded)."""

    def __init__(self, max_steps: int = 10_000) -> None:
        self.totals = SpecStats()
        self.steps: deque[StepStats] = deque(maxlen=max_steps)
