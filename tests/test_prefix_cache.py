"""Automatic prefix caching: block hashing and sharing in the KV manager (tables over ints), and
in the engine greedy output with the cache equal to output without it, speculation included."""

import pytest

from adaserve import LLM, SamplingParams
from adaserve.kv.manager import KVCacheManager, block_hash

BS = 4


def cached_kv(num_blocks=8) -> KVCacheManager:
    return KVCacheManager(num_blocks, BS, enable_prefix_caching=True)


def run_to_commit(kv: KVCacheManager, request_id: str, token_ids: list[int]) -> int:
    """Admit a request from the cache, compute the rest of its tokens, register its full blocks."""
    cached = kv.cached_prefix(token_ids)
    num_cached = kv.admit(request_id, token_ids, cached)
    kv.reserve(request_id, len(token_ids) - num_cached)
    kv.cache_blocks(request_id, token_ids, len(token_ids))
    return num_cached


@pytest.mark.parametrize(
    "first, second, num_hit_tokens",
    [
        (list(range(10)), list(range(10)), 8),  # the same 10 tokens: the 2 full blocks
        (list(range(8)), list(range(8)), 4),  # 8 tokens: the last one is always computed
        (list(range(10)), list(range(9)) + [99], 8),  # differs in block 3
        (list(range(10)), [0, 1, 2, 99] + list(range(4, 10)), 0),  # differs in block 1
        (list(range(10)), [99] + list(range(1, 10)), 0),
        (list(range(3)), list(range(3)), 0),  # no full block
    ],
)
def test_a_request_starts_from_the_longest_cached_run_of_full_blocks(first, second, num_hit_tokens):
    kv = cached_kv()
    assert run_to_commit(kv, "a", first) == 0
    assert run_to_commit(kv, "b", second) == num_hit_tokens
    assert kv.block_tables["b"][: num_hit_tokens // BS] == kv.block_tables["a"][: num_hit_tokens // BS]


def test_the_same_block_tokens_after_a_different_prefix_do_not_match():
    kv = cached_kv()
    run_to_commit(kv, "a", [1, 1, 1, 1, 7, 7, 7, 7, 0])
    assert kv.cached_prefix([2, 2, 2, 2, 7, 7, 7, 7, 0]) == []  # block 2's hash chains block 1's
    assert block_hash(b"", [7, 7, 7, 7]) != block_hash(block_hash(b"", [1, 1, 1, 1]), [7, 7, 7, 7])


def test_shared_blocks_are_counted_and_outlive_their_first_holder():
    kv = cached_kv(num_blocks=6)
    tokens = list(range(9))
    run_to_commit(kv, "a", tokens)  # 3 blocks, 2 registered
    run_to_commit(kv, "b", tokens)  # shares 2, owns 1
    assert kv.num_used_blocks == 4
    kv.free("a")
    assert kv.num_used_blocks == 3  # a's shared blocks stay with b; its tail block is free
    kv.free("b")
    assert kv.num_free_blocks == 6  # registered blocks nobody holds count as free ...
    assert run_to_commit(kv, "c", tokens) == 8  # ... and are still found


def test_unregistered_free_blocks_go_first_then_the_least_recently_freed():
    kv = cached_kv(num_blocks=4)
    run_to_commit(kv, "a", [1] * 5)  # blocks 0 (registered) and 1
    run_to_commit(kv, "b", [2] * 5)  # blocks 2 (registered) and 3
    kv.free("a")
    kv.free("b")
    kv.reserve("c", 8)  # the two unregistered blocks: both prefixes stay cached
    assert kv.cached_prefix([1] * 5) and kv.cached_prefix([2] * 5)
    kv.reserve("c", 4)  # now a registered one must go: a's, freed first
    assert kv.cached_prefix([1] * 5) == [] and kv.cached_prefix([2] * 5) == [2]
    assert kv.pool.num_cached == 1


def test_admission_counts_the_cached_blocks_it_takes_off_the_free_list():
    kv = cached_kv(num_blocks=3)
    run_to_commit(kv, "a", [5] * 9)  # 3 blocks, 2 registered
    kv.free("a")
    cached = kv.cached_prefix([5] * 9)
    assert kv.can_admit(cached, 1 + 3 * BS - 9)  # 2 shared + 1 new = all 3
    kv.reserve("x", 1)  # the unregistered block: the 2 free ones left are the cache itself
    assert not kv.can_admit(cached, 1)  # sharing both leaves none for the new token
    assert kv.can_admit([], 2 * BS)  # a request that shares nothing may evict them


def test_rollback_never_reaches_into_registered_blocks():
    kv = cached_kv()
    run_to_commit(kv, "a", list(range(8)))
    kv.reserve("a", 5)  # a speculation tree past the committed 8
    kv.truncate("a", 9)  # accepted one
    with pytest.raises(ValueError, match="registered"):
        kv.truncate("a", 3)


def test_hit_rate_counts_tokens_of_admitted_requests_and_switching_off_finds_nothing():
    kv = cached_kv()
    run_to_commit(kv, "a", list(range(10)))
    run_to_commit(kv, "b", list(range(10)))
    assert (kv.prefix_stats.num_queried_tokens, kv.prefix_stats.num_hit_tokens) == (20, 8)
    assert kv.prefix_stats.hit_rate == pytest.approx(0.4)
    off = KVCacheManager(8, BS)
    run_to_commit(off, "a", list(range(10)))
    assert off.cached_prefix(list(range(10))) == [] and off.pool.num_cached == 0


# -- the engine -------------------------------------------------------------------------------
SYSTEM = "You are a careful assistant. Answer in one short paragraph, and never use lists. " * 3
QUESTIONS = ["What is a list?", "What is a tuple?", "Why is the sky blue?", "Name a prime number."]


def sequential(llm: LLM, prompts: list[str], max_tokens: int = 24) -> list[list[int]]:
    """One request at a time, so each can find its predecessors' blocks."""
    return [llm.generate([p], SamplingParams(max_tokens=max_tokens))[0].token_ids for p in prompts]


def multi_turn(llm: LLM, max_tokens: int = 16) -> list[list[int]]:
    """Each turn resends the conversation so far (prompt + the model's answer + a new question)."""
    history, outputs = SYSTEM, []
    for q in QUESTIONS:
        history += f"\nQ: {q}\nA:"
        out = llm.generate([history], SamplingParams(max_tokens=max_tokens))[0]
        outputs.append(out.token_ids)
        history += out.text
    return outputs


@pytest.mark.parametrize(
    "spec",
    [{}, dict(draft="SELF", spec_policy="chain:4"), dict(draft="SELF", spec_policy="dynamic-tree:12:5:3")],
    ids=["plain", "chain", "tree"],
)
@pytest.mark.parametrize("workload", [sequential, multi_turn], ids=["shared-system-prompt", "multi-turn"])
def test_greedy_output_is_the_same_with_and_without_the_prefix_cache(tiny_model_dirs, spec, workload):
    model = str(tiny_model_dirs["llama"])
    spec = {k: (model if v == "SELF" else v) for k, v in spec.items()}
    args = [[SYSTEM + q for q in QUESTIONS]] if workload is sequential else []
    off = workload(LLM(model, enable_prefix_caching=False, **spec), *args)
    llm = LLM(model, **spec)
    assert workload(llm, *args) == off
    kv = llm.engine.kv
    assert kv.prefix_stats.num_hit_tokens >= 3 * (len(llm.tokenizer.encode(SYSTEM)) // 16) * 16
    assert kv.num_free_blocks == kv.pool.num_blocks  # nothing held once all have finished
    if spec:
        assert llm.engine.spec.proposer.kv.prefix_stats.num_hit_tokens > 0  # the draft's cache too


def test_preempted_requests_resume_from_their_cached_blocks_losslessly(tiny_model_dirs):
    model = str(tiny_model_dirs["qwen2"])
    prompts = [SYSTEM + q for q in QUESTIONS] * 2
    params = SamplingParams(max_tokens=40)
    small = dict(kv_cache_memory=48 * 1024, max_num_batched_tokens=128)  # too small for all at once
    off = LLM(model, enable_prefix_caching=False, **small)
    on = LLM(model, **small)
    assert [o.token_ids for o in on.generate(prompts, params)] == [o.token_ids for o in off.generate(prompts, params)]
    assert on.engine.num_preemptions > 0 and on.engine.kv.prefix_stats.num_hit_tokens > 0
