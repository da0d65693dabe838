"""Block tables: allocate, append, free, rollback of speculative slots."""

import pytest

from adaserve.kv.manager import BlockPool, KVCacheManager


def test_reserve_maps_positions_to_slots_through_the_block_table():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    assert kv.reserve("a", 3) == [0, 1, 2]
    assert kv.reserve("b", 5) == [4, 5, 6, 7, 8]  # b owns blocks 1 and 2
    assert kv.reserve("a", 2) == [3, 12]  # a's 5th token opens its 2nd block: block 3
    assert kv.block_tables == {"a": [0, 3], "b": [1, 2]}
    assert kv.slots("a", 0, 5) == [0, 1, 2, 3, 12]
    assert kv.num_free_blocks == 4


@pytest.mark.parametrize(
    "reserved, keep, blocks_left",
    [(9, 9, 3), (9, 8, 2), (9, 5, 2), (9, 4, 1), (9, 0, 0), (4, 4, 1)],
)
def test_truncate_gives_back_whole_blocks_past_the_kept_length(reserved, keep, blocks_left):
    kv = KVCacheManager(num_blocks=4, block_size=4)
    kv.reserve("a", reserved)
    kv.truncate("a", keep)
    assert len(kv.block_tables["a"]) == blocks_left
    assert kv.num_free_blocks == 4 - blocks_left
    assert kv.num_slots["a"] == keep


def test_rollback_keeps_accepted_slots_and_returns_the_rest():
    kv = KVCacheManager(num_blocks=4, block_size=4)
    kv.reserve("a", 6)
    tree_slots = kv.reserve("a", 5)  # speculative tree tokens at positions 6..10
    assert kv.num_free_blocks == 1
    kv.truncate("a", 8)  # two were accepted
    assert kv.slots("a", 6, 2) == tree_slots[:2]
    assert kv.num_free_blocks == 2
    next_slots = kv.reserve("a", 3)
    assert kv.slots("a", 8, 3) == next_slots and len(set(next_slots) & set(kv.slots("a", 0, 8))) == 0


def test_truncate_past_reserved_length_is_an_error():
    kv = KVCacheManager(num_blocks=4, block_size=4)
    kv.reserve("a", 2)
    with pytest.raises(ValueError):
        kv.truncate("a", 3)


def test_free_returns_everything_and_exhaustion_is_reported():
    kv = KVCacheManager(num_blocks=3, block_size=2)
    kv.reserve("a", 4)
    assert not kv.can_reserve("b", 3)
    assert kv.can_reserve("b", 2)
    assert kv.can_reserve("a", 2)  # a's last block is full, one free block left
    with pytest.raises(MemoryError):
        kv.pool.take(2)
    kv.free("a")
    assert kv.num_free_blocks == 3 and "a" not in kv.block_tables
    kv.free("a")  # idempotent


def test_pool_needs_at_least_one_block():
    with pytest.raises(ValueError):
        BlockPool(0)
