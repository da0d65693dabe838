"""Helpers of the server tests (the live-server fixtures are in conftest.py)."""

import time

MODEL = "smollm2"


def wait_idle(engine, timeout=30.0) -> None:
    kv = engine.engine.kv
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (
            not engine.engine.scheduler.has_work
            and kv.num_free_blocks == kv.pool.num_blocks
            and engine.num_in_flight == 0
        ):
            return
        time.sleep(0.05)
    raise AssertionError(f"engine not idle: {kv.num_free_blocks}/{kv.pool.num_blocks} blocks free")
