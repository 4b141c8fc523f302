"""The byte-level BPE tokenizer: exact round trips, transformers compatibility, bad tokenizer files."""

from __future__ import annotations

from pathlib import Path

import pytest

from hwlm.data.tokenizer import encode_documents, load_tokenizer, save_tokenizer, train_tokenizer
from hwlm.errors import ConfigError, DataError

EOT = "<|endoftext|>"
TEXTS = [
    "The quick brown fox jumps over the lazy dog.\n" * 3,
    "机器学习是人工智能的一个分支。中文文本，全角标点！",
    "Mixed: Ελληνικά, русский, العربية, हिन्दी, 日本語のテキスト, 한국어",
    "Emoji 😀🎉 family 👩\u200d👩\u200d👧 flags 🇫🇷 skin 👍🏽",
    "controls kept when asked: \x00\x07\r\n\ttab and a literal <|endoftext|> inside",
    "  leading spaces, trailing  \n\n",
]


@pytest.fixture(scope="module")
def tok_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tok = train_tokenizer(TEXTS * 4, 400, [EOT, "<|pad|>"])
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    save_tokenizer(tok, path)
    return path


@pytest.mark.parametrize("text", TEXTS + ["unseen 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ☃ \U0010ffff"])
def test_round_trip_is_exact(tok_file: Path, text: str) -> None:
    tok = load_tokenizer(tok_file)
    (ids,) = list(encode_documents(tok, [text]))
    assert ids[-1] == tok.token_to_id(EOT) == 0
    assert 0 not in ids[:-1], "a literal <|endoftext|> in text must not become the special id"
    assert tok.decode(ids[:-1], skip_special_tokens=False) == text


def test_transformers_loads_the_same_tokenizer(tok_file: Path) -> None:
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tok_file))
    tok = load_tokenizer(tok_file)
    for text in TEXTS[:4]:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert hf.encode(text, add_special_tokens=False) == ids
        assert hf.decode(ids) == text


def test_bad_tokenizer_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"tokenizer file .*missing.json does not exist"):
        load_tokenizer(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match=r"bad.json is not a valid tokenizer.json \(.*\); give a file saved by"):
        load_tokenizer(bad)
    with pytest.raises(ConfigError, match=r"the tokenizer has no '<\|nope\|>' token"):
        list(encode_documents(train_tokenizer(["ab"], 300, [EOT]), ["x"], eot_token="<|nope|>"))
