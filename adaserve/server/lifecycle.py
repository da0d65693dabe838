"""Graceful drain: uvicorn with SIGTERM/SIGINT handled in two stages.

    first signal  -> draining: /v1 answers 503 + Retry-After, /health answers 503 "draining";
                     requests in flight run to the end (at most --drain-timeout, then they end
                     with an explicit error); then uvicorn shuts down and the process exits 0
    second signal -> uvicorn's forced exit, at once (the signal is re-raised: exit by signal)

Why listen while draining rather than close the socket: a load balancer or client that connects
during the drain gets a 503 it can retry elsewhere, not a refused connection it cannot tell from a
crash.
"""

from __future__ import annotations

import asyncio
import logging
import time
from types import FrameType

import uvicorn
from fastapi import FastAPI

from adaserve.engine.async_engine import AsyncEngine

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, engine: AsyncEngine, drain_timeout_s: float) -> None:
        super().__init__(config)
        self.app, self.engine, self.drain_timeout_s = app, engine, drain_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task | None = None  # (held: the loop keeps only weak references)

    async def main_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        await super().main_loop()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.app.state.draining or self._loop is None:  # second signal, or not serving yet
            self._captured_signals.append(sig)
            self.force_exit = self.should_exit = True
            return
        self.app.state.draining = True
        log.warning("draining: %d requests in flight, at most %.0f s", self.engine.num_in_flight, self.drain_timeout_s)
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._drain_task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.drain_timeout_s
        while self.engine.num_in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.engine.num_in_flight:
            log.warning("drain timeout: ending %d requests with an error", self.engine.num_in_flight)
            self.engine.fail_in_flight("the server is shutting down (drain timeout)")
            settle = time.monotonic() + 5.0
            while self.engine.num_in_flight and time.monotonic() < settle:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # let the last responses flush
        log.info("drained; shutting down")
        self.should_exit = True


def serve(app: FastAPI, engine: AsyncEngine, host: str, port: int, drain_timeout_s: float) -> None:
    """Run until drained (returns: exit 0) or forced (the second signal is re-raised)."""
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
    DrainingServer(config, app, engine, drain_timeout_s).run()
