"""StopStringMatcher: text before the first completed stop string, never a fragment of it."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.tokenizer.stop import StopStringMatcher


def run(stop: list[str], deltas: list[str]) -> tuple[list[str], bool]:
    """Feed `deltas`, flush, and return (every piece emitted, whether a stop string hit)."""
    matcher = StopStringMatcher(stop)
    pieces, found = [], False
    for delta in deltas:
        piece, found = matcher.feed(delta)
        pieces.append(piece)
        if found:
            break
    pieces.append(matcher.flush())
    return pieces, found


def reference(stop: list[str], full: str) -> tuple[str, bool]:
    """full[:start] of the occurrence that completes first (ties: the earliest start)."""
    hits = [(full.find(s) + len(s), full.find(s)) for s in stop if s in full]
    if not hits:
        return full, False
    _, start = min(hits)
    return full[:start], True


def test_stop_string_across_token_boundaries():
    pieces, found = run(["STOP"], ["Hel", "lo S", "T", "OP and more"])
    assert found and "".join(pieces) == "Hello "
    assert pieces[:3] == ["Hel", "lo ", ""]  # "S" and "ST" held back: they may start "STOP"


def test_held_prefix_is_released_when_it_cannot_match():
    matcher = StopStringMatcher(["END"])
    assert matcher.feed("abc E") == ("abc ", False)
    assert matcher.feed("N") == ("", False)
    assert matcher.feed("D") == ("", True)
    assert matcher.flush() == ""

    matcher = StopStringMatcher(["END"])
    assert matcher.feed("abc EN") == ("abc ", False)
    assert matcher.feed("x") == ("ENx", False)
    assert matcher.flush() == ""


def test_unfinished_prefix_is_released_by_flush():
    matcher = StopStringMatcher(["END"])
    assert matcher.feed("the EN") == ("the ", False)
    assert matcher.flush() == "EN"


def test_overlapping_candidates():
    # "aab" can start at any "a": after "aaa", "aa" must be held, not just "a".
    assert run(["aab"], ["a", "a", "a", "b"]) == (["", "", "a", "", ""], True)
    # "abcd" never completes, but its fragment "abc" must not hide "bce" inside it.
    pieces, found = run(["abcd", "bce"], ["ab", "c", "e!"])
    assert found and "".join(pieces) == "a"


def test_first_stop_to_complete_wins():
    pieces, found = run(["world", "lo w"], ["hello world"])
    assert found and "".join(pieces) == "hel"
    pieces, found = run(["bc", "abc"], ["abc"])  # both end together: the earlier start wins
    assert found and "".join(pieces) == ""


def test_matched_stop_string_is_reported_and_stream_ends():
    matcher = StopStringMatcher(["\n\n", "###"])
    assert matcher.feed("one\n\ntwo") == ("one", True)
    assert matcher.matched == "\n\n"
    assert matcher.feed("more") == ("", True)
    assert matcher.flush() == ""


def test_no_stop_strings_pass_everything_through():
    matcher = StopStringMatcher([])
    assert matcher.feed("anything at all") == ("anything at all", False)
    assert matcher.flush() == ""


def test_empty_stop_string_is_rejected():
    with pytest.raises(ValueError):
        StopStringMatcher(["ok", ""])


@settings(max_examples=300, deadline=None)
@given(
    stop=st.lists(st.text("abc ", min_size=1, max_size=4), max_size=3),
    deltas=st.lists(st.text("abc 中", max_size=5), max_size=12),
)
def test_emitted_text_is_full_text_up_to_first_stop(stop, deltas):
    pieces, found = run(stop, deltas)
    full = "".join(deltas)
    expected, expected_found = reference(stop, full)
    assert ("".join(pieces), found) == (expected, expected_found)
    longest = max((len(s) for s in stop), default=0)
    emitted = ""
    for piece in pieces:
        emitted += piece
        assert not any(s in emitted for s in stop)
    # Nothing is held back longer than necessary: before the last feed, what was emitted is the
    # full text so far minus at most (longest stop - 1) characters.
    matcher, seen, out = StopStringMatcher(stop), "", ""
    for delta in deltas:
        piece, hit = matcher.feed(delta)
        seen, out = seen + delta, out + piece
        if hit:
            break
        assert seen.startswith(out) and len(seen) - len(out) <= max(longest - 1, 0)
