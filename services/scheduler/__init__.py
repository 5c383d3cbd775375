"""Continuous-batching scheduler: token ids in, token ids out. Pure Python, no torch."""
