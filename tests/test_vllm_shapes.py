"""Our response shapes against vLLM's, recorded from a live vLLM server by
`benchmarks/peers/vllm_shapes.py` (tests/data/vllm_shapes.json): the same requests, blocking and
streaming, must give the same keys, nesting and value types. vLLM's own extensions that we do not
serve are listed below; our extras may only sit in `usage` (measured TTFT/TPOT, SLO, speculation)."""

import json

import pytest

from benchmarks.peers.vllm_shapes import CASES, SHAPES_PATH, record

# Response fields for features adaserve does not have: vLLM extensions, and OpenAI's service tiers
NOT_SERVED = {"kv_transfer_params", "ec_transfer_params", "prompt_logprobs", "prompt_token_ids", "prompt_text"}
NOT_SERVED |= {"token_ids", "routed_experts", "reasoning", "service_tier", "metrics"}


def differences(theirs, ours, path: str = "") -> list[str]:
    """Where `ours` departs from `theirs` (two shapes); [] when they match."""
    if isinstance(theirs, dict):
        if not isinstance(ours, dict):
            return [f"{path}: {ours!r}, vLLM has an object"]
        out = [f"{path}.{k}: missing" for k in theirs.keys() - ours.keys() if k not in NOT_SERVED]
        if not path.endswith("usage"):
            out += [f"{path}.{k}: not in vLLM's" for k in ours.keys() - theirs.keys()]
        for k in theirs.keys() & ours.keys():
            out += differences(theirs[k], ours[k], f"{path}.{k}")
        return out
    if isinstance(theirs, list):
        if not isinstance(ours, list):
            return [f"{path}: {ours!r}, vLLM has a list"]
        return differences(theirs[0], ours[0], f"{path}[]") if theirs and ours else []
    if not isinstance(ours, str):
        return [] if theirs == "null" else [f"{path}: a container, vLLM has {theirs}"]
    return [] if set(ours.split("|")) == set(theirs.split("|")) else [f"{path}: {ours}, vLLM has {theirs}"]


@pytest.fixture(scope="module")
def recorded() -> dict:
    return json.loads(SHAPES_PATH.read_text())["shapes"]


@pytest.fixture(scope="module")
def ours(server) -> dict:
    return record(server.url, "smollm2")


@pytest.mark.parametrize("name", [name + suffix for name, _, _ in CASES for suffix in ("", "_stream")])
def test_response_shape_matches_vllm(recorded, ours, name):
    diffs = differences(recorded[name], ours[name])
    assert diffs == [], "\n".join(diffs)


@pytest.mark.parametrize(
    ("theirs", "ours", "expected"),
    [
        ({"a": "str", "b": ["number"]}, {"a": "str", "b": ["number"]}, []),
        ({"a": "str"}, {}, [".a: missing"]),
        ({"a": "str"}, {"a": "str", "x": "bool"}, [".x: not in vLLM's"]),
        ({"usage": {"a": "number"}}, {"usage": {"a": "number", "ttft_ms": "number"}}, []),
        ({"a": "null|str"}, {"a": "null"}, [".a: null, vLLM has null|str"]),
        ({"a": [{"b": "number"}]}, {"a": [{"b": "str"}]}, [".a[].b: str, vLLM has number"]),
        ({"a": "null"}, {"a": {"b": "str"}}, []),
        ({"prompt_token_ids": ["number"]}, {}, []),
    ],
)
def test_differences_finds_what_departs(theirs, ours, expected):
    assert differences(theirs, ours) == expected
