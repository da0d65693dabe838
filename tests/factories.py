"""Factories for tests: tiny random-weight models, and a harness that runs our forward directly."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from adaserve.bench.server_process import free_port, wait_healthy
from adaserve.kv.manager import KVCacheManager
from adaserve.models.attention import MIN_WASTE, SeqSpec, build_attention_metadata
from adaserve.models.llama import CausalLM, KVCache

TINY_VOCAB = 49152  # SmolLM2's tokenizer, so the engine can run tiny models on text prompts


def make_tiny_model(out: Path, arch: str, tokenizer_dir: Path, seed: int = 0, num_layers: int = 2) -> Path:
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=TINY_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rms_norm_eps=1e-6,
        bos_token_id=1,
        eos_token_id=2,
    )
    if arch == "llama":
        cfg = LlamaConfig(**common, tie_word_embeddings=True, rope_theta=10000.0)
    else:
        cfg = Qwen2Config(**common, tie_word_embeddings=False, rope_theta=1000000.0)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():  # default init is tiny; widen it so logits are not all ties
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.5 / p.shape[1] ** 0.5 * 4)
            elif p.dim() == 1 and p.shape[0] != 64:
                p.normal_(0, 0.1)  # q/k/v biases
    model.save_pretrained(str(out))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, out / name)
    return out


@dataclass
class SeqInput:
    request_id: str
    token_ids: list[int]  # new tokens
    positions: list[int]
    tree_mask: torch.Tensor | None = None  # [n, n] bool among the new tokens


class ForwardHarness:
    """Our model plus its own paged cache, fed SeqInputs directly (no scheduler)."""

    def __init__(self, model: CausalLM, num_blocks: int = 64, block_size: int = 4, min_waste: int = MIN_WASTE) -> None:
        self.model, self.min_waste = model, min_waste
        self.num_groups: list[int] = []  # attention groups of each step
        self.kv = KVCacheManager(num_blocks, block_size)
        self.cache = KVCache(model.cfg, num_blocks, block_size, torch.float32, "cpu")

    @torch.inference_mode()
    def forward(self, seqs: list[SeqInput]) -> list[torch.Tensor]:
        """Runs one step; returns [n_i, vocab] logits per sequence. KV of the new tokens is kept."""
        specs, ids, pos = [], [], []
        for s in seqs:
            cached = self.kv.num_slots.get(s.request_id, 0)
            slots = self.kv.reserve(s.request_id, len(s.token_ids))
            specs.append(SeqSpec(self.kv.block_tables[s.request_id], slots, cached, s.tree_mask))
            ids += s.token_ids
            pos += s.positions
        meta = build_attention_metadata(specs, self.kv.block_size, "cpu", min_waste=self.min_waste)
        self.num_groups.append(len(meta.groups))
        hidden = self.model(torch.tensor(ids), torch.tensor(pos), meta, self.cache)
        return list(self.model.compute_logits(hidden).split([len(s.token_ids) for s in seqs]))


def chi_square_pvalue(observed: list[float], expected_probs: list[float]) -> float:
    """Goodness of fit of counts to probabilities; cells expecting < 5 counts are pooled."""
    from scipy.stats import chisquare

    total = sum(observed)
    expected = [p * total for p in expected_probs]
    big = [i for i, e in enumerate(expected) if e >= 5]
    small = [i for i, e in enumerate(expected) if e < 5]
    obs = [observed[i] for i in big]
    exp = [expected[i] for i in big]
    if small:
        obs.append(sum(observed[i] for i in small))
        exp.append(sum(expected[i] for i in small))
    scale = sum(obs) / sum(exp)  # chisquare wants equal sums; probabilities may not add to 1 exactly
    return float(chisquare(obs, [e * scale for e in exp]).pvalue)


class LiveServer:
    """An app served by uvicorn on a loopback port, in a thread."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started and time.time() < deadline:
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class ServerProcess:
    """`adaserve serve` on SmolLM2 as a child process, healthy when constructed."""

    def __init__(self, *flags: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "adaserve.cli", "serve", "--model", "smollm2-135m", "--port", str(self.port)]
        start = time.monotonic()
        self.proc = subprocess.Popen([*command, "--max-model-len", "1024", "--log-level", "warning", *flags])
        wait_healthy(self.url, self.proc, timeout_s=300)
        self.start_seconds = time.monotonic() - start

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
