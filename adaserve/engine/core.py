"""The engine: requests in, one scheduled step at a time, tokens out.

step = schedule -> speculate + select (if a policy is set) -> target forward
       -> sample or verify -> update requests (stop checks, finish, free KV)
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch

from adaserve.config import EngineConfig
from adaserve.engine.builder import build_draft_executor, build_spec_decoder, build_target
from adaserve.engine.model_runner import ModelRunner
from adaserve.engine.profiler import load_or_profile, profile_key
from adaserve.engine.sampler import Sampler
from adaserve.engine.step_log import StepLog
from adaserve.engine.stop import StopChecker
from adaserve.models.sources import resolve_model
from adaserve.outputs import RequestOutput
from adaserve.request import FinishReason, Request
from adaserve.sampling import SamplingParams
from adaserve.sched.cost_model import CostModel
from adaserve.sched.scheduler import Scheduler
from adaserve.spec.registry import PolicyChoice, choose_policy, needs_cost_model, prefill_token_cap

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
        target = build_target(config)
        self.model_dir, self.model_config, self.tokenizer = target.model_dir, target.model_config, target.tokenizer
        self.max_model_len = target.max_model_len
        self.executor = target.executor
        self.kv = self.executor.kv
        self.runner = ModelRunner(self.executor)
        self.sampler = Sampler(config.seed)
        self._draft = build_draft_executor(config, target)
        self.cost_model: CostModel | None = None
        self.policy = self._choose_policy(config.spec_policy)
        self._spec_decoder = build_spec_decoder(config, target, self.sampler, self.policy.spec, self._draft, clock)
        self.spec = self._spec_decoder if self.policy.spec else None
        num_spec = self.policy.spec.max_tokens_per_seq if self.policy.spec else 0
        self.scheduler = Scheduler(self.kv, config.max_num_seqs, config.max_num_batched_tokens, num_spec)
        eos_ids = set(self.model_config.eos_token_ids)
        if self.tokenizer.eos_token_id is not None:
            eos_ids.add(self.tokenizer.eos_token_id)
        self.stop_checker = StopChecker(self.tokenizer, eos_ids, self.max_model_len)
        self.requests: dict[str, Request] = {}
        self._ids = itertools.count()
        self.step_log = self._open_step_log(config.step_log)

    def _open_step_log(self, path: str | None) -> StepLog | None:
        """Trace every step's passes (after start-up: profiling passes are not steps)."""
        if path is None:
            return None
        step_log = StepLog(path)
        self.executor.step_log = step_log
        if self._draft is not None:
            self._draft.step_log, self._draft.name = step_log, "draft"
        return step_log

    # -- requests --------------------------------------------------------------------------
    def tokenize(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, add_special_tokens=False)
        return list(prompt)

    def validate(self, prompt: str | list[int], params: SamplingParams) -> list[int]:
        """The prompt's token ids, or a ValueError saying what is wrong (nothing is queued)."""
        if not isinstance(params, SamplingParams):
            raise ValueError("params must be SamplingParams")
        prompt_ids = self.tokenize(prompt)
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        if len(prompt_ids) >= self.max_model_len:
            raise PromptTooLongError(len(prompt_ids), self.max_model_len)
        if any(not isinstance(t, int) or not 0 <= t < self.model_config.vocab_size for t in prompt_ids):
            raise ValueError(f"prompt token ids must be in [0, {self.model_config.vocab_size})")
        return prompt_ids

    def add_request(self, prompt: str | list[int], params: SamplingParams, request_id: str | None = None) -> Request:
        prompt_ids = self.validate(prompt, params)
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

    # -- policy and cost model --------------------------------------------------------------
    def _choose_policy(self, name: str) -> PolicyChoice:
        if needs_cost_model(name) and self.cost_model is None:
            self.cost_model = self.load_cost_model()
        return choose_policy(name, self.cost_model)

    def load_cost_model(self, refresh: bool = False) -> CostModel:
        """The configured profile, or this model pair's cached one, or profile now (and cache)."""
        if self.config.cost_model:
            return CostModel.load(Path(self.config.cost_model))
        draft_dir = resolve_model(self.config.draft) if self._draft is not None else None
        key = profile_key(
            self.model_dir,
            draft_dir,
            self.config.draft_num_layers,
            self.config.device,
            self.config.dtype,
            self.config.cpu_packed_linear,
        )
        meta = {"model": str(self.model_dir), "draft": str(draft_dir) if draft_dir else None}
        max_tokens = self.config.max_num_batched_tokens  # steps carry up to this many tokens: measure them
        return load_or_profile(self.executor, self._draft, key, max_tokens, meta, refresh)

    def set_spec_policy(self, name: str) -> None:
        """Switch policy between requests (e.g. to compare policies side by side on one loaded
        model pair). The draft's KV room was sized for MAX_TREE_TOKENS per request."""
        if self.scheduler.has_work:
            raise RuntimeError("switch the speculation policy only while no request is in flight")
        choice = self._choose_policy(name)
        if choice.spec is not None:
            if self._spec_decoder is None:
                raise ValueError("this engine was started without a draft; speculation needs one")
            if choice.spec.max_tokens_per_seq > self._spec_decoder.max_tree_tokens:
                raise ValueError(
                    f"{name!r} drafts {choice.spec.max_tokens_per_seq} tokens per request; this engine's draft "
                    f"KV was sized for {self._spec_decoder.max_tree_tokens}"
                )
            self._spec_decoder.policy = choice.spec
        self.policy = choice
        self.spec = self._spec_decoder if choice.spec is not None else None
        self.scheduler.num_spec_tokens_per_seq = choice.spec.max_tokens_per_seq if choice.spec else 0

    def _max_prefill_tokens(self) -> int | None:
        tpots = [r.params.slo.tpot_ms for r in self.scheduler.running]
        return prefill_token_cap(
            self.policy, self.cost_model, tpots, self.config.max_num_batched_tokens, self.config.block_size
        )

    @property
    def has_unfinished(self) -> bool:
        return self.scheduler.has_work

    # -- one step --------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        if self.step_log is None:
            return self._step()
        self.step_log.begin_step(self.policy.name)
        try:
            return self._step()
        finally:
            self.step_log.end_step()

    def _step(self) -> list[RequestOutput]:
        step = self.scheduler.schedule(self._max_prefill_tokens())
        for request in step.preempted:
            if self.spec:
                self.spec.free(request.request_id)
        if step.is_empty:
            return []
        if self.spec:
            self.spec.attach_trees(step)
        verify_start = self.clock()
        forward = self.runner.run(step)
        now = self.clock()
        outputs = []
        for chunk, logits in zip(step.chunks, forward.logits):
            request = chunk.request
            try:
                if chunk.tree is not None:
                    new_tokens = self.spec.verify(chunk, logits)
                else:
                    request.num_computed_tokens += chunk.num_new_tokens
                    if logits is None:
                        continue
                    new_tokens = [self.sampler.sample(logits[0], request.request_id, request.params)]
            except Exception as e:  # one request's failure must not take the batch down
                log.exception("request %s failed", request.request_id)
                outputs.append(self._fail(request, f"{type(e).__name__}: {e}"))
                continue
            outputs.append(self._append_tokens(request, new_tokens, now))
        if self.spec:
            self.spec.record_step(step, verify_seconds=now - verify_start, now=now)
        return outputs

    def _append_tokens(self, request: Request, token_ids: list[int], now: float) -> RequestOutput:
        appended = []
        for token_id in token_ids:
            request.output_ids.append(token_id)
            request.token_times.append(now)
            appended.append(token_id)
            reason = self.stop_checker.check(request)
            if reason is not None:
                self._finish(request, reason)
                break
        if request.first_token_time is None:
            request.first_token_time = now
        return RequestOutput(
            request.request_id, appended, request.output_text, request.is_finished, request.finish_reason
        )

    def _fail(self, request: Request, message: str) -> RequestOutput:
        self._finish(request, FinishReason.ERROR)
        return RequestOutput(request.request_id, [], request.output_text, True, FinishReason.ERROR, error=message)

    def _finish(self, request: Request, reason: FinishReason) -> None:
        self.scheduler.finish(request, reason)
        request.finish_time = self.clock()
        stats = request.spec_stats
        log.info(
            "finished %s (%s): %d tokens, tpot target %s ms, %d verifications, "
            "%.2f drafted and %.2f accepted per verification",
            request.request_id,
            reason.value,
            request.num_output_tokens,
            request.params.slo.tpot_ms,
            stats.num_verifications,
            stats.num_proposed / max(1, stats.num_verifications),
            stats.num_accepted / max(1, stats.num_verifications),
        )
        self.sampler.forget(request.request_id)
        if self.spec:
            self.spec.free(request.request_id)

    def pop_finished(self, request_id: str) -> Request:
        return self.requests.pop(request_id)
