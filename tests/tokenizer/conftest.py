"""Fixtures for the tokenizer-service tests: one demo model per session, built into a tmp dir."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.common.demo_model import ensure_demo_model
from services.tokenizer.tokenizer import TextTokenizer

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def _demo_builds(tmp_path_factory):
    """Build the demo model here and, concurrently, in a fresh interpreter (for determinism)."""
    other = tmp_path_factory.mktemp("demo-other") / "model"
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; from services.common.demo_model import "
         "ensure_demo_model; ensure_demo_model(sys.argv[1])", str(other)],
        cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    try:
        here = ensure_demo_model(str(tmp_path_factory.mktemp("demo") / "model"))
        yield here, process, str(other)
    finally:
        process.wait(timeout=300)


@pytest.fixture(scope="session")
def demo_model_dir(_demo_builds) -> str:
    return _demo_builds[0]


@pytest.fixture(scope="session")
def demo_model_dir_from_subprocess(_demo_builds) -> str:
    """The same build made by another Python process."""
    _, process, other = _demo_builds
    assert process.wait(timeout=300) == 0
    return other


@pytest.fixture(scope="session")
def demo_tokenizer(demo_model_dir) -> TextTokenizer:
    return TextTokenizer(demo_model_dir)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table used by byte-level BPE token strings."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@pytest.fixture(scope="session")
def token_bytes(demo_tokenizer) -> dict[int, bytes]:
    """Raw bytes of every non-special token id of the demo tokenizer."""
    char_to_byte = {c: b for b, c in bytes_to_unicode().items()}
    special = set(demo_tokenizer.hf.all_special_ids)
    table = {}
    for token_id, token in enumerate(demo_tokenizer.hf.convert_ids_to_tokens(
            list(range(demo_tokenizer.vocab_size)))):
        if token_id not in special:
            table[token_id] = bytes(char_to_byte[c] for c in token)
    return table
