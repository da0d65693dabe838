"""Sweep tables and the headline ratios, on a hand-made summary."""

import pytest

from adaserve.bench.tables import headline, sweep_table


def point(value, attainment, violations, goodput):
    return {
        "value": value,
        "categories": {"all": {"attainment": attainment, "violations": violations, "goodput_tokens_per_s": goodput}},
    }


SUMMARY = {
    "variable": "rate",
    "results": {
        "none": [point(0.1, 0.9, 1, 5.0), point(0.4, 0.2, 8, 2.0)],
        "chain:4": [point(0.1, 0.8, 2, 6.0), point(0.4, 0.3, 7, 1.5)],
        "adaserve": [point(0.1, 1.0, 0, 6.5), point(0.4, 0.9, 1, 4.5)],
    },
}


def test_headline_compares_with_the_best_other_policy():
    light, heavy = headline(SUMMARY)
    assert heavy["best_other_by_attainment"] == "chain:4" and heavy["attainment_ratio"] == pytest.approx(3.0)
    assert heavy["violations_ratio"] == pytest.approx(1 / 7)
    assert heavy["best_other_by_goodput"] == "none" and heavy["goodput_ratio"] == pytest.approx(2.25)
    assert light["violations_ratio"] == 0.0 and light["best_other_by_goodput"] == "chain:4"


def test_sweep_table_has_a_row_per_policy():
    table = sweep_table(SUMMARY).splitlines()
    assert table[0] == "| policy | rate 0.1 | rate 0.4 |"
    assert table[4] == "| adaserve | 100% / 6.50 | 90% / 4.50 |"


def test_sweep_merge_adds_policies_and_refuses_other_calibrations(tmp_path):
    import json

    from adaserve.bench.sweep import merge_into

    path = tmp_path / "sweep_rate.json"
    path.write_text(json.dumps({**SUMMARY, "unloaded_tpot_ms": 250.0}))
    extra = {"variable": "rate", "unloaded_tpot_ms": 250.0, "results": {"vllm:plain": [point(0.1, 0.5, 5, 1.0)]}}
    merged = merge_into(path, extra)
    assert list(merged["results"]) == ["none", "chain:4", "adaserve", "vllm:plain"]
    with pytest.raises(ValueError, match="unloaded-tpot-ms 250.0"):
        merge_into(path, {**extra, "unloaded_tpot_ms": 240.0})
