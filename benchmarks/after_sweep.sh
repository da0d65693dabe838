#!/usr/bin/env bash
# One-off pipeline run after the CPU sweep (kept for reproducibility of the committed results):
# record the Qwen pair's acceptance, validate the simulator against the sweep, paper-scale study.
set -euo pipefail
PY=${PY:-.venv/bin/python}
$PY -m adaserve.cli simulate record --num-prompts 12 --output-tokens 64 --out benchmarks/results/acceptance_qwen.jsonl
$PY -m adaserve.cli simulate validate --bench-dir benchmarks/results/sweep_rate --step-overhead-ms -1 \
    --out-dir benchmarks/results/sim_validation
$PY benchmarks/sim_paper_scale.py --rates 2,4,6,8,12 --num-requests 600
