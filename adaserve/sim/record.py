"""`adaserve simulate record`: run a real draft/target pair over workload prompts (greedy, fixed
output length, as the benchmark sends them) and save the engine's offer records: at every expanded
node on a verified path, the draft's top-k probabilities and which child the target chose."""

from __future__ import annotations

import random
from pathlib import Path

from adaserve.bench.datasets import category_prompts
from adaserve.bench.workload import DEFAULT_MIX
from adaserve.sampling import SamplingParams
from adaserve.sim.acceptance import RecordedAcceptance, save_records


def record(args) -> Path:
    """`--num-prompts` prompts of each workload category, run category by category so that every
    record is tagged with the category it came from."""
    from adaserve.engine.llm import LLM

    rng = random.Random(args.seed)
    llm = LLM(args.model, draft=args.draft, spec_policy=args.record_policy, num_threads=2)
    params = SamplingParams(max_tokens=args.output_tokens, temperature=0.0, ignore_eos=True)
    offers = llm.engine.spec.stats.offers
    records, categories = [], []
    for category in DEFAULT_MIX:
        prompts = rng.sample(category_prompts(category), args.num_prompts)
        offers.clear()
        llm.chat([[{"role": "user", "content": p}] for p in prompts], params)
        records += offers
        categories += [category] * len(offers)
    out = Path(args.out)
    save_records(out, records, categories)
    model = RecordedAcceptance(records, categories)
    print(f"wrote {len(records)} offer records to {out}")
    for category in model.pools:
        rates = ", ".join(f"d{d}: {a:.2f}" for d, a in model.top1_acceptance(category).items())
        print(f"  {category or 'all'}: target picks the draft's top-1 at {rates}")
    return out
