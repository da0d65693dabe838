"""Print a sweep's markdown table (attainment / goodput per policy and point) and adaserve's ratios
to the best other policy at each point; with --headline, also write its points as the "cpu" rows of
benchmarks/results/slo_serving/headline.json (the issue's format; the "sim" rows are left alone).

    python benchmarks/sweep_table.py benchmarks/results/sweep_rate/sweep_rate.json [--headline]
"""

import argparse
import json
from pathlib import Path

from adaserve.bench.tables import headline, sweep_table

HEADLINE = Path("benchmarks/results/slo_serving/headline.json")


def write_headline(path: str, summary: dict, rows: list[dict]) -> None:
    results = summary["results"]
    cpu = []
    for h in rows:
        i = next(k for k, p in enumerate(results["adaserve"]) if p["value"] == h["value"])
        other = results[h["best_other_by_attainment"]][i]["categories"]["all"]
        cpu.append(
            {
                "rate": h["value"],
                "adaserve_joint": round(h["attainment"], 4),
                "best_other": h["best_other_by_attainment"],
                "best_other_joint": round(other["attainment"], 4),
                "attainment_ratio": None if h["attainment_ratio"] is None else round(h["attainment_ratio"], 3),
                "goodput_ratio": None if h["goodput_ratio"] is None else round(h["goodput_ratio"], 3),
            }
        )
    out = json.loads(HEADLINE.read_text()) if HEADLINE.exists() else {}
    out["cpu"], out["cpu_source"] = cpu, path
    HEADLINE.write_text(json.dumps(out, indent=1))
    print(f"wrote the cpu rows of {HEADLINE}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep")
    ap.add_argument("--headline", action="store_true", help=f"write the points as the cpu rows of {HEADLINE}")
    args = ap.parse_args()
    summary = json.load(open(args.sweep))
    print(sweep_table(summary))
    rows = headline(summary)
    for h in rows:
        fmt = lambda x: "n/a" if x is None else f"{x:.2f}x"
        print(
            f"{summary['variable']} {h['value']}: adaserve attainment {h['attainment']:.0%}, "
            f"{fmt(h['attainment_ratio'])} of {h['best_other_by_attainment']} "
            f"(violations {fmt(h['violations_ratio'])}); "
            f"goodput {fmt(h['goodput_ratio'])} of {h['best_other_by_goodput']}"
        )
    if args.headline:
        write_headline(args.sweep, summary, rows)
