"""Structured output with xgrammar: a request's grammar masks the target's logits at every tree
node it verifies and the draft's logits at every node it expands.

Why speculation stays lossless: a node's mask is the grammar's state after the committed output
plus the drafted tokens from the root down to that node, which is the mask plain decoding would
apply after generating that path. A drafted token the grammar rejects has probability 0 under
its parent's masked distribution, so it is never accepted; its own row is left unmasked (any
row would do, it is never used) rather than all -inf, which would turn softmax into NaN.

Worked example (JSON, output so far '{'): tree root -> '"' -> 'a' and root -> 'x'. Row 0 (the
root) allows '"', '}' or white space; row 1 (after '"', inside a key) allows 'a', 'x' and most
other text; row 2 what may follow '{"a'; node 3 ('x') is not JSON after '{', so row 0 masks it
out and its own row stays all-allowed.
"""

from __future__ import annotations

import json
import threading

import torch

from adaserve.sampling import StructuredOutput

# JSON on one line, with the usual ", " and ": " separators. With free white space a small model
# can pad JSON with newlines and tabs until max_tokens: SmolLM2 did on 3 of 50 random schemas,
# with runs capped at 24 characters too. (vLLM offers the same choice as disable_any_whitespace.)
JSON_LAYOUT = {"any_whitespace": False}


def _xgrammar():
    try:
        import xgrammar
    except ImportError as e:  # (an optional dependency: make setup installs it)
        raise ValueError("structured output needs xgrammar: pip install --no-deps xgrammar apache-tvm-ffi") from e
    return xgrammar


def _choice_regex(choices: tuple[str, ...]) -> str:
    """One of the strings, literally: 'a.b' | 'c' -> (a\\.b|c)."""
    escaped = ["".join("\\" + ch if not ch.isalnum() and ch != " " else ch for ch in c) for c in choices]
    return "(" + "|".join(escaped) + ")"


class GrammarCompiler:
    """Compiles constraints for one tokenizer; compiled grammars are cached by xgrammar. The
    tokenizer's vocabulary is read once, on the first structured request (about a second for a
    152k vocabulary), so servers that never see one never pay for it."""

    def __init__(self, tokenizer, vocab_size: int, stop_token_ids: list[int]) -> None:
        self.tokenizer, self.vocab_size, self.stop_token_ids = tokenizer, vocab_size, sorted(stop_token_ids)
        self._compiler = None
        self._lock = threading.Lock()  # the server thread compiles, the engine thread may too

    def _get(self):
        with self._lock:
            if self._compiler is None:
                xgr = _xgrammar()
                info = xgr.TokenizerInfo.from_huggingface(
                    self.tokenizer, vocab_size=self.vocab_size, stop_token_ids=self.stop_token_ids
                )
                self._compiler = xgr.GrammarCompiler(info, max_threads=1)
            return self._compiler

    def compile(self, spec: StructuredOutput):
        """A compiled grammar, or a ValueError that says what is wrong with the spec."""
        compiler = self._get()
        try:
            if spec.kind == "json_object":  # (any object: additional properties allowed)
                return compiler.compile_json_schema('{"type": "object"}', strict_mode=False, **JSON_LAYOUT)
            if spec.kind == "json_schema":
                json.loads(spec.spec)
                return compiler.compile_json_schema(spec.spec, strict_mode=True, **JSON_LAYOUT)
            if spec.kind == "regex":
                return compiler.compile_regex(spec.spec)
            if spec.kind == "choice":
                return compiler.compile_regex(_choice_regex(spec.choices))
            return compiler.compile_grammar(spec.spec)
        except (RuntimeError, ValueError, TypeError) as e:
            raise ValueError(f"invalid {spec.kind} for structured output: {e}") from e

    def state(self, spec: StructuredOutput) -> GrammarState:
        return GrammarState(_xgrammar().GrammarMatcher(self.compile(spec)), self.vocab_size)


class GrammarState:
    """One request's position in its grammar: advanced by each committed token."""

    def __init__(self, matcher, vocab_size: int) -> None:
        self.matcher, self.vocab_size = matcher, vocab_size

    def accept(self, token_ids: list[int]) -> None:
        """Commit output tokens. A token the mask allowed is always accepted; one that is not
        means a bug, and fails the request rather than returning output off its grammar."""
        for token_id in token_ids:
            if self.matcher.is_terminated():
                return  # (past the stop token: ignore_eos runs on unconstrained)
            if not self.matcher.accept_token(token_id):
                raise RuntimeError(f"token {token_id} is outside the request's grammar")

    def tree_bitmask(self, token_ids: list[int], parents: list[int]) -> torch.Tensor:
        """[num_nodes, ceil(vocab / 32)] int32: the allowed next tokens after each node of a tree
        (node 0 = the root, the last committed token; parents-first order)."""
        xgr = _xgrammar()
        num_nodes = len(token_ids)
        bitmask = xgr.allocate_token_bitmask(num_nodes, self.vocab_size)
        xgr.reset_token_bitmask(bitmask)  # all allowed
        if self.matcher.is_terminated():
            return bitmask
        # First-child / next-sibling links, xgrammar's tree encoding. Worked example: parents
        # [-1, 0, 1, 0] -> first child [1, 2, -1, -1], next sibling [-1, 3, -1, -1].
        first_child, next_sibling = [-1] * num_nodes, [-1] * num_nodes
        for node in range(num_nodes - 1, 0, -1):
            parent = parents[node]
            next_sibling[node], first_child[parent] = first_child[parent], node
        self.matcher.traverse_draft_tree(
            torch.tensor(first_child), torch.tensor(next_sibling), torch.tensor(token_ids), bitmask
        )
        bitmask[(bitmask == 0).all(-1)] = -1  # (the traversal clears the rows of nodes off the grammar)
        return bitmask

    def paths_bitmask(self, paths: list[list[int]]) -> torch.Tensor:
        """[len(paths), ceil(vocab / 32)] int32: the allowed next tokens after each path of drafted
        tokens (from the root, excluded). A path off the grammar gets an all-allowed row."""
        xgr = _xgrammar()
        bitmask = xgr.allocate_token_bitmask(len(paths), self.vocab_size)
        xgr.reset_token_bitmask(bitmask)
        if self.matcher.is_terminated():
            return bitmask
        for row, path in enumerate(paths):
            num_accepted = 0
            for token_id in path:
                if self.matcher.is_terminated() or not self.matcher.accept_token(token_id):
                    break
                num_accepted += 1
            if num_accepted == len(path) and not self.matcher.is_terminated():  # (nothing follows a stop)
                self.matcher.fill_next_token_bitmask(bitmask, row)
            if num_accepted:
                self.matcher.rollback(num_accepted)
        return bitmask


def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """logits [num_rows, vocab] -> a masked copy (-inf where the grammar forbids a token); the
    input is left as it was (the log-probs returned to the client are the model's own)."""
    masked = logits.float().clone()  # [num_rows, vocab]
    vocab_size = min(masked.shape[-1], bitmask.shape[-1] * 32)
    _xgrammar().apply_token_bitmask_inplace(masked, bitmask.to(masked.device), vocab_size=vocab_size)
    if masked.shape[-1] > vocab_size:
        masked[:, vocab_size:] = float("-inf")  # (padding ids past the tokenizer: never valid)
    return masked
