"""Incremental detokenization: a stream of token ids in, a stream of UTF-8-safe text deltas out.

The detokenizer decodes a short window of recent ids (a few prompt ids for context, then the
output ids not yet known to be settled) and emits the part of the window's text that can no
longer change. Invariants:

- Exactness: "".join(deltas) + flush() == tokenizer.decode(output_ids, skip_special_tokens)
  for any id sequence, for tokenizers whose decode of a sequence extends the decode of each of
  its prefixes except for trailing U+FFFD characters: byte-level BPE (GPT-2, Llama 3, Qwen, the
  demo model) and WordPiece. Every delta is then a correct piece of the final text: it never
  contains a U+FFFD that the full decode lacks at that place.
- Text ending in an incomplete UTF-8 character decodes to a trailing U+FFFD; up to
  MAX_HELD_REPLACEMENTS trailing U+FFFD are held back until later ids settle them (a 4-byte
  character split over byte tokens shows as at most 3 of them).
- Cost per pushed id is O(window), independent of the output length: the window is trimmed at
  points where decoding provably resynchronises, so dropping the ids before them cannot change
  any text after them.

Prompt context: the last CONTEXT_TOKENS prompt ids are decoded in front of the output, as in
vLLM/TGI, so a tokenizer that strips the leading space of the first decoded token (Metaspace
SentencePiece, e.g. Llama 2) keeps the space of the first output token; the stream then differs
from decode(output_ids) by exactly that space. If the prompt ends inside a character, the context
is dropped so that the output's leading bytes decode on their own, exactly as in decode(output_ids).

Byte-fallback SentencePiece decodes a whole run of byte tokens as U+FFFDs once any byte in it is
invalid, rewriting text already emitted; valid text still streams exactly, and push() waits while
the decode disagrees with what was emitted. flush() reconciles with the full decode whenever what
was emitted is a prefix of it, and otherwise returns the incremental remainder.
"""
from __future__ import annotations

from typing import Protocol

REPLACEMENT_CHAR = "\ufffd"


class Decoder(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...


class IncrementalDetokenizer:
    """Turns one request's output ids into text deltas; push ids as they arrive, flush at the end."""

    CONTEXT_TOKENS = 5  # prompt ids decoded in front of the output for leading-space context
    MAX_HELD_REPLACEMENTS = 3  # trailing U+FFFD held back: a partial character may complete
    TRIM_AT = 32  # window length (ids) at which dropping settled ids is attempted
    KEEP_TOKENS = 8  # ids kept when the window is trimmed
    FORCE_TRIM_AT = 1024  # a window this long is trimmed even without a verified resync point

    def __init__(self, tokenizer: Decoder, prompt_token_ids: list[int],
                 skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        context = list(prompt_token_ids[-self.CONTEXT_TOKENS:])
        text = self._decode(context)
        if text.endswith(REPLACEMENT_CHAR):
            context, text = [], ""
        self._window = context  # ids whose decode is self._text
        self._text = text
        self._done = len(text)  # self._text[:self._done] is emitted (or is prompt context)
        self._output_ids: list[int] = []
        self._deltas: list[str] = []
        self._finished = False

    def push(self, token_ids: list[int]) -> str:
        """Append newly generated ids; return the text that became final (possibly "")."""
        if self._finished:
            raise RuntimeError("push() after flush()")
        if not token_ids:
            return ""
        self._output_ids.extend(token_ids)
        self._window.extend(token_ids)
        text = self._decode(self._window)
        if not text.startswith(self._text[:self._done]):
            # The decoder rewrote text already emitted (a byte-fallback group turned invalid):
            # wait until more ids make the decode consistent with what was emitted again, or,
            # once the window is FORCE_TRIM_AT long, take the new decode as the reference.
            if len(self._window) < self.FORCE_TRIM_AT:
                return ""
            self._done = max(len(text) - (len(self._text) - self._done), 0)
        stable = len(text) - _count_trailing(text, REPLACEMENT_CHAR, self.MAX_HELD_REPLACEMENTS)
        delta = text[self._done:stable]
        self._text, self._done = text, max(self._done, stable)
        if delta:
            self._deltas.append(delta)
        if len(self._window) >= self.TRIM_AT:
            self._trim()
        return delta

    def flush(self) -> str:
        """Return the text still held back; after this the stream is complete.

        Reconciles against the full decode: when everything emitted so far is a prefix of
        decode(output_ids), returns exactly the rest of it, so the stream equals the full decode by
        construction; otherwise (see the module docstring) returns the incremental remainder.
        """
        if self._finished:
            return ""
        self._finished = True
        emitted = "".join(self._deltas)
        full = self._decode(self._output_ids)
        if full.startswith(emitted):
            return full[len(emitted):]
        return self._text[self._done:]

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special_tokens)

    def _trim(self) -> None:
        """Drop all but the last KEEP_TOKENS ids if decoding provably resynchronises there.

        Let tail = window[j:]. Dropping window[:j] is safe when every pending character lies in a
        part of decode(tail) that matches the end of the window's text and starts at a byte
        where both decodes restart in the same state. Such a byte is (a) the start of the first
        character of decode(tail) other than U+FFFD (it decoded on its own, so it is not a
        continuation byte and ends any partial character before it), or (b) the split itself,
        when decode(window[:j]) + decode(tail) == decode(window).
        """
        j = len(self._window) - self.KEEP_TOKENS
        tail = self._window[j:]
        tail_text = self._decode(tail)
        pending = len(self._text) - self._done
        done = len(tail_text) - pending  # first pending position in tail_text
        resync = _first_index_not(tail_text, REPLACEMENT_CHAR)
        safe = done >= 0 and (
            (resync is not None and resync <= done and self._text.endswith(tail_text[resync:]))
            or self._decode(self._window[:j]) + tail_text == self._text)
        if safe or len(self._window) >= self.FORCE_TRIM_AT:
            self._window, self._text, self._done = tail, tail_text, max(done, 0)


def _count_trailing(text: str, char: str, limit: int) -> int:
    n = 0
    while n < limit and n < len(text) and text[-1 - n] == char:
        n += 1
    return n


def _first_index_not(text: str, char: str) -> int | None:
    for i, c in enumerate(text):
        if c != char:
            return i
    return None
