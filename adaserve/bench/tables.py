"""Markdown tables and the headline comparison from a sweep summary (`adaserve bench sweep` or
`adaserve simulate run`): attainment and goodput per policy and load point, and at each point
adaserve against the best other policy. Plain Python."""

from __future__ import annotations


def _all(point: dict) -> dict:
    return point["categories"]["all"]


def sweep_table(summary: dict) -> str:
    results = summary["results"]
    values = [p["value"] for p in next(iter(results.values()))]
    head = "| policy | " + " | ".join(f"{summary['variable']} {v}" for v in values) + " |"
    lines = [head, "|---" * (len(values) + 1) + "|"]
    for policy, points in results.items():
        cells = [f"{_all(p)['attainment']:.0%} / {_all(p)['goodput_tokens_per_s']:.2f}" for p in points]
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def headline(summary: dict, ours: str = "adaserve") -> list[dict]:
    """Per point: ours vs the best other policy by attainment (and its violations), and by goodput."""
    results = summary["results"]
    out = []
    for i, point in enumerate(results.get(ours, [])):
        others = {p: _all(pts[i]) for p, pts in results.items() if p != ours and i < len(pts)}
        if not others:
            continue
        mine = _all(point)
        by_att = max(others, key=lambda p: (others[p]["attainment"], others[p]["goodput_tokens_per_s"]))
        by_good = max(others, key=lambda p: others[p]["goodput_tokens_per_s"])
        out.append(
            {
                "value": point["value"],
                "attainment": mine["attainment"],
                "best_other_by_attainment": by_att,
                "attainment_ratio": _ratio(mine["attainment"], others[by_att]["attainment"]),
                "violations_ratio": _ratio(mine["violations"], others[by_att]["violations"]),
                "best_other_by_goodput": by_good,
                "goodput_ratio": _ratio(mine["goodput_tokens_per_s"], others[by_good]["goodput_tokens_per_s"]),
            }
        )
    return out


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None
