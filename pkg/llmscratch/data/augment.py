"""Text augmentation: EDA (Wei & Zou 2019), AEDA (Karimi et al. 2021), back-translation (Sennrich et al. 2016) and
contextual replacement with chapter 4's masked language model (Kobayashi 2018).

EDA makes ``num_aug`` noisy copies of a sentence with four operations, each changing about ``alpha * n`` of its
``n`` words: synonym replacement (SR, from WordNet, never a stop word), random insertion (RI, a synonym of a
random word at a random place), random swap (RS) and random deletion (RD, each word with probability ``alpha``).
The text is first lowercased and reduced to letters and spaces, as in the paper's code. Every function takes a
``random.Random`` (or a seed), so augmentations are reproducible.

WordNet 3.0 comes from the data folder's ``nltk_data/`` (users who are online get NLTK's official ``wordnet.zip``
downloaded into the cache). EDA's synonyms read its database files directly (:func:`wordnet_db`, module
:mod:`.wndb`): NLTK's answer without NLTK's synset objects, so new words are fast too (benchmarks/data.py times
both); :func:`wordnet` is NLTK's reader over the same files, for everything else WordNet offers.
"""

from __future__ import annotations

import random
import re
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Sequence

__all__ = [
    "STOP_WORDS",
    "wordnet",
    "wordnet_db",
    "synonyms",
    "eda_words",
    "synonym_replacement",
    "random_insertion",
    "random_swap",
    "random_deletion",
    "eda",
    "eda_params",
    "aeda",
    "back_translate",
    "contextual_replacement",
]

# The stop-word list of Wei & Zou's eda.py (NLTK's English list, as they copied it): never replaced by SR.
STOP_WORDS = frozenset("""i me my myself we our ours ourselves you your yours yourself yourselves he him his himself
she her hers herself it its itself they them their theirs themselves what which who whom this that these those am
is are was were be been being have has had having do does did doing a an the and but if or because as until while
of at by for with about against between into through during before after above below to from up down in out on
off over under again further then once here there when where why how all any both each few more most other some
such no nor not only own same so than too very s t can will just don should now""".split())

def _wordnet_archive():
    from .registry import ARCHIVES

    return ARCHIVES["wordnet"]


# module-level so that tests can point them at a local server
WORDNET_URLS = _wordnet_archive().urls
WORDNET_SHA256 = _wordnet_archive().sha256
_NOT_LETTER = re.compile(r"[^a-z ]+")


# --------------------------------------------------------------------------------------------------------------
# WordNet
# --------------------------------------------------------------------------------------------------------------


def _nltk_home() -> Path:
    """The folder holding ``corpora/wordnet``: ``$LLMSCRATCH_DATA/nltk_data``, else the cache (downloaded)."""
    from .registry import DataNotFoundError, _download, _offline, cache_dir, data_home

    home = data_home()
    if home is not None and (home / "nltk_data/corpora/wordnet/data.noun").is_file():
        return home / "nltk_data"
    cached = cache_dir() / "nltk_data"
    if (cached / "corpora/wordnet/data.noun").is_file():
        return cached
    if _offline():
        raise DataNotFoundError("WordNet is not on disk (looked for nltk_data/corpora/wordnet under "
                                "$LLMSCRATCH_DATA and the cache) and $LLMSCRATCH_OFFLINE forbids downloads: set "
                                "$LLMSCRATCH_DATA to the course's data folder")
    zpath = cache_dir() / "_archives" / "wordnet.zip"
    # the zip is pinned by its sha256 (registry.ARCHIVES); the database is also checked by content once loaded
    _download(WORDNET_URLS, zpath, sha256=WORDNET_SHA256)
    with zipfile.ZipFile(zpath) as zf:
        zf.extractall(cached / "corpora")
    return cached


@lru_cache(maxsize=1)
def wordnet():
    """NLTK's WordNet reader over WordNet 3.0, loaded from the data folder (``nltk_data/`` put on
    ``nltk.data.path``), checked by content: version 3.0 and ``movie``'s lemmas."""
    try:
        import nltk
    except ImportError as err:
        raise ImportError("EDA's synonyms come from WordNet through NLTK: pip install 'llmscratch[data]' "
                          "(or pip install nltk)") from err
    home = str(_nltk_home())
    if home not in nltk.data.path:
        nltk.data.path.insert(0, home)
    from nltk.corpus import wordnet as wn

    wn.ensure_loaded()
    lemmas = {l.name() for s in wn.synsets("movie") for l in s.lemmas()}
    if wn.get_version() != "3.0" or not {"film", "flick", "picture"} <= lemmas:
        raise RuntimeError(f"the WordNet under {home} is not WordNet 3.0 (version {wn.get_version()!r}): "
                           "delete it and run again, or point $LLMSCRATCH_DATA at the course's data folder")
    return wn


@lru_cache(maxsize=1)
def wordnet_db():
    """WordNet 3.0's database files read directly (:class:`~.wndb.WordNetDB`: no NLTK, a few tens of
    milliseconds to load), from the same folder as :func:`wordnet`, checked by content the same way."""
    from .wndb import WordNetDB

    root = _nltk_home() / "corpora" / "wordnet"
    db = WordNetDB(root)
    if db.version() != "3.0" or not {"film", "flick", "picture"} <= set(db.lemma_names("movie")):
        raise RuntimeError(f"the WordNet under {root} is not WordNet 3.0 (version {db.version()!r}): "
                           "delete it and run again, or point $LLMSCRATCH_DATA at the course's data folder")
    return db


_SYN_CACHE: dict[str, tuple[str, ...]] = {}
_CLEAN_NAME: dict[str, str] = {}  # a lemma name -> its EDA form ("motion_picture" -> "motion picture")


def _clean_name(name: str) -> str:
    clean = _CLEAN_NAME.get(name)
    if clean is None:
        clean = _CLEAN_NAME[name] = _NOT_LETTER.sub(
            "", name.replace("_", " ").replace("-", " ").lower()).strip()
    return clean


def synonyms(word: str) -> tuple[str, ...]:
    """WordNet synonyms of ``word`` (lemmas of all its synsets, every part of speech, WordNet's morphology
    applied), lowercased, letters and spaces only, without the word itself, in a fixed order (WordNet's);
    cached, since EDA asks for the same words again and again.

    The same tuple as from NLTK (``wordnet().synsets(word)``'s lemma names, cleaned, without repeats), read from
    WordNet's files by :func:`wordnet_db` without building NLTK's synset objects (tests/test_augment.py checks
    the two agree word for word)."""
    found = _SYN_CACHE.get(word)
    if found is None:
        seen = dict.fromkeys(map(_clean_name, wordnet_db().lemma_names(word)))
        seen.pop(word, None)
        seen.pop("", None)
        found = _SYN_CACHE[word] = tuple(seen)
    return found


# --------------------------------------------------------------------------------------------------------------
# EDA's four operations, on lists of words
# --------------------------------------------------------------------------------------------------------------


def _rng(seed) -> random.Random:
    return seed if isinstance(seed, random.Random) else random.Random(seed)


def eda_words(sentence: str) -> list[str]:
    """The paper's preprocessing: lowercase, apostrophes dropped, other non-letters to spaces, split."""
    if not isinstance(sentence, str):
        raise TypeError(f"sentence must be a str, got {type(sentence).__name__}")
    text = sentence.lower().replace("’", "").replace("'", "")
    return _NOT_LETTER.sub(" ", text.replace("-", " ").replace("\t", " ").replace("\n", " ")).split()


def synonym_replacement(words: Sequence[str], n: int, rng=None) -> list[str]:
    """Replace up to ``n`` distinct non-stop words that have WordNet synonyms (every occurrence of each) by a
    random synonym; a multi-word synonym ("motion picture") becomes several words."""
    rng = _rng(rng)
    new = list(words)
    candidates = list(dict.fromkeys(w for w in words if w not in STOP_WORDS))
    rng.shuffle(candidates)
    replaced = 0
    for word in candidates:
        if replaced >= n:
            break
        syns = synonyms(word)
        if syns:
            choice = rng.choice(syns)
            new = [choice if w == word else w for w in new]
            replaced += 1
    return " ".join(new).split()


def random_insertion(words: Sequence[str], n: int, rng=None) -> list[str]:
    """Insert ``n`` times a random synonym of a random word (up to 10 tries each) at a random position."""
    rng = _rng(rng)
    new = list(words)
    for _ in range(n):
        for _try in range(10):
            if not new:
                break
            syns = synonyms(new[rng.randrange(len(new))])
            if syns:
                new.insert(rng.randrange(len(new) + 1), rng.choice(syns))
                break
    return " ".join(new).split()


def random_swap(words: Sequence[str], n: int, rng=None) -> list[str]:
    """Swap two random positions ``n`` times (the multiset of words is unchanged)."""
    rng = _rng(rng)
    new = list(words)
    if len(new) < 2:
        return new
    for _ in range(n):
        i, j = rng.randrange(len(new)), rng.randrange(len(new))
        new[i], new[j] = new[j], new[i]
    return new


def random_deletion(words: Sequence[str], p: float, rng=None) -> list[str]:
    """Delete each word with probability ``p``; at least one word always remains (a random one)."""
    rng = _rng(rng)
    if not 0 <= p <= 1:
        raise ValueError(f"p must be a probability in [0, 1], got {p}")
    if len(words) <= 1:
        return list(words)
    new = [w for w in words if rng.random() > p]
    return new if new else [words[rng.randrange(len(words))]]


def eda(sentence: str, alpha_sr: float = 0.1, alpha_ri: float = 0.1, alpha_rs: float = 0.1,
        p_rd: float = 0.1, num_aug: int = 9, seed=None, include_original: bool = False) -> list[str]:
    """``num_aug`` augmented copies of ``sentence`` (Wei & Zou's ``eda``): about a quarter from each operation,
    shuffled; ``n = max(1, int(alpha * n_words))`` words changed per copy. ``include_original`` appends the
    (preprocessed) sentence, as the paper's script does. An ``alpha`` of 0 switches that operation off."""
    if not isinstance(num_aug, int) or num_aug < 0:
        raise ValueError(f"num_aug must be an int >= 0, got {num_aug!r}")
    for name, a in (("alpha_sr", alpha_sr), ("alpha_ri", alpha_ri), ("alpha_rs", alpha_rs), ("p_rd", p_rd)):
        if not 0 <= a <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {a}")
    rng = _rng(seed)
    words = eda_words(sentence)
    if not words:
        return [sentence] * num_aug
    ops = [(alpha_sr, synonym_replacement), (alpha_ri, random_insertion), (alpha_rs, random_swap),
           (p_rd, random_deletion)]
    ops = [(a, f) for a, f in ops if a > 0]
    per_op = num_aug // len(ops) + 1 if ops else 0
    out = []
    for a, f in ops:
        arg = a if f is random_deletion else max(1, int(a * len(words)))
        out += [" ".join(f(words, arg, rng)) for _ in range(per_op)]
    rng.shuffle(out)
    out = out[:num_aug]
    if include_original:
        out.append(" ".join(words))
    return out


def eda_params(n_train: int) -> tuple[float, int]:
    """The paper's recommended ``(alpha, num_aug)`` for a training set of ``n_train`` sentences (its Table 3)."""
    if n_train <= 500:
        return 0.05, 16
    if n_train <= 2000:
        return 0.05, 8
    return 0.1, 4


def aeda(sentence: str, seed=None, punctuation: str = ".;?:!,", ratio: float = 0.3) -> str:
    """AEDA: insert between 1 and ``ratio * n_words`` random punctuation marks at random word boundaries; the
    words themselves and their order are untouched."""
    rng = _rng(seed)
    words = sentence.split()
    if not words:
        return sentence
    k = rng.randint(1, max(1, int(ratio * len(words))))
    positions = set(rng.sample(range(len(words)), min(k, len(words))))
    out = []
    for i, w in enumerate(words):
        if i in positions:
            out.append(rng.choice(punctuation))
        out.append(w)
    return " ".join(out)


# --------------------------------------------------------------------------------------------------------------
# Back-translation
# --------------------------------------------------------------------------------------------------------------


def back_translate(texts: Sequence[str], forward: str = "Helsinki-NLP/opus-mt-en-de",
                   backward: str = "Helsinki-NLP/opus-mt-de-en", seed: int = 0, sample: bool = True,
                   top_k: int = 20, batch_size: int = 16, max_new_tokens: int = 256, device: str = "cpu"
                   ) -> list[str]:
    """Paraphrases by translating to a pivot language and back (English -> German -> English with MarianMT).

    ``forward``/``backward`` are Hugging Face names (downloaded when online) or local folders. With
    ``sample=True`` the forward pass samples (top-k, seeded) for more varied paraphrases, as Edunov et al. 2018
    found better for augmentation; the backward pass is greedy.
    """
    try:
        import torch
        from transformers import MarianMTModel, MarianTokenizer
    except ImportError as err:
        raise ImportError("back-translation needs transformers and sentencepiece: "
                          "pip install 'llmscratch[data]'") from err
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"text {i} is {type(t).__name__}, not str")

    def translate(batch, name, do_sample):
        tok = MarianTokenizer.from_pretrained(name)
        model = MarianMTModel.from_pretrained(name).to(device).eval()
        out = []
        for s in range(0, len(batch), batch_size):
            enc = tok(batch[s:s + batch_size], return_tensors="pt", padding=True, truncation=True).to(device)
            with torch.no_grad():
                gen = model.generate(**enc, do_sample=do_sample, top_k=top_k if do_sample else None,
                                     num_beams=1, max_new_tokens=max_new_tokens)
            out += tok.batch_decode(gen, skip_special_tokens=True)
        return out

    torch.manual_seed(seed)
    pivot = translate(texts, forward, sample)
    return translate(pivot, backward, False)


# --------------------------------------------------------------------------------------------------------------
# Contextual replacement with chapter 4's masked language model
# --------------------------------------------------------------------------------------------------------------


def contextual_replacement(sentence: str, model, tokenizer, p: float = 0.15, top_k: int = 10, seed=None) -> str:
    """Replace about ``p`` of the words by what a masked language model predicts in their place (Kobayashi 2018).

    ``model``: a :class:`llmscratch.models.bert.BertForMaskedLM` (logits ``(1, seq, vocab)``); ``tokenizer``: its
    :class:`~llmscratch.tokenizers.WordPieceTokenizer`. Only words that are one vocabulary token are masked (all
    at once); each is replaced by a token sampled (seeded) among the ``top_k`` most likely whole-word tokens,
    never a special token, a ``##`` continuation or the word itself. The number of words is unchanged.
    """
    import torch

    if not 0 < p <= 1:
        raise ValueError(f"p must be in (0, 1], got {p}")
    rng = _rng(seed)
    words = sentence.split()
    pieces = [tokenizer.tokenize(w) for w in words]
    maskable = [i for i, pc in enumerate(pieces) if len(pc) == 1 and tokenizer.vocab.get(pc[0]) is not None
                and tokenizer.vocab[pc[0]] not in tokenizer.special_ids]
    if not maskable:
        return sentence
    chosen = sorted(rng.sample(maskable, max(1, min(len(maskable), round(p * len(words))))))
    ids, where = [tokenizer.cls_id], {}
    for i, pc in enumerate(pieces):
        if i in chosen:
            where[i] = len(ids)
            ids.append(tokenizer.mask_id)
        else:
            ids += [tokenizer.vocab.get(t, tokenizer.unk_id) for t in pc]
    ids.append(tokenizer.sep_id)
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0].float()  # (seq, vocab)
    banned = torch.tensor([t in tokenizer.special_ids or tok.startswith("##")
                           for t, tok in enumerate(tokenizer.tokens)])
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    out = list(words)
    for i, pos in where.items():
        scores = logits[pos].masked_fill(banned, float("-inf"))
        scores[tokenizer.vocab[pieces[i][0]]] = float("-inf")
        top = torch.topk(scores, min(top_k, int(torch.isfinite(scores).sum())))
        pick = torch.multinomial(torch.softmax(top.values, -1), 1, generator=gen).item()
        out[i] = tokenizer.tokens[top.indices[pick].item()]
    return " ".join(out)
