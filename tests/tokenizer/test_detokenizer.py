"""IncrementalDetokenizer against the demo model's byte-level BPE tokenizer."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.tokenizer.detokenizer import REPLACEMENT_CHAR, IncrementalDetokenizer

SETTINGS = settings(max_examples=200, deadline=None)


def _held_back(text: str) -> int:
    n = 0
    while n < IncrementalDetokenizer.MAX_HELD_REPLACEMENTS and n < len(text) \
            and text[-1 - n] == REPLACEMENT_CHAR:
        n += 1
    return n


@pytest.fixture(scope="module")
def id_pools(demo_tokenizer, token_bytes):
    """Ids grouped by what they decode to: multi-byte fragments dominate the generated streams."""
    multibyte = sorted(i for i, b in token_bytes.items() if any(x >= 0x80 for x in b))
    # Tokens that cannot be decoded on their own: parts of a character split between tokens.
    fragments = sorted(i for i in multibyte if REPLACEMENT_CHAR in demo_tokenizer.decode([i]))
    assert len(fragments) > 50, "the demo corpus must yield tokens that split characters"
    return {"multibyte": multibyte, "fragments": fragments,
            "special": sorted(demo_tokenizer.hf.all_special_ids),
            "any": list(range(demo_tokenizer.vocab_size))}


def _ids(pools):
    pool = st.sampled_from(["fragments"] * 4 + ["multibyte"] * 3 + ["any"] * 2 + ["special"])
    return pool.flatmap(lambda name: st.sampled_from(pools[name]))


def _stream(tokenizer, prompt, output, chunks, skip):
    """Push `output` in chunks; check each step and return (deltas, flush)."""
    detok = IncrementalDetokenizer(tokenizer, prompt, skip_special_tokens=skip)
    deltas, pos = [], 0
    for size in chunks:
        if pos >= len(output):
            break
        deltas.append(detok.push(output[pos:pos + size]))
        pos += size
        so_far = tokenizer.decode(output[:pos], skip_special_tokens=skip)
        # Safe: emitted text is exactly the final text so far (no stray U+FFFD). Live: only the
        # trailing U+FFFD that could still change are held back.
        assert "".join(deltas) == so_far[:len(so_far) - _held_back(so_far)]
    if pos < len(output):
        deltas.append(detok.push(output[pos:]))
    return deltas, detok.flush()


@SETTINGS
@given(data=st.data())
def test_stream_equals_full_decode(demo_tokenizer, id_pools, data):
    ids = _ids(id_pools)
    prompt = data.draw(st.lists(ids, min_size=0, max_size=8), label="prompt")
    output = data.draw(st.lists(ids, min_size=0, max_size=80), label="output")
    chunks = data.draw(st.lists(st.integers(1, 4), min_size=80, max_size=80), label="chunks")
    skip = data.draw(st.booleans(), label="skip_special_tokens")
    deltas, tail = _stream(demo_tokenizer, prompt, output, chunks, skip)
    full = demo_tokenizer.decode(output, skip_special_tokens=skip)
    assert "".join(deltas) + tail == full
    position = 0
    for delta in deltas + [tail]:
        for offset, char in enumerate(delta):
            if char == REPLACEMENT_CHAR:
                assert full[position + offset] == REPLACEMENT_CHAR
        position += len(delta)


@SETTINGS
@given(text=st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=60),
       prompt=st.text(max_size=20))
def test_real_text_streams_without_replacement_chars(demo_tokenizer, text, prompt):
    output = demo_tokenizer.encode(text, add_special_tokens=False)
    # skip=False: text such as "<|end|>" encodes to a special token and must decode back to it.
    deltas, tail = _stream(demo_tokenizer, demo_tokenizer.encode(prompt), output,
                           [1] * len(output), skip=False)
    assert "".join(deltas) + tail == text
    assert REPLACEMENT_CHAR not in "".join(deltas)


def _byte_ids(demo_tokenizer, token_bytes, data: bytes) -> list[int]:
    single = {b: i for i, b in token_bytes.items() if len(b) == 1}
    return [single[bytes([x])] for x in data]


def test_split_emoji_is_held_until_complete(demo_tokenizer, token_bytes):
    ids = _byte_ids(demo_tokenizer, token_bytes, "😀".encode())
    detok = IncrementalDetokenizer(demo_tokenizer, demo_tokenizer.encode("Hi"))
    assert [detok.push([i]) for i in ids] == ["", "", "", "😀"]
    assert detok.flush() == ""


def test_invalid_bytes_are_emitted_as_the_full_decode_has_them(demo_tokenizer, token_bytes):
    ids = _byte_ids(demo_tokenizer, token_bytes, b"\x80\x80a\xe4\xb8")
    detok = IncrementalDetokenizer(demo_tokenizer, [])
    text = "".join(detok.push([i]) for i in ids) + detok.flush()
    assert text == demo_tokenizer.decode(ids) == "\ufffd\ufffda\ufffd"


def test_prompt_ending_inside_a_character_is_not_merged_into_output(demo_tokenizer, token_bytes):
    prompt = demo_tokenizer.encode("Hi ") + _byte_ids(demo_tokenizer, token_bytes, b"\xe4")
    output = _byte_ids(demo_tokenizer, token_bytes, b"\xb8\xad") + demo_tokenizer.encode(
        "ok", add_special_tokens=False)
    detok = IncrementalDetokenizer(demo_tokenizer, prompt)
    text = "".join(detok.push([i]) for i in output) + detok.flush()
    assert text == demo_tokenizer.decode(output) == "\ufffd\ufffdok"


def test_prompt_is_context_not_output(demo_tokenizer):
    prompt = demo_tokenizer.encode("The river at Harlow Bend is")
    output = demo_tokenizer.encode(" wide and slow", add_special_tokens=False)
    detok = IncrementalDetokenizer(demo_tokenizer, prompt)
    deltas = [detok.push([i]) for i in output]
    assert deltas[0].startswith(" ")
    assert "".join(deltas) + detok.flush() == " wide and slow"


@pytest.mark.parametrize("skip", [True, False])
def test_special_tokens_follow_skip_flag(demo_tokenizer, skip):
    output = demo_tokenizer.encode("tea", add_special_tokens=False) + [5]
    detok = IncrementalDetokenizer(demo_tokenizer, [], skip_special_tokens=skip)
    text = "".join(detok.push([i]) for i in output) + detok.flush()
    assert text == ("tea" if skip else "tea<|end|>")


def test_flush_once_then_push_is_an_error(demo_tokenizer):
    detok = IncrementalDetokenizer(demo_tokenizer, [])
    detok.push(demo_tokenizer.encode("abc", add_special_tokens=False))
    detok.flush()
    assert detok.flush() == ""
    with pytest.raises(RuntimeError):
        detok.push([10])


def test_window_is_not_cut_inside_a_character(demo_tokenizer, token_bytes):
    # With skip_special_tokens, ids that decode to nothing sit between the bytes of 中: dropping
    # the ids before any of them would orphan the bytes that follow.
    first, second, third = _byte_ids(demo_tokenizer, token_bytes, "中".encode())
    prefix = demo_tokenizer.encode("a" * 40, add_special_tokens=False)
    output = prefix + [first] + [0] * IncrementalDetokenizer.KEEP_TOKENS + [second] \
        + [0] * IncrementalDetokenizer.KEEP_TOKENS + [third, 0]
    detok = IncrementalDetokenizer(demo_tokenizer, [], skip_special_tokens=True)
    text = "".join(detok.push([i]) for i in output)
    assert text == "a" * 40 + "中"
    assert detok.flush() == ""


class _CountingDecoder:
    def __init__(self, tokenizer):
        self.tokenizer, self.longest = tokenizer, 0

    def decode(self, ids, skip_special_tokens=True):
        self.longest = max(self.longest, len(ids))
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


@pytest.mark.parametrize("pattern", [
    "😀中文 café ",  # ordinary multi-byte text
    b"\x80",  # an endless run of invalid continuation bytes
    b"\xe4",  # an endless run of incomplete lead bytes
    b"\xe4\xb8\xad",  # 中 split byte by byte: every token boundary is inside a character
])
def test_window_stays_bounded(demo_tokenizer, token_bytes, pattern):
    if isinstance(pattern, str):
        unit = demo_tokenizer.encode(pattern, add_special_tokens=False)
    else:
        unit = _byte_ids(demo_tokenizer, token_bytes, pattern)
    output = (unit * 3000)[:3000]
    counting = _CountingDecoder(demo_tokenizer)
    detok = IncrementalDetokenizer(counting, [])
    text = "".join(detok.push([i]) for i in output)
    assert counting.longest <= IncrementalDetokenizer.TRIM_AT
    assert text + detok.flush() == demo_tokenizer.decode(output)
