"""OpenAI response bodies: whole completions, SSE chunks, and usage with adaserve's extras
(measured TTFT/TPOT, SLO attained, speculation counts)."""

from __future__ import annotations

import time
from collections.abc import Callable

from adaserve import __version__
from adaserve.engine.logits_process import TokenLogprob
from adaserve.outputs import RequestOutput
from adaserve.request import FinishReason, Request
from adaserve.slo import RequestTiming

SYSTEM_FINGERPRINT = f"adaserve-{__version__}"
# OpenAI's message fields for what adaserve does not produce (refusals, tool calls, audio), as vLLM sends them
NO_MESSAGE_EXTRAS = {"refusal": None, "annotations": None, "audio": None, "function_call": None}


def usage(num_prompt_tokens: int, sequences: list[tuple[RequestTiming, Request]]) -> dict:
    """Token counts (the prompt once, every sequence's output) and adaserve's extras. With n > 1 the
    request attains its SLO only when every sequence does; TTFT and TPOT are the worst sequence's."""
    num_output_tokens = sum(request.num_output_tokens for _, request in sequences)
    u = {
        "prompt_tokens": num_prompt_tokens,
        "completion_tokens": num_output_tokens,
        "total_tokens": num_prompt_tokens + num_output_tokens,
        "completion_tokens_details": None,
    }
    if not sequences:
        return u
    u["prompt_tokens_details"] = {"cached_tokens": sequences[0][1].num_cached_tokens}  # (the prompt once)
    timings = [timing for timing, _ in sequences]
    ttfts = [t.ttft_s for t in timings if t.ttft_s is not None]
    tpots = [t.tpot_s for t in timings if t.tpot_s is not None]
    stats = [request.spec_stats for _, request in sequences]
    u.update(
        {
            "ttft_ms": round(max(ttfts) * 1000.0, 3) if ttfts else None,
            "tpot_ms": round(max(tpots) * 1000.0, 3) if tpots else None,
            "slo_class": timings[0].category,
            "slo": {"tpot_ms": timings[0].slo.tpot_ms, "ttft_ms": timings[0].slo.ttft_ms},
            "slo_attained": all(t.attained for t in timings),
            "slo_demoted": any(request.best_effort for _, request in sequences),  # served best-effort
            "spec_verifications": sum(s.num_verifications for s in stats),
            "spec_proposed_tokens": sum(s.num_proposed for s in stats),
            "spec_accepted_tokens": sum(s.num_accepted for s in stats),
        }
    )
    replicas = sorted({request.replica_id for _, request in sequences if request.replica_id is not None})
    if replicas:
        u["replicas"] = replicas
    return u


def _finish_reason(reason: FinishReason | None) -> str | None:
    return None if reason is None else reason.value


def _stop_reason(output: RequestOutput) -> int | str | None:
    """vLLM's `stop_reason`: the stop string or stop token id a finished choice ended on."""
    return output.request.stop_reason if output.finished and output.request is not None else None


class LogprobFormatter:
    """The target's log-probabilities in OpenAI's two shapes: chat's {"content": [{token, logprob,
    bytes, top_logprobs}]} and completions' {tokens, token_logprobs, top_logprobs, text_offset}."""

    def __init__(self, token_text: Callable[[int], str], chat: bool) -> None:
        self.token_text, self.chat = token_text, chat
        self.num_chars = 0  # text offset of the next token (completions)

    def _entry(self, token_id: int, logprob: float) -> dict:
        text = self.token_text(token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    def format(self, logprobs: list[TokenLogprob]) -> dict:
        if self.chat:
            content = []
            for lp in logprobs:
                entry = self._entry(lp.token_id, lp.logprob)
                entry["top_logprobs"] = [self._entry(t, v) for t, v in lp.top]
                content.append(entry)
            return {"content": content}
        out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for lp in logprobs:
            text = self.token_text(lp.token_id)
            out["tokens"].append(text)
            out["token_logprobs"].append(lp.logprob)
            out["top_logprobs"].append({self.token_text(t): v for t, v in lp.top})
            out["text_offset"].append(self.num_chars)
            self.num_chars += len(text)
        return out


class StreamFormatter:
    """Turns deltas into OpenAI chunks. Text that could still become a stop string is held back
    until it can't (or the request ends), so a stop string never leaks into the stream. Log-probs
    of new tokens go out with the next text sent (or the last chunk)."""

    def __init__(
        self,
        request_id: str,
        model: str,
        chat: bool,
        stops: list[str],
        logprobs: LogprobFormatter | None = None,
        index: int = 0,
    ) -> None:
        self.request_id, self.model, self.chat, self.index = request_id, model, chat, index
        self.created = int(time.time())
        self.holdback = max((len(s) for s in stops), default=1) - 1
        self.num_sent_chars = 0
        self.logprobs = logprobs
        self._pending_logprobs: list[TokenLogprob] = []

    def _chunk(self, choice: dict | None, **extra) -> dict:
        return {
            "id": self.request_id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [choice] if choice else [],
            **extra,
        }

    def _choice(
        self, text: str | None, finish_reason: str | None, role: str | None = None, stop_reason: int | str | None = None
    ) -> dict:
        logprobs = None
        if self._pending_logprobs and (text or finish_reason):
            logprobs = self.logprobs.format(self._pending_logprobs)
            self._pending_logprobs = []
        if self.chat:
            delta = {} if text is None and role is None else {"content": text or ""}
            if role:
                delta["role"] = role
            choice = {"index": self.index, "delta": delta}
        else:
            choice = {"index": self.index, "text": text or ""}
        return choice | {"logprobs": logprobs, "finish_reason": finish_reason, "stop_reason": stop_reason}

    def opening(self) -> list[dict]:
        return [self._chunk(self._choice("", None, role="assistant"))] if self.chat else []

    def chunks(self, delta: RequestOutput) -> list[dict]:
        if self.logprobs is not None and delta.new_logprobs:
            self._pending_logprobs += delta.new_logprobs
        end = len(delta.text) if delta.finished else len(delta.text) - self.holdback
        out = []
        if end > self.num_sent_chars:
            out.append(self._chunk(self._choice(delta.text[self.num_sent_chars : end], None)))
            self.num_sent_chars = end
        if delta.finished:
            reason = _finish_reason(delta.finish_reason)
            out.append(self._chunk(self._choice(None, reason, stop_reason=_stop_reason(delta))))
        return out

    def usage_chunk(self, u: dict) -> dict:
        return self._chunk(None, usage=u)


def final_body(fmts: list[StreamFormatter], finals: list[RequestOutput], u: dict) -> dict:
    """The whole response: choice i is finals[i], formatted by fmts[i]."""
    choices = []
    for i, (fmt, final) in enumerate(zip(fmts, finals)):
        reason = _finish_reason(final.finish_reason)
        logprobs = None
        if fmt.logprobs is not None and final.request is not None:
            logprobs = fmt.logprobs.format(final.request.output_logprobs)
        if fmt.chat:
            choice = {"index": i, "message": {"role": "assistant", "content": final.text} | NO_MESSAGE_EXTRAS}
        else:
            choice = {"index": i, "text": final.text}
        choices.append(choice | {"logprobs": logprobs, "finish_reason": reason, "stop_reason": _stop_reason(final)})
    fmt = fmts[0]
    return {
        "id": fmt.request_id,
        "object": "chat.completion" if fmt.chat else "text_completion",
        "created": fmt.created,
        "model": fmt.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": choices,
        "usage": u,
    }
