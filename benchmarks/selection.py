"""CPU time of AdaServe's selection step: 64 requests x 64 candidate nodes each (target <= 1 ms).

Candidate trees have the shape drafting gives them (depth 8, the best 8 nodes kept per layer, each
chosen from top-8 children of the previous layer) with random draft probabilities; half of the
requests have a TPOT requirement. Times the pure selection (`select_nodes`) and the whole policy
call (`AdaServePolicy.select`: requirements, n_max, the cost-model stop rule).

Usage: python benchmarks/selection.py [--requests 64 --nodes 64 --out benchmarks/results/selection.json]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import statistics
import time
from pathlib import Path

from adaserve.sched.cost_model import CostModel
from adaserve.spec.policies import SelectionContext, SeqState
from adaserve.spec.selection import select_nodes
from adaserve.spec.slo_policies import AdaServePolicy
from adaserve.spec.tree import CandidateTree


def random_tree(rng: random.Random, rid: str, num_nodes: int, width: int = 8) -> CandidateTree:
    tree = CandidateTree.root_only(rid, 0)
    frontier = [0]
    while tree.num_nodes < num_nodes + 1 and frontier:
        children = [(p, rng.random()) for p in frontier for _ in range(8)]
        children.sort(key=lambda c: -(tree.path_logprobs[c[0]] + math.log(c[1])))
        kept = children[: min(width, num_nodes + 1 - tree.num_nodes)]
        frontier = [tree.add(p, rng.randrange(50_000), math.log(q)) for p, q in kept]
    return tree


def time_it(fn, reps: int) -> list[float]:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--nodes", type=int, default=64)
    ap.add_argument("--budget", type=int, default=512)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--out", default="benchmarks/results/selection.json")
    args = ap.parse_args()
    rng = random.Random(0)
    trees = [random_tree(rng, f"r{i}", args.nodes) for i in range(args.requests)]
    reqs = [rng.uniform(0.5, 4.0) if i % 2 else None for i in range(args.requests)]
    cost = CostModel.from_table(
        {1: 30.0, 16: 40.0, 64: 90.0, 256: 300.0, 1024: 1200.0}, {1: 10.0, 64: 20.0, 512: 100.0}
    )
    policy = AdaServePolicy(cost)
    seqs = [SeqState(50.0 if r else None, 0.0, 20, 256) for r in reqs]
    ctx = SelectionContext(budget=args.budget, num_batched_tokens=args.requests, now=1.0, seqs=seqs)
    policy.begin_step(ctx)
    pure = time_it(lambda: select_nodes(trees, reqs, args.budget, 8, 16), args.reps)
    full = time_it(lambda: policy.select(trees, ctx), args.reps)
    chosen = policy.select(trees, ctx)
    result = {
        "num_requests": args.requests,
        "num_candidates_per_request": trees[0].num_nodes - 1,
        "budget": args.budget,
        "num_selected": sum(map(len, chosen)),
        "select_nodes_ms": {"median": statistics.median(pure), "p90": statistics.quantiles(pure, n=10)[-1]},
        "policy_select_ms": {"median": statistics.median(full), "p90": statistics.quantiles(full, n=10)[-1]},
        "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
