"""Property-based API fuzzing: schemathesis generates requests from the server's OpenAPI spec and
checks that none gets a 5xx (and that responses match the spec where it says so).

Starts `adaserve serve --model smollm2-135m` on a free port (short context so generated max_tokens
stay cheap), runs `schemathesis run`, writes its report and a JSON summary.
Needs `pip install schemathesis`.
Usage: python benchmarks/fuzz_server.py [--max-examples 60] [--out benchmarks/results/fuzz_server.json]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from adaserve.bench.server_process import free_port, wait_healthy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-examples", type=int, default=60, help="per operation")
    ap.add_argument("--out", default="benchmarks/results/fuzz_server.json")
    args = ap.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "adaserve.cli",
            "serve",
            "--model",
            "smollm2-135m",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--max-model-len",
            "96",
            "--slo-class",
            "chat=tpot:200ms",
        ]
    )
    try:
        wait_healthy(url, server, timeout_s=600)
        start = time.time()
        run = subprocess.run(
            [
                str(Path(sys.executable).parent / "schemathesis"),
                "run",
                f"{url}/openapi.json",
                "--checks",
                "not_a_server_error",
                "--max-examples",
                str(args.max_examples),
                "--request-timeout",
                "120",
                "--no-color",
            ],
            capture_output=True,
            text=True,
        )
        report = run.stdout + run.stderr
        alive = server.poll() is None
    finally:
        server.terminate()
        server.wait(timeout=60)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".txt").write_text(report)
    cases = [int(n) for n in re.findall(r"(\d+) generated", report)]
    summary = {
        "schemathesis_exit_code": run.returncode,
        "server_alive_after": alive,
        "seconds": round(time.time() - start, 1),
        "max_examples_per_operation": args.max_examples,
        "generated_cases": sum(cases) if cases else None,
        "report": str(out.with_suffix(".txt")),
    }
    out.write_text(json.dumps(summary, indent=1))
    print(report[-3000:])
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
