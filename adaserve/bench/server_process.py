"""Start-up helpers for a server run as a child process (demo, sweeps, fuzzing, tests)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, timeout_s: float) -> None:
    """Poll /health until it answers 200; exit with a message if the server dies or times out."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if server.poll() is not None:
            sys.exit(f"the server exited with code {server.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    sys.exit(f"the server did not become healthy within {timeout_s:.0f} s")
