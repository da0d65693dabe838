"""The engine: requests in, one scheduled step at a time, tokens out. This is the only step loop:
the server, the offline LLM and the simulator all drive it; they differ in the runner (the models
here, or a cost and an acceptance model) and the clock (wall time, or simulated).

    step = schedule -> propose -> select -> attach -> verify (the runner's target pass) -> update
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable

from adaserve.config import EngineConfig
from adaserve.engine.runner import ChunkResult, Runner, RunnerOutput
from adaserve.engine.speculation import SpecDecoder, SpecObserver
from adaserve.engine.step_log import StepLog
from adaserve.engine.stop import StopChecker
from adaserve.outputs import RequestOutput
from adaserve.request import FinishReason, Request
from adaserve.sampling import SamplingParams
from adaserve.sched.cost_model import CostModel
from adaserve.sched.planner import StepLoad, StepPlan, StepPlanner
from adaserve.sched.scheduler import ScheduledChunk, Scheduler, SchedulerOutput, StepLimits
from adaserve.spec.policies import ChainPolicy
from adaserve.spec.registry import PolicyChoice, choose_policy, needs_cost_model, prefill_token_cap

log = logging.getLogger(__name__)


class PromptTooLongError(ValueError):
    def __init__(self, num_prompt_tokens: int, max_model_len: int) -> None:
        super().__init__(
            f"prompt has {num_prompt_tokens} tokens; the context holds {max_model_len} "
            "(prompt plus at least one output token must fit)"
        )
        self.num_prompt_tokens, self.max_model_len = num_prompt_tokens, max_model_len


def check_request(
    prompt_ids: list[int], params: SamplingParams, max_model_len: int, vocab_size: int, grammars: Callable
) -> None:
    """A ValueError saying what is wrong with the request, if anything. grammars() -> the
    structured-output compiler (called only for a request that asks for structured output)."""
    if not prompt_ids:
        raise ValueError("the prompt is empty")
    if len(prompt_ids) >= max_model_len:
        raise PromptTooLongError(len(prompt_ids), max_model_len)
    if any(not isinstance(t, int) or not 0 <= t < vocab_size for t in prompt_ids):
        raise ValueError(f"prompt token ids must be in [0, {vocab_size})")
    if any(not 0 <= t < vocab_size for t in params.logit_bias):
        raise ValueError(f"logit_bias token ids must be in [0, {vocab_size})")
    if params.structured is not None:
        grammars().compile(params.structured)  # a bad schema, regex or grammar: ValueError


class EngineCore:
    def __init__(
        self, config: EngineConfig, runner: Runner | None = None, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        if runner is None:
            from adaserve.engine.model_runner import ModelRunner  # (torch: only for the real models)

            runner = ModelRunner(config)
        self.config, self.runner, self.clock = config, runner, clock
        self.tokenizer, self.max_model_len, self.kv = runner.tokenizer, runner.max_model_len, runner.kv
        self.cost_model: CostModel | None = None  # loaded when a policy needs it
        self.policy = self._choose_policy(config.spec_policy)
        self._spec_decoder = self._build_spec_decoder()
        self.spec = self._spec_decoder if self.policy.spec else None
        num_spec = self.policy.spec.max_tokens_per_seq if self.policy.spec else 0
        self.scheduler = Scheduler(self.kv, config.max_num_seqs, config.max_num_batched_tokens, num_spec)
        self.stop_checker = StopChecker(self.tokenizer, runner.eos_token_ids, self.max_model_len)
        self.requests: dict[str, Request] = {}
        self.num_steps = 0  # steps that ran a pass
        self.num_preemptions = 0
        self._ids = itertools.count()
        self._grammars = None  # the structured-output compiler, built for the first such request

    def _build_spec_decoder(self) -> SpecDecoder | None:
        """With a proposer; a policy of None (speculation off for now) parks a placeholder policy
        until set_spec_policy switches one on."""
        if self.runner.proposer is None:
            if self.policy.spec is not None:
                raise ValueError(f"speculation policy {self.policy.name!r} needs a draft (a model or 'ngram')")
            return None
        policy = self.policy.spec or ChainPolicy(1)
        return SpecDecoder(self.runner.proposer, policy, self.kv, self.clock, self.runner.max_tree_tokens)

    @property
    def step_log(self) -> StepLog | None:
        return self.runner.step_log

    def add_spec_observer(self, observer: SpecObserver) -> None:
        """See every verified tree from now on (e.g. adaserve.sim.recorder.OfferRecorder)."""
        if self._spec_decoder is None:
            raise ValueError("this engine was started without a draft: it verifies no trees")
        self._spec_decoder.observers.append(observer)

    # -- requests --------------------------------------------------------------------------
    def tokenize(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this engine has no tokenizer: give prompt token ids")
            return self.tokenizer.encode(prompt, add_special_tokens=False)
        return list(prompt)

    def validate(self, prompt: str | list[int], params: SamplingParams) -> list[int]:
        """The prompt's token ids, or a ValueError saying what is wrong (nothing is queued)."""
        if not isinstance(params, SamplingParams):
            raise ValueError("params must be SamplingParams")
        prompt_ids = self.tokenize(prompt)
        check_request(prompt_ids, params, self.max_model_len, self.runner.vocab_size, lambda: self.grammars)
        return prompt_ids

    @property
    def grammars(self):
        """The structured-output compiler (adaserve.engine.grammar), for the target's tokenizer."""
        if self._grammars is None:
            if self.tokenizer is None:
                raise ValueError("structured output needs a tokenizer; this engine has none")
            from adaserve.engine.grammar import GrammarCompiler  # (torch and xgrammar: real models only)

            self._grammars = GrammarCompiler(self.tokenizer, self.runner.vocab_size, sorted(self.runner.eos_token_ids))
        return self._grammars

    def add_request(self, prompt: str | list[int], params: SamplingParams, request_id: str | None = None) -> Request:
        prompt_ids = self.validate(prompt, params)
        request_id = request_id or f"req-{next(self._ids)}"
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        request = Request(request_id, prompt_ids, params, arrival_time=self.clock())
        if params.structured is not None:
            request.grammar = self.grammars.state(params.structured)
        # What the planner expects to prefill: the prompt less its prefix cached now (an estimate:
        # the blocks may be evicted, or more cached, by the time it starts).
        request.num_cached_hint = len(self.kv.cached_prefix(prompt_ids)) * self.kv.block_size
        self.requests[request_id] = request
        self.scheduler.add(request)
        return request

    def abort(self, request_id: str) -> None:
        request = self.requests.pop(request_id, None)
        if request is not None and not request.is_finished:
            self._finish(request, FinishReason.ABORT)

    def pop_finished(self, request_id: str) -> Request:
        return self.requests.pop(request_id)

    @property
    def has_unfinished(self) -> bool:
        return self.scheduler.has_work

    # -- policy and cost model --------------------------------------------------------------
    def _choose_policy(self, name: str) -> PolicyChoice:
        if needs_cost_model(name) and self.cost_model is None:
            self.cost_model = self.load_cost_model()
        return choose_policy(name, self.cost_model)

    def load_cost_model(self, refresh: bool = False) -> CostModel:
        return self.runner.load_cost_model(refresh)

    def set_spec_policy(self, name: str) -> None:
        """Switch policy between requests (e.g. to compare policies side by side on one loaded
        model pair). The draft's KV room was sized for the runner's max_tree_tokens per request."""
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

    def _plan(self) -> tuple[StepPlan, list[RequestOutput]]:
        """The step's token budgets (prefill cap; with the SLO planner also the step's tokens and the
        draft budget held back per decoding request). With the planner, the requests that can no
        longer meet their SLO are demoted to best-effort, or refused if they asked to be (their
        outputs returned)."""
        if not self.policy.planner:
            tpots = [r.params.slo.tpot_ms for r in self.scheduler.running]
            cap = prefill_token_cap(
                self.policy, self.cost_model, tpots, self.config.max_num_batched_tokens, self.config.block_size
            )
            return StepPlan(StepLimits(max_prefill_tokens=cap)), []
        planner = StepPlanner(
            self.cost_model,
            self.config.max_num_batched_tokens,
            self.config.block_size,
            demote_at=self.policy.demote_at,
        )
        plan = planner.plan(self.clock(), self.scheduler.running, self.scheduler.waiting, self.step_load())
        for request in plan.demote:
            self.scheduler.demote(request)
        message = "the request's SLO can no longer be met (slo_policy 'reject')"
        refused = [self._fail(r, message, FinishReason.REFUSED) for r in plan.refuse]
        return plan, refused

    def step_load(self) -> StepLoad:
        """What the decoding requests will bring to this step, from the last one's trees."""
        num_decoding = sum(1 for r in self.scheduler.running if r.num_pending_tokens == 1)
        if self.spec is None or self.cost_model is None:
            return StepLoad(num_decoding, num_decoding)
        policy, steps = self.spec.policy, self.spec.stats.steps
        num_tokens = max(num_decoding, steps[-1].num_verified_tokens if steps else num_decoding)
        width = getattr(policy, "width", 1)
        context = sum(r.num_computed_tokens for r in self.scheduler.running)
        draft_ms = self.cost_model.speculation_ms(num_decoding, policy.depth, width, context) if num_decoding else 0
        return StepLoad(num_tokens, num_decoding, draft_ms, self.spec.stats.totals.mean_accepted_tokens)

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
        plan, refused = self._plan()
        step = self.scheduler.schedule(plan.limits)
        self.num_preemptions += len(step.preempted)
        for request in step.preempted:
            if self._spec_decoder:
                self._spec_decoder.free(request.request_id, finished=False)
        if step.is_empty:
            return refused
        self.num_steps += 1
        try:
            return refused + self._run_step(step)
        except Exception as e:  # (a failed pass fails the requests it carried; the rest go on)
            log.exception("engine step failed; failing the %d requests it carried", len(step.chunks))
            return refused + self._fail_step(step, f"internal error in the engine step: {e}")

    def _run_step(self, step: SchedulerOutput) -> list[RequestOutput]:
        draft_start = time.perf_counter()
        decoding = [c for c in step.chunks if c.is_decode] if self.spec else []
        if decoding:
            trees = self.spec.propose(decoding, step)  # speculate: a candidate tree per decoding request
            selected = self.spec.select(decoding, trees, step)  # select: nodes within the spare budget
            self.spec.attach(decoding, trees, selected)  # reserve their KV, hang the trees on the chunks
        draft_seconds = time.perf_counter() - draft_start
        verify_start = self.clock()
        output = self.runner.execute(step)  # verify: one target pass; sampled tokens, accepted paths
        now = self.clock()
        outputs = self._update(step, output, now)
        if self.spec:
            self.spec.record_step(step, draft_seconds, now - verify_start, now)
        return outputs

    def _fail_step(self, step: SchedulerOutput, message: str) -> list[RequestOutput]:
        """Every request of a step that raised ends with an error (even one that finished in the
        step: its final output was never returned, and its caller must hear the end)."""
        outputs = []
        for chunk in step.chunks:
            request = chunk.request
            if request.is_finished:
                outputs.append(
                    RequestOutput(request.request_id, [], request.output_text, True, FinishReason.ERROR, message)
                )
            else:
                outputs.append(self._fail(request, message))
        return outputs

    def _update(self, step: SchedulerOutput, output: RunnerOutput, now: float) -> list[RequestOutput]:
        """Commit each chunk's result: new tokens, stop checks, finished requests. An error in one
        request's commit (its detokenizer, its stop check) fails that request alone."""
        outputs = []
        for chunk, result in zip(step.chunks, output.results):
            request = chunk.request
            try:
                out = self._commit(chunk, result, now)
            except Exception as e:
                log.exception("committing %s failed", request.request_id)
                out = self._fail(request, f"internal error: {e}")
            if out is not None:
                outputs.append(out)
        return outputs

    def _commit(self, chunk: ScheduledChunk, result: ChunkResult, now: float) -> RequestOutput | None:
        request = chunk.request
        if result.error is not None:
            return self._fail(request, result.error)
        if chunk.tree is not None:
            new_tokens = self.spec.commit(chunk, result.acceptance)
        else:
            request.num_computed_tokens += chunk.num_new_tokens
            if result.acceptance is None:
                return None  # a prefill chunk short of the end of the prompt
            new_tokens = [result.acceptance.bonus_token_id]
        if self.kv.needs_caching(request.request_id, request.num_computed_tokens):  # (before a stop frees them)
            self.kv.cache_blocks(request.request_id, request.all_ids + new_tokens, request.num_computed_tokens)
        return self._append_tokens(request, new_tokens, now, result.logprobs)

    def _append_tokens(
        self, request: Request, token_ids: list[int], now: float, logprobs: list | None = None
    ) -> RequestOutput:
        appended = []
        for i, token_id in enumerate(token_ids):
            if request.grammar is not None:
                request.grammar.accept([token_id])
            request.output_ids.append(token_id)
            request.token_times.append(now)
            if logprobs is not None:
                request.output_logprobs.append(logprobs[i])
            appended.append(token_id)
            reason = self.stop_checker.check(request)
            if reason is not None:
                self._finish(request, reason)
                break
        if request.first_token_time is None:
            request.first_token_time = now
        new_logprobs = logprobs[: len(appended)] if logprobs is not None else None
        return RequestOutput(
            request.request_id,
            appended,
            request.output_text,
            request.is_finished,
            request.finish_reason,
            new_logprobs=new_logprobs,
        )

    def _fail(self, request: Request, message: str, reason: FinishReason = FinishReason.ERROR) -> RequestOutput:
        self._finish(request, reason)
        return RequestOutput(request.request_id, [], request.output_text, True, reason, error=message)

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
        self.runner.free(request.request_id)
        if self._spec_decoder:
            self._spec_decoder.free(request.request_id, finished=True)
