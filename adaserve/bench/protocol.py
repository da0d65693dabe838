"""Benchmark protocols: ours (joint SLOs, one sequence limit for every policy) and the paper's, as
its artifact ran it, to check the paper's headline and split it into causes (docs/results.md).

paper  TTFT excluded (requests are judged by TPOT alone), no SLO prefill cap, AdaServe with the
       artifact's settings (`adaserve-paper`: B1 512, depth >= 4, width 3) and at most 64 sequences,
       the vLLM baselines at 512.
"""

from __future__ import annotations

PROTOCOLS = ("ours", "paper")
PAPER_ADASERVE_SEQS, PAPER_BASELINE_SEQS = 64, 512


def paper_policies(policies: list[str]) -> list[str]:
    """`adaserve` as the paper ran it; every other policy as given."""
    return ["adaserve-paper" if p == "adaserve" else p for p in policies]


def paper_seqs(policy: str) -> int:
    return PAPER_ADASERVE_SEQS if policy.startswith("adaserve") else PAPER_BASELINE_SEQS
