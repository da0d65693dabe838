"""Logits -> next-token distribution (temperature, top-k, top-p) and sampling.

`target_probs` computed here are also what speculative verification compares drafts against, so
a sampled token and an accepted draft token follow the same distribution.
"""

from __future__ import annotations

import torch

from adaserve.sampling import SamplingParams


def logits_to_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """[n, vocab] logits of one request -> [n, vocab] probabilities under its sampling params."""
    if params.greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
    logits = logits.float() / params.temperature
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = logits.topk(params.top_k, dim=-1).values[..., -1:]  # [n, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(-1)
        # Drop a token when the tokens ranked above it already reach top_p (the first always stays).
        drop = sorted_probs.cumsum(-1) - sorted_probs >= params.top_p
        drop[..., 0] = False  # even when top_p underflows to 0 in fp32
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return logits.softmax(-1)


class Sampler:
    """Samples one token per request; each request has its own seeded generator."""

    def __init__(self, seed: int = 0) -> None:
        self._base = torch.Generator().manual_seed(seed)
        self._generators: dict[str, torch.Generator] = {}

    def generator(self, request_id: str, params: SamplingParams) -> torch.Generator:
        if request_id not in self._generators:
            seed = params.seed if params.seed is not None else int(torch.randint(2**62, (1,), generator=self._base))
            self._generators[request_id] = torch.Generator().manual_seed(seed)
        return self._generators[request_id]

    def sample(self, logits: torch.Tensor, request_id: str, params: SamplingParams) -> int:
        """logits: [vocab] for one request -> token id."""
        if params.greedy:
            return int(logits.argmax())
        probs = logits_to_probs(logits[None], params)[0].cpu()  # CPU generator: device-agnostic
        return int(torch.multinomial(probs, 1, generator=self.generator(request_id, params)))

    def forget(self, request_id: str) -> None:
        self._generators.pop(request_id, None)
