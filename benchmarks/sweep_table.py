"""Print a sweep's markdown table (attainment / goodput per policy and point) and adaserve's ratios
to the best other policy at each point.

    python benchmarks/sweep_table.py benchmarks/results/sweep_rate/sweep_rate.json
"""

import json
import sys

from adaserve.bench.tables import headline, sweep_table

if __name__ == "__main__":
    summary = json.load(open(sys.argv[1]))
    print(sweep_table(summary))
    for h in headline(summary):
        fmt = lambda x: "n/a" if x is None else f"{x:.2f}x"
        print(
            f"{summary['variable']} {h['value']}: adaserve attainment {h['attainment']:.0%}, "
            f"{fmt(h['attainment_ratio'])} of {h['best_other_by_attainment']} "
            f"(violations {fmt(h['violations_ratio'])}); "
            f"goodput {fmt(h['goodput_ratio'])} of {h['best_other_by_goodput']}"
        )
