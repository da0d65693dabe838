"""The OpenAI app in front of engine replicas: the same FastAPI app as `adaserve serve` (validation,
errors, auth, metrics), over a RoutedEngine that streams each request from the replica the router
picks. The front has no model: its tokenizer, limits and SLO classes come from a replica
(FrontInfo). No Ray here: the Ray Serve deployments (adaserve.deploy.ray_app) plug in the stream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from adaserve.deploy.router import RouteRequest
from adaserve.engine.async_engine import EngineDeadError
from adaserve.engine.core import check_request
from adaserve.outputs import RequestOutput
from adaserve.sampling import SamplingParams
from adaserve.server.app import ServerConfig


@dataclass(frozen=True)
class PolicyInfo:
    name: str
    planner: bool  # the SLO step planner runs (slo_policy "reject" can be honoured)


@dataclass
class FrontInfo:
    """What a replica tells the front about the engine it runs."""

    tokenizer: object
    max_model_len: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    policy: PolicyInfo
    server_config: ServerConfig


class FrontCore:
    """What the app asks of an EngineCore, without a model: tokenize, validate, compile grammars."""

    def __init__(self, info: FrontInfo) -> None:
        self.info = info
        self.tokenizer, self.max_model_len, self.policy = info.tokenizer, info.max_model_len, info.policy
        self._grammars = None

    def tokenize(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, add_special_tokens=False)
        return list(prompt)

    def validate(self, prompt: str | list[int], params: SamplingParams) -> list[int]:
        prompt_ids = self.tokenize(prompt)
        check_request(prompt_ids, params, self.max_model_len, self.info.vocab_size, lambda: self.grammars)
        return prompt_ids

    @property
    def grammars(self):
        if self._grammars is None:
            from adaserve.engine.grammar import GrammarCompiler

            info = self.info
            self._grammars = GrammarCompiler(info.tokenizer, info.vocab_size, sorted(info.eos_token_ids))
        return self._grammars


# (prompt ids, params, request id, what the router needs) -> the request's outputs, from a replica
Stream = Callable[[list[int], SamplingParams, str, RouteRequest], AsyncIterator[RequestOutput]]


class RoutedEngine:
    """AsyncEngine's interface for the app, over replicas. A replica that fails before the first
    output is EngineDeadError (503); one that fails later ends the stream with an error (the app's
    fan-out turns the exception into an error output). Nothing hangs on a dead replica."""

    def __init__(self, front: FrontCore, stream: Stream) -> None:
        self.engine, self._stream = front, stream
        self.error: BaseException | None = None
        self.num_in_flight = 0

    @property
    def is_alive(self) -> bool:
        return True  # (each replica's health is Ray Serve's to watch; a dead one is replaced)

    async def generate(
        self, prompt_ids: list[int], params: SamplingParams, request_id: str
    ) -> AsyncIterator[RequestOutput]:
        self.engine.validate(prompt_ids, params)
        route = RouteRequest(len(prompt_ids), params.max_tokens, params.slo, params.slo_policy)
        self.num_in_flight += 1
        started = False
        try:
            async for delta in self._stream(prompt_ids, params, request_id, route):
                started = True
                yield delta
                if delta.finished:
                    return
            raise EngineDeadError("the engine replica's stream ended before the request finished")
        except (ValueError, EngineDeadError):
            raise
        except Exception as e:
            if started:
                raise
            raise EngineDeadError(f"engine replica failed: {type(e).__name__}: {e}") from e
        finally:
            self.num_in_flight -= 1

    def fail_in_flight(self, message: str) -> None:  # (the app's drain: Ray Serve drains replicas itself)
        pass

    def shutdown(self) -> None:
        pass
