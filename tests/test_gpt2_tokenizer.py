"""llmscratch.tokenizers.gpt2_tokenizer: tiktoken's GPT-2 encoding, built offline from the local BPE files."""

from __future__ import annotations

import socket

import pytest

from llmscratch import data
from llmscratch.tokenizers import GPT2_EOT, gpt2_tokenizer


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a socket fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_reference_sentence(data_dir, no_network):
    tok = gpt2_tokenizer()
    assert tok.encode("Hello, world. Is this-- a test?") == [15496, 11, 995, 13, 1148, 428, 438, 257, 1332, 30]
    assert tok.n_vocab == 50257 and tok.name == "gpt2"


def test_built_without_network_from_explicit_folder(data_dir, no_network, monkeypatch, tmp_path):
    monkeypatch.delenv("LLMSCRATCH_DATA")
    monkeypatch.setenv("LLMSCRATCH_CACHE", str(tmp_path / "empty-cache"))
    tok = gpt2_tokenizer(path=data_dir)
    assert tok.decode(tok.encode("offline")) == "offline"


def test_missing_files_say_how_to_fix(monkeypatch, tmp_path):
    monkeypatch.delenv("LLMSCRATCH_DATA", raising=False)
    monkeypatch.setenv("LLMSCRATCH_CACHE", str(tmp_path))
    monkeypatch.setenv("LLMSCRATCH_OFFLINE", "1")
    with pytest.raises(data.DataNotFoundError, match="LLMSCRATCH_OFFLINE"):
        gpt2_tokenizer()


def test_special_token(data_dir):
    tok = gpt2_tokenizer()
    text = f"end{GPT2_EOT}start"
    assert 50256 in tok.encode(text, allowed_special={GPT2_EOT})
    with pytest.raises(ValueError):  # tiktoken refuses special tokens unless allowed: no silent surprises
        tok.encode(text)
    assert 50256 not in tok.encode(text, disallowed_special=())


def test_equals_transformers_reference(data_dir, tmp_path):
    """An independent implementation (transformers' GPT-2 tokenizer) on real reviews and odd text."""
    import shutil

    import transformers

    # the folder layout transformers reads (v4 and v5 alike): vocab.json + merges.txt
    shutil.copy(data.fetch("gpt2/encoder.json"), tmp_path / "vocab.json")
    shutil.copy(data.fetch("gpt2/vocab.bpe"), tmp_path / "merges.txt")
    ref = transformers.GPT2Tokenizer.from_pretrained(str(tmp_path))
    assert ref.encode("Hello, world. Is this-- a test?") == [15496, 11, 995, 13, 1148, 428, 438, 257, 1332, 30]
    tok = gpt2_tokenizer()
    texts = data.load_imdb("test", limit=50).text.tolist() + [
        "naïve café — 東京 🚀🚀 emoji", "   leading and   trailing   ", "tabs\tand\nnewlines\n\n\n", "'s 'll 've're",
        "12345 3.14159 1,000,000",
    ]
    for text in texts:
        assert tok.encode(text) == ref.encode(text), text[:60]
        assert tok.decode(tok.encode(text)) == text
