"""BlockManager: ref counts, hash-chain prefix caching, LRU eviction, all-or-nothing allocation."""
import pytest

from services.common.sampling import SamplingParams
from services.scheduler.block_manager import BlockManager
from services.scheduler.request import Request


def make_request(request_id, prompt, output=()):
    request = Request(request_id, list(prompt), SamplingParams(max_tokens=8), [], 1024)
    request.output_token_ids.extend(output)
    return request


def compute(bm, request, num_new, computed_block_ids=(), num_cached=0):
    """Allocates like the scheduler does, then marks the tokens computed and caches full blocks."""
    new = bm.allocate_slots(request, num_new, computed_block_ids)
    assert new is not None
    if computed_block_ids:
        request.num_computed_tokens = num_cached
    request.num_computed_tokens += num_new
    bm.cache_full_blocks(request)
    return new


def test_allocate_and_free_track_ref_counts():
    bm = BlockManager(num_blocks=10, block_size=4)
    request = make_request("a", range(10))
    new = bm.allocate_slots(request, 10)
    assert len(new) == 3 and request.block_ids == new
    assert bm.num_free_blocks == 7
    assert bm.usage == pytest.approx(0.3)
    assert [bm.ref_count(b) for b in new] == [1, 1, 1]
    bm.free(request)
    assert request.block_ids == []
    assert bm.num_free_blocks == 10 and bm.usage == 0.0
    assert [bm.ref_count(b) for b in new] == [0, 0, 0]


def test_allocate_appends_only_when_a_block_boundary_is_crossed():
    bm = BlockManager(num_blocks=4, block_size=4)
    request = make_request("a", range(6))
    first = bm.allocate_slots(request, 6)
    request.num_computed_tokens = 6
    assert bm.allocate_slots(request, 2) == []
    request.num_computed_tokens = 8
    second = bm.allocate_slots(request, 1)
    assert len(second) == 1 and second[0] not in first
    assert request.block_ids == first + second
    assert bm.num_free_blocks == 1


def test_block_zero_is_usable():
    bm = BlockManager(num_blocks=1, block_size=4)
    request = make_request("a", range(4))
    assert bm.allocate_slots(request, 4) == [0]
    assert bm.num_free_blocks == 0


def test_failed_allocation_changes_nothing():
    bm = BlockManager(num_blocks=4, block_size=4)
    owner = make_request("owner", range(8))
    compute(bm, owner, 8)
    bm.free(owner)  # two cached blocks now sit in the free queue
    hog = make_request("hog", range(100, 108))
    compute(bm, hog, 8)  # takes the two hashless free blocks
    assert bm.num_free_blocks == 2
    request = make_request("b", list(range(8)) + [50, 51, 52, 53, 54])
    queried = bm.num_prefix_queried_tokens
    computed, num_cached = bm.get_computed_blocks(request)
    assert num_cached == 8
    # 13 tokens need 4 blocks: 2 revived from the free queue + 2 new, but only 2 are free.
    assert bm.allocate_slots(request, 5, computed) is None
    assert request.block_ids == []
    assert bm.num_free_blocks == 2
    assert [bm.ref_count(b) for b in computed] == [0, 0]
    assert bm.num_prefix_queried_tokens == queried
    assert bm.get_computed_blocks(request) == (computed, 8)


def test_prefix_hit_shares_blocks_and_counts_tokens():
    bm = BlockManager(num_blocks=10, block_size=4)
    first = make_request("a", range(12))
    compute(bm, first, 12)
    second = make_request("b", list(range(8)) + [99, 98])
    computed, num_cached = bm.get_computed_blocks(second)
    assert computed == first.block_ids[:2] and num_cached == 8
    new = compute(bm, second, 2, computed, num_cached)
    assert new[:2] == computed and len(new) == 3
    assert [bm.ref_count(b) for b in computed] == [2, 2]
    assert bm.num_free_blocks == 10 - 4
    assert bm.num_prefix_queried_tokens == 12 + 10
    assert bm.num_prefix_hit_tokens == 8
    bm.free(first)
    assert [bm.ref_count(b) for b in computed] == [1, 1]
    bm.free(second)
    assert bm.num_free_blocks == 10


def test_hash_chain_requires_the_same_prefix():
    bm = BlockManager(num_blocks=10, block_size=4)
    compute(bm, make_request("a", range(12)), 12)
    # Same second block, different first block: no hit at all.
    other = make_request("b", [7, 7, 7, 7] + list(range(4, 12)) + [1])
    assert bm.get_computed_blocks(other) == ([], 0)


def test_never_hits_the_whole_prompt():
    bm = BlockManager(num_blocks=10, block_size=4)
    first = make_request("a", range(12))
    compute(bm, first, 12)
    same = make_request("b", range(12))
    assert bm.get_computed_blocks(same) == (first.block_ids[:2], 8)
    longer = make_request("c", range(13))
    assert bm.get_computed_blocks(longer) == (first.block_ids, 12)


def test_outputs_are_part_of_the_hashed_sequence():
    bm = BlockManager(num_blocks=10, block_size=4)
    first = make_request("a", range(6), output=[6, 7, 8])
    compute(bm, first, 8)
    resumed = make_request("b", range(6), output=[6, 7, 8])
    assert bm.get_computed_blocks(resumed) == (first.block_ids[:2], 8)


def test_only_computed_full_blocks_are_cached():
    bm = BlockManager(num_blocks=10, block_size=4)
    first = make_request("a", range(12))
    compute(bm, first, 6)  # one full block computed, the second half-done
    probe = make_request("b", range(13))
    assert bm.get_computed_blocks(probe) == (first.block_ids[:1], 4)
    compute(bm, first, 6)
    assert bm.get_computed_blocks(probe) == (first.block_ids[:3], 12)


def test_freed_cached_blocks_are_hit_again_until_reallocated():
    bm = BlockManager(num_blocks=4, block_size=2)
    first = make_request("a", range(5))
    compute(bm, first, 5)
    cached = first.block_ids[:2]
    bm.free(first)
    assert bm.num_free_blocks == 4
    again = make_request("b", range(5))
    computed, num_cached = bm.get_computed_blocks(again)
    assert (computed, num_cached) == (cached, 4)
    compute(bm, again, 1, computed, num_cached)
    assert bm.num_free_blocks == 1
    assert [bm.ref_count(b) for b in cached] == [1, 1]


def test_eviction_takes_hashless_then_tail_first_then_least_recently_freed():
    bm = BlockManager(num_blocks=6, block_size=2)
    old = make_request("old", [1, 2, 3, 4])
    compute(bm, old, 4)  # 2 cached blocks
    new = make_request("new", [5, 6, 7, 8, 9])
    compute(bm, new, 5)  # 2 cached blocks + 1 partial (hashless) block
    old_ids, new_ids = list(old.block_ids), list(new.block_ids)
    (unused,) = set(range(6)) - set(old_ids) - set(new_ids)
    bm.free(old)
    bm.free(new)
    filler = make_request("filler", range(100, 112))
    assert bm.allocate_slots(filler, 6) == [new_ids[2], unused, old_ids[1]]
    assert bm.get_computed_blocks(make_request("p", [1, 2, 3, 4, 0])) == (old_ids[:1], 2)
    assert bm.get_computed_blocks(make_request("q", [5, 6, 7, 8, 0])) == (new_ids[:2], 4)
    filler.num_computed_tokens = 6
    assert bm.allocate_slots(filler, 2) == [old_ids[0]]
    assert bm.get_computed_blocks(make_request("p", [1, 2, 3, 4, 0])) == ([], 0)
    assert bm.get_computed_blocks(make_request("q", [5, 6, 7, 8, 0])) == (new_ids[:2], 4)


def test_duplicate_content_is_cached_once_and_freed_cleanly():
    bm = BlockManager(num_blocks=8, block_size=2)
    first, second = make_request("a", range(5)), make_request("b", range(5))
    compute(bm, first, 5)
    compute(bm, second, 5)  # computed concurrently: same content in other blocks
    assert set(first.block_ids).isdisjoint(second.block_ids)
    cached = first.block_ids[:2]
    bm.free(second)
    bm.free(first)
    assert bm.num_free_blocks == 8
    assert bm.get_computed_blocks(make_request("c", range(5))) == (cached, 4)


def test_disabled_prefix_caching_never_hits():
    bm = BlockManager(num_blocks=8, block_size=2, enable_prefix_caching=False)
    compute(bm, make_request("a", range(6)), 6)
    assert bm.get_computed_blocks(make_request("b", range(6))) == ([], 0)
    assert bm.num_prefix_queried_tokens == 0


@pytest.mark.parametrize("num_blocks, block_size", [(0, 4), (4, 0)])
def test_rejects_bad_geometry(num_blocks, block_size):
    with pytest.raises(ValueError):
        BlockManager(num_blocks, block_size)
