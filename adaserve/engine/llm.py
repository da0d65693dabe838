"""Offline API: LLM(model=...).generate(prompts, SamplingParams(...))."""

from __future__ import annotations

from collections.abc import Sequence

from adaserve.config import EngineConfig
from adaserve.engine.core import EngineCore
from adaserve.outputs import CompletionOutput
from adaserve.request import Request
from adaserve.sampling import SamplingParams


class LLM:
    def __init__(self, model: str = "smollm2-135m", **config) -> None:
        self.engine = EngineCore(EngineConfig(model=model, **config))
        self.tokenizer = self.engine.tokenizer

    def generate(
        self,
        prompts: str | Sequence[str] | Sequence[list[int]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = False,
    ) -> list[CompletionOutput]:
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]  # type: ignore[list-item]
        params = params or SamplingParams()
        all_params = list(params) if isinstance(params, Sequence) else [params] * len(prompts)
        if len(all_params) != len(prompts):
            raise ValueError("give one SamplingParams or one per prompt")
        requests = [self.engine.add_request(p, sp) for p, sp in zip(prompts, all_params)]
        while self.engine.has_unfinished:
            self.engine.step()
        return [_completion(self.engine.pop_finished(r.request_id)) for r in requests]

    def chat(self, conversations: list[list[dict]], params: SamplingParams | None = None) -> list[CompletionOutput]:
        prompts = [
            self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations
        ]
        return self.generate([self.engine.tokenize(p) for p in prompts], params)


def _completion(r: Request) -> CompletionOutput:
    return CompletionOutput(
        request_id=r.request_id,
        prompt_token_ids=r.prompt_ids,
        token_ids=r.output_ids,
        text=r.output_text,
        finish_reason=r.finish_reason,
        arrival_time=r.arrival_time,
        first_token_time=r.first_token_time,
        finish_time=r.finish_time,
        token_times=r.token_times,
        num_preemptions=r.num_preemptions,
        logprobs=r.output_logprobs if r.params.logprobs is not None else None,
    )
