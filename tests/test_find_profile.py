"""The simulator's `--setup cpu` and `profile:` defaults read the pair's cached profile: the one
taken with today's kernels on this machine, not merely the newest."""

import json

from adaserve.kernels import kernel_version
from adaserve.models.sources import resolve_model
from adaserve.sim.commands import find_profile


def write_profile(root, name, model_dir, created, kernels=None):
    meta = {"model": str(model_dir), "draft": None, "created": created}
    if kernels:
        meta["kernels"] = kernels
    (root / f"{name}.json").write_text(json.dumps({"meta": meta}))


def test_todays_kernels_win_over_a_newer_profile_of_other_kernels(tmp_path, monkeypatch):
    model_dir = resolve_model("smollm2-135m", progress=False)
    monkeypatch.setenv("ADASERVE_CACHE", str(tmp_path))
    (tmp_path / "profiles").mkdir()
    write_profile(tmp_path / "profiles", "ours", model_dir, "2026-12-01T10:00:00", kernel_version())
    write_profile(tmp_path / "profiles", "newer-other-build", model_dir, "2026-12-02T10:00:00", "0123456789abcdef")
    write_profile(tmp_path / "profiles", "newest-unmarked", model_dir, "2026-12-03T10:00:00")
    assert find_profile(str(model_dir), None).stem == "ours"
    (tmp_path / "profiles" / "ours.json").unlink()
    assert find_profile(str(model_dir), None).stem == "newest-unmarked"
