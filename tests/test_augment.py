"""llmscratch.data.augment: EDA's invariants (Wei & Zou 2019), reproducibility, AEDA, WordNet from the data folder,
and back-translation through tiny random MarianMT models built offline."""

from __future__ import annotations

import random
from collections import Counter

import pytest

pytest.importorskip("nltk")
from llmscratch.data import augment  # noqa: E402
from llmscratch.data.augment import (STOP_WORDS, aeda, eda, eda_params, eda_words, random_deletion,  # noqa: E402
                                     random_insertion, random_swap, synonym_replacement, synonyms)

SENT = ("This movie was a wonderful surprise, the actors were great and the story kept me "
        "watching until the very end")


@pytest.fixture(scope="module")
def wn(data_dir):
    return augment.wordnet()


def test_wordnet_is_the_data_folders(wn):
    assert wn.get_version() == "3.0"
    # 82,115 noun synsets (SOURCE.md): one data line each, after the licence header lines that start with spaces
    with open(wn.root.join("data.noun"), encoding="utf-8") as fh:
        assert sum(1 for line in fh if not line.startswith("  ")) == 82115
    assert {"film", "flick", "motion picture", "picture show"} <= set(synonyms("movie"))
    assert "movie" not in synonyms("movie")


def _nltk_lemma_names(wn, word):
    return [lemma.name() for syn in wn.synsets(word) for lemma in syn.lemmas()]


def _nltk_synonyms(wn, word, names=None):
    """The NLTK definition of :func:`synonyms` (the reference its faster reader must equal); ``names``: the
    word's :func:`_nltk_lemma_names` if already at hand."""
    names = _nltk_lemma_names(wn, word) if names is None else names
    seen = dict.fromkeys(augment._NOT_LETTER.sub("", n.replace("_", " ").replace("-", " ").lower()).strip()
                         for n in names)
    seen.pop(word, None)
    seen.pop("", None)
    return tuple(seen)


# irregular forms (exception lists), detachment rules, adjective satellites and lemmas with markers ("galore" is
# "galore(ip)", "ablaze" a satellite), hyphens, underscores, apostrophes and dots in lemmas, capitals, multi-word
# synonyms as EDA's insertion passes them back (and ones that look like the start of an index line: "good a"),
# stop words, and words WordNet does not have
TRICKY = ["went", "geese", "better", "best", "worse", "mice", "men", "women", "ran", "lying", "abaci", "aardwolves",
          "churches", "boxes", "buses", "wolves", "studies", "bigger", "happiest", "galore", "ablaze", "beautiful",
          "elect", "dog-tired", "dog tired", "dog_tired", "well-known", "jack-o'-lantern", "o'clock", "st.",
          ".22-caliber", "Movie", "MOVIE", "Hollywood", "New York", "new_york", "motion picture", "motion_picture",
          "picture show", "movie n", "good a", "run v", "vitamin a", "dog\tn", "the", "and", "is", "was", "having",
          "s", "a", "", "xyzzy", "qwertyuiop", "zzz"]


def test_synonyms_equal_nltks_word_for_word(wn):
    from llmscratch.data import load_imdb

    words = dict.fromkeys(TRICKY)
    for review in load_imdb("train", limit=150).text:  # about 1,900 sentences (NLTK's side sets the time)
        words.update(dict.fromkeys(eda_words(review.replace("<br />", " "))))
    first = list(words)[:300]
    for w in first:  # the synonyms themselves (multi-word ones included), as random insertion may pick them
        words.update(dict.fromkeys(_nltk_synonyms(wn, w)))
    assert len(words) > 5_000
    db = augment.wordnet_db()
    assert db.root.samefile(wn.root.path)  # the files NLTK reads
    augment._SYN_CACHE.clear()
    for w in words:
        names = _nltk_lemma_names(wn, w)
        # the raw lemma names too: same synsets in the same order, repeats included
        assert db.lemma_names(w) == names, w
        assert synonyms(w) == _nltk_synonyms(wn, w, names), w
    for pos in "nvar":  # WordNet's morphology, part of speech by part of speech
        for w in TRICKY + first:
            assert db.morphy(w.lower(), pos) == wn._morphy(w.lower(), pos), (w, pos)


def test_wordnet_db_needs_wordnets_files_and_no_nltk(tmp_path, data_dir):
    import subprocess
    import sys

    from llmscratch.data.wndb import WordNetDB

    with pytest.raises(FileNotFoundError, match="not a WordNet database folder"):
        WordNetDB(tmp_path)
    for name in ("noun", "verb", "adj", "adv"):
        (tmp_path / f"index.{name}").write_text("  1 licence\nzebra n 1 0 1 0 00000000  \napple n 1 0 1 0 00000000\n")
        (tmp_path / f"data.{name}").write_text("")
    with pytest.raises(ValueError, match="not sorted by lemma"):
        WordNetDB(tmp_path)
    # the synonyms are read without importing NLTK
    code = ("import sys; from llmscratch.data import augment as A; "
            "assert 'film' in A.synonyms('movie') and 'nltk' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_synonym_replacement_uses_only_wordnet_synonyms_and_no_stop_words(wn):
    words = eda_words(SENT)
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 5)
        out = synonym_replacement(words, n, rng)
        # align: each original word is kept or replaced by one of its synonyms (possibly several words)
        pos = 0
        changed = set()
        for w in words:
            if out[pos] == w:
                pos += 1
                continue
            match = sorted((s for s in synonyms(w) if out[pos:pos + len(s.split())] == s.split()),
                           key=lambda s: -len(s.split()))  # "picture show" before "picture"
            assert match, f"{w!r} became {out[pos]!r}, not a WordNet synonym"
            assert w not in STOP_WORDS
            changed.add(w)
            pos += len(match[0].split())
        assert pos == len(out) and 1 <= len(changed) <= n


def test_insertion_adds_synonyms_of_words_in_the_sentence(wn):
    words = eda_words(SENT)
    # an inserted word may itself be picked next time (as in the paper's code): synonyms of synonyms
    pool = {x for w in words for s in synonyms(w) for x in s.split()}
    pool |= {x for w in list(pool) for s in synonyms(w) for x in s.split()}
    for seed in range(50):
        out = random_insertion(words, 3, random.Random(seed))
        extra = Counter(out) - Counter(words)
        assert sum(extra.values()) >= 3 and set(extra) <= pool


def test_swap_keeps_the_multiset_and_deletion_keeps_a_word():
    words = eda_words(SENT)
    for seed in range(200):
        rng = random.Random(seed)
        assert Counter(random_swap(words, 4, rng)) == Counter(words)
        out = random_deletion(words, 0.3, rng)
        assert 1 <= len(out) and Counter(out) <= Counter(words)
        assert len(random_deletion(words, 1.0, rng)) == 1
        assert random_deletion(["one"], 0.9, rng) == ["one"]
    with pytest.raises(ValueError, match="probability"):
        random_deletion(words, 1.5)


def test_eda_is_seeded_and_counts_copies(wn):
    a = eda(SENT, num_aug=9, seed=42)
    assert a == eda(SENT, num_aug=9, seed=42) and a != eda(SENT, num_aug=9, seed=43)
    assert len(a) == 9 and len(set(a)) > 5
    assert len(eda(SENT, num_aug=16, alpha_sr=0.05, alpha_ri=0.05, alpha_rs=0.05, p_rd=0.05, seed=1,
                   include_original=True)) == 17
    only_swap = eda(SENT, alpha_sr=0, alpha_ri=0, p_rd=0, num_aug=4, seed=0)
    assert all(Counter(s.split()) == Counter(eda_words(SENT)) for s in only_swap)
    assert eda_params(500) == (0.05, 16) and eda_params(5000) == (0.1, 4)
    with pytest.raises(ValueError, match="alpha_sr"):
        eda(SENT, alpha_sr=2)


def test_aeda_only_adds_punctuation():
    for seed in range(50):
        out = aeda(SENT, seed=seed)
        assert [w for w in out.split() if w not in set(".;?:!,")] == SENT.split()
        assert len(out.split()) > len(SENT.split())
    assert aeda(SENT, seed=3) == aeda(SENT, seed=3)


@pytest.fixture(scope="module")
def tiny_marian(tmp_path_factory):
    """A random MarianMT model (a few thousand weights) with a SentencePiece vocabulary trained here: offline."""
    spm = pytest.importorskip("sentencepiece")
    tr = pytest.importorskip("transformers")
    import json

    path = tmp_path_factory.mktemp("marian")
    texts = ["the film was good", "a bad movie", "i liked the actors", "the story was long and dull"] * 20
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_prefix=str(path / "sp"), vocab_size=28,
                                   character_coverage=1.0, model_type="unigram", minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(path / "sp.model"))
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for i in range(sp.get_piece_size()):
        vocab.setdefault(sp.id_to_piece(i), len(vocab))
    (path / "vocab.json").write_text(json.dumps(vocab))
    tr.MarianTokenizer(str(path / "sp.model"), str(path / "sp.model"), str(path / "vocab.json")).save_pretrained(path)
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    cfg = tr.MarianConfig(vocab_size=len(vocab), d_model=16, encoder_layers=1, decoder_layers=1,
                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                          decoder_ffn_dim=32, max_position_embeddings=64, pad_token_id=0, eos_token_id=1,
                          decoder_start_token_id=0, forced_eos_token_id=1)
    tr.MarianMTModel(cfg).save_pretrained(path)
    return str(path)


def test_back_translation_through_marian_models(tiny_marian):
    import torch
    from transformers import MarianMTModel, MarianTokenizer

    texts = ["the film was good", "a bad movie about long actors"]
    a = augment.back_translate(texts, tiny_marian, tiny_marian, seed=0, max_new_tokens=8)
    assert a == augment.back_translate(texts, tiny_marian, tiny_marian, seed=0, max_new_tokens=8)
    assert len(a) == 2 and all(isinstance(s, str) for s in a)
    # greedy both ways = two greedy translations done by hand with transformers
    tok, model = MarianTokenizer.from_pretrained(tiny_marian), MarianMTModel.from_pretrained(tiny_marian).eval()

    def greedy(batch):
        enc = tok(batch, return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**enc, do_sample=False, num_beams=1, max_new_tokens=8)
        return tok.batch_decode(out, skip_special_tokens=True)

    assert augment.back_translate(texts, tiny_marian, tiny_marian, sample=False, max_new_tokens=8) == \
        greedy(greedy(texts))
    with pytest.raises(TypeError, match="not str"):
        augment.back_translate(["ok", 3], tiny_marian, tiny_marian)


def test_contextual_replacement_with_a_tiny_bert():
    torch = pytest.importorskip("torch")
    from llmscratch.models.bert import BertConfig, BertForMaskedLM
    from llmscratch.tokenizers import BERT_SPECIAL_TOKENS, WordPieceTokenizer

    words = "the film was good and the actors were great but story slow".split()
    tokens = list(BERT_SPECIAL_TOKENS) + sorted(set(words)) + ["##s", "##ing", "movie", "bad"]
    tok = WordPieceTokenizer(tokens=tokens)
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(tokens), hidden_size=16, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=32, max_position_embeddings=32))
    sent = "the film was good and the actors were great but the story was slow zzz"
    for seed in range(20):
        out = augment.contextual_replacement(sent, model, tok, p=0.25, seed=seed)
        assert out == augment.contextual_replacement(sent, model, tok, p=0.25, seed=seed)
        a, b = sent.split(), out.split()
        assert len(a) == len(b)
        changed = [i for i in range(len(a)) if a[i] != b[i]]
        assert 1 <= len(changed) <= round(0.25 * len(a))
        for i in changed:
            assert a[i] != "zzz" and b[i] in tok.vocab and not b[i].startswith("##")
            assert tok.vocab[b[i]] not in tok.special_ids
    with pytest.raises(ValueError, match="p must be"):
        augment.contextual_replacement(sent, model, tok, p=0)
