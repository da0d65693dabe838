"""Fault injection for tests (never a production flag): wrappers that make one part of the engine
fail on cue. Each wraps the real object and passes every other attribute through."""

from __future__ import annotations

import random

from adaserve.request import Request
from adaserve.spec.policies import SpecPolicy
from adaserve.spec.tree import CandidateTree


class FailingRunner:
    """The model runner, whose `execute` raises on the n-th call after `arm(n)`."""

    def __init__(self, runner) -> None:
        self._runner = runner
        self.calls_left: int | None = None
        self.num_failures = 0

    def __getattr__(self, name):
        return getattr(self._runner, name)

    def arm(self, n: int) -> None:
        self.calls_left = n

    def execute(self, step):
        if self.calls_left is not None:
            self.calls_left -= 1
            if self.calls_left == 0:
                self.calls_left = None
                self.num_failures += 1
                raise RuntimeError("injected fault: the forward pass failed")
        return self._runner.execute(step)


class GarbageProposer:
    """A draft that proposes random in-vocabulary trees with made-up probabilities: up to two
    children per node and `policy.depth` layers. Verification must make it harmless."""

    def __init__(self, vocab_size: int, seed: int = 0) -> None:
        self.vocab_size = vocab_size
        self.rng = random.Random(seed)
        self.num_proposed = 0

    def free(self, request_id: str, finished: bool) -> None:
        pass

    def propose(self, requests: list[Request], policy: SpecPolicy) -> list[CandidateTree]:
        trees = []
        for r in requests:
            tree = CandidateTree.root_only(r.request_id, r.all_ids[-1])
            layer = [0]
            for _ in range(policy.depth):
                children = []
                for parent in layer:
                    for _ in range(self.rng.randint(1, 2)):
                        token_id = self.rng.randrange(self.vocab_size)
                        children.append(tree.add(parent, token_id, -self.rng.uniform(0.01, 3.0)))
                layer = children[:4]
            self.num_proposed += tree.num_nodes - 1
            trees.append(tree)
        return trees


class PoisonTokenizer:
    """The tokenizer, whose `encode` raises on text containing `poison`."""

    def __init__(self, tokenizer, poison: str) -> None:
        self._tokenizer, self.poison = tokenizer, poison

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def encode(self, text: str, *args, **kwargs):
        if self.poison in text:
            raise RuntimeError("injected fault: the tokenizer failed")
        return self._tokenizer.encode(text, *args, **kwargs)


class PoisonStopChecker:
    """The stop checker, raising for the request whose prompt starts with `poison_ids` once it
    has `after` output tokens (a per-request failure mid-decode, after the pass succeeded)."""

    def __init__(self, checker, poison_ids: list[int], after: int) -> None:
        self._checker, self.poison_ids, self.after = checker, poison_ids, after

    def __getattr__(self, name):
        return getattr(self._checker, name)

    def check(self, request: Request):
        if request.prompt_ids[: len(self.poison_ids)] == self.poison_ids and request.num_output_tokens >= self.after:
            raise RuntimeError("injected fault: detokenizing this request failed")
        return self._checker.check(request)
