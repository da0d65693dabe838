"""Engine step cost beside HF transformers, measured in the same run (fp32, CPU by default).

  decode step time at batch 1/4/16 (each sequence with a 256-token context), and
  the verification cost curve: one sequence, k = 1..64 new tokens over a 256-token context.

Timings are medians over repetitions, interleaved ours/HF so machine noise hits both alike.
Usage: python benchmarks/engine_step.py [--model smollm2-135m] [--out benchmarks/results/engine_step.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from adaserve.kv.manager import KVCacheManager
from adaserve.models.attention import SeqSpec, build_attention_metadata
from adaserve.models.llama import KVCache
from adaserve.models.loader import load_model
from adaserve.models.sources import fp32_weights, resolve_model

CONTEXT = 256


class Ours:
    def __init__(self, model_dir, packed: bool, num_seqs: int) -> None:
        self.model = load_model(fp32_weights(model_dir), packed_linear=packed)
        self.kv = KVCacheManager(num_blocks=num_seqs * (CONTEXT + 80) // 16 + 8, block_size=16)
        self.cache = KVCache(self.model.cfg, self.kv.pool.num_blocks, 16, torch.float32, "cpu")

    @torch.inference_mode()
    def step(self, new_tokens: dict[str, list[int]], logits_for_all: bool) -> torch.Tensor:
        """One forward: the full step path (metadata, forward, logits), as the engine runs it."""
        specs, ids, pos, last = [], [], [], []
        for rid, toks in new_tokens.items():
            start = self.kv.num_slots.get(rid, 0)
            slots = self.kv.reserve(rid, len(toks))
            specs.append(SeqSpec(self.kv.block_tables[rid], slots, start))
            ids += toks
            pos += range(start, start + len(toks))
            last.append(len(ids) - 1)
        meta = build_attention_metadata(specs, 16, "cpu")
        hidden = self.model(torch.tensor(ids), torch.tensor(pos), meta, self.cache)
        return self.model.compute_logits(hidden if logits_for_all else hidden[last])

    def rollback(self, length: int) -> None:
        for rid in list(self.kv.num_slots):
            self.kv.truncate(rid, length)


class HF:
    def __init__(self, model_dir) -> None:
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        self.cache = None

    @torch.inference_mode()
    def step(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.model(ids, past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        return out.logits

    def rollback(self, length: int) -> None:
        extra = self.cache.get_seq_length() - length
        if extra:
            self.cache.crop(-extra)  # transformers 5: a negative count removes that many tokens


def timed(fn, reps: int) -> list[float]:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def measure(ours: Ours, hf: HF, batch: int, k: int, reps: int) -> dict:
    """Median ms of one step feeding k new tokens to each of `batch` sequences after CONTEXT."""
    g = torch.Generator().manual_seed(0)
    context = torch.randint(100, 20000, (batch, CONTEXT), generator=g)
    new = torch.randint(100, 20000, (batch, k), generator=g)
    ours.kv = KVCacheManager(ours.kv.pool.num_blocks, 16)
    ours.step({f"r{b}": context[b].tolist() for b in range(batch)}, False)
    hf.cache = None
    hf.step(context)
    ours_fn = lambda: (ours.step({f"r{b}": new[b].tolist() for b in range(batch)}, True), ours.rollback(CONTEXT))
    hf_fn = lambda: (hf.step(new), hf.rollback(CONTEXT))
    for fn in (ours_fn, hf_fn):
        timed(fn, 2)  # warm-up
    ours_t, hf_t = [], []
    for _ in range(reps):  # interleave so noise hits both
        ours_t += timed(ours_fn, 1)
        hf_t += timed(hf_fn, 1)
    o, h = statistics.median(ours_t) * 1e3, statistics.median(hf_t) * 1e3
    return {"batch": batch, "k": k, "ours_ms": round(o, 3), "hf_ms": round(h, 3), "ours_over_hf": round(o / h, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-packed", action="store_true", help="use the default MKL linear path")
    ap.add_argument("--out", default="benchmarks/results/engine_step.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model_dir = resolve_model(args.model)
    ours, hf = Ours(model_dir, packed=not args.no_packed, num_seqs=16), HF(model_dir)
    decode = []
    for batch in (1, 4, 16):
        decode.append(measure(ours, hf, batch, 1, args.reps))
        print("decode", decode[-1], flush=True)
    verify = []
    for k in (1, 2, 4, 8, 16, 32, 64):
        verify.append(measure(ours, hf, 1, k, args.reps))
        print("verify", verify[-1], flush=True)
    base_o, base_h = verify[0]["ours_ms"], verify[0]["hf_ms"]
    for row in verify:
        row["ours_over_k1"] = round(row["ours_ms"] / base_o, 3)
        row["hf_over_k1"] = round(row["hf_ms"] / base_h, 3)
    result = {
        "model": args.model,
        "context_tokens": CONTEXT,
        "dtype": "float32",
        "threads": args.threads,
        "packed_linear": not args.no_packed,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "reps": args.reps,
        "decode": decode,
        "verify": verify,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
