"""Paged KV blocks with reference counts and hash-chain prefix caching over full blocks."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from services.scheduler.request import Request


class BlockManager:
    """Which KV blocks each request holds, and which full blocks hold which token prefix.

    Invariants:
    - a block is in the free queue iff its ref count is 0; the queue is in eviction order:
      blocks without a hash first, then cached blocks, least recently freed first;
    - `_hash_to_block[h] == b` iff `_block_hash[b] == h`: a freed block keeps its hash (and can be
      hit again) until it is reallocated;
    - only a full block whose tokens have all been computed carries a hash; the hash of block i
      is hash((hash of block i-1, token ids of block i)), so equal hashes mean equal prefixes
      (up to 64-bit hash collisions);
    - `request.block_ids` is the request's block table; only this class mutates it.
    """

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"num_blocks and block_size must be positive, got "
                             f"{num_blocks} and {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._ref_count = [0] * num_blocks
        self._block_hash: list[int | None] = [None] * num_blocks
        self._hash_to_block: dict[int, int] = {}
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._req_hashes: dict[str, list[int]] = {}  # chain hashes of a request's full blocks
        self._num_registered: dict[str, int] = {}  # leading blocks already offered to the cache
        self.num_prefix_hit_tokens = 0
        self.num_prefix_queried_tokens = 0

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        return 1.0 - len(self._free) / self.num_blocks

    def ref_count(self, block_id: int) -> int:
        return self._ref_count[block_id]

    def num_blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def get_computed_blocks(self, request: Request) -> tuple[list[int], int]:
        """Longest cached prefix of the request's tokens, in whole blocks, short of its last token.

        At least one token is always left to compute so that the worker produces logits. Takes no
        references: pass the ids to `allocate_slots` before anything else allocates.
        """
        if not self.enable_prefix_caching:
            return [], 0
        max_blocks = (request.num_tokens - 1) // self.block_size
        block_ids = []
        for h in self._hashes(request, max_blocks)[:max_blocks]:
            block_id = self._hash_to_block.get(h)
            if block_id is None:
                break
            block_ids.append(block_id)
        return block_ids, len(block_ids) * self.block_size

    def allocate_slots(self, request: Request, num_new_tokens: int,
                       computed_block_ids: Sequence[int] = ()) -> list[int] | None:
        """Block ids appended to the table so that it covers num_computed_tokens +
        len(computed_block_ids) * block_size + num_new_tokens tokens (computed blocks first).

        None, with nothing changed, when the free queue cannot supply them.
        """
        num_tokens = (request.num_computed_tokens + len(computed_block_ids) * self.block_size
                      + num_new_tokens)
        num_needed = max(0, self.num_blocks_for(num_tokens) - len(request.block_ids)
                         - len(computed_block_ids))
        num_revived = sum(1 for b in computed_block_ids if self._ref_count[b] == 0)
        if num_needed + num_revived > len(self._free):
            return None
        if not request.block_ids and self.enable_prefix_caching:
            self.num_prefix_queried_tokens += request.num_tokens
            self.num_prefix_hit_tokens += len(computed_block_ids) * self.block_size
            self._num_registered[request.request_id] = len(computed_block_ids)
        for block_id in computed_block_ids:
            if self._ref_count[block_id] == 0:
                del self._free[block_id]
            self._ref_count[block_id] += 1
        new_block_ids = list(computed_block_ids)
        for _ in range(num_needed):
            block_id, _ = self._free.popitem(last=False)
            evicted = self._block_hash[block_id]
            if evicted is not None:
                del self._hash_to_block[evicted]
                self._block_hash[block_id] = None
            self._ref_count[block_id] = 1
            new_block_ids.append(block_id)
        request.block_ids.extend(new_block_ids)
        return new_block_ids

    def cache_full_blocks(self, request: Request) -> None:
        """Registers every full block whose tokens are all computed (and known)."""
        if not self.enable_prefix_caching:
            return
        num_full = min(request.num_computed_tokens, request.num_tokens) // self.block_size
        start = self._num_registered.get(request.request_id, 0)
        if num_full <= start:
            return
        hashes = self._hashes(request, num_full)
        for i in range(start, num_full):
            block_id, h = request.block_ids[i], hashes[i]
            if self._block_hash[block_id] is None and h not in self._hash_to_block:
                self._block_hash[block_id] = h
                self._hash_to_block[h] = block_id
        self._num_registered[request.request_id] = num_full

    def free(self, request: Request) -> None:
        """Drops the request's references, tail first, so its tail blocks are evicted first."""
        for block_id in reversed(request.block_ids):
            self._ref_count[block_id] -= 1
            if self._ref_count[block_id] == 0:
                self._free[block_id] = None
                if self._block_hash[block_id] is None:
                    self._free.move_to_end(block_id, last=False)
        request.block_ids = []
        self._req_hashes.pop(request.request_id, None)
        self._num_registered.pop(request.request_id, None)

    def _hashes(self, request: Request, num_blocks: int) -> list[int]:
        """The request's chain hashes, extended to at least num_blocks full blocks."""
        hashes = self._req_hashes.setdefault(request.request_id, [])
        for i in range(len(hashes), num_blocks):
            parent = hashes[-1] if hashes else None
            hashes.append(hash((parent, self._block_tokens(request, i))))
        return hashes

    def _block_tokens(self, request: Request, index: int) -> tuple[int, ...]:
        start, end = index * self.block_size, (index + 1) * self.block_size
        prompt, output = request.prompt_token_ids, request.output_token_ids
        n = len(prompt)
        if end <= n:
            return tuple(prompt[start:end])
        if start >= n:
            return tuple(output[start - n:end - n])
        return tuple(prompt[start:]) + tuple(output[:end - n])
