"""The shapes of vLLM's OpenAI responses, recorded from a live vLLM server, so that
`tests/test_vllm_shapes.py` can check ours against them: for each request below (sent blocking and
streaming) the JSON keys, their nesting and their value types, without the values.

Record (vLLM's CPU build serving SmolLM2 on port 8100, then this script):
    MODEL=smollm2-135m benchmarks/peers/vllm_cpu.sh plain 8100 &
    .venv/bin/python benchmarks/peers/vllm_shapes.py --url http://127.0.0.1:8100 --model smollm2-135m

A shape is the JSON with every scalar replaced by its type name ("str", "number", "bool", "null"),
every list by the union of its elements' shapes (in a one-element list) and a stream by the union
of its chunks' shapes. A union of dicts holds every key seen; a union of types joins them by "|".
Worked example: the chunks {"a": 1} and {"a": null, "b": ["x"]} have the shape
{"a": "null|number", "b": ["str"]}.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
SHAPES_PATH = ROOT / "tests" / "data" / "vllm_shapes.json"
CHAT = [{"role": "user", "content": "Name three colours."}]
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
# (name, route, body): each is sent with stream false and with stream true (usage included)
CASES = [
    ("completion", "completions", {"prompt": "The capital of France is", "max_tokens": 8}),
    ("completion_stop", "completions", {"prompt": "1, 2, 3, 4,", "max_tokens": 16, "stop": [" 6"]}),
    ("completion_logprobs", "completions", {"prompt": "def add(a, b):", "max_tokens": 6, "logprobs": 2}),
    ("completion_n", "completions", {"prompt": "Once upon a", "max_tokens": 6, "n": 2, "seed": 1, "temperature": 0.8}),
    ("chat", "chat/completions", {"messages": CHAT, "max_tokens": 8}),
    ("chat_logprobs", "chat/completions", {"messages": CHAT, "max_tokens": 6, "logprobs": True, "top_logprobs": 2}),
    ("chat_n", "chat/completions", {"messages": CHAT, "max_tokens": 6, "n": 2, "seed": 3, "temperature": 0.8}),
    (
        "chat_json_schema",
        "chat/completions",
        {
            "messages": [{"role": "user", "content": "A person as JSON:"}],
            "max_tokens": 40,
            "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}},
        },
    ),
    (
        "chat_penalties",
        "chat/completions",
        {"messages": CHAT, "max_tokens": 8, "presence_penalty": 0.5, "frequency_penalty": 0.5, "logit_bias": {"0": -5}},
    ),
]


def _scalar_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return "str"


def merge(a, b):
    """The union of two shapes (see the module's docstring); None is "not seen yet"."""
    if a is None or b is None:
        return b if a is None else a
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: merge(a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys())}
    if isinstance(a, list) and isinstance(b, list):
        return [merge(a[0], b[0])] if a and b else a or b
    if isinstance(a, str) and isinstance(b, str):
        return "|".join(sorted(set(a.split("|")) | set(b.split("|"))))
    return b if a == "null" else a  # (a container or null: the container, nullability not kept)


def shape_of(value, key: str | None = None):
    """`key` is the name `value` sits under: completions' `top_logprobs` are maps from token text
    to log-probability, whose keys (the tokens) are data, so they are one key, "<token>"."""
    if isinstance(value, dict):
        if key == "<map>":
            return {"<token>": shape_of(list(value.values()))[0] if value else "number"}
        return {k: shape_of(v, k) for k, v in sorted(value.items())}
    if isinstance(value, list):
        is_map = key == "top_logprobs" and all(not isinstance(x, dict) or "token" not in x for x in value)
        element_key = "<map>" if is_map else None
        element = None
        for item in value:
            element = merge(element, shape_of(item, element_key))
        return [] if element is None else [element]
    return _scalar_type(value)


def _sse_chunks(response: httpx.Response) -> list[dict]:
    chunks = []
    for line in response.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            chunks.append(json.loads(line[len("data: ") :]))
    return chunks


def record(url: str, model: str, headers: dict | None = None) -> dict[str, object]:
    """Sends every case to the server at `url` and returns {"<name>" / "<name>_stream": shape}."""
    shapes: dict[str, object] = {}
    with httpx.Client(base_url=url, headers=headers or {}, timeout=300) as client:
        for name, route, body in CASES:
            body = {"model": model, "temperature": 0} | body
            r = client.post(f"/v1/{route}", json=body)
            r.raise_for_status()
            shapes[name] = shape_of(r.json())
            stream_body = body | {"stream": True, "stream_options": {"include_usage": True}}
            with client.stream("POST", f"/v1/{route}", json=stream_body) as r:
                r.raise_for_status()
                shape = None
                for chunk in _sse_chunks(r):
                    shape = merge(shape, shape_of(chunk))
                shapes[f"{name}_stream"] = shape
    return shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8100")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--out", type=Path, default=SHAPES_PATH)
    args = parser.parse_args()
    version = httpx.get(f"{args.url}/version", timeout=10).json().get("version")
    shapes = record(args.url, args.model)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"server": f"vllm {version}", "model": args.model, "python": platform.python_version()}
    args.out.write_text(json.dumps({"recorded_from": meta, "shapes": shapes}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out} ({len(shapes)} shapes from vllm {version})")


if __name__ == "__main__":
    main()
