"""`adaserve simulate record`: run a real draft/target pair over workload prompts (greedy, fixed
output length, as the benchmark sends them) and save the engine's offer records: at every expanded
node on a verified path, the draft's top-k probabilities and which child the target chose; at every
expanded node off the target's path, the draft's offer alone (what the simulator's off-path nodes draw).

  default       `--num-prompts` prompts of each workload category, tagged with their category
  --from-bench  the prompts a measured bench run sent (its result JSONs), each run alone and its
                records tagged with its prompt too: the simulator then replays that run's prompts

Several --record-policy values (comma-separated) run the prompts once per policy. A named prompt's
trace has a gap wherever a tree was accepted to its full depth (the target's bonus token there is
predicted by no draft offer); a policy of another depth has its gaps elsewhere, so the later
policies keep only records of positions the earlier ones missed (unnamed prompts keep all).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from adaserve.bench.client import BenchRequest
from adaserve.bench.datasets import category_prompts
from adaserve.bench.workload import DEFAULT_MIX
from adaserve.sampling import SamplingParams
from adaserve.sim.acceptance import DEFAULT_RECORDS, RecordedAcceptance, save_records
from adaserve.sim.recorder import OfferRecorder


@dataclass(frozen=True)
class RecordConfig:
    """`adaserve simulate record`: which pair to run, on which prompts, with which policies.

    policies: the speculation policies while recording (the first one's width is the top-k recorded);
        the later ones fill the positions the earlier ones missed
    from_bench: bench result JSONs whose prompts to run; none: num_prompts of each category, each
        asked for output_tokens (sampled with seed)"""

    model: str = "qwen2.5-coder-1.5b"
    draft: str = "qwen2.5-coder-0.5b"
    policies: tuple[str, ...] = ("dynamic-tree:16:8:8",)
    out: Path = DEFAULT_RECORDS
    from_bench: tuple[Path, ...] = ()
    num_prompts: int = 8
    output_tokens: int = 128
    seed: int = 0
    draft_int4: bool = True  # the draft as the server runs it (EngineConfig.draft_int4)


def record(config: RecordConfig) -> Path:
    from adaserve.engine.llm import LLM

    policies = list(config.policies)
    llm = LLM(config.model, draft=config.draft, spec_policy=policies[0], num_threads=2, draft_int4=config.draft_int4)
    stats = OfferRecorder()
    llm.engine.add_spec_observer(stats)
    records, categories, prompt_keys = [], [], []
    for k, policy in enumerate(policies):
        llm.engine.set_spec_policy(policy)
        covered = {(key, r.position) for r, key in zip(records, prompt_keys) if key}  # by the policies before
        num_before = len(records)
        for batch, category, key, max_tokens in _batches(config):
            stats.clear()
            llm.chat(batch, SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True))
            new = [r for r in stats.offers if not key or (key, r.position) not in covered]
            new += list(stats.off_path_offers) if k == 0 else []  # (one policy's trees off the path)
            records += new
            categories += [category] * len(new)
            prompt_keys += [key] * len(new)
        num_off = sum(r.off_path for r in records[num_before:])
        print(
            f"{policy}: {len(records) - num_before - num_off} offer records on the target's path"
            + (" (positions the policies before it missed)" if k else f", {num_off} off it")
        )
    out = Path(config.out)
    save_records(out, records, categories, prompt_keys)
    model = RecordedAcceptance(records, categories, prompt_keys)
    print(f"wrote {len(records)} offer records to {out} ({len(model.prompt_pools)} prompts named)")
    for category in model.pools:
        rates = ", ".join(f"d{d}: {a:.2f}" for d, a in model.top1_acceptance(category).items())
        print(f"  {category or 'all'}: target picks the draft's top-1 at {rates}")
    return out


def _batches(config: RecordConfig):
    """(conversations run together, their category, their prompt key or "", output tokens)."""
    if config.from_bench:
        for request in _bench_prompts([Path(p) for p in config.from_bench]):
            yield [request.messages], request.category, request.prompt_key, request.max_tokens
        return
    rng = random.Random(config.seed)
    for category in DEFAULT_MIX:
        prompts = rng.sample(category_prompts(category), config.num_prompts)
        yield [[{"role": "user", "content": p}] for p in prompts], category, "", config.output_tokens


def _bench_prompts(paths: list[Path]) -> list[BenchRequest]:
    """One request per distinct prompt the bench results sent (the longest output asked of it)."""
    from adaserve.bench.run import sent_requests

    longest: dict[str, BenchRequest] = {}
    for path in paths:
        for request in sent_requests(json.loads(path.read_text())):
            known = longest.get(request.prompt_key)
            if known is None or known.max_tokens < request.max_tokens:
                longest[request.prompt_key] = request
    return list(longest.values())
