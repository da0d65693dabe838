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
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from adaserve.bench.protocol import paper_policies, paper_seqs
from adaserve.bench.run import BenchConfig, bench_config, calibrate, run_bench, served_model, with_ttft_targets
from adaserve.bench.server_process import free_port, wait_healthy

VARIABLES = {"rate": "rate", "urgent_share": "urgent_share", "slo_scale": "slo_scale", "fluctuating": None}


# Other engines, measured with the same client and SLOs (judged client-side): "<peer>:<mode>".
PEER_SCRIPTS = {"vllm": "benchmarks/peers/vllm_cpu.sh", "llamacpp": "benchmarks/peers/llama_cpp.sh"}


DEFAULT_POLICIES = ("none", "chunked", "chain:4", "static-tree", "dynamic-tree", "smartspec", "adaserve")


@dataclass(frozen=True)
class SweepConfig:
    """`adaserve bench sweep`: every policy's server, every value of the variable.

    bench: what each point runs (its workload, with the variable set; unloaded_tpot_ms: reuse this
    calibration instead of measuring it on the first server); its server, model, output and SLO
    sending are the sweep's."""

    bench: BenchConfig = field(default_factory=BenchConfig)
    variable: str = "rate"  # a key of VARIABLES
    values: tuple[float, ...] = (0.1, 0.2, 0.4, 0.8)  # ignored for "fluctuating"
    policies: tuple[str, ...] = DEFAULT_POLICIES
    server_model: str = "qwen2.5-coder-1.5b"
    draft: str | None = "qwen2.5-coder-0.5b"  # for the speculating policies
    server_args: tuple[str, ...] = ()  # more arguments for `adaserve serve`
    out_dir: Path = Path("benchmarks/results/sweep")
    step_log_dir: Path | None = None  # each server traces its steps to DIR/<policy>.jsonl
    merge: bool = False  # add these policies to the sweep JSON already in out_dir
    # One server for all of a policy's points; by default each point gets a fresh one, so no cache
    # (llama.cpp's prompt cache: every point sends the same prompts) carries over between points.
    reuse_server: bool = False
    protocol: str = "ours"  # paper: each of our servers gets the paper's sequence limit (bench.protocol)

    def recorded_args(self) -> dict:
        """The sweep's settings as each point's result records them, in the command line's names and
        formats, unless the bench context has them already."""
        return {
            "variable": self.variable,
            "values": ",".join(str(v) for v in self.values),
            "policies": ",".join(self.policies),
            "server_model": self.server_model,
            "draft": self.draft,
            "server_arg": list(self.server_args) or None,
            "out_dir": str(self.out_dir),
            "step_log_dir": str(self.step_log_dir) if self.step_log_dir is not None else None,
            "merge": self.merge,
            "reuse_server": self.reuse_server,
            "protocol": self.protocol,
        }


def is_peer(policy: str) -> bool:
    return policy.partition(":")[0] in PEER_SCRIPTS


def start_server(config: SweepConfig, policy: str, port: int) -> subprocess.Popen:
    if is_peer(policy):
        peer, _, mode = policy.partition(":")
        script = PEER_SCRIPTS[peer]
        if not Path(script).exists():
            raise SystemExit(f"{policy} needs {script}: run the sweep from the repository root")
        return subprocess.Popen(["bash", script, mode, str(port)])
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
        config.server_model,
        "--policy",
        policy,
    ]
    if config.draft and policy not in ("none", "chunked"):
        cmd += ["--draft", config.draft]
    if config.step_log_dir:
        cmd += ["--step-log", str(Path(config.step_log_dir) / f"{policy.replace(':', '-')}.jsonl")]
    if config.protocol == "paper":
        cmd += ["--max-num-seqs", str(paper_seqs(policy))]
    cmd += list(config.server_args)
    return subprocess.Popen(cmd)


def sweep(config: SweepConfig) -> dict:
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    unloaded = config.bench.unloaded_tpot_ms
    results: dict[str, list[dict]] = {}
    for policy in config.policies:
        points, unloaded, config = _sweep_policy(config, policy, unloaded)
        results.setdefault(policy, []).extend(points)
    summary = {"variable": config.variable, "unloaded_tpot_ms": unloaded, "results": results}
    if config.merge:
        summary = merge_into(out_dir / f"sweep_{config.variable}.json", summary)
    (out_dir / f"sweep_{config.variable}.json").write_text(json.dumps(summary, indent=1))
    plot_sweep(summary, out_dir / f"sweep_{config.variable}.png")
    return summary


def _sweep_policy(config: SweepConfig, policy: str, unloaded: float | None) -> tuple[list[dict], float, SweepConfig]:
    """Every point of `policy`, on a fresh server each (or one for all: reuse_server): the points'
    summaries, the unloaded per-token latency and the config with the prefill calibrated for TTFT
    targets (both measured on the first server if not known yet, then the same for every policy)."""
    values: list[float | None] = [None] if config.variable == "fluctuating" else list(config.values)
    groups = [values] if config.reuse_server else [[v] for v in values]
    points = []
    for group in groups:
        more, unloaded, config = _serve_points(config, policy, group, unloaded)
        points += more
    return points, unloaded, config


def _serve_points(
    config: SweepConfig, policy: str, values: list[float | None], unloaded: float | None
) -> tuple[list[dict], float, SweepConfig]:
    """One server for `policy`, one run per value (see _sweep_policy)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(config, policy, port)
    points = []
    try:
        wait_healthy(url, server, timeout_s=3600)
        model = served_model(url)
        if unloaded is None:
            unloaded = calibrate(url, model)
            print(f"unloaded per-token latency ({policy}): {unloaded:.1f} ms", flush=True)
        config = replace(config, bench=with_ttft_targets(config.bench, url, model, unloaded))
        for value in values:
            out = Path(config.out_dir) / f"{policy.replace(':', '-')}_{config.variable}_{value}.json"
            result = run_bench(_point_config(config, policy, url, model, unloaded, value, out))
            points.append({"policy": policy, "value": value, **{k: result[k] for k in ("wall_time_s", "categories")}})
            c = result["categories"]["all"]
            print(
                f"{policy:14s} {config.variable}={value}: attainment {c['attainment']:.0%}, "
                f"goodput {c['goodput_tokens_per_s']:.2f} tok/s",
                flush=True,
            )
    finally:
        server.terminate()
        server.wait(timeout=120)
    return points, unloaded, config


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


def _point_config(
    config: SweepConfig, policy: str, url: str, model: str, unloaded: float, value: float | None, out: Path
) -> BenchConfig:
    """The sweep's own bench config, pointed at this server, with the swept variable set."""
    base = config.bench
    if config.variable == "fluctuating":
        workload = replace(base.workload, arrival="fluctuating")
    else:
        workload = replace(base.workload, **{VARIABLES[config.variable]: value})
    return replace(
        base,
        url=url,
        workload=workload,
        model=model,
        api_key=None,
        unloaded_tpot_ms=unloaded,
        send_slo=not is_peer(policy),
        workload_file=None,
        save_workload=None,
        out=str(out),
        context=_with_defaults(base.context, config.recorded_args()),
    )


def _with_defaults(context: Mapping[str, Any], settings: dict) -> dict:
    """The context, with the sweep's settings where it has none (the command line's spelling wins)."""
    return {**context, **{k: v for k, v in settings.items() if k not in context}}


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
    p.add_argument("--policies", default=",".join(DEFAULT_POLICIES))
    p.add_argument("--server-model", default="qwen2.5-coder-1.5b")
    p.add_argument("--draft", default="qwen2.5-coder-0.5b")
    p.add_argument("--server-arg", action="append", help="extra argument for `adaserve serve` (repeatable)")
    p.add_argument("--out-dir", default="benchmarks/results/sweep")
    p.add_argument("--step-log-dir", default=None, help="each server traces its steps to DIR/<policy>.jsonl")
    p.add_argument("--merge", action="store_true", help="add these policies to the sweep JSON already in --out-dir")
    p.add_argument(
        "--reuse-server", action="store_true", help="one server for all of a policy's points (default: one per point)"
    )


def sweep_config(args) -> SweepConfig:
    """The command line's SweepConfig (see add_sweep_args and add_bench_args)."""
    policies = args.policies.split(",")
    return SweepConfig(
        bench=bench_config(args),
        variable=args.variable,
        values=() if args.variable == "fluctuating" else tuple(float(v) for v in args.values.split(",")),
        policies=tuple(paper_policies(policies) if args.protocol == "paper" else policies),
        server_model=args.server_model,
        draft=args.draft,
        server_args=tuple(args.server_arg or ()),
        out_dir=Path(args.out_dir),
        step_log_dir=Path(args.step_log_dir) if args.step_log_dir else None,
        merge=args.merge,
        reuse_server=args.reuse_server,
        protocol=args.protocol,
    )
