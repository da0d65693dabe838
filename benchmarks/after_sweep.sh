#!/usr/bin/env bash
# One-off pipeline run after the CPU sweep (kept for reproducibility of the committed results):
# record the Qwen pair's acceptance (12 prompts per category, another seed than the sweep's), re-profile the pair, validate the simulator against the sweep,
# compare engine steps with the profile, paper-scale study.
set -euo pipefail
PY=${PY:-.venv/bin/python}
$PY -m adaserve.cli simulate record --num-prompts 12 --output-tokens 64 --seed 1 --out benchmarks/results/acceptance_qwen.jsonl
$PY -m adaserve.cli profile --model qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b --refresh \
    --out benchmarks/results/sim_validation/profile_qwen.json
$PY -m adaserve.cli simulate validate --bench-dir benchmarks/results/sweep_rate --step-overhead-ms -1 \
    --cost profile:benchmarks/results/sim_validation/profile_qwen.json --out-dir benchmarks/results/sim_validation
$PY benchmarks/step_vs_cost_model.py
$PY benchmarks/sim_paper_scale.py --rates 2,4,6,8,12 --num-requests 600 \
    --timing-policies none,chunked,chain:4,static-tree,dynamic-tree,smartspec,adaserve
