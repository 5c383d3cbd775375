"""The built-in demo model: a tiny random Llama with a real byte-level BPE tokenizer, built offline.

`ensure_demo_model()` returns a Hugging Face–format model directory (config.json,
model.safetensors, tokenizer.json, tokenizer_config.json, chat template, generation_config.json)
that every service can load without a network. Invariants:

- Deterministic: the tokenizer is trained on the bundled `demo_corpus.txt` and the weights come
  from `torch.manual_seed(0)`, so two builds with the same library versions are byte-identical.
- Atomic: a build is written to a temporary sibling directory and renamed into place, so a
  directory that exists at the target path is always complete, and concurrent processes that race
  to build it all end up using one complete copy.
- The global torch RNG state is left as it was.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

DEMO_MODEL_VERSION = "v1"
CORPUS_PATH = Path(__file__).with_name("demo_corpus.txt")

BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
ROLE_TOKENS = ("<|user|>", "<|assistant|>", "<|system|>")
END_TOKEN = "<|end|>"
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, *ROLE_TOKENS, END_TOKEN)  # ids 0..5 in this order
TARGET_VOCAB_SIZE = 2000

# Renders `<s><|role|>\ncontent<|end|>\n...` and, with add_generation_prompt, `<|assistant|>\n`.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unsupported role: ' ~ message['role']) }}"
    "{% endif %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# Files whose presence marks a finished build (a build only appears at its path once complete).
_REQUIRED_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                   "tokenizer_config.json")


def default_demo_model_dir() -> Path:
    """`$XDG_CACHE_HOME/sluice/demo-model-v1`, i.e. `~/.cache/sluice/demo-model-v1` by default."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "sluice" / f"demo-model-{DEMO_MODEL_VERSION}"


def ensure_demo_model(path: str | None = None) -> str:
    """Return the demo model directory at `path` (default: the user cache), building it if absent.

    Raises FileExistsError if `path` is a non-empty directory that is not a demo model.
    """
    target = Path(path).expanduser() if path else default_demo_model_dir()
    if _is_complete(target):
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    try:
        build_demo_model(tmp)
        _apply_umask(tmp)
        try:
            os.rename(tmp, target)  # atomic; replaces an empty directory, fails on a non-empty one
        except OSError:
            if not _is_complete(target):  # a concurrent builder winning the race is fine
                raise FileExistsError(f"{target} exists and is not a Sluice demo model") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def build_demo_model(out_dir: str | os.PathLike) -> None:
    """Write the demo model's files into the existing directory `out_dir` (not atomic)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    tokenizer = _build_tokenizer()
    tokenizer.save_pretrained(out_dir)
    special_ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS}
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=special_ids[BOS_TOKEN],
        eos_token_id=special_ids[EOS_TOKEN],
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    # A chat turn ends with <|end|>; plain text ends with </s>. Both stop generation.
    model.generation_config = GenerationConfig(
        bos_token_id=special_ids[BOS_TOKEN],
        eos_token_id=[special_ids[EOS_TOKEN], special_ids[END_TOKEN]],
    )
    progress_bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(out_dir)
    finally:
        if progress_bars:
            hf_logging.enable_progress_bar()


def _build_tokenizer():
    """Train the byte-level BPE on the bundled corpus and wrap it as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TARGET_VOCAB_SIZE,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = CORPUS_PATH.read_text(encoding="utf-8").splitlines(keepends=True)
    tok.train_from_iterator(lines, trainer=trainer)
    bos_id = tok.token_to_id(BOS_TOKEN)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, bos_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        extra_special_tokens=[*ROLE_TOKENS, END_TOKEN],
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
    )


def _apply_umask(directory: Path) -> None:
    """Give the build the permissions a plain mkdir/open would (mkdtemp and safetensors use 0o700/0o600)."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for child in directory.iterdir():
        child.chmod(0o666 & ~umask)


def _is_complete(path: Path) -> bool:
    return all((path / name).is_file() for name in _REQUIRED_FILES)
