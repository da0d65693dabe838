"""Paged KV cache bookkeeping: a block pool and per-request block tables. Plain Python over ints.

A slot is one token's K/V entry: slot = block_id * block_size + offset. The tensors live in the
model runner; this module only decides which slots a request owns.

Speculation reserves slots past the committed length (`reserve`), the runner copies accepted
entries into place, and `truncate` gives the rest back, so only verified tokens remain.
"""

from __future__ import annotations

from collections import deque


class BlockPool:
    def __init__(self, num_blocks: int) -> None:
        if num_blocks <= 0:
            raise ValueError("the KV cache must hold at least one block")
        self.num_blocks = num_blocks
        self._free: deque[int] = deque(range(num_blocks))

    @property
    def num_free(self) -> int:
        return len(self._free)

    def take(self, n: int) -> list[int]:
        if n > len(self._free):
            raise MemoryError(f"asked for {n} KV blocks, {len(self._free)} free")
        return [self._free.popleft() for _ in range(n)]

    def give_back(self, block_ids: list[int]) -> None:
        self._free.extend(block_ids)


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.block_size = block_size
        self.pool = BlockPool(num_blocks)
        self.block_tables: dict[str, list[int]] = {}
        self.num_slots: dict[str, int] = {}  # slots handed out per request (committed + reserved)

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free

    @property
    def num_used_blocks(self) -> int:
        return self.pool.num_blocks - self.pool.num_free

    @property
    def capacity_tokens(self) -> int:
        return self.pool.num_blocks * self.block_size

    @property
    def usage(self) -> float:
        return 1.0 - self.pool.num_free / self.pool.num_blocks

    def blocks_needed(self, request_id: str, num_new_slots: int) -> int:
        have = len(self.block_tables.get(request_id, ()))
        total = self.num_slots.get(request_id, 0) + num_new_slots
        return max(0, -(-total // self.block_size) - have)

    def can_reserve(self, request_id: str, num_new_slots: int) -> bool:
        return self.blocks_needed(request_id, num_new_slots) <= self.pool.num_free

    def reserve(self, request_id: str, num_new_slots: int) -> list[int]:
        """Hand out `num_new_slots` more slots to the request; returns their slot ids."""
        needed = self.blocks_needed(request_id, num_new_slots)
        table = self.block_tables.setdefault(request_id, [])
        table.extend(self.pool.take(needed))
        start = self.num_slots.get(request_id, 0)
        self.num_slots[request_id] = start + num_new_slots
        return self.slots(request_id, start, num_new_slots)

    def slots(self, request_id: str, start: int, n: int) -> list[int]:
        """Slot ids of token positions [start, start + n) of the request."""
        table, bs = self.block_tables[request_id], self.block_size
        return [table[p // bs] * bs + p % bs for p in range(start, start + n)]

    def truncate(self, request_id: str, num_tokens: int) -> None:
        """Keep the first `num_tokens` slots (rollback of rejected speculative slots)."""
        if num_tokens > self.num_slots.get(request_id, 0):
            raise ValueError("cannot truncate past the reserved length")
        table = self.block_tables[request_id]
        keep = -(-num_tokens // self.block_size)
        self.pool.give_back(table[keep:])
        del table[keep:]
        self.num_slots[request_id] = num_tokens

    def free(self, request_id: str) -> None:
        self.pool.give_back(self.block_tables.pop(request_id, []))
        self.num_slots.pop(request_id, None)
