"""TextTokenizer over the demo model directory."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from services.common.validation import InvalidRequestError
from services.tokenizer.tokenizer import TextTokenizer


def test_model_facts(demo_tokenizer):
    assert demo_tokenizer.vocab_size == 2000
    assert demo_tokenizer.max_model_len == 2048
    assert demo_tokenizer.eos_token_ids == [1, 5]  # </s> from the tokenizer, <|end|> from generation_config


def test_encode_decode_round_trip(demo_tokenizer):
    text = "Grüße aus Zürich, 你好, ありがとう 🙏🏽"
    ids = demo_tokenizer.encode(text)
    assert ids[0] == demo_tokenizer.hf.bos_token_id
    assert demo_tokenizer.encode(text, add_special_tokens=False) == ids[1:]
    assert demo_tokenizer.decode(ids) == text
    assert demo_tokenizer.decode(ids, skip_special_tokens=False) == "<s>" + text


@pytest.mark.parametrize("skip", [True, False])
def test_decode_takes_the_backend_and_equals_transformers_decode(demo_tokenizer, skip):
    """The demo tokenizer decodes through `tokenizers` directly, with transformers' results on
    random ids (special tokens, byte pieces that end mid-character, added tokens included)."""
    import random

    assert demo_tokenizer._backend_decode is not None
    rng = random.Random(skip)
    for length in (0, 1, 2, 3, 7, 40):
        for _ in range(30):
            ids = [rng.randrange(demo_tokenizer.vocab_size) for _ in range(length)]
            assert demo_tokenizer.decode(ids, skip) == demo_tokenizer.hf.decode(ids, skip_special_tokens=skip)


def test_decode_goes_through_transformers_when_it_cleans_up_spaces(demo_model_dir, tmp_path):
    """With clean_up_tokenization_spaces (which the backend does not do) decode stays transformers'."""
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(demo_model_dir) / name, tmp_path / name)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["clean_up_tokenization_spaces"] = True
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = TextTokenizer(str(tmp_path))
    assert tokenizer._backend_decode is None
    ids = tokenizer.encode("a , b .", add_special_tokens=False)
    assert tokenizer.decode(ids) == tokenizer.hf.decode(ids, skip_special_tokens=True)


def test_chat_template_gives_ids_with_a_single_bos(demo_tokenizer):
    ids = demo_tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert demo_tokenizer.decode(ids, skip_special_tokens=False) == \
        "<s><|user|>\nHi<|end|>\n<|assistant|>\n"
    assert ids.count(demo_tokenizer.hf.bos_token_id) == 1
    without = demo_tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}],
                                                 add_generation_prompt=False)
    assert demo_tokenizer.decode(without, skip_special_tokens=False).endswith("<|end|>\n")


@pytest.mark.parametrize("messages, words", [
    ([], ["messages", "non-empty"]),
    ([{"role": "wizard", "content": "hi"}], ["messages[0].role", "wizard"]),
    ([{"content": "hi"}], ["messages[0].role", "None"]),
    ([{"role": "user", "content": 3}], ["messages[0].content"]),
    (["hi"], ["messages[0]"]),
    ([{"role": "tool", "content": "42"}], ["chat template", "tool"]),  # valid role, not in template
])
def test_invalid_messages_are_rejected(demo_tokenizer, messages, words):
    with pytest.raises(InvalidRequestError) as excinfo:
        demo_tokenizer.apply_chat_template(messages)
    for word in words:
        assert word in str(excinfo.value)


@pytest.fixture(scope="module")
def plain_model_dir(demo_model_dir, tmp_path_factory) -> Path:
    """The demo tokenizer without chat template, with a scalar EOS in generation_config."""
    path = tmp_path_factory.mktemp("plain")
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(Path(demo_model_dir) / name, path / name)
    config = json.loads((Path(demo_model_dir) / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": 4}))
    return path


def test_model_without_chat_template_rejects_messages(plain_model_dir):
    tokenizer = TextTokenizer(str(plain_model_dir))
    assert tokenizer.eos_token_ids == [1, 4]
    with pytest.raises(InvalidRequestError, match="no chat template"):
        tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}])


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TextTokenizer(str(tmp_path / "nope"))
