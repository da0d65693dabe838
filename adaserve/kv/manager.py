"""Paged KV cache bookkeeping: a block pool with reference counts, per-request block tables and
automatic prefix caching. Plain Python over ints.

A slot is one token's K/V entry: slot = block_id * block_size + offset. The tensors live in the
model runner; this module only decides which slots a request owns.

Speculation reserves slots past the committed length (`reserve`), the runner copies accepted
entries into place, and `truncate` gives the rest back, so only verified tokens remain.

Prefix caching (as vLLM v1 does it): once a block is full of a request's committed tokens,
`cache_blocks` registers it under a hash of its tokens chained to the hash of the block before it,
so the hash names the whole prefix up to the block's end. A new request starts from the longest
run of registered blocks its tokens match (`cached_prefix`, `admit`), sharing them by reference
count. A block nobody holds stays registered on the free list until it is needed for new tokens
(unregistered free blocks go first, then registered ones, least recently freed first). Every write
lands at or past a request's committed length: tree slots, accepted entries copied into place and
prompt chunks all fall in the request's own tail blocks, so a shared block is never written and
a rollback never touches one.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict, deque
from dataclasses import dataclass

ROOT_HASH = b""  # the parent hash of a request's first block


def block_hash(parent: bytes, token_ids: list[int]) -> bytes:
    """Names the prefix that ends with this block: its parent's hash and its own tokens. A
    cryptographic digest, so two prefixes never share a name in practice (Python's hash() would
    collide now and then and serve one prompt another's KV)."""
    return hashlib.blake2b(parent + array("q", token_ids).tobytes(), digest_size=16).digest()


@dataclass
class PrefixCacheStats:
    """Tokens of admitted requests, and of those found in the cache (vLLM's queries / hits)."""

    num_queried_tokens: int = 0
    num_hit_tokens: int = 0

    @property
    def hit_rate(self) -> float:
        return self.num_hit_tokens / self.num_queried_tokens if self.num_queried_tokens else 0.0


class BlockPool:
    def __init__(self, num_blocks: int) -> None:
        if num_blocks <= 0:
            raise ValueError("the KV cache must hold at least one block")
        self.num_blocks = num_blocks
        self.ref_counts = [0] * num_blocks
        self._free: deque[int] = deque(range(num_blocks))  # free and unregistered
        self._free_cached: OrderedDict[int, None] = OrderedDict()  # free and registered: eviction order
        self._hash_of: dict[int, bytes] = {}  # registered blocks
        self._block_of: dict[bytes, int] = {}

    @property
    def num_free(self) -> int:
        return len(self._free) + len(self._free_cached)

    @property
    def num_cached(self) -> int:
        return len(self._block_of)

    def take(self, n: int) -> list[int]:
        """n blocks for new tokens: unregistered ones first, then the least recently freed
        registered ones (their prefix leaves the cache)."""
        if n > self.num_free:
            raise MemoryError(f"asked for {n} KV blocks, {self.num_free} free")
        taken = []
        for _ in range(n):
            if self._free:
                block = self._free.popleft()
            else:
                block, _ = self._free_cached.popitem(last=False)
                del self._block_of[self._hash_of.pop(block)]
            self.ref_counts[block] = 1
            taken.append(block)
        return taken

    def share(self, block: int) -> None:
        """One more holder of a registered block (off the free list if nobody held it)."""
        if self.ref_counts[block] == 0:
            del self._free_cached[block]
        self.ref_counts[block] += 1

    def give_back(self, block_ids: list[int]) -> None:
        """Drop one holder of each block. A request's blocks are given back tail first, so its
        last blocks, the least likely to be shared, are evicted before its first."""
        for block in reversed(block_ids):
            self.ref_counts[block] -= 1
            if self.ref_counts[block] > 0:
                continue
            if block in self._hash_of:
                self._free_cached[block] = None
            else:
                self._free.append(block)

    def register(self, block: int, digest: bytes) -> None:
        """The block holds the prefix named `digest` (a block holding it already keeps the name)."""
        if digest not in self._block_of and block not in self._hash_of:
            self._block_of[digest] = block
            self._hash_of[block] = digest

    def lookup(self, digest: bytes) -> int | None:
        return self._block_of.get(digest)

    def hash_of(self, block: int) -> bytes:
        return self._hash_of[block]

    def is_free(self, block: int) -> bool:
        return self.ref_counts[block] == 0


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = False) -> None:
        self.block_size = block_size
        self.pool = BlockPool(num_blocks)
        self.enable_prefix_caching = enable_prefix_caching
        self.block_tables: dict[str, list[int]] = {}
        self.num_slots: dict[str, int] = {}  # slots handed out per request (committed + reserved)
        self._chains: dict[str, list[bytes]] = {}  # hashes of each request's registered blocks, in order
        self.prefix_stats = PrefixCacheStats()

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

    # -- prefix caching ----------------------------------------------------------------------
    def cached_prefix(self, token_ids: list[int]) -> list[int]:
        """The registered blocks of the longest cached prefix of `token_ids`, in order. At least
        one token is left out, so the request still computes the logits of its last token.
        Worked example (block size 4): 9 tokens look up blocks [0:4] and [4:8]; 8 tokens only [0:4]."""
        if not self.enable_prefix_caching:
            return []
        blocks, digest, bs = [], ROOT_HASH, self.block_size
        for i in range((len(token_ids) - 1) // bs):
            digest = block_hash(digest, token_ids[i * bs : (i + 1) * bs])
            block = self.pool.lookup(digest)
            if block is None:
                break
            blocks.append(block)
        return blocks

    def can_admit(self, cached_blocks: list[int], num_new_slots: int) -> bool:
        """Whether a request holding nothing yet can start from `cached_blocks` and reserve
        `num_new_slots` more (cached blocks nobody holds leave the free list when shared)."""
        num_needed = -(-(len(cached_blocks) * self.block_size + num_new_slots) // self.block_size)
        num_revived = sum(1 for b in cached_blocks if self.pool.is_free(b))
        return num_needed - len(cached_blocks) <= self.pool.num_free - num_revived

    def admit(self, request_id: str, token_ids: list[int], cached_blocks: list[int]) -> int:
        """Start the request's block table from `cached_blocks` (from cached_prefix(token_ids));
        returns the number of its tokens whose KV is already there."""
        if self.block_tables.get(request_id):
            raise ValueError(f"{request_id} already holds KV blocks")
        for block in cached_blocks:
            self.pool.share(block)
        num_cached = len(cached_blocks) * self.block_size
        self.block_tables[request_id] = list(cached_blocks)
        self.num_slots[request_id] = num_cached
        self._chains[request_id] = [self.pool.hash_of(b) for b in cached_blocks]
        self.prefix_stats.num_queried_tokens += len(token_ids)
        self.prefix_stats.num_hit_tokens += num_cached
        return num_cached

    def needs_caching(self, request_id: str, num_committed: int) -> bool:
        """A block of the request has filled with committed tokens since the last cache_blocks."""
        return self.enable_prefix_caching and num_committed // self.block_size > len(self._chains.get(request_id, ()))

    def cache_blocks(self, request_id: str, token_ids: list[int], num_committed: int) -> None:
        """Register the request's blocks that `num_committed` committed tokens (the first of
        `token_ids`) now fill."""
        if not self.needs_caching(request_id, num_committed):
            return
        chain, table, bs = self._chains.setdefault(request_id, []), self.block_tables[request_id], self.block_size
        for i in range(len(chain), num_committed // bs):
            chain.append(block_hash(chain[-1] if chain else ROOT_HASH, token_ids[i * bs : (i + 1) * bs]))
            self.pool.register(table[i], chain[-1])

    # -- slots ---------------------------------------------------------------------------------
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
        if keep < len(self._chains.get(request_id, ())):
            raise ValueError("cannot truncate into blocks of committed tokens registered in the prefix cache")
        self.pool.give_back(table[keep:])
        del table[keep:]
        self.num_slots[request_id] = num_tokens

    def free(self, request_id: str) -> None:
        self.pool.give_back(self.block_tables.pop(request_id, []))
        self.num_slots.pop(request_id, None)
        self._chains.pop(request_id, None)
