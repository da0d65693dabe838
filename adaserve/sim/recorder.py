"""What the simulator learns from a real draft/target pair: an observer of the engine's verified
trees (`simulate record` attaches one to an LLM's engine; the engine keeps nothing itself).

  offers          at every expanded node on the target's path: the draft's top-k probabilities, which
                  child the target picked, and the output position the node predicts
  off_path        at every expanded node below a child the target did not pick: the draft's offer
  calibration     per verified drafted node: (draft path probability, accepted?)
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from adaserve.request import Request
from adaserve.spec.tree import CandidateTree, TreeLayout
from adaserve.spec.verify import Acceptance


@dataclass
class OfferRecord:
    """At one node on a verified path: the draft's top-k child probabilities (most likely first)
    and which of them the target chose, -1 for none. What the simulator replays.
    Off the target's path (off_path): the draft's offer alone (hit -1, position -1)."""

    depth: int
    draft_probs: list[float]
    hit: int
    position: int = -1  # which output token (0-based) the offer predicts; -1: unknown
    off_path: bool = False


class OfferRecorder:
    """A SpecObserver (adaserve.engine.speculation) keeping bounded queues of what it saw."""

    def __init__(self, max_records: int = 200_000) -> None:
        self.offers: deque[OfferRecord] = deque(maxlen=max_records)  # on the target's path
        self.off_path_offers: deque[OfferRecord] = deque(maxlen=max_records)
        self.calibration: deque[tuple[float, bool]] = deque(maxlen=max_records)

    def clear(self) -> None:
        self.offers.clear()
        self.off_path_offers.clear()
        self.calibration.clear()

    def on_verified(self, request: Request, tree: CandidateTree, layout: TreeLayout, acceptance: Acceptance) -> None:
        on_path = set(acceptance.accepted_nodes)
        for i in range(1, layout.num_nodes):
            self.calibration.append((tree.path_prob(layout.source_nodes[i]), i in on_path))
        self._record_offers(tree, layout, acceptance, request.num_output_tokens)

    def _record_offers(
        self, tree: CandidateTree, layout: TreeLayout, acceptance: Acceptance, num_output_tokens: int
    ) -> None:
        """Every expanded node on the accepted path (root included) with the target's next token
        there: the accepted child's token, or the bonus token at the end of the path. The root
        predicts output token num_output_tokens (this step's tokens are not appended yet). And every
        expanded node off the target's path, with the draft's offer alone. (Offers are kept in the
        order nodes were expanded, parents first: the path's records come by depth.)"""
        path = [0] + [layout.source_nodes[i] for i in acceptance.accepted_nodes]
        chosen = [layout.token_ids[i] for i in acceptance.accepted_nodes] + [acceptance.bonus_token_id]
        picks = dict(zip(path, chosen))  # path node -> the token the target picks after it
        for node, offer in tree.offers.items():
            on_path = node in picks
            if not on_path and not off_path(tree, node, picks):
                continue  # below the target's unverified pick: neither
            probs = [round(math.exp(lp), 5) for lp in offer.logprobs]
            depth = tree.depths[node]
            if on_path:
                hit = offer.token_ids.index(picks[node]) if picks[node] in offer.token_ids else -1
                self.offers.append(OfferRecord(depth, probs, hit, num_output_tokens + depth))
            else:
                self.off_path_offers.append(OfferRecord(depth, probs, -1, off_path=True))


def off_path(tree: CandidateTree, node: int, picks: dict[int, int]) -> bool:
    """True if the node lies below a child the target did not pick. Its branch leaves the path at
    the child of a path node; below the path's last node the target's pick is the bonus token, and
    a drafted child with that token is on the target's path though unverified (nor off: False).
    Worked example: path 0 -> 2 (the target picked 2's token, then token 7 after node 2);
    node 5 under node 1 (a sibling of 2): off; node 6 under 2 with token 7: not off."""
    branch = node
    while tree.parents[branch] not in picks:
        branch = tree.parents[branch]
    return tree.token_ids[branch] != picks[tree.parents[branch]]
