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
    from adaserve.engine.llm import LLM

    rng = random.Random(args.seed)
    categories = rng.choices(list(DEFAULT_MIX), list(DEFAULT_MIX.values()), k=args.num_prompts)
    prompts = {c: category_prompts(c) for c in set(categories)}
    conversations = [[{"role": "user", "content": rng.choice(prompts[c])}] for c in categories]
    llm = LLM(args.model, draft=args.draft, spec_policy=args.record_policy, num_threads=2)
    params = SamplingParams(max_tokens=args.output_tokens, temperature=0.0, ignore_eos=True)
    llm.chat(conversations, params)
    records = list(llm.engine.spec.stats.offers)
    out = Path(args.out)
    save_records(out, records)
    model = RecordedAcceptance(records)
    rates = ", ".join(f"d{d}: {a:.2f}" for d, a in model.top1_acceptance().items())
    print(f"wrote {len(records)} offer records to {out}; target picks the draft's top-1 at {rates}")
    return out
