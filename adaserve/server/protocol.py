"""OpenAI request schemas (the subset we serve, plus adaserve's SLO fields) and their mapping to
SamplingParams. Nothing is silently ignored: a field this server does not implement (unknown, or
known but not honoured: echo, suffix) is a 400 naming it, rather than a 200 with output the
client did not ask for."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from adaserve.sampling import MAX_LOGPROBS, SamplingParams, StructuredOutput
from adaserve.slo import SLO

MAX_SEQUENCES = 64  # n and best_of: sequences per request


class SLOBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tpot_ms: Annotated[float, Field(gt=0, le=3_600_000)] | None = None
    ttft_ms: Annotated[float, Field(gt=0, le=86_400_000)] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class JSONSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: Annotated[str, Field(max_length=64)] = "response"
    description: str | None = None
    json_schema: dict = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's response_format: text (no constraint), any JSON object, or JSON of a schema."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _check_schema(self):
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("response_format json_schema goes with type 'json_schema' (and only with it)")
        return self


class StructuredOutputs(BaseModel):
    """vLLM's structured_outputs: exactly one constraint."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    json_spec: dict | str | None = Field(None, alias="json")
    regex: str | None = None
    choice: Annotated[list[str], Field(min_length=1)] | None = None
    grammar: str | None = None
    json_object: bool | None = None

    def structured(self) -> StructuredOutput | None:
        given = [k for k in ("json_spec", "regex", "choice", "grammar", "json_object") if getattr(self, k)]
        if len(given) > 1:
            raise ValueError(f"structured_outputs takes one constraint, got {len(given)}")
        if self.json_spec is not None:
            spec = self.json_spec if isinstance(self.json_spec, str) else json.dumps(self.json_spec)
            return StructuredOutput("json_schema", spec)
        if self.regex is not None:
            return StructuredOutput("regex", self.regex)
        if self.choice is not None:
            return StructuredOutput("choice", choices=tuple(self.choice))
        if self.grammar is not None:
            return StructuredOutput("grammar", self.grammar)
        return StructuredOutput("json_object") if self.json_object else None


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
    structured_outputs: StructuredOutputs | None = None  # vLLM's
    # vLLM's older names of the same constraints.
    guided_json: dict | str | None = None
    guided_regex: str | None = None
    guided_choice: Annotated[list[str], Field(min_length=1)] | None = None
    guided_grammar: str | None = None
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

    @model_validator(mode="after")
    def _check_structured(self):
        self.structured()  # (raises what is wrong with it)
        return self

    def structured(self) -> StructuredOutput | None:
        """The one output constraint of response_format, structured_outputs or guided_*."""
        found = []
        if self.response_format is not None and self.response_format.type == "json_object":
            found.append(StructuredOutput("json_object"))
        if self.response_format is not None and self.response_format.json_schema is not None:
            found.append(StructuredOutput("json_schema", json.dumps(self.response_format.json_schema.json_schema)))
        if self.structured_outputs is not None:
            found.append(self.structured_outputs.structured())
        legacy = StructuredOutputs(
            json=self.guided_json, regex=self.guided_regex, choice=self.guided_choice, grammar=self.guided_grammar
        )
        found += [legacy.structured()]
        found = [f for f in found if f is not None]
        if len(found) > 1:
            raise ValueError("give one output constraint: response_format, structured_outputs or a guided_* field")
        return found[0] if found else None

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
            structured=self.structured(),
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
