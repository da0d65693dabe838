"""The sequences of one API request: `n` (or `best_of`) engine requests over one prompt.

Sequence 0 goes in first; the others once it has its first token. By then its prompt's full KV
blocks are in the prefix cache, so the others share them by reference and prefill only the last,
partial block. Each sequence is a request of its own to the engine: its own draft tree, its own
sampler (seed + i, so a seeded request is reproducible), its own SLO accounting. The API request
attains its SLO only when every sequence does (adaserve.server.responses.usage).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request as HTTPRequest

from adaserve.engine.async_engine import AsyncEngine, EngineDeadError, EngineOverloadedError
from adaserve.outputs import RequestOutput
from adaserve.request import FinishReason
from adaserve.sampling import SamplingParams
from adaserve.server.errors import APIError


def fan_out(params: SamplingParams, num_sequences: int, rank_by_logprob: bool) -> list[SamplingParams]:
    """One SamplingParams per sequence. Sequence i samples with seed + i; ranking best_of
    sequences needs their log-probabilities, asked for even when the client did not."""
    if num_sequences == 1:
        return [params]
    logprobs = params.logprobs if not rank_by_logprob else (params.logprobs or 0)
    return [
        dataclasses.replace(params, seed=None if params.seed is None else params.seed + i, logprobs=logprobs)
        for i in range(num_sequences)
    ]


def best_sequences(finals: list[RequestOutput], n: int) -> list[RequestOutput]:
    """The n sequences with the highest cumulative log-probability (best_of), best first."""
    if len(finals) == n:
        return finals

    def score(final: RequestOutput) -> float:
        return sum(lp.logprob for lp in final.request.output_logprobs) if final.request else float("-inf")

    return sorted(finals, key=score, reverse=True)[:n]


async def first_delta(deltas: AsyncIterator[RequestOutput]) -> RequestOutput:
    """A sequence's first output; the engine's refusals become OpenAI errors."""
    try:
        return await deltas.__anext__()
    except EngineOverloadedError as e:
        raise APIError(
            429, f"server overloaded: {e}; retry later", "rate_limit_error", headers={"Retry-After": "1"}
        ) from e
    except EngineDeadError as e:
        raise APIError(503, str(e), "service_unavailable") from e
    except ValueError as e:
        raise APIError(400, str(e), "invalid_request_error", "prompt") from e


@dataclass
class Sequence:
    index: int
    deltas: AsyncIterator[RequestOutput]
    first: RequestOutput


class SequenceGroup:
    def __init__(self, sequences: list[Sequence]) -> None:
        self.sequences = sequences

    @classmethod
    async def start(
        cls, engine: AsyncEngine, prompt_ids: list[int], params: list[SamplingParams], request_id: str
    ) -> SequenceGroup:
        """Add the sequences and wait for each one's first output. A sequence refused for its SLO
        stops the rest from starting; any error closes those already running."""
        ids = [request_id] if len(params) == 1 else [f"{request_id}-{i}" for i in range(len(params))]
        generators = [engine.generate(prompt_ids, params[0], ids[0])]
        group = cls([])
        try:
            group.sequences.append(Sequence(0, generators[0], await first_delta(generators[0])))
            if group.refused is not None or len(params) == 1:
                return group
            generators += [engine.generate(prompt_ids, p, i) for p, i in zip(params[1:], ids[1:])]
            firsts = await asyncio.gather(*(first_delta(g) for g in generators[1:]), return_exceptions=True)
            for error in firsts:
                if isinstance(error, BaseException):
                    raise error
            group.sequences += [Sequence(i + 1, g, f) for i, (g, f) in enumerate(zip(generators[1:], firsts))]
        except BaseException:
            await asyncio.gather(*(g.aclose() for g in generators), return_exceptions=True)
            raise
        if group.refused is not None:
            await group.aclose()
        return group

    @property
    def refused(self) -> RequestOutput | None:
        """The first output of a sequence refused because its SLO is out of reach, if any."""
        return next((s.first for s in self.sequences if s.first.finish_reason is FinishReason.REFUSED), None)

    async def aclose(self) -> None:
        """Abort whatever still runs (a generator closed early aborts its engine request)."""
        await asyncio.gather(*(s.deltas.aclose() for s in self.sequences), return_exceptions=True)

    async def collect(self, http_request: HTTPRequest) -> list[RequestOutput] | None:
        """Every sequence's final output, in index order; None if the client disconnects first."""
        finals = await asyncio.gather(*(_collect(s, http_request) for s in self.sequences))
        if any(f is None for f in finals):
            await self.aclose()
            return None
        return list(finals)

    async def events(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        """(sequence index, output) as the sequences produce them, first outputs first; ends when
        every sequence has finished or one has failed (the others are then aborted)."""
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(seq: Sequence) -> None:
            try:
                await queue.put((seq.index, seq.first))
                if not seq.first.finished:
                    async for delta in seq.deltas:
                        await queue.put((seq.index, delta))
            except Exception as e:  # the stream must end with an error, not hang
                await queue.put((seq.index, RequestOutput(str(seq.index), [], "", True, FinishReason.ERROR, str(e))))

        tasks = [asyncio.ensure_future(pump(s)) for s in self.sequences]
        try:
            num_running = len(tasks)
            while num_running:
                index, delta = await queue.get()
                yield index, delta
                if delta.error:
                    return
                num_running -= delta.finished
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.aclose()


async def _collect(seq: Sequence, http_request: HTTPRequest) -> RequestOutput | None:
    """Run one sequence to its end; None if the client disconnects first (it is then aborted)."""
    if seq.first.finished:
        return seq.first

    async def drain() -> RequestOutput:
        last = seq.first
        async for delta in seq.deltas:
            last = delta
        return last

    task = asyncio.ensure_future(drain())
    while not task.done():
        done, _ = await asyncio.wait({task}, timeout=0.5)
        if not done and await http_request.is_disconnected():
            task.cancel()  # the generator's cleanup aborts the request in the engine
            await asyncio.gather(task, return_exceptions=True)
            return None
    return task.result()
