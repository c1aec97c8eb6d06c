"""WordPiece: ids equal transformers' BertTokenizer with the same vocab.txt (IMDB reviews and tricky strings), the
greedy longest-match rule on hand-made vocabularies, and the likelihood trainer against a brute-force one."""

from __future__ import annotations

from collections import Counter

import pytest

from llmscratch.tokenizers import (BERT_SPECIAL_TOKENS, WordPieceTokenizer, basic_tokenize, train_wordpiece,
                                   wordpiece)

transformers = pytest.importorskip("transformers")

TRICKY = [
    "Café naïve résumé ÅNGSTRÖM",  # accents stripped after lowercasing
    "我爱电影 and 映画 ok",  # CJK ideographs split one per word
    "emoji 😀👍🏽 here, ❤️!",  # symbols the vocabulary lacks -> [UNK]
    "ctrl\x00\x07chars\u200b and\ttabs\r\nnew\x0bline\x7f",  # control characters dropped, whitespace normalised
    "a" * 101,  # longer than 100 characters -> [UNK]
    "x" * 100,
    "[MASK] is [CLS] here [mask] [SEP][PAD]",  # special tokens in the text are kept whole (exact case only)
    "Don't stop!!! $5.00 #1 @user ^_^ `quote` ~tilde~ {x}",  # every non-alphanumeric ASCII char is punctuation
    "İstanbul ß ﬁ Ǆ ΣΑΣ",  # lowercase special cases
    "", "   ", "\ufffd bad\ufffd", "ＡＢＣ full width", "«guillemets» „quotes“ – dash — …",
    "<br /><br />This movie was... GREAT!!!",
]


@pytest.fixture(scope="module")
def imdb_texts():
    from llmscratch.data import load_imdb

    try:
        return list(load_imdb("test", limit=2000).text)
    except FileNotFoundError as err:  # pragma: no cover - CI has the data folder
        pytest.skip(f"IMDB not available: {err}")


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory):
    """A vocabulary trained by this package on IMDB train reviews, saved as vocab.txt."""
    from llmscratch.data import load_imdb

    texts = list(load_imdb("train", limit=400).text)
    tokens = train_wordpiece(texts, 1500, min_frequency=5)
    path = tmp_path_factory.mktemp("wp") / "vocab.txt"
    WordPieceTokenizer(tokens=tokens).save(path)
    return path


@pytest.fixture(scope="module")
def pair(vocab_file):
    return WordPieceTokenizer(vocab_file), transformers.BertTokenizer(str(vocab_file))


def test_ids_equal_bert_tokenizer_on_imdb(pair, imdb_texts):
    ours, ref = pair
    assert len(imdb_texts) == 2000
    equal = sum(ours.encode(t) == ref.encode(t, add_special_tokens=False) for t in imdb_texts)
    assert equal == 2000
    assert any(not t.isascii() for t in imdb_texts)  # both code paths of basic_tokenize were used


@pytest.mark.parametrize("text", TRICKY)
def test_ids_equal_bert_tokenizer_on_tricky_strings(pair, text):
    ours, ref = pair
    assert ours.encode(text) == ref.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("uncased", [True, False])
def test_cased_and_uncased_equal_bert_tokenizer(vocab_file, uncased):
    ours = WordPieceTokenizer(vocab_file, lowercase=uncased)
    ref = transformers.BertTokenizer(str(vocab_file), do_lower_case=uncased)
    for text in TRICKY:
        assert ours.encode(text) == ref.encode(text, add_special_tokens=False), text


def test_encode_pair_and_truncation_equal_bert_tokenizer(pair, imdb_texts):
    ours, ref = pair
    for a, b in zip(imdb_texts[:20], imdb_texts[20:40]):
        want = ref(a, b)
        assert ours.encode_pair(a, b) == (want["input_ids"], want["token_type_ids"])
        # BertTokenizer truncates one token per step (about a second per long review), so the truncated cases
        # use the reviews' first few hundred characters: still far over the limits, and of unequal lengths.
        a, b = a[:250], b[:500]
        for n in (16, 64):
            want = ref(a, b, truncation=True, max_length=n)
            assert ours.encode_pair(a, b, max_length=n) == (want["input_ids"], want["token_type_ids"])
        want = ref(a, truncation=True, max_length=32)
        assert ours.encode_pair(a, max_length=32) == (want["input_ids"], want["token_type_ids"])


def test_batch_encode_pads_on_the_right(pair):
    ours, ref = pair
    texts = ["a short one", "a somewhat longer sentence than the first one"]
    got = ours.batch_encode(texts, max_length=12)
    want = ref(texts, truncation=True, max_length=12, padding=True, return_tensors="pt")
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert got[key].tolist() == want[key].tolist(), key


def test_decode_equals_bert_tokenizer_token_join(pair, imdb_texts):
    ours, ref = pair
    for text in imdb_texts[:50] + TRICKY:
        ids = ref.encode(text)
        tokens = [t for t in ref.convert_ids_to_tokens(ids) if t not in ("[CLS]", "[SEP]", "[PAD]", "[MASK]")]
        # BertTokenizer's own join (its decode() then also removes spaces before punctuation)
        assert ours.decode(ids) == " ".join(tokens).replace(" ##", "")
        assert ours.decode(ids, skip_special_tokens=False).startswith("[CLS] ")


def test_longest_match_first_by_hand():
    # The example of BERT's README: "unaffable" -> un ##aff ##able with a vocabulary that has those pieces.
    vocab = {"un", "una", "##aff", "##able", "##ffa", "##ble", "##a", "[UNK]"}
    assert wordpiece("unaffable", vocab) == ["una", "##ffa", "##ble"]  # longest first: "una" beats "un"
    assert wordpiece("unaffable", vocab - {"una"}) == ["un", "##aff", "##able"]
    assert wordpiece("unaffablez", vocab) == ["[UNK]"]  # one unmatched rest -> the whole word is unknown
    assert wordpiece("x" * 101, {"x", "##x"}) == ["[UNK]"]
    assert wordpiece("xx", {"x", "##x"}) == ["x", "##x"]


def test_basic_tokenize_fast_path_equals_general_path(imdb_texts):
    for text in [t for t in imdb_texts if t.isascii()][:200] + ["Don't\x0b do\x00 it!!", "a\x7fb c"]:
        # appending " é" forces the general (non-ASCII) path; its only extra word is "e"
        assert basic_tokenize(text + " é") == basic_tokenize(text) + ["e"]
        assert basic_tokenize(text + " é", lowercase=False) == basic_tokenize(text, lowercase=False) + ["é"]


def test_basic_tokenize_steps():
    assert basic_tokenize("Héllo, WORLD!") == ["hello", ",", "world", "!"]
    assert basic_tokenize("Héllo, WORLD!", lowercase=False) == ["Héllo", ",", "WORLD", "!"]
    assert basic_tokenize("我爱ab") == ["我", "爱", "ab"]
    assert basic_tokenize("tab\there\u3000ideographic-space") == ["tab", "here", "ideographic", "-", "space"]


def brute_force_wordpiece(texts, vocab_size, min_frequency):
    """The trainer written plainly: recount every pair and token and rescore every pair after every merge."""
    freq = Counter(w for t in texts for w in basic_tokenize(t))
    splits = {w: [w[0]] + ["##" + c for c in w[1:]] for w in freq}
    vocab = list(BERT_SPECIAL_TOKENS) + sorted({t for s in splits.values() for t in s})
    while len(vocab) < vocab_size:
        tok, pairs = Counter(), Counter()
        for w, s in splits.items():
            for t in s:
                tok[t] += freq[w]
            for p in zip(s, s[1:]):
                pairs[p] += freq[w]
        cands = [p for p, c in pairs.items() if c >= min_frequency]
        if not cands:
            break
        # highest score, then the more frequent pair, then the smaller pair of strings
        best = min(cands, key=lambda p: (-pairs[p] / (tok[p[0]] * tok[p[1]]), -pairs[p], p))
        a, b = best
        new = a + b[2:] if b.startswith("##") else a + b
        if new not in vocab:
            vocab.append(new)
        for w, s in splits.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            splits[w] = out
    return vocab


@pytest.mark.parametrize("min_frequency", [1, 3])
def test_trainer_equals_brute_force(imdb_texts, min_frequency):
    texts = imdb_texts[:25]
    fast = train_wordpiece(texts, 400, min_frequency=min_frequency)
    slow = brute_force_wordpiece(texts, 400, min_frequency)
    assert fast == slow
    assert len(fast) == 400 and len(set(fast)) == 400


def test_trainer_prefers_likelihood_over_count():
    # counts: a 8, ##b 8, ##c 4, d 4, x 1, ##y 1. Scores: x##y 1/(1*1) = 1, a##c and d##b 4/(8*4) = 0.125,
    # a##b 4/(8*8) = 0.0625. A count-based (BPE) trainer would merge a pair seen 4 times first; the likelihood
    # score merges the pair seen once but always together. After a##c, count(a) drops to 4, so a##b rises to
    # 4/(4*8) = 0.125 and ties with d##b (the smaller pair wins); after it, d##b scores 4/(4*4).
    texts = ["ab ab ab ab ac ac ac ac db db db db", "xy"]
    vocab = train_wordpiece(texts, len(BERT_SPECIAL_TOKENS) + 6 + 4, min_frequency=1)
    assert vocab[len(BERT_SPECIAL_TOKENS):] == ["##b", "##c", "##y", "a", "d", "x", "xy", "ac", "ab", "db"]


def test_vocab_file_round_trip_and_errors(tmp_path):
    tokens = list(BERT_SPECIAL_TOKENS) + ["a", "##b"]
    tok = WordPieceTokenizer(tokens=tokens)
    path = tok.save(tmp_path / "vocab.txt")
    again = WordPieceTokenizer(path)
    assert again.tokens == tokens and again.encode("ab a") == [5, 6, 5]
    assert again.decode(again.encode_pair("ab", "a")[0]) == "ab a"
    with pytest.raises(FileNotFoundError, match="train one"):
        WordPieceTokenizer(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="special token"):
        WordPieceTokenizer(tokens=["a", "b"])
    with pytest.raises(ValueError, match="twice"):
        WordPieceTokenizer(tokens=tokens + ["a"])
    with pytest.raises(ValueError, match="smaller than"):
        train_wordpiece(["hello world"], 5)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([99])
