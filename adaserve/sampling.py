"""Per-request sampling parameters. Plain data; no torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from adaserve.slo import SLO

GREEDY_TEMPERATURE = 1e-5
SLO_POLICIES = ("best_effort", "reject")
MAX_LOGPROBS = 20  # top log-probs per token, as OpenAI allows
STRUCTURED_KINDS = ("json_object", "json_schema", "regex", "grammar", "choice")


@dataclass(frozen=True)
class StructuredOutput:
    """A constraint on the output text: any JSON object, JSON matching a schema (`spec` is the
    schema as JSON text), a regular expression, an EBNF grammar (GBNF, as llama.cpp and xgrammar
    read it), or one of several strings (`choices`)."""

    kind: str
    spec: str = ""
    choices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in STRUCTURED_KINDS:
            raise ValueError(f"structured output kind must be one of {', '.join(STRUCTURED_KINDS)}, got {self.kind!r}")
        if self.kind in ("json_schema", "regex", "grammar") and not self.spec:
            raise ValueError(f"structured output {self.kind} needs a non-empty spec")
        if self.kind == "choice" and (not self.choices or any(not c for c in self.choices)):
            raise ValueError("structured output choice needs non-empty strings")


@dataclass
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    # OpenAI's penalties over the tokens generated so far, and additive biases by token id.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    # Return the target's log-probability of each output token and of this many top tokens.
    logprobs: int | None = None
    # Constrain the output (JSON, a schema, a regex, a grammar): masks the target and the draft.
    structured: StructuredOutput | None = None
    # Latency target of this request (TPOT and/or TTFT) and the class it was named by, if any.
    slo: SLO = field(default_factory=SLO)
    slo_class: str | None = None
    # When the SLO can no longer be met: "best_effort" serves the request anyway, after those that
    # can still meet theirs; "reject" ends it at once with an error instead of serving it late.
    slo_policy: str = "best_effort"

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if isinstance(self.slo, dict):
            self.slo = SLO(**self.slo)
        if not isinstance(self.slo, SLO):
            raise ValueError(f"slo must be an SLO or a dict with tpot_ms/ttft_ms, got {self.slo!r}")
        if self.slo_policy not in SLO_POLICIES:
            raise ValueError(f"slo_policy must be one of {', '.join(SLO_POLICIES)}, got {self.slo_policy!r}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise ValueError(f"{name} must be in [-2, 2], got {getattr(self, name)}")
        if any(not -100.0 <= b <= 100.0 for b in self.logit_bias.values()):
            raise ValueError("logit_bias values must be in [-100, 100]")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise ValueError(f"logprobs must be in [0, {MAX_LOGPROBS}], got {self.logprobs}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")

    @property
    def processes_logits(self) -> bool:
        """Penalties or biases change the target's logits before argmax or sampling."""
        return bool(self.presence_penalty or self.frequency_penalty or self.logit_bias)

    @property
    def greedy(self) -> bool:
        # Temperatures this small are argmax anyway (and dividing by them overflows).
        return self.temperature < GREEDY_TEMPERATURE
