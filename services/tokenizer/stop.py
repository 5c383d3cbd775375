"""Stop strings over a stream of text deltas.

Semantics (as in OpenAI-style APIs): generation stops at the first stop-string occurrence to
*complete* in the stream (ties: the one that starts earliest), and the text returned is
everything before that occurrence. Invariants:

- The concatenation of everything `feed` and `flush` return equals `full[:s]`, where `full` is
  the concatenation of the fed text and `s` the start of that first occurrence (or `len(full)`
  when no stop string occurs).
- No returned text ever contains a stop string or a fragment of the one that matched: a suffix
  that could still grow into a stop string is held back until it cannot.
- At most `max(len(stop)) - 1` characters are held back between calls.
"""
from __future__ import annotations


class StopStringMatcher:
    """Feed text deltas; get back the part that is safe to emit and whether a stop string hit."""

    def __init__(self, stop: list[str]) -> None:
        if any(not s for s in stop):
            raise ValueError("stop strings must be non-empty")
        self._stop = tuple(dict.fromkeys(stop))
        self._first_chars = frozenset(s[0] for s in self._stop)
        self._max_hold = max((len(s) for s in self._stop), default=1) - 1
        self._held = ""  # a suffix of the stream that is a proper prefix of some stop string
        self.stopped = False
        self.matched: str | None = None  # the stop string that ended the stream, once stopped

    def feed(self, text: str) -> tuple[str, bool]:
        """Return (text safe to emit now, whether a stop string has been found)."""
        if self.stopped:
            return "", True
        buf = self._held + text
        match = self._first_match(buf)
        if match is not None:
            start, stop = match
            self.stopped, self.matched, self._held = True, stop, ""
            return buf[:start], True
        hold = self._partial_suffix_len(buf)
        self._held = buf[len(buf) - hold:] if hold else ""
        return buf[:len(buf) - hold], False

    def flush(self) -> str:
        """Release the held-back text at the end of the stream (nothing if a stop string hit)."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _first_match(self, buf: str) -> tuple[int, str] | None:
        """(start, stop string) of the occurrence in `buf` that ends first; ties: earliest start."""
        best: tuple[int, int, str] | None = None  # (end, start, stop)
        for stop in self._stop:
            start = buf.find(stop)
            if start >= 0:
                candidate = (start + len(stop), start, stop)
                if best is None or candidate[:2] < best[:2]:
                    best = candidate
        return None if best is None else (best[1], best[2])

    def _partial_suffix_len(self, buf: str) -> int:
        """Length of the longest suffix of `buf` that is a proper prefix of some stop string."""
        for length in range(min(self._max_hold, len(buf)), 0, -1):
            if buf[-length] not in self._first_chars:
                continue
            suffix = buf[-length:]
            if any(len(stop) > length and stop.startswith(suffix) for stop in self._stop):
                return length
        return 0
