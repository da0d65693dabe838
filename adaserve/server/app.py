"""OpenAI-compatible HTTP API over the async engine: /v1/completions, /v1/chat/completions,
/v1/models, /health, /metrics. Errors use OpenAI's schema: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from adaserve.engine.async_engine import AsyncEngine
from adaserve.outputs import RequestOutput
from adaserve.server.errors import APIError, error_response
from adaserve.server.fanout import SequenceGroup, best_sequences, fan_out
from adaserve.server.metrics import ServerMetrics
from adaserve.server.protocol import ChatCompletionRequest, CompletionRequest
from adaserve.server.responses import LogprobFormatter, StreamFormatter, final_body, usage
from adaserve.slo import SLO, RequestTiming, SLOClass

log = logging.getLogger(__name__)


@dataclass
class ServerConfig:
    served_model_name: str
    model_aliases: tuple[str, ...] = ()
    api_key: str | None = None
    slo_classes: dict[str, SLOClass] = field(default_factory=dict)
    # A prompt's unloaded prefill time (ms) by its token count (the cost model): relative TTFT targets.
    prefill_ms: Callable[[int], float] | None = None
    default_slo_class: str | None = None


def create_app(engine: AsyncEngine, config: ServerConfig, engine_gauges: bool = True) -> FastAPI:
    """engine_gauges: export the engine's queue and KV gauges (not on an ingress in front of engine
    replicas, adaserve.deploy, whose engine is only a front: tokenizer and validation)."""
    app = FastAPI(title="adaserve", version="0.1.0")
    app.state.engine, app.state.config = engine, config
    app.state.metrics = metrics = ServerMetrics(engine.engine if engine_gauges else None)
    core = engine.engine

    @app.exception_handler(APIError)
    async def _api_error(_, e: APIError):
        if e.status == 429:
            metrics.rejected_requests.labels("overloaded").inc()
        return error_response(e.status, e.message, e.type, e.param, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_, e: RequestValidationError):
        errors = e.errors()
        first = errors[0] if errors else {}
        loc = _field_path(first)
        message = "; ".join(_validation_message(err) for err in errors[:5])
        return error_response(400, message or "invalid request", "invalid_request_error", loc or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_, e: StarletteHTTPException):
        type_ = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return error_response(e.status_code, str(e.detail), type_)

    @app.exception_handler(Exception)
    async def _internal_error(_, e: Exception):
        return error_response(500, f"internal error: {e}", "internal_error")

    app.state.draining = False  # set by the server on SIGTERM (adaserve.server.lifecycle)
    if config.api_key:
        app.add_middleware(APIKeyMiddleware, api_key=config.api_key)
    app.add_middleware(DrainMiddleware, is_draining=lambda: app.state.draining)

    @app.get("/health")
    async def health():
        if app.state.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        if not engine.is_alive:
            return error_response(503, f"engine is not running: {engine.error!r}", "service_unavailable")
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus_metrics():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [
                {
                    "id": config.served_model_name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "adaserve",
                    "max_model_len": core.max_model_len,
                }
            ],
        }

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        prompt_ids = _tokenize(core, body.prompt_input())
        return await _serve(body, prompt_ids, request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        try:
            text = core.tokenizer.apply_chat_template(body.conversation(), add_generation_prompt=True, tokenize=False)
        except Exception as e:  # a template that rejects the conversation is the client's 400
            raise APIError(400, f"cannot apply the chat template: {e}", "invalid_request_error", "messages") from e
        return await _serve(body, _tokenize(core, text), request, chat=True)

    async def _serve(body, prompt_ids: list[int], request: Request, chat: bool):
        _check_model(body.model, config)
        slo, slo_class = _resolve_slo(body, request, config, len(prompt_ids))
        max_tokens = _max_tokens(body, len(prompt_ids), core.max_model_len)
        try:
            params = body.sampling_params(max_tokens, slo, slo_class)
        except ValueError as e:
            raise APIError(400, str(e), "invalid_request_error") from e
        if params.slo_policy == "reject" and not core.policy.planner:  # (nothing would ever refuse it)
            message = "slo_policy 'reject' needs the SLO planner (policy adaserve)"
            message += f"; this server runs {core.policy.name}"
            raise APIError(400, message, "invalid_request_error", "slo_policy")
        if params.structured is not None:  # (off the event loop: the first one reads the vocabulary)
            try:
                await asyncio.to_thread(core.grammars.compile, params.structured)
            except ValueError as e:
                raise APIError(400, str(e), "invalid_request_error", "response_format") from e
        request_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        n, best_of = body.n, body.num_sequences()
        group = await SequenceGroup.start(engine, prompt_ids, fan_out(params, best_of, best_of > n), request_id)
        refused = group.refused
        if refused is not None:  # (its SLO is out of reach and it asked to be told)
            metrics.refused.labels(slo_class or "none").inc()
            raise APIError(429, f"{refused.error}; not served", "rate_limit_error", "slo")

        def formatter(index: int) -> StreamFormatter:
            logprobs = None
            if params.logprobs is not None:  # (asked for by the client, not only for ranking best_of)
                logprobs = LogprobFormatter(lambda t: core.tokenizer.decode([t]), chat)
            return StreamFormatter(request_id, config.served_model_name, chat, params.stop, logprobs, index)

        on_finish = _finisher(metrics, len(prompt_ids), slo_class)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = _sse(group, [formatter(i) for i in range(n)], include_usage, on_finish)
            return StreamingResponse(events, media_type="text/event-stream")
        finals = await group.collect(request)
        if finals is None:
            return Response(status_code=499)  # the client left; its request was aborted
        error = next((f.error for f in finals if f.error), None)
        if error:  # (ended by a drain that timed out: the server's going away, not failing)
            if app.state.draining:
                raise APIError(503, error, "service_unavailable", headers={"Retry-After": "5"})
            raise APIError(500, error, "internal_error")
        u = on_finish(finals)
        return final_body([formatter(i) for i in range(n)], best_sequences(finals, n), u)

    return app


class APIKeyMiddleware:
    """Bearer-token check on /v1 routes, as plain ASGI: Starlette's BaseHTTPMiddleware (what
    @app.middleware builds) relays every streamed chunk through a memory stream and a task group;
    this passes receive and send through untouched, and only when a key is set."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app, self.api_key = app, api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            header = Headers(scope=scope).get("authorization", "")
            token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
            if not secrets.compare_digest(token.encode(), self.api_key.encode()):
                response = error_response(401, "missing or invalid API key", "authentication_error")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class DrainMiddleware:
    """While the server drains, /v1 routes answer 503 with Retry-After (requests already
    running are past this point and finish). Plain ASGI, like APIKeyMiddleware."""

    def __init__(self, app: ASGIApp, is_draining: Callable[[], bool]) -> None:
        self.app, self.is_draining = app, is_draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1") and self.is_draining():
            message = "the server is shutting down; retry on another replica or after it restarts"
            response = error_response(503, message, "service_unavailable", headers={"Retry-After": "5"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _field_path(err: dict) -> str:
    return ".".join(str(x) for x in err.get("loc", ()) if x != "body")


def _validation_message(err: dict) -> str:
    if err.get("type") == "extra_forbidden":
        return f"unsupported field {_field_path(err)!r}: this server does not implement it"
    message = err.get("msg", "invalid").removeprefix("Value error, ")
    return f"{_field_path(err)}: {message}" if _field_path(err) else message


def _tokenize(core, prompt) -> list[int]:
    """A ValueError is about the prompt (400); anything else is the tokenizer failing (500)."""
    try:
        return core.tokenize(prompt)
    except ValueError as e:
        raise APIError(400, f"cannot tokenize the prompt: {e}", "invalid_request_error", "prompt") from e
    except Exception as e:
        log.exception("the tokenizer failed")
        raise APIError(500, f"internal error: the tokenizer failed: {e}", "internal_error") from e


def _check_model(model: str | None, config: ServerConfig) -> None:
    if model is not None and model not in (config.served_model_name, *config.model_aliases):
        raise APIError(
            404,
            f"the model {model!r} does not exist; this server serves {config.served_model_name!r}",
            "not_found_error",
            "model",
        )


def _resolve_slo(body, request: Request, config: ServerConfig, num_prompt_tokens: int) -> tuple[SLO, str | None]:
    """Body `slo` > body `slo_class` > headers (x-slo-tpot-ms, x-slo-ttft-ms, x-slo-class) > default class."""
    if body.slo is not None:
        return SLO(body.slo.tpot_ms, body.slo.ttft_ms), body.slo_class or "custom"
    name = body.slo_class or request.headers.get("x-slo-class")
    if name is None and ("x-slo-tpot-ms" in request.headers or "x-slo-ttft-ms" in request.headers):
        try:
            tpot, ttft = (request.headers.get(h) for h in ("x-slo-tpot-ms", "x-slo-ttft-ms"))
            return SLO(float(tpot) if tpot else None, float(ttft) if ttft else None), "custom"
        except ValueError as e:
            raise APIError(400, f"bad SLO header: {e}", "invalid_request_error", "x-slo-tpot-ms") from e
    name = name or config.default_slo_class
    if name is None:
        return SLO(), None
    if name not in config.slo_classes:
        known = ", ".join(sorted(config.slo_classes)) or "none configured"
        raise APIError(400, f"unknown slo_class {name!r} (known: {known})", "invalid_request_error", "slo_class")
    prefill_ms = config.prefill_ms(num_prompt_tokens) if config.prefill_ms else 0.0
    return config.slo_classes[name].slo(prefill_ms), name


def _max_tokens(body, num_prompt_tokens: int, max_model_len: int) -> int:
    room = max_model_len - num_prompt_tokens
    if room < 1:
        raise APIError(
            400,
            f"this model's maximum context length is {max_model_len} tokens; the prompt has {num_prompt_tokens} tokens",
            "invalid_request_error",
            "messages",
        )
    asked = getattr(body, "max_completion_tokens", None) or body.max_tokens
    if asked is None:
        return room
    if asked > room:
        raise APIError(
            400,
            f"this model's maximum context length is {max_model_len} tokens; you requested "
            f"{num_prompt_tokens + asked} tokens ({num_prompt_tokens} in the prompt, {asked} in the "
            "completion)",
            "invalid_request_error",
            "max_tokens",
        )
    return asked


def _finisher(metrics: ServerMetrics, num_prompt_tokens: int, slo_class: str | None):
    def on_finish(finals: list[RequestOutput]) -> dict:
        sequences = []
        for final in finals:
            r = final.request
            if r is None:
                continue
            last = r.token_times[-1] if r.token_times else None
            timing = RequestTiming(
                r.arrival_time, r.first_token_time, last, r.num_output_tokens, r.params.slo, slo_class or "none"
            )
            sequences.append((timing, r))
        if sequences:
            metrics.observe_finished(sequences)
        return usage(num_prompt_tokens, sequences)

    return on_finish


async def _sse(group: SequenceGroup, fmts: list[StreamFormatter], include_usage: bool, on_finish):
    """Chunks of every sequence as they come (each choice carries its index); the usage chunk and
    [DONE] once all have finished. A failed sequence ends the stream with an error event."""

    def event(obj) -> str:
        return f"data: {json.dumps(obj)}\n\n"

    finals: list[RequestOutput] = []
    try:
        for fmt in fmts:
            for chunk in fmt.opening():
                yield event(chunk)
        async for index, delta in group.events():
            if delta.error:
                yield event({"error": {"message": delta.error, "type": "internal_error", "param": None, "code": 500}})
                break
            for chunk in fmts[index].chunks(delta):
                yield event(chunk)
            if delta.finished:
                finals.append(delta)
        else:
            u = on_finish(finals)
            if include_usage:
                yield event(fmts[0].usage_chunk(u))
        yield "data: [DONE]\n\n"
    finally:
        await group.aclose()  # a disconnect lands here: abort the requests and free their blocks
