"""Tokenizers built by hand: the word-level tokenizer and byte-level BPE, checked against tiktoken and by hand."""

from __future__ import annotations

import pytest

from llmscratch.tokenizers import (
    GPT2_EOT,
    UNK,
    BPETokenizer,
    WordTokenizer,
    bytes_to_unicode,
    gpt2_tokenizer,
    merge_pair,
    pair_counts,
)

EDGE_CASES = [
    "",
    "Hello, world. Is this-- a test?",
    "naïve café, Ünïcödé — “quotes” and ‘single’ … 日本語のテキスト, 中文, русский текст, عربى",
    "emoji 🤗🚀👩‍👩‍👧‍👦 flags 🇫🇷🇯🇵 and skin tones 👍🏽",
    "   leading spaces, trailing spaces   ",
    "tabs\tand\t\tnewlines\n\n\n  mixed \r\n runs      of whitespace\n",
    "numbers 1234567890 3.14159 1,000,000 and contractions: I'm, you're, it's, we'll, they've, I'd",
    "UPPER lower MiXeD CaSe 'S 'LL",
    "\x00\x01\x7f control bytes \u200b zero width \ufeff bom",
    "a" * 3000 + " " + "ab" * 1000,
]


@pytest.fixture(scope="module")
def gpt2_pair():
    return BPETokenizer.gpt2(), gpt2_tokenizer()


# ----------------------------------------------------------------------------------------------------------
# BPE loaded from GPT-2's files == tiktoken
# ----------------------------------------------------------------------------------------------------------


def test_gpt2_bpe_equals_tiktoken_on_2000_imdb_reviews(gpt2_pair):
    from llmscratch.data import load_imdb

    ours, ref = gpt2_pair
    texts = load_imdb("train", limit=2000)["text"].tolist()
    assert len(texts) == 2000
    mismatches = [i for i, t in enumerate(texts) if ours.encode(t) != ref.encode(t)]
    assert not mismatches, f"{len(mismatches)} reviews differ from tiktoken, first at index {mismatches[:5]}"
    for t in texts[:200]:
        assert ours.decode(ours.encode(t)) == t


@pytest.mark.parametrize("text", EDGE_CASES, ids=range(len(EDGE_CASES)))
def test_gpt2_bpe_equals_tiktoken_on_edge_cases(gpt2_pair, text):
    ours, ref = gpt2_pair
    ids = ours.encode(text)
    assert ids == ref.encode(text)
    assert ours.decode(ids) == text
    assert ours.decode(ids) == ref.decode(ids)


def test_gpt2_special_token_rules_match_tiktoken(gpt2_pair):
    ours, ref = gpt2_pair
    text = "first document.<|endoftext|> second one <|endoftext|><|endoftext|>\nthird"
    for kw in ({"allowed_special": {GPT2_EOT}}, {"allowed_special": "all"}, {"disallowed_special": ()}):
        assert ours.encode(text, **kw) == ref.encode(text, **kw), kw
    allowed = ours.encode(text, allowed_special="all")
    assert allowed.count(50256) == 3
    assert ours.decode(allowed) == text
    assert 50256 not in ours.encode(text, disallowed_special=())
    with pytest.raises(ValueError, match="allowed_special"):
        ours.encode(text)
    with pytest.raises(ValueError):
        ref.encode(text)  # tiktoken raises too: the two agree on the default
    with pytest.raises(ValueError, match="does not have"):
        ours.encode("x", allowed_special={"<|pad|>"})


def test_gpt2_vocabulary_shape(gpt2_pair):
    ours, ref = gpt2_pair
    assert ours.n_vocab == ref.n_vocab == 50257
    assert len(ours.merges) == 50000
    for i in [0, 1, 100, 256, 1000, 50255]:
        assert ours.decode_bytes([i]) == ref.decode_single_token_bytes(i)


def test_bytes_to_unicode_is_a_printable_bijection():
    m = bytes_to_unicode()
    assert sorted(m) == list(range(256))
    assert len(set(m.values())) == 256
    assert all(c.isprintable() and not c.isspace() for c in m.values())
    assert m[ord(" ")] == "Ġ" and m[ord("A")] == "A"


# ----------------------------------------------------------------------------------------------------------
# What tiktoken's own test cases found: surrogates, long pre-tokens, the cache
# ----------------------------------------------------------------------------------------------------------

SURROGATE_CASES = [
    "\ud83d",  # a lone high surrogate (half of an emoji)
    "\ude00",  # a lone low surrogate
    "a\ud83d\ude00b",  # a surrogate pair written as two code points: tiktoken joins it into 😀
    "\ud83d\ude00",
    "x \ud83d y \udfff z",
    "ok 😀 then \ud800\ud800 twice",
    "\ud83d<|endoftext|>\ude00",
]


@pytest.mark.parametrize("text", SURROGATE_CASES, ids=range(len(SURROGATE_CASES)))
def test_surrogates_are_repaired_as_tiktoken_does(gpt2_pair, text):
    ours, ref = gpt2_pair
    assert ours.encode(text, disallowed_special=()) == ref.encode(text, disallowed_special=())
    assert ours.encode_ordinary(text) == ref.encode_ordinary(text)
    assert ours.encode(text, allowed_special="all") == ref.encode(text, allowed_special="all")


def test_surrogate_pair_becomes_its_character(gpt2_pair):
    ours, _ = gpt2_pair
    assert ours.encode("a\ud83d\ude00b") == ours.encode("a😀b")
    assert ours.decode(ours.encode("\ud83d")) == "\ufffd"


def _long_words():
    from llmscratch.data import load_the_verdict

    letters = "".join(c for c in load_the_verdict() if c.isalpha())
    return [letters[:5000], letters[5000:6500] * 3, "a" * 4097, "ab" * 2500, "x" + "\u00e9" * 2000]


def test_fast_merges_equal_simple_loop_and_tiktoken_on_long_pretokens(gpt2_pair):
    ours, ref = gpt2_pair
    for word in _long_words():
        ids = [ours.byte_ids[b] for b in word.encode("utf-8")]
        fast = ours.apply_merges(ids)
        assert fast == ours.apply_merges_simple(ids)
        assert fast == ref.encode_ordinary(word), word[:30]


def test_fast_merges_equal_simple_loop_on_every_imdb_pretoken(gpt2_pair):
    from llmscratch.data import load_imdb

    ours, _ = gpt2_pair
    pieces = {p for t in load_imdb("train", limit=300)["text"] for p in ours._regex.findall(t)}
    assert len(pieces) > 5000
    for piece in pieces:
        ids = [ours.byte_ids[b] for b in piece.encode("utf-8")]
        assert ours.apply_merges(ids) == ours.apply_merges_simple(ids), piece


def test_merge_order_on_overlapping_pairs_by_hand():
    # merges: (a, a) -> 256 "aa" first, then (aa, a) -> 257 "aaa".
    vocab = {i: bytes([i]) for i in range(256)}
    vocab[256], vocab[257] = b"aa", b"aaa"
    tok = BPETokenizer(vocab, [((97, 97), 256), ((256, 97), 257)], {})
    for n in range(1, 12):
        ids = [97] * n
        assert tok.apply_merges(ids) == tok.apply_merges_simple(ids), n
    # "aaaaa": round 1 merges (a, a) left to right without overlaps -> aa aa a; round 2 (aa, a) -> aa aaa.
    assert tok.apply_merges([97] * 5) == [256, 257]
    assert tok.apply_merges([97] * 3) == [257]
    assert tok.decode(tok.encode("a" * 7)) == "a" * 7
    # the heap merge needs merges in learning order (a merge never uses a token that a later merge makes)
    with pytest.raises(ValueError, match="merge 0 .* uses token 256, which no earlier merge makes"):
        BPETokenizer(vocab, [((256, 97), 257), ((97, 97), 256)], {})


def test_pretoken_cache_is_bounded_and_skips_huge_pieces(gpt2_pair):
    import pickle

    from llmscratch.data import load_imdb

    tok = BPETokenizer.gpt2()
    tok.set_cache_size(50)
    texts = load_imdb("test", limit=20)["text"].tolist()
    expected = [gpt2_pair[1].encode_ordinary(t) for t in texts]
    assert [tok.encode(t) for t in texts] == expected
    info = tok._cached_piece.cache_info()
    assert info.maxsize == 50 and info.currsize == 50 and info.misses > 50
    tok.set_cache_size(1000)
    huge = "z" * 5000
    tok.encode(huge)
    assert tok._cached_piece.cache_info().currsize == 0, "a piece longer than max_cached_len is not cached"
    again = pickle.loads(pickle.dumps(tok))  # DataLoader workers may pickle a tokenizer
    assert again.encode(texts[0]) == expected[0] and again.cache_size == 1000
    with pytest.raises(ValueError, match="non-negative int"):
        tok.set_cache_size(-1)
    tok.set_cache_size(0)  # no cache at all still encodes
    assert tok.encode(texts[1]) == expected[1]


# ----------------------------------------------------------------------------------------------------------
# BPE training from scratch
# ----------------------------------------------------------------------------------------------------------


def test_pair_counts_and_merge_pair_by_hand():
    assert pair_counts([1, 2, 1, 2, 3]) == {(1, 2): 2, (2, 1): 1, (2, 3): 1}
    assert pair_counts([7]) == {}
    assert merge_pair([1, 2, 1, 2, 3], (1, 2), 9) == [9, 9, 3]
    assert merge_pair([5, 5, 5], (5, 5), 9) == [9, 5]
    assert merge_pair([5, 5, 5, 5], (5, 5), 9) == [9, 9]
    assert merge_pair([], (1, 2), 9) == []


def _naive_train(text, n_merges, regex_pattern):
    """Reference trainer: recount every pair of every pre-token occurrence after each merge."""
    import regex

    words = [list(w.encode("utf-8")) for w in regex.findall(regex_pattern, text)]
    merges = []
    for k in range(n_merges):
        counts = {}
        for w in words:
            pair_counts(w, counts)
        if not counts:
            break
        best = max(counts.values())
        pair = min(p for p, c in counts.items() if c == best)  # ties: smallest pair of ids, as the package
        merges.append(pair)
        words = [merge_pair(w, pair, 256 + k) for w in words]
    return merges


def test_train_matches_naive_reference_on_the_verdict():
    from llmscratch.data import load_the_verdict
    from llmscratch.tokenizers import GPT2_PATTERN

    text = load_the_verdict()[:6000]
    tok = BPETokenizer.train(text, 256 + 60 + 1)
    assert [pair for pair, _ in tok.merges] == _naive_train(text, 60, GPT2_PATTERN)
    assert tok.n_vocab == 256 + 60 + 1
    assert tok.special_tokens == {GPT2_EOT: 316}


def test_trained_tokenizer_roundtrip_compresses_and_saves(tmp_path):
    from llmscratch.data import load_the_verdict

    text = load_the_verdict()
    tok = BPETokenizer.train(text, 600)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(ids) < 0.45 * len(text.encode("utf-8")), "600 tokens should more than halve the byte count"
    for t in EDGE_CASES:  # unseen characters fall back to single bytes: any text round-trips
        assert tok.decode(tok.encode(t)) == t
    doc = "one<|endoftext|>two"
    assert tok.encode(doc, allowed_special="all").count(tok.special_tokens[GPT2_EOT]) == 1
    path = tok.save(tmp_path / "tok.json")
    again = BPETokenizer.load(path)
    assert again.merges == tok.merges and again.vocab == tok.vocab and again.special_tokens == tok.special_tokens
    assert again.encode(text[:2000]) == ids[: len(again.encode(text[:2000]))]


def test_gpt2_save_load_roundtrip(tmp_path, gpt2_pair):
    ours, ref = gpt2_pair
    again = BPETokenizer.load(ours.save(tmp_path / "gpt2.json"))
    text = EDGE_CASES[2] + EDGE_CASES[3]
    assert again.encode(text) == ref.encode(text)


def test_bpe_errors_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="at least 257"):
        BPETokenizer.train("abc", 100)
    with pytest.raises(ValueError, match="non-empty"):
        BPETokenizer.train("", 300)
    with pytest.raises(FileNotFoundError, match="save"):
        BPETokenizer.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a file written by"):
        BPETokenizer.load(tmp_path / "bad.json")
    tok = BPETokenizer.train("hello hello", 260)
    with pytest.raises(TypeError):
        tok.encode(b"bytes")
    with pytest.raises(KeyError, match="not in the vocabulary"):
        tok.decode([10**6])


def test_bad_inputs_get_messages_that_name_the_fix(tmp_path):
    import numpy as np
    import torch

    from llmscratch.tokenizers import InvalidTokenIdError

    tok = BPETokenizer.train("hello hello world", 260)
    with pytest.raises(TypeError, match=r"got bytes: decode the bytes first, e.g. data.decode\('utf-8'\)"):
        tok.encode(b"bytes")
    with pytest.raises(TypeError, match="got None .* an empty text is ''"):
        tok.encode(None)
    with pytest.raises(TypeError, match=r"once per text"):
        tok.encode(["a", "b"])
    with pytest.raises(TypeError, match="got bytes"):
        tok.encode_ordinary(b"x")
    # decode: negative ids, -100, floats, ids past the vocabulary
    with pytest.raises(InvalidTokenIdError, match=r"id -1 at position 1 is not in the vocabulary \(ids go from 0 "
                       r"to 259\); negative ids"):
        tok.decode([104, -1])
    with pytest.raises(ValueError, match="-100 is the ignore_index of the loss targets"):
        tok.decode(torch.tensor([104, -100]))
    with pytest.raises(KeyError, match="id 260 at position 0"):  # still a KeyError for older callers
        tok.decode([260])
    with pytest.raises(InvalidTokenIdError, match=r"must be integers, got 104.7 \(float\) at position 0.*ids.long"):
        tok.decode([104.7])
    with pytest.raises(InvalidTokenIdError, match="must be integers, got 104.0"):
        tok.decode(torch.tensor([104.0, 101.0]))  # silently truncated to ints before
    assert tok.decode(np.array([104, 101])) == tok.decode(torch.tensor([104, 101])) == "he"
    assert tok.decode(torch.tensor(104)) == "h"
    with pytest.raises(InvalidTokenIdError, match="at position 2"):
        tok.token_strings([104, 101, -5])
    # train: vocab_size not an int, or more merges than the corpus allows
    with pytest.raises(TypeError, match=r"vocab_size must be an int, got 300.0 \(float\)"):
        BPETokenizer.train("hello", 300.0)
    with pytest.raises(TypeError, match="vocab_size must be an int, got '300'"):
        BPETokenizer.train("hello", "300")
    with pytest.raises(ValueError, match=r"vocab_size=1000 cannot be reached: this corpus allows only 4 merges "
                       r".* Use vocab_size <= 261"):
        BPETokenizer.train("hello", 1000)
    assert BPETokenizer.train("hello", 261).n_vocab == 261  # the largest reachable size does train
    with pytest.raises(TypeError, match="train takes a str, got bytes"):
        BPETokenizer.train(b"hello", 300)
    # a truncated saved tokenizer names the file
    path = tok.save(tmp_path / "tok.json")
    data = path.read_bytes()
    (tmp_path / "cut.json").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut.json \(\d[\d,]* bytes\) is not valid JSON: truncated or corrupted"
                       r".*BPETokenizer.save"):
        BPETokenizer.load(tmp_path / "cut.json")
    (tmp_path / "part.json").write_text('{"format": "llmscratch-bpe-1", "pattern": "x"}')
    with pytest.raises(ValueError, match=r"part.json lacks the field\(s\) \['special_tokens'"):
        BPETokenizer.load(tmp_path / "part.json")
    (tmp_path / "encoder.json").write_text('{"!": 0, "\\"": ')
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\n")
    with pytest.raises(ValueError, match="encoder.json .* not valid JSON.*fetch GPT-2's files again"):
        BPETokenizer.from_gpt2_files(tmp_path / "encoder.json", tmp_path / "vocab.bpe")


def test_word_tokenizer_bad_inputs():
    from llmscratch.tokenizers import InvalidTokenIdError

    tok = WordTokenizer.from_text("a b c")
    with pytest.raises(TypeError, match="decode the bytes first"):
        tok.encode(b"a b")
    with pytest.raises(InvalidTokenIdError, match=r"id -1 at position 0 .*ids go from 0 to 4"):
        tok.decode([-1])
    with pytest.raises(InvalidTokenIdError, match="must be integers, got 1.5"):
        tok.decode([1.5])


# ----------------------------------------------------------------------------------------------------------
# Word-level tokenizer
# ----------------------------------------------------------------------------------------------------------


def test_word_tokenizer_roundtrip_and_unknown_words():
    from llmscratch.data import load_the_verdict

    text = load_the_verdict()
    tok = WordTokenizer.from_text(text)
    assert tok.vocab_size == len(set(WordTokenizer.split(text))) + 2
    assert tok.str_to_int[GPT2_EOT] == tok.vocab_size - 2 and tok.str_to_int[UNK] == tok.vocab_size - 1
    sample = '"It\'s the last he painted, you know," Mrs. Gisburn said with pardonable pride.'
    ids = tok.encode(sample)
    # Whitespace is dropped by the splitter, so the round trip is exact up to whitespace (Raschka's tokenizer
    # prints '" It\' s the last ...'), and decoding then encoding again gives the same ids.
    assert "".join(tok.decode(ids).split()) == "".join(sample.split())
    assert tok.encode(tok.decode(ids)) == ids
    assert tok.decode(tok.encode("the last he painted, you know.")) == "the last he painted, you know."
    ids = tok.encode("Hello, do you like tea? <|endoftext|> In the sunlit terraces of the palace.")
    assert ids.count(tok.str_to_int[UNK]) == 2  # "Hello" and "palace" are not in the story
    assert tok.str_to_int[GPT2_EOT] in ids
    assert tok.decode(ids) == "<|unk|>, do you like tea? <|endoftext|> In the sunlit terraces of the <|unk|>."


def test_word_tokenizer_errors():
    tok = WordTokenizer.from_text("a b c", special_tokens=())
    with pytest.raises(KeyError, match="from_text"):
        tok.encode("a d")
    with pytest.raises(KeyError, match="not in the vocabulary"):
        tok.decode([99])
    with pytest.raises(ValueError, match="non-empty"):
        WordTokenizer.from_text("   ")
    with pytest.raises(ValueError, match="unique"):
        WordTokenizer({"a": 0, "b": 0})
