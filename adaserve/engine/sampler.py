"""Logits -> next-token distribution (temperature, top-k, top-p) and sampling.

`target_probs` computed here are also what speculative verification compares drafts against, so
a sampled token and an accepted draft token follow the same distribution.

Sampling is by inverse CDF at one uniform number per output position: the token at position k is
the first token whose cumulative probability exceeds u_k, where u_k is the k-th number of the
request's seeded stream. Whichever step computes position k (plain decoding or any node of any
tree at that depth) draws the same token from the same distribution, so a seed gives the same
text whatever the batch, the prefix cache or the speculation policy did.
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


def sample_inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> list[int]:
    """probs [n, vocab], uniforms [n] in [0, 1) -> n token ids; row i's token has probability
    probs[i, token]. Worked example: probs [0.5, 0.0, 0.3, 0.2], cumulative [0.5, 0.5, 0.8, 1.0];
    u = 0.6 gives token 2 (0.5 <= 0.6 < 0.8); token 1 (probability 0) is never the answer."""
    cdf = probs.double().cumsum(-1)  # [n, vocab]
    total = cdf[:, -1]  # [n]
    # Kept below the total (u * total can round up to it), so the answer has cdf > target: mass.
    targets = torch.minimum(uniforms.double() * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, targets.unsqueeze(-1), right=True).squeeze(-1).tolist()


class Sampler:
    """Samples tokens by inverse CDF; each request has its own seeded stream of uniform numbers,
    one per output position."""

    CHUNK = 64  # uniforms drawn at a time (fixed, so the stream does not depend on how far a tree reaches)

    def __init__(self, seed: int = 0) -> None:
        self._base = torch.Generator().manual_seed(seed)
        self._streams: dict[str, tuple[torch.Generator, torch.Tensor]] = {}  # request id -> (generator, drawn so far)

    def uniforms(self, request_id: str, params: SamplingParams, start: int, num: int) -> torch.Tensor:
        """u_start ... u_(start + num - 1) of the request's stream. [num] float64"""
        if request_id not in self._streams:
            seed = params.seed if params.seed is not None else int(torch.randint(2**62, (1,), generator=self._base))
            self._streams[request_id] = (torch.Generator().manual_seed(seed), torch.empty(0, dtype=torch.float64))
        generator, drawn = self._streams[request_id]
        if len(drawn) < start + num:  # (extended only every CHUNK positions, not at every step)
            num_chunks = -(-(start + num - len(drawn)) // self.CHUNK)
            more = [torch.rand(self.CHUNK, generator=generator, dtype=torch.float64) for _ in range(num_chunks)]
            drawn = torch.cat([drawn, *more])
            self._streams[request_id] = (generator, drawn)
        return drawn[start : start + num]

    def sample(self, logits: torch.Tensor, request_id: str, params: SamplingParams, position: int) -> int:
        """logits: [vocab] for one request, predicting its output token at `position` -> token id."""
        if params.greedy:
            return int(logits.argmax())
        probs = logits_to_probs(logits[None], params).cpu()  # [1, vocab] (CPU generator: device-agnostic)
        return sample_inverse_cdf(probs, self.uniforms(request_id, params, position, 1))[0]

    def forget(self, request_id: str) -> None:
        self._streams.pop(request_id, None)
