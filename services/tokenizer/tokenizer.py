"""The model's text <-> token id mapping, loaded from a local Hugging Face model directory.

Wraps `transformers.AutoTokenizer` (never fetched from a hub) and reads the few model facts the
front door needs from the same directory: the context length (config.json) and every end-of-
sequence id (tokenizer and generation_config.json).
"""
from __future__ import annotations

import json
from pathlib import Path

from services.common.validation import InvalidRequestError

CHAT_ROLES = frozenset({"system", "user", "assistant", "tool"})


class TextTokenizer:
    """Encode, decode and chat-template rendering for one model directory.

    `vocab_size` is `len(tokenizer)`: the full id range including added tokens, which is the range
    every token id in a request must fall in (it can differ from config.json's `vocab_size`).
    """

    def __init__(self, model_dir: str) -> None:
        from transformers import AutoTokenizer

        path = Path(model_dir)
        if not path.is_dir():
            raise FileNotFoundError(f"model directory {model_dir!r} does not exist")
        self.model_dir = str(path)
        self.hf = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        self.vocab_size = len(self.hf)
        self.eos_token_ids = _read_eos_token_ids(path, self.hf.eos_token_id)
        self.max_model_len = _read_max_model_len(path)
        self.model_name = path.name
        self.has_chat_template = bool(self.hf.chat_template)
        self._backend_decode = _plain_backend_decode(self.hf)

    def token_text(self, token_id: int) -> str:
        """One token's text on its own (for logprob listings); may be a partial character."""
        return self.hf.decode([token_id], skip_special_tokens=False)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        """`hf.decode(ids, skip_special_tokens)`; straight through the `tokenizers` backend when that
        is all `hf.decode` would do (the detokenizer decodes once per streamed token, and
        transformers' wrapper costs several times the backend's own decode)."""
        if self._backend_decode is not None:
            return self._backend_decode(ids, skip_special_tokens=skip_special_tokens)
        return self.hf.decode(ids, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        """Render `messages` with the model's chat template and tokenize the result.

        The template places every special token itself (BOS included), so the rendered text is
        encoded without adding special tokens again.
        """
        if not self.hf.chat_template:
            raise InvalidRequestError(
                "this model has no chat template; send a plain prompt instead of messages")
        _validate_messages(messages)
        from jinja2.exceptions import TemplateError

        try:
            text = self.hf.apply_chat_template(
                messages, add_generation_prompt=add_generation_prompt, tokenize=False)
        except TemplateError as e:
            raise InvalidRequestError(f"messages rejected by the model's chat template: {e}") from e
        return self.encode(text, add_special_tokens=False)


def _plain_backend_decode(hf):
    """The `tokenizers` backend's decode when `hf.decode` adds nothing to it: a fast tokenizer whose
    `_decode` is transformers' generic one, without `clean_up_tokenization_spaces`. Else None."""
    backend = getattr(hf, "backend_tokenizer", None)
    generic = type(hf)._decode.__module__ in ("transformers.tokenization_utils_tokenizers",
                                               "transformers.tokenization_utils_fast")
    if backend is None or not generic or getattr(hf, "clean_up_tokenization_spaces", False):
        return None
    return backend.decode


def _validate_messages(messages: list[dict]) -> None:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("messages must be a non-empty list")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequestError(f"messages[{i}] must be an object with role and content")
        role = message.get("role")
        if role not in CHAT_ROLES:
            raise InvalidRequestError(
                f"messages[{i}].role is {role!r}; expected one of {sorted(CHAT_ROLES)}")
        content = message.get("content")
        if not isinstance(content, (str, list)):
            raise InvalidRequestError(
                f"messages[{i}].content must be a string or a list of parts, got "
                f"{type(content).__name__}")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def _as_id_list(value: object) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


def _read_eos_token_ids(model_dir: Path, tokenizer_eos: int | None) -> list[int]:
    """The tokenizer's EOS first, then generation_config.json's (int or list), without repeats."""
    ids = _as_id_list(tokenizer_eos)
    ids += _as_id_list(_read_json(model_dir / "generation_config.json").get("eos_token_id"))
    return list(dict.fromkeys(ids))


def _read_max_model_len(model_dir: Path) -> int:
    """config.json's max_position_embeddings (or its text_config's, for vision-language models)."""
    config = _read_json(model_dir / "config.json")
    value = config.get("max_position_embeddings")
    if value is None:
        value = config.get("text_config", {}).get("max_position_embeddings")
    if value is None:
        raise ValueError(f"{model_dir / 'config.json'} has no max_position_embeddings")
    return int(value)
