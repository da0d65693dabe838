"""A per-step trace, one JSON line per engine step: how long the step took and every forward pass
it ran (target and draft), with the pass's shape in the cost model's terms and its measured time.

It is how we check a cost model against a live server (benchmarks/step_log_vs_cost_model.py): the
simulator predicts a step from exactly these shapes. Off by default; `adaserve serve --step-log PATH`.
On a GPU the timings would need a device synchronize; this trace times host-side (CPU) passes.
"""

from __future__ import annotations

import gzip
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from adaserve.models.attention import num_padded_kv


@dataclass
class PassRecord:
    """One forward pass (plus the logits it computed), in the cost model's terms."""

    model: str  # "target" | "draft"
    num_tokens: int
    num_seqs: int
    num_context_tokens: int  # cached tokens read, summed over sequences
    num_context_pairs: int  # (new tokens - 1) x cached tokens, summed over sequences
    num_padded_kv: int = 0  # KV positions read beyond the sequences' own (attention groups pad)
    num_logit_rows: int = 0
    forward_ms: float = 0.0
    logits_ms: float = 0.0


def pass_record(model: str, shapes: list[tuple[int, int]], num_logit_rows: int, forward_ms: float = 0.0) -> PassRecord:
    """A pass over sequences given as (new tokens, cached tokens before them; for a draft tree layer
    its earlier layers' nodes count as cached), in the cost model's terms. Worked example: a decode
    after 300 cached tokens and a 4-node layer after 200 tokens + 3 earlier nodes -> 5 tokens, 2
    sequences, 503 context tokens, 3 x 203 = 609 pairs, KV padded as attention groups pad it."""
    num_tokens = num_context = num_pairs = 0
    for n, c in shapes:  # (one loop: the simulator describes every draft layer's pass with this)
        num_tokens, num_context, num_pairs = num_tokens + n, num_context + c, num_pairs + (n - 1) * c
    return PassRecord(
        model,
        num_tokens,
        len(shapes),
        num_context,
        num_pairs,
        num_padded_kv([(n, c + n) for n, c in shapes]),
        num_logit_rows,
        forward_ms,
    )


@dataclass
class StepRecord:
    time_s: float  # wall clock (time.time()) at the step's start, to line steps up with a bench run
    policy: str
    step_ms: float = 0.0  # the whole step: schedule, draft, verify, sample, bookkeeping
    passes: list[PassRecord] = field(default_factory=list)


class StepLog:
    """Collects the passes of the step in progress and appends the step to a JSONL file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", buffering=1)  # a line per step, flushed as written
        self._step: StepRecord | None = None
        self._start = 0.0

    def begin_step(self, policy: str) -> None:
        self._step = StepRecord(time.time(), policy)
        self._start = time.perf_counter()

    def add_pass(self, record: PassRecord) -> None:
        if self._step is not None:
            self._step.passes.append(record)

    def add_logits(self, num_rows: int, ms: float) -> None:
        """The logits computed from the last pass's hidden states."""
        if self._step is not None and self._step.passes:
            last = self._step.passes[-1]
            last.num_logit_rows += num_rows
            last.logits_ms += ms

    def end_step(self) -> None:
        """Write the step (a step that ran no pass, e.g. only preemptions, is not written)."""
        step, self._step = self._step, None
        if step is None or not step.passes:
            return
        step.step_ms = 1000.0 * (time.perf_counter() - self._start)
        self._file.write(json.dumps(asdict(step)) + "\n")

    def close(self) -> None:
        self._file.close()


def read_step_log(path: str | Path) -> list[StepRecord]:
    """Steps of a log file (.jsonl, or .jsonl.gz as committed with results)."""
    path = Path(path)
    text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    steps = []
    for line in text.splitlines():
        if line.strip():
            d = json.loads(line)
            passes = [PassRecord(**p) for p in d.pop("passes")]
            steps.append(StepRecord(**d, passes=passes))
    return steps
