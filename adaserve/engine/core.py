"""The engine: requests in, one scheduled step at a time, tokens out.

    step = schedule -> run the model -> sample -> update requests (stop checks, finish, free KV)
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import Callable

import torch

from adaserve.config import EngineConfig
from adaserve.engine.model_runner import ModelRunner
from adaserve.engine.sampler import Sampler
from adaserve.engine.stop import StopChecker
from adaserve.kv.manager import KVCacheManager
from adaserve.models.loader import load_model, read_model_config
from adaserve.models.sources import resolve_model
from adaserve.outputs import RequestOutput
from adaserve.request import FinishReason, Request
from adaserve.sampling import SamplingParams
from adaserve.sched.scheduler import Scheduler

log = logging.getLogger(__name__)


class PromptTooLongError(ValueError):
    def __init__(self, num_prompt_tokens: int, max_model_len: int) -> None:
        super().__init__(
            f"prompt has {num_prompt_tokens} tokens; the context holds {max_model_len} "
            "(prompt plus at least one output token must fit)"
        )
        self.num_prompt_tokens, self.max_model_len = num_prompt_tokens, max_model_len


class EngineCore:
    def __init__(self, config: EngineConfig, clock: Callable[[], float] = time.perf_counter) -> None:
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.config = config
        self.clock = clock
        self.device = torch.device(config.device)
        self.dtype = getattr(torch, config.dtype)
        self.model_dir = resolve_model(config.model)
        self.model_config = read_model_config(self.model_dir)
        self.tokenizer = _load_tokenizer(self.model_dir)
        bytes_per_block = self.model_config.kv_bytes_per_token(self.dtype.itemsize) * config.block_size
        num_blocks = config.kv_cache_memory // bytes_per_block
        if num_blocks < 1:
            raise ValueError(f"--kv-cache-memory {config.kv_cache_memory} B holds no block ({bytes_per_block} B)")
        self.kv = KVCacheManager(num_blocks, config.block_size)
        model_max = config.max_model_len or self.model_config.max_position_embeddings
        self.max_model_len = min(model_max, self.kv.capacity_tokens)
        if self.max_model_len < model_max:
            log.warning("max_model_len %d capped to the KV cache capacity %d", model_max, self.max_model_len)
        model = load_model(self.model_dir, self.device, self.dtype, self.max_model_len, config.cpu_packed_linear)
        self.runner = ModelRunner(model, self.kv, self.device, self.dtype)
        self.scheduler = Scheduler(self.kv, config.max_num_seqs, config.max_num_batched_tokens)
        self.sampler = Sampler(config.seed)
        eos_ids = set(self.model_config.eos_token_ids)
        if self.tokenizer.eos_token_id is not None:
            eos_ids.add(self.tokenizer.eos_token_id)
        self.stop_checker = StopChecker(self.tokenizer, eos_ids, self.max_model_len)
        self.requests: dict[str, Request] = {}
        self._ids = itertools.count()

    # -- requests --------------------------------------------------------------------------
    def tokenize(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, add_special_tokens=False)
        return list(prompt)

    def add_request(
        self, prompt: str | list[int], params: SamplingParams, request_id: str | None = None
    ) -> Request:
        prompt_ids = self.tokenize(prompt)
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        if len(prompt_ids) >= self.max_model_len:
            raise PromptTooLongError(len(prompt_ids), self.max_model_len)
        if any(not 0 <= t < self.model_config.vocab_size for t in prompt_ids):
            raise ValueError(f"prompt token ids must be in [0, {self.model_config.vocab_size})")
        request_id = request_id or f"req-{next(self._ids)}"
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        request = Request(request_id, prompt_ids, params, arrival_time=self.clock())
        self.requests[request_id] = request
        self.scheduler.add(request)
        return request

    def abort(self, request_id: str) -> None:
        request = self.requests.pop(request_id, None)
        if request is not None and not request.is_finished:
            self._finish(request, FinishReason.ABORT)

    @property
    def has_unfinished(self) -> bool:
        return self.scheduler.has_work

    # -- one step --------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        step = self.scheduler.schedule()
        if step.is_empty:
            return []
        forward = self.runner.run(step)
        now = self.clock()
        outputs = []
        for chunk in step.chunks:
            chunk.request.num_computed_tokens += chunk.num_new_tokens
        for row, chunk_id in enumerate(forward.sampling_chunk_ids):
            request = step.chunks[chunk_id].request
            token_id = self.sampler.sample(forward.logits[row], request.request_id, request.params)
            outputs.append(self._append_token(request, token_id, now))
        return outputs

    def _append_token(self, request: Request, token_id: int, now: float) -> RequestOutput:
        request.output_ids.append(token_id)
        request.token_times.append(now)
        if request.first_token_time is None:
            request.first_token_time = now
        reason = self.stop_checker.check(request)
        if reason is not None:
            self._finish(request, reason)
        return RequestOutput(
            request.request_id, [token_id], request.output_text, request.is_finished, request.finish_reason
        )

    def _finish(self, request: Request, reason: FinishReason) -> None:
        self.scheduler.finish(request, reason)
        request.finish_time = self.clock()
        self.sampler.forget(request.request_id)

    def pop_finished(self, request_id: str) -> Request:
        return self.requests.pop(request_id)


def _load_tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))
