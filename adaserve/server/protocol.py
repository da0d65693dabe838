"""OpenAI request schemas (the subset we serve, plus adaserve's SLO fields) and their mapping to
SamplingParams. Nothing is silently ignored: a field this server does not implement (unknown, or
known but not honoured: echo, response_format other than text) is a 400 naming it, rather
than a 200 with output the client did not ask for."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from adaserve.sampling import MAX_LOGPROBS, SamplingParams
from adaserve.slo import SLO

MAX_SEQUENCES = 64  # n and best_of: sequences per request


class SLOBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tpot_ms: Annotated[float, Field(gt=0, le=3_600_000)] | None = None
    ttft_ms: Annotated[float, Field(gt=0, le=86_400_000)] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]  # json_object / json_schema: not implemented (issue 21), so a 400


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    top_k: Annotated[int, Field(ge=-1)] = 0  # -1 or 0: off
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[Annotated[int, Field(ge=0)]] | None = None
    ignore_eos: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(ge=1, le=MAX_SEQUENCES)] = 1
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    user: str | None = None  # an end-user id for the caller's records: no effect on output
    logit_bias: dict[str, float] | None = None
    response_format: ResponseFormat | None = None
    # adaserve: a per-request latency target, or the name of a configured SLO class.
    slo: SLOBody | None = None
    slo_class: str | None = None
    # When the SLO can no longer be met: serve it anyway after the others, or refuse it at once (429).
    slo_policy: Literal["best_effort", "reject"] = "best_effort"

    @model_validator(mode="after")
    def _check_logit_bias(self):
        if not self.logit_bias:
            return self
        for key, bias in self.logit_bias.items():
            if not key.isdigit():
                raise ValueError(f"logit_bias keys must be token ids, got {key!r}")
            if not -100 <= bias <= 100:
                raise ValueError(f"logit_bias values must be in [-100, 100], got {bias}")
        return self

    @model_validator(mode="after")
    def _check_stop(self):
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        if any(not s for s in stops):
            raise ValueError("stop strings must be non-empty")
        if len(stops) > 16:
            raise ValueError("at most 16 stop strings")
        return self

    def num_logprobs(self) -> int | None:
        """Top log-probs per token asked for (None: no logprobs)."""
        return None

    def num_sequences(self) -> int:
        """Sequences to generate: n, or best_of (the n most likely of them are returned)."""
        return self.n

    def sampling_params(self, max_tokens: int, slo: SLO, slo_class: str | None) -> SamplingParams:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            logit_bias={int(k): v for k, v in (self.logit_bias or {}).items()},
            logprobs=self.num_logprobs(),
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=max(0, self.top_k),
            seed=self.seed,
            stop=stops,
            stop_token_ids=list(self.stop_token_ids or []),
            ignore_eos=self.ignore_eos,
            slo=slo,
            slo_class=slo_class,
            slo_policy=self.slo_policy,
        )


class CompletionRequest(_Common):
    prompt: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
        | Annotated[list[str], Field(min_length=1, max_length=1)]
    )
    echo: Literal[False] = False
    best_of: Annotated[int, Field(ge=1, le=MAX_SEQUENCES)] | None = None
    logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None  # the top n per token (and the chosen)
    suffix: None = None

    @model_validator(mode="after")
    def _check_best_of(self):
        if self.best_of is not None and self.best_of < self.n:
            raise ValueError(f"best_of must be >= n, got best_of {self.best_of} and n {self.n}")
        if self.stream and self.num_sequences() > self.n:
            raise ValueError("best_of > n cannot be streamed: the best sequences are known only at the end")
        return self

    def num_logprobs(self) -> int | None:
        return self.logprobs

    def num_sequences(self) -> int:
        return self.best_of or self.n

    def prompt_input(self) -> str | list[int]:
        if isinstance(self.prompt, list) and self.prompt and isinstance(self.prompt[0], str):
            return self.prompt[0]
        return self.prompt


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict] | None = None
    name: str | None = None  # passed to the chat template, which may use it

    def text(self) -> str:
        if isinstance(self.content, list):  # [{"type": "text", "text": ...}, ...]
            parts = []
            for part in self.content:
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ValueError("only text content parts are supported")
                parts.append(part["text"])
            return "".join(parts)
        return self.content or ""


class ChatCompletionRequest(_Common):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    tools: None = None

    @model_validator(mode="after")
    def _check_top_logprobs(self):
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    def num_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def conversation(self) -> list[dict]:
        turns = []
        for m in self.messages:
            turn = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            turns.append(turn | ({"name": m.name} if m.name else {}))
        return turns
