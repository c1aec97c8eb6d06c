"""Tokenizers: text -> token ids -> text.

This module holds GPT-2's byte-level BPE as used throughout the course, through tiktoken. Chapter 1 adds the
tokenizers built by hand (a word-level tokenizer and a byte-level BPE trained from scratch) to this same module.
"""

from __future__ import annotations

import functools
from pathlib import Path

__all__ = ["gpt2_tokenizer", "GPT2_PATTERN", "GPT2_EOT"]

# GPT-2's pre-tokenizer: contractions, letter runs, digit runs, other symbols, whitespace (OpenAI's encoder.py).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_EOT = "<|endoftext|>"


@functools.lru_cache(maxsize=4)
def _gpt2_encoding(encoder_json: str, vocab_bpe: str):
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    # Both paths are local files: tiktoken's loader reads them with no network request.
    ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=vocab_bpe, encoder_json_file=encoder_json)
    return tiktoken.Encoding(
        name="gpt2",
        explicit_n_vocab=50257,
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={GPT2_EOT: 50256},
    )


def gpt2_tokenizer(path: str | Path | None = None):
    """GPT-2's tokenizer (a ``tiktoken.Encoding`` named ``"gpt2"``, 50,257 ids) built from local files.

    The files ``gpt2/encoder.json`` and ``gpt2/vocab.bpe`` are found like every data file (see
    :func:`llmscratch.data.fetch`: explicit folder, ``$LLMSCRATCH_DATA``, the cache, then a verified download),
    so building the tokenizer never depends on tiktoken's own downloader.

    >>> tok = gpt2_tokenizer()
    >>> tok.encode("Hello, world. Is this-- a test?")
    [15496, 11, 995, 13, 1148, 428, 438, 257, 1332, 30]

    ``<|endoftext|>`` is only encoded as the special id 50256 when allowed:
    ``tok.encode(text, allowed_special={"<|endoftext|>"})``.
    """
    from .data import fetch

    encoder_json = fetch("gpt2/encoder.json", path)
    vocab_bpe = fetch("gpt2/vocab.bpe", path)
    return _gpt2_encoding(str(encoder_json), str(vocab_bpe))
