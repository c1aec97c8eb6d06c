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


# ==============================================================================================================
# Chapter 1: tokenizers built by hand
# ==============================================================================================================

import heapq  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
from collections import Counter, defaultdict  # noqa: E402
from typing import Iterable  # noqa: E402

__all__ += [
    "InvalidTokenIdError",
    "UNK",
    "WORD_SPLIT_PATTERN",
    "WordTokenizer",
    "bytes_to_unicode",
    "pair_counts",
    "merge_pair",
    "BPETokenizer",
]

UNK = "<|unk|>"
# Raschka's splitter: punctuation, double dashes and whitespace are separate pieces (kept by the capture group).
WORD_SPLIT_PATTERN = r'([,.:;?_!"()\']|--|\s)'


class InvalidTokenIdError(ValueError, KeyError):
    """An id that is not a token id (negative, past the vocabulary, or not an integer) given to ``decode``.

    A ``ValueError`` and, for code written against the first version, a ``KeyError``.
    """

    __str__ = ValueError.__str__  # KeyError would print the message in quotes


def _check_text(text, who: str = "encode") -> None:
    """Raise a TypeError that names the fix when ``text`` is not a ``str``."""
    if isinstance(text, str):
        return
    if isinstance(text, (bytes, bytearray)):
        raise TypeError(f"{who} takes a str, got {type(text).__name__}: decode the bytes first, "
                        "e.g. data.decode('utf-8')")
    if text is None:
        raise TypeError(f"{who} takes a str, got None (was the text read or returned correctly?); "
                        "an empty text is ''")
    raise TypeError(f"{who} takes a str, got {type(text).__name__}; "
                    "for several texts call it once per text ([tok.encode(t) for t in texts])")


def _as_token_ids(ids, n_vocab: int) -> list[int]:
    """``ids`` (list, tuple, tensor or array of integers) as a list of ints, each in ``[0, n_vocab)``.

    Raises :class:`InvalidTokenIdError` naming the first bad id, its position and the likely cause.
    """
    if hasattr(ids, "tolist"):  # torch tensor or numpy array: one conversion instead of one per element
        ids = ids.tolist()
        ids = [ids] if not isinstance(ids, list) else ids
    ids = list(ids)
    for pos, i in enumerate(ids):
        if type(i) is not int:
            if isinstance(i, float) or not hasattr(i, "__index__"):
                raise InvalidTokenIdError(
                    f"token ids must be integers, got {i!r} ({type(i).__name__}) at position {pos}; ids are "
                    "never fractional: were they cast to float? convert with ids.long() (tensors) or int(...)")
            i = ids[pos] = i.__index__()
        if not 0 <= i < n_vocab:
            hint = (" -100 is the ignore_index of the loss targets, not a token: drop those positions first"
                    if i == -100 else " negative ids are never tokens (padding or an ignore_index marker?)"
                    if i < 0 else " was it produced by a model or tokenizer with a larger vocabulary?")
            raise InvalidTokenIdError(
                f"id {i} at position {pos} is not in the vocabulary (ids go from 0 to {n_vocab - 1});{hint}")
    return ids


class WordTokenizer:
    """A word-level tokenizer: a fixed vocabulary of words and punctuation, with ``<|unk|>`` for the rest.

    ``WordTokenizer.from_text(text)`` builds the vocabulary from a corpus (sorted unique pieces, then the special
    tokens at the end). ``encode`` maps words outside the vocabulary to ``<|unk|>`` when the vocabulary has it
    (and raises otherwise); ``<|endoftext|>`` in the text is kept as one token. ``decode`` joins with spaces and
    removes the space before punctuation, so ``decode(encode(text))`` equals ``text`` up to whitespace for text
    whose words are all known.
    """

    def __init__(self, vocab: dict[str, int]):
        if not isinstance(vocab, dict) or not vocab:
            raise ValueError("vocab must be a non-empty dict {token: id}; build one with WordTokenizer.from_text(text)")
        ids = list(vocab.values())
        if len(set(ids)) != len(ids):
            raise ValueError("vocab maps two tokens to the same id; ids must be unique")
        self.str_to_int = dict(vocab)
        self.int_to_str = {i: s for s, i in vocab.items()}
        self._n_ids = max(self.int_to_str) + 1
        specials = [t for t in self.str_to_int if t.startswith("<|") and t.endswith("|>")]
        self._special_re = re.compile("(" + "|".join(map(re.escape, specials)) + ")") if specials else None

    @classmethod
    def from_text(cls, text: str, special_tokens: Iterable[str] = (GPT2_EOT, UNK)) -> "WordTokenizer":
        """Vocabulary = the sorted unique pieces of ``text`` (see :meth:`split`), then ``special_tokens``."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("from_text needs a non-empty string to build the vocabulary from")
        words = sorted(set(cls.split(text)))
        words += [t for t in special_tokens if t not in words]
        return cls({w: i for i, w in enumerate(words)})

    @staticmethod
    def split(text: str) -> list[str]:
        """Split into words and punctuation, dropping whitespace: ``"Hello, world."`` -> ``['Hello', ',', 'world', '.']``."""
        return [piece for piece in re.split(WORD_SPLIT_PATTERN, text) if piece.strip()]

    def __len__(self) -> int:
        return len(self.str_to_int)

    @property
    def vocab_size(self) -> int:
        return len(self.str_to_int)

    def encode(self, text: str) -> list[int]:
        _check_text(text)
        pieces = []
        # Special tokens first, so "<|endoftext|>" is not cut into "<", "|", ... by the word splitter.
        for part in self._special_re.split(text) if self._special_re else [text]:
            if part in self.str_to_int and part.startswith("<|"):
                pieces.append(part)
            else:
                pieces += self.split(part)
        unk = self.str_to_int.get(UNK)
        ids = []
        for p in pieces:
            i = self.str_to_int.get(p, unk)
            if i is None:
                raise KeyError(
                    f"{p!r} is not in the vocabulary and the vocabulary has no {UNK!r} token; "
                    f"build it with WordTokenizer.from_text(text, special_tokens=({GPT2_EOT!r}, {UNK!r}))"
                )
            ids.append(i)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        ids = _as_token_ids(ids, self._n_ids)
        try:
            text = " ".join(self.int_to_str[i] for i in ids)
        except KeyError as err:  # a gap in a hand-made vocabulary
            raise InvalidTokenIdError(f"id {err.args[0]} is not in the vocabulary (size {len(self)})") from None
        # No space before punctuation (the splitter made it a separate piece).
        return re.sub(r'\s+([,.:;?_!"()\'])', r"\1", text)


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from the 256 byte values to printable unicode characters (OpenAI's ``encoder.py``).

    Printable Latin-1 bytes map to themselves; the others (control bytes, space, ...) to characters from 256 up,
    so that every token of ``encoder.json`` and ``vocab.bpe`` is a visible string: a space is ``'Ġ'``.
    """
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def pair_counts(ids: list[int] | tuple[int, ...], counts: dict | None = None, weight: int = 1) -> dict[tuple[int, int], int]:
    """Count adjacent pairs: ``[1, 2, 1, 2]`` -> ``{(1, 2): 2, (2, 1): 1}``. Adds into ``counts`` when given."""
    counts = {} if counts is None else counts
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + weight
    return counts


def merge_pair(ids: list[int] | tuple[int, ...], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every occurrence of ``pair`` in ``ids`` by ``new_id``, scanning left to right without overlaps.

    ``merge_pair([5, 5, 5], (5, 5), 9)`` -> ``[9, 5]``: the leftmost occurrence wins, as in GPT-2's ``bpe()``.
    """
    a, b = pair
    out, i, n = [], 0, len(ids)
    while i < n:
        if i < n - 1 and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _read_json(path: Path, fix: str):
    """Parse a JSON file; a truncated or corrupted one raises a ValueError naming the file and ``fix``."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        size = path.stat().st_size
        raise ValueError(f"{path} ({size:,} bytes) is not valid JSON: truncated or corrupted ({err}); {fix}") from None


def _compile(pattern: str):
    try:
        import regex
    except ImportError as err:  # pragma: no cover - regex comes with transformers
        raise ImportError("BPETokenizer needs the 'regex' package for \\p{L} classes: pip install regex") from err
    return regex.compile(pattern)


class BPETokenizer:
    """Byte-level byte-pair encoding (Sennrich et al., 2016; GPT-2, Radford et al., 2019), written in Python.

    The state is three tables:

    - ``vocab``: id -> the bytes the token stands for (256 single bytes, then one token per merge);
    - ``merges``: the merges in priority order, each a pair of ids ``(a, b)`` and the id of ``a + b``;
    - ``special_tokens``: strings such as ``"<|endoftext|>"`` that bypass BPE and get one id each.

    Encoding: split text at special tokens, split each part with the pre-tokenizer regex (GPT-2's by default:
    words with their leading space, numbers, punctuation, whitespace), turn each pre-token into byte ids and apply
    merges, always the highest-priority pair present, until none applies. :meth:`apply_merges_simple` is that
    loop as the book shows it (quadratic in the length of a pre-token); :meth:`apply_merges` gives the same
    result in ``O(n log n)`` with a heap of pair ranks over a linked list of parts, so a 30,000-letter
    "word" does not take seconds. Results are cached per pre-token in a bounded LRU cache (``cache_size``
    entries; pre-tokens longer than ``max_cached_len`` characters are not cached), because natural text
    repeats the same words over and over. Text with lone surrogates (``"\\ud83d"``) or surrogate pairs in a
    Python ``str`` is repaired first, as tiktoken does: pairs become their character, lone ones U+FFFD.

    Ways to build one: :meth:`train` (from a corpus), :meth:`from_gpt2_files` / :meth:`gpt2` (OpenAI's
    ``encoder.json`` + ``vocab.bpe``: the ids are then exactly tiktoken's ``gpt2`` ids), :meth:`load`.

    Special tokens follow tiktoken's rules: ``encode(text)`` raises when the text contains a special token,
    ``encode(text, allowed_special={"<|endoftext|>"})`` (or ``"all"``) encodes it as its id (50256 for GPT-2),
    and ``disallowed_special=()`` encodes it as ordinary text.
    """

    def __init__(
        self,
        vocab: dict[int, bytes],
        merges: list[tuple[tuple[int, int], int]],
        special_tokens: dict[str, int] | None = None,
        pattern: str = GPT2_PATTERN,
        byte_ids: list[int] | None = None,
        cache_size: int = 100_000,
        max_cached_len: int = 256,
    ):
        self.vocab = dict(vocab)
        self.merges = [((int(a), int(b)), int(c)) for (a, b), c in merges]
        self.special_tokens = dict(special_tokens or {})
        self.pattern = pattern
        # byte value -> id of the single-byte token (the identity for a trained tokenizer, not for GPT-2).
        self.byte_ids = list(range(256)) if byte_ids is None else list(byte_ids)
        if len(self.byte_ids) != 256:
            raise ValueError(f"byte_ids must give an id for each of the 256 bytes, got {len(self.byte_ids)}")
        for b, i in enumerate(self.byte_ids):
            if self.vocab.get(i) != bytes([b]):
                raise ValueError(f"vocab[{i}] must be the single byte {bytes([b])!r}; the vocabulary is inconsistent")
        made = set(self.byte_ids)  # ids that exist before each merge: the bytes, then earlier merges' results
        for rank, ((a, b), c) in enumerate(self.merges):
            if a not in self.vocab or b not in self.vocab or self.vocab.get(c) != self.vocab[a] + self.vocab[b]:
                raise ValueError(f"merge ({a}, {b}) -> {c} does not match the vocabulary (vocab[{c}] must be vocab[{a}] + vocab[{b}])")
            # apply_merges relies on this order: a merge never uses a token that a later merge makes.
            if a not in made or b not in made:
                raise ValueError(f"merge {rank} ({a}, {b}) uses token {a if a not in made else b}, which no earlier "
                                 "merge makes; merges must be listed in the order they were learned")
            made.add(c)
        for s, i in self.special_tokens.items():
            if i in self.vocab:
                raise ValueError(f"special token {s!r} has id {i}, which a regular token already uses")
        self._ranks = {pair: rank for rank, (pair, _) in enumerate(self.merges)}
        self._merged = dict(self.merges)
        self._regex = _compile(pattern)
        self._decoder = dict(self.vocab)
        self._decoder.update({i: s.encode("utf-8") for s, i in self.special_tokens.items()})
        self._n_vocab = max([*self.vocab, *self.special_tokens.values()]) + 1
        self.max_cached_len = max_cached_len
        self.set_cache_size(cache_size)

    def set_cache_size(self, cache_size: int) -> None:
        """Bound the per-pre-token cache to ``cache_size`` entries (least recently used dropped first); 0 turns
        caching off. The cache is emptied. ``self._cached_piece.cache_info()`` gives hits and misses."""
        if not isinstance(cache_size, int) or isinstance(cache_size, bool) or cache_size < 0:
            raise ValueError(f"cache_size must be a non-negative int (0 = no cache), got {cache_size!r}")
        self.cache_size = cache_size
        # functools' LRU cache is written in C: a hit costs about as much as a dict lookup.
        self._cached_piece = functools.lru_cache(maxsize=cache_size)(self._encode_piece)

    def __getstate__(self):  # the cache holds a bound method: rebuild it instead of pickling it
        state = self.__dict__.copy()
        del state["_cached_piece"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.set_cache_size(self.cache_size)

    # ---------------------------------------------------------------------------------------------------------
    # Construction
    # ---------------------------------------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        text: str,
        vocab_size: int,
        special_tokens: Iterable[str] = (GPT2_EOT,),
        pattern: str = GPT2_PATTERN,
        verbose: bool = False,
    ) -> "BPETokenizer":
        """Learn ``vocab_size - 256 - len(special_tokens)`` merges from ``text``.

        Pairs never cross pre-token boundaries (GPT-2's rule: no token glues a word to the next one's space),
        so the corpus is reduced to a frequency table of distinct pre-tokens and pair counts are weighted by
        frequency. After each merge only the words that contain the merged pair are updated, and a heap with
        lazy deletion finds the next most frequent pair; ties go to the smallest pair of ids, so training is
        deterministic.
        """
        if not isinstance(text, str) or not text:
            _check_text(text, "train")
            raise ValueError("train needs a non-empty string")
        if not isinstance(vocab_size, int) or isinstance(vocab_size, bool):
            raise TypeError(f"vocab_size must be an int, got {vocab_size!r} ({type(vocab_size).__name__}); "
                            f"e.g. vocab_size=1000")
        special_tokens = list(special_tokens)
        n_merges = vocab_size - 256 - len(special_tokens)
        if n_merges < 0:
            raise ValueError(
                f"vocab_size={vocab_size} is smaller than 256 bytes + {len(special_tokens)} special tokens; use at least {256 + len(special_tokens)}"
            )
        regex_ = _compile(pattern)
        parts = re.split("|".join(map(re.escape, special_tokens)), text) if special_tokens else [text]
        freq = Counter(tok for part in parts for tok in regex_.findall(part))
        words = [list(w.encode("utf-8")) for w in freq]
        weights = list(freq.values())

        counts: dict[tuple[int, int], int] = defaultdict(int)
        where: dict[tuple[int, int], set[int]] = defaultdict(set)  # pair -> indices of words containing it
        for wi, (w, f) in enumerate(zip(words, weights)):
            for pair in zip(w, w[1:]):
                counts[pair] += f
                where[pair].add(wi)
        heap = [(-c, pair) for pair, c in counts.items()]
        heapq.heapify(heap)

        vocab = {i: bytes([i]) for i in range(256)}
        merges = []
        while len(merges) < n_merges and heap:
            negc, pair = heapq.heappop(heap)
            if counts.get(pair, 0) != -negc or negc == 0:
                continue  # stale heap entry: the count changed since it was pushed
            new_id = 256 + len(merges)
            merges.append((pair, new_id))
            vocab[new_id] = vocab[pair[0]] + vocab[pair[1]]
            if verbose:
                print(f"merge {len(merges)}: {vocab[pair[0]]!r} + {vocab[pair[1]]!r} -> {new_id} (count {-negc})")
            changed = set()
            for wi in where.pop(pair):
                w, f = words[wi], weights[wi]
                for p in zip(w, w[1:]):  # remove this word's old pairs ...
                    counts[p] -= f
                    changed.add(p)
                w = words[wi] = merge_pair(w, pair, new_id)
                for p in zip(w, w[1:]):  # ... and add its new ones
                    counts[p] += f
                    where[p].add(wi)
                    changed.add(p)
            counts.pop(pair, None)
            for p in changed:
                c = counts.get(p, 0)
                if c > 0:
                    heapq.heappush(heap, (-c, p))
                else:
                    counts.pop(p, None)
        if len(merges) < n_merges:
            most = 256 + len(merges) + len(special_tokens)
            raise ValueError(
                f"vocab_size={vocab_size} cannot be reached: this corpus allows only {len(merges)} merges (no two "
                f"adjacent tokens inside one pre-token are left to merge), not the {n_merges} asked for. Use "
                f"vocab_size <= {most}, or train on more text")
        specials = {s: 256 + len(merges) + k for k, s in enumerate(special_tokens)}
        return cls(vocab, merges, specials, pattern)

    @classmethod
    def from_gpt2_files(cls, encoder_json: str | Path, vocab_bpe: str | Path) -> "BPETokenizer":
        """GPT-2's tokenizer from OpenAI's ``encoder.json`` (token string -> id) and ``vocab.bpe`` (merges, in order)."""
        encoder_json, vocab_bpe = Path(encoder_json), Path(vocab_bpe)
        for p in (encoder_json, vocab_bpe):
            if not p.is_file():
                raise FileNotFoundError(f"{p} does not exist; BPETokenizer.gpt2() finds GPT-2's files through llmscratch.data.fetch")
        encoder: dict[str, int] = _read_json(encoder_json, "delete it and fetch GPT-2's files again")
        byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
        special_tokens = {s: encoder.pop(s) for s in [GPT2_EOT] if s in encoder}
        vocab = {i: bytes(byte_decoder[c] for c in s) for s, i in encoder.items()}
        lines = vocab_bpe.read_text(encoding="utf-8").split("\n")
        merges = []
        for line in lines[1:]:  # the first line is a version comment
            if not line.strip():
                continue
            a, b = line.split(" ")
            merges.append(((encoder[a], encoder[b]), encoder[a + b]))
        byte_ids = [encoder[bytes_to_unicode()[b]] for b in range(256)]
        return cls(vocab, merges, special_tokens, GPT2_PATTERN, byte_ids)

    @classmethod
    def gpt2(cls, path: str | Path | None = None) -> "BPETokenizer":
        """GPT-2's tokenizer from the course's data folder (files found by :func:`llmscratch.data.fetch`)."""
        from .data import fetch

        return cls.from_gpt2_files(fetch("gpt2/encoder.json", path), fetch("gpt2/vocab.bpe", path))

    def save(self, path: str | Path) -> Path:
        """Write the tokenizer to one JSON file (token bytes as hex); read it back with :meth:`load`."""
        path = Path(path)
        state = {
            "format": "llmscratch-bpe-1",
            "pattern": self.pattern,
            "special_tokens": self.special_tokens,
            "byte_ids": self.byte_ids,
            "vocab": {str(i): b.hex() for i, b in self.vocab.items()},
            "merges": [[a, b, c] for (a, b), c in self.merges],
        }
        from .utils import atomic_write

        with atomic_write(path, "w", encoding="utf-8") as fh:
            json.dump(state, fh)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "BPETokenizer":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist; write one with BPETokenizer.save(path)")
        state = _read_json(path, "write it again with BPETokenizer.save(path)")
        if not isinstance(state, dict) or state.get("format") != "llmscratch-bpe-1":
            fmt = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"{path} is not a file written by BPETokenizer.save (format {fmt!r})")
        missing = [k for k in ("pattern", "special_tokens", "byte_ids", "vocab", "merges") if k not in state]
        if missing:
            raise ValueError(f"{path} lacks the field(s) {missing}: the file is incomplete; write it again with "
                             "BPETokenizer.save(path)")
        try:
            vocab = {int(i): bytes.fromhex(h) for i, h in state["vocab"].items()}
            merges = [((a, b), c) for a, b, c in state["merges"]]
        except (ValueError, TypeError, AttributeError) as err:
            raise ValueError(f"{path} has a malformed vocab or merges table ({err}); write it again with "
                             "BPETokenizer.save(path)") from None
        return cls(vocab, merges, state["special_tokens"], state["pattern"], state["byte_ids"])

    # ---------------------------------------------------------------------------------------------------------
    # Encoding and decoding
    # ---------------------------------------------------------------------------------------------------------

    @property
    def n_vocab(self) -> int:
        """Number of ids: regular tokens plus special tokens (50,257 for GPT-2, as tiktoken's ``n_vocab``)."""
        return self._n_vocab

    def __len__(self) -> int:
        return self.n_vocab

    def apply_merges_simple(self, ids: list[int]) -> list[int]:
        """Apply merges to one pre-token's byte ids: always the pair with the best (lowest) rank first.

        The loop as the book writes it: each round scans every adjacent pair, so a pre-token of ``n`` bytes
        costs up to ``n`` rounds of ``O(n)``: quadratic. :meth:`apply_merges` gives the same result faster.
        """
        ranks = self._ranks
        while len(ids) > 1:
            best = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, float("inf")))
            if best not in ranks:
                break
            ids = merge_pair(ids, best, self._merged[best])
        return ids

    def apply_merges(self, ids: list[int]) -> list[int]:
        """Same result as :meth:`apply_merges_simple`, in ``O(n log n)`` for a pre-token of ``n`` byte ids.

        The parts form a doubly linked list (``nxt`` / ``prv`` indices; a merged-away part is marked dead), and
        a heap holds ``(rank, position)`` of every adjacent pair that has a merge. Popping gives the best rank,
        and among equal ranks the leftmost pair, which is the order of the simple loop (it merges every
        occurrence of the best pair left to right, without overlaps). A merge only changes the two pairs
        around the new part, so only those are pushed; entries that no longer describe a live pair with that
        rank are skipped when popped (lazy deletion). A merge made at rank ``r`` only creates pairs of higher
        rank (a merge needs both its parts to exist), so the rounds of the simple loop are never interleaved.
        """
        n = len(ids)
        if n < 2:
            return list(ids)
        ranks, merged = self._ranks, self._merged
        part = list(ids)  # part[i]: the token starting at position i, or None once merged into its left neighbour
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        heap = [(r, i) for i, pair in enumerate(zip(ids, ids[1:])) if (r := ranks.get(pair)) is not None]
        heapq.heapify(heap)
        pop, push = heapq.heappop, heapq.heappush
        while heap:
            r, i = pop(heap)
            j = nxt[i]
            if part[i] is None or j < 0 or ranks.get((part[i], part[j])) != r:
                continue  # stale: one of the two parts changed since this entry was pushed
            part[i] = merged[(part[i], part[j])]
            part[j] = None
            nxt[i] = k = nxt[j]
            if k >= 0:
                prv[k] = i
                if (rk := ranks.get((part[i], part[k]))) is not None:
                    push(heap, (rk, i))
            h = prv[i]
            if h >= 0 and (rh := ranks.get((part[h], part[i]))) is not None:
                push(heap, (rh, h))
        return [t for t in part if t is not None]

    def _encode_piece(self, piece: str) -> tuple[int, ...]:
        """One pre-token -> its ids (what the cache stores)."""
        # (The heap version was measured faster than the simple loop from 4-byte pieces up, so it serves all.)
        return tuple(self.apply_merges([self.byte_ids[b] for b in piece.encode("utf-8")]))

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode with no special-token handling: ``"<|endoftext|>"`` is just text here."""
        _check_text(text, "encode_ordinary")
        try:
            return self._encode_ordinary(text)
        except UnicodeEncodeError:
            # Surrogates (a lone "\ud83d", or a pair written as two code points) cannot be UTF-8 encoded; repair
            # them as tiktoken does: a pair becomes its character, a lone surrogate U+FFFD.
            return self._encode_ordinary(text.encode("utf-16", "surrogatepass").decode("utf-16", "replace"))

    def _encode_ordinary(self, text: str) -> list[int]:
        out: list[int] = []
        cached, longest = self._cached_piece, self.max_cached_len
        for tok in self._regex.findall(text):
            # A huge pre-token (a 1M-character line without spaces) would never be seen again: do not cache it.
            out.extend(cached(tok) if len(tok) <= longest else self._encode_piece(tok))
        return out

    def encode(self, text: str, allowed_special: str | set | frozenset = frozenset(), disallowed_special: str | set | tuple = "all") -> list[int]:
        """Text -> ids, with tiktoken's special-token rules (see the class docstring)."""
        _check_text(text)
        allowed = set(self.special_tokens) if allowed_special == "all" else set(allowed_special)
        unknown = allowed - set(self.special_tokens)
        if unknown:
            raise ValueError(f"allowed_special names tokens this tokenizer does not have: {sorted(unknown)}; it has {sorted(self.special_tokens)}")
        disallowed = set(self.special_tokens) - allowed if disallowed_special == "all" else set(disallowed_special)
        for s in disallowed:
            if s in text:
                raise ValueError(
                    f"the text contains the special token {s!r}. Pass allowed_special={{{s!r}}} to encode it as its id "
                    f"({self.special_tokens.get(s)}), or disallowed_special=() to encode it as ordinary text."
                )
        if not allowed:
            return self.encode_ordinary(text)
        splitter = re.compile("(" + "|".join(map(re.escape, sorted(allowed, key=len, reverse=True))) + ")")
        out: list[int] = []
        for k, part in enumerate(splitter.split(text)):
            if k % 2:  # odd pieces are the captured special tokens
                out.append(self.special_tokens[part])
            elif part:
                out.extend(self.encode_ordinary(part))
        return out

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        ids = _as_token_ids(ids, self.n_vocab)
        try:
            return b"".join(self._decoder[i] for i in ids)
        except KeyError as err:  # an id inside the range that no token has (a gap in a hand-made vocabulary)
            raise InvalidTokenIdError(f"id {err.args[0]} is not in the vocabulary (ids go from 0 to "
                                      f"{self.n_vocab - 1}, and {err.args[0]} is unused)") from None

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """Ids -> text. A token can end inside a multi-byte character; ``errors="replace"`` (tiktoken's default)
        shows such a cut as U+FFFD, and a complete sequence always decodes back to the original text."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def token_strings(self, ids: Iterable[int]) -> list[str]:
        """Each id as text, for printing how a string was split (partial characters shown as U+FFFD)."""
        return [self._decoder[i].decode("utf-8", errors="replace") for i in _as_token_ids(ids, self.n_vocab)]

    def __repr__(self) -> str:
        return f"BPETokenizer(n_vocab={self.n_vocab}, merges={len(self.merges)}, special_tokens={list(self.special_tokens)})"


# ==============================================================================================================
# Chapter 4: WordPiece (BERT's tokenizer) and its trainer
# ==============================================================================================================

import unicodedata  # noqa: E402

__all__ += ["BERT_SPECIAL_TOKENS", "basic_tokenize", "wordpiece", "WordPieceTokenizer", "train_wordpiece"]

#: BERT's special tokens, in the order of the first ids of Google's vocab.txt files written by this package.
BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    # \t \n \r count as whitespace, not control characters (BERT's tokenization.py).
    return ch not in "\t\n\r" and unicodedata.category(ch).startswith("C")


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    # Every non-alphanumeric ASCII character ($, ^, `, ...) is punctuation for BERT, even where Unicode disagrees.
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    # The CJK Unified Ideographs blocks (not Hangul or kana, which are written with spaces between words).
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F
            or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF
            or 0x2F800 <= cp <= 0x2FA1F)


# ASCII fast path: control characters deleted, then letter/digit runs and single punctuation characters.
_ASCII_CONTROL = {c: None for c in [*range(0, 9), 11, 12, *range(14, 32), 127]}
_ASCII_WORDS = re.compile(r"[A-Za-z0-9]+|[^A-Za-z0-9\s]")


def basic_tokenize(text: str, lowercase: bool = True) -> list[str]:
    """BERT's "basic tokenizer": the words WordPiece then splits.

    1. clean-up: drop NUL, U+FFFD and control characters; every whitespace character becomes a space;
    2. put spaces around every CJK ideograph (Chinese has no spaces between words: each character is a word);
    3. split on whitespace; with ``lowercase``, lowercase each word and strip its accents (Unicode NFD, then
       drop the combining marks: "Café" -> "cafe");
    4. split every punctuation character off as a word of its own ("don't" -> "don", "'", "t").

    Pure-ASCII text (most English) takes a regular-expression shortcut with the same result.
    """
    if text.isascii():
        text = text.translate(_ASCII_CONTROL)
        return _ASCII_WORDS.findall(text.lower() if lowercase else text)
    # The same four steps, each one str.translate over the text with a table built for its distinct characters.
    cleanup = {}
    for ch in set(text):
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or _is_control(ch):
            cleanup[cp] = None
        elif _is_whitespace(ch):
            cleanup[cp] = " "
        elif _is_cjk(cp):
            cleanup[cp] = f" {ch} "
    text = text.translate(cleanup)
    if lowercase:
        text = unicodedata.normalize("NFD", text.lower())
        text = text.translate({ord(c): None for c in set(text) if unicodedata.category(c) == "Mn"})
    return text.translate({ord(c): f" {c} " for c in set(text) if _is_punctuation(c)}).split()


def wordpiece(word: str, vocab, unk: str = "[UNK]", max_chars: int = 100) -> list[str]:
    """Greedy longest-match-first WordPiece (Schuster & Nakajima, 2012; Wu et al., 2016) of one word.

    Take the longest prefix that is in ``vocab``, then the longest ``##``-prefixed continuation of the rest, and
    so on. If some rest has no piece in the vocabulary at all, the *whole word* becomes ``unk`` (not just that
    rest): a half-spelled word would mislead the model more than an honest "unknown". Words longer than
    ``max_chars`` characters are ``unk`` too.
    """
    if len(word) > max_chars:
        return [unk]
    pieces, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start:
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                break
            end -= 1
        else:
            return [unk]
        pieces.append(piece)
        start = end
    return pieces


class WordPieceTokenizer:
    """BERT's tokenizer: :func:`basic_tokenize`, then :func:`wordpiece` with a ``vocab.txt`` (one token per
    line, the line number is the id). The ids equal ``transformers``' ``BertTokenizer`` with the same file.

    Special tokens (``[CLS]``, ``[SEP]``, ``[PAD]``, ``[MASK]``, ``[UNK]``) written in the text are kept whole,
    as in ``transformers``, so ``"the movie was [MASK] ."`` encodes the mask token.

    >>> tok = WordPieceTokenizer("vocab.txt")          # doctest: +SKIP
    >>> tok.encode_pair("A great film!", "Loved it.")  # doctest: +SKIP
    ([2, ...], [0, 0, ..., 1, 1])
    """

    def __init__(self, vocab_file: str | Path | None = None, lowercase: bool = True, *,
                 tokens: Iterable[str] | None = None, max_chars: int = 100):
        if (vocab_file is None) == (tokens is None):
            raise ValueError("give either vocab_file (a vocab.txt path) or tokens (a list of token strings)")
        if vocab_file is not None:
            path = Path(vocab_file)
            if not path.is_file():
                raise FileNotFoundError(f"{path} does not exist; train one with train_wordpiece(...) and "
                                        "WordPieceTokenizer(tokens=...).save(path), or use BERT's vocab.txt")
            tokens = path.read_text(encoding="utf-8").split("\n")
            tokens = tokens[:-1] if tokens and tokens[-1] == "" else tokens
        self.tokens = [t.rstrip("\r") for t in tokens]
        self.vocab = {t: i for i, t in enumerate(self.tokens)}
        if len(self.vocab) != len(self.tokens):
            dup = next(t for t in self.tokens if self.tokens.count(t) > 1)
            raise ValueError(f"the vocabulary lists {dup!r} twice; every token must be on one line only")
        missing = [s for s in BERT_SPECIAL_TOKENS if s not in self.vocab]
        if missing:
            raise ValueError(f"the vocabulary lacks the special token(s) {missing}; BERT needs "
                             f"{list(BERT_SPECIAL_TOKENS)}")
        self.lowercase, self.max_chars = lowercase, max_chars
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (self.vocab[s] for s in BERT_SPECIAL_TOKENS)
        self.special_ids = frozenset(self.vocab[s] for s in BERT_SPECIAL_TOKENS)
        self._special_split = re.compile("(" + "|".join(map(re.escape, BERT_SPECIAL_TOKENS)) + ")")
        self._cache: dict[str, list[int]] = {}

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def save(self, path: str | Path) -> Path:
        """Write ``vocab.txt`` (one token per line), atomically."""
        from .utils import atomic_write

        with atomic_write(path, "w", encoding="utf-8", newline="\n") as fh:
            fh.write("\n".join(self.tokens) + "\n")
        return Path(path)

    def tokenize(self, text: str) -> list[str]:
        """Token strings (no ``[CLS]``/``[SEP]`` added): ``"Unaffable!"`` -> ``["una", "##ffa", "##ble", "!"]``."""
        return [self.tokens[i] for i in self.encode(text)]

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens around it."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a string, got {type(text).__name__}")
        ids: list[int] = []
        for part in self._special_split.split(text):
            if part in self.vocab and part in BERT_SPECIAL_TOKENS:
                ids.append(self.vocab[part])
                continue
            for word in basic_tokenize(part, self.lowercase):
                cached = self._cache.get(word)
                if cached is None:
                    cached = [self.vocab[p] for p in wordpiece(word, self.vocab, "[UNK]", self.max_chars)]
                    if len(self._cache) < 200_000:
                        self._cache[word] = cached
                ids.extend(cached)
        return ids

    def encode_pair(self, a: str, b: str | None = None, max_length: int | None = None
                    ) -> tuple[list[int], list[int]]:
        """``[CLS] a [SEP]`` or ``[CLS] a [SEP] b [SEP]`` and the token type ids (0 for a's part, 1 for b's).

        ``max_length`` truncates (longest segment first, as ``transformers``' ``truncation=True``) so that the
        result, special tokens included, has at most ``max_length`` ids.
        """
        ia, ib = self.encode(a), (self.encode(b) if b is not None else None)
        if max_length is not None:
            room = max_length - (3 if ib is not None else 2)
            if room < 0:
                raise ValueError(f"max_length={max_length} leaves no room for the special tokens")
            if ib is None:
                ia = ia[:room]
            else:
                na, nb = _longest_first(len(ia), len(ib), room)
                ia, ib = ia[:na], ib[:nb]
        ids = [self.cls_id, *ia, self.sep_id]
        types = [0] * len(ids)
        if ib is not None:
            ids += [*ib, self.sep_id]
            types += [1] * (len(ib) + 1)
        return ids, types

    def batch_encode(self, texts: Iterable[str], max_length: int, pairs: Iterable[str] | None = None):
        """Encode, truncate and right-pad a batch: a dict of ``(batch, longest)`` LongTensors ``input_ids``,
        ``token_type_ids`` and ``attention_mask`` (1 real, 0 padding), as ``transformers``' tokenizers return."""
        import torch

        texts = list(texts)
        seconds = list(pairs) if pairs is not None else [None] * len(texts)
        if len(seconds) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(seconds)} second segments")
        encoded = [self.encode_pair(a, b, max_length) for a, b in zip(texts, seconds)]
        longest = max((len(ids) for ids, _ in encoded), default=0)
        out = {k: torch.zeros(len(encoded), longest, dtype=torch.long)
               for k in ("input_ids", "token_type_ids", "attention_mask")}
        out["input_ids"].fill_(self.pad_id)
        for row, (ids, types) in enumerate(encoded):
            out["input_ids"][row, : len(ids)] = torch.tensor(ids)
            out["token_type_ids"][row, : len(ids)] = torch.tensor(types)
            out["attention_mask"][row, : len(ids)] = 1
        return out

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Tokens joined by spaces with ``##`` continuations glued back: ``"una ##ffa ##ble"`` -> ``"unaffable"``.

        Lowercasing, stripped accents, the spaces around punctuation and ``[UNK]`` words are not undone:
        WordPiece is not lossless (GPT-2's byte-level BPE is).
        """
        words = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.tokens):
                raise ValueError(f"id {i} is outside the vocabulary [0, {len(self.tokens)})")
            if skip_special_tokens and i in self.special_ids and i != self.unk_id:
                continue
            tok = self.tokens[i]
            if tok.startswith("##") and words:
                words[-1] += tok[2:]
            else:
                words.append(tok)
        return " ".join(words)

    def __repr__(self) -> str:
        return f"WordPieceTokenizer(vocab_size={len(self.tokens)}, lowercase={self.lowercase})"


def _longest_first(la: int, lb: int, room: int) -> tuple[int, int]:
    """How many tokens of two segments to keep so that at most ``room`` remain: the shorter one keeps what it
    can, the longer one gets the rest; if both are long, they split ``room`` (the longer one gets the odd
    token). The rule of the ``tokenizers`` library's ``longest_first`` truncation."""
    if la + lb <= room:
        return la, lb
    swap = la > lb
    short, long_ = (lb, la) if swap else (la, lb)
    long_ = short if short > room else max(short, room - short)
    if short + long_ > room:
        short = room // 2
        long_ = short + room % 2
    return (long_, short) if swap else (short, long_)


def train_wordpiece(texts: Iterable[str], vocab_size: int, lowercase: bool = True, min_frequency: int = 2,
                    special_tokens: Iterable[str] = BERT_SPECIAL_TOKENS, verbose: bool = False) -> list[str]:
    """Learn a WordPiece vocabulary from ``texts``: the special tokens, the alphabet, then one token per merge.

    Words come from :func:`basic_tokenize`. Each is first spelled in characters, continuations marked ``##`` ("film" -> ``f ##i ##l ##m``). Then, repeatedly,
    the adjacent pair ``(a, b)`` with the highest *likelihood score*

        score(a, b) = count(a b) / (count(a) * count(b))

    is merged into a new token (``f`` + ``##i`` -> ``fi``; ``##l`` + ``##m`` -> ``##lm``). Unlike BPE's raw pair
    count, the score asks how much more often ``a`` and ``b`` occur together than their own frequencies predict:
    merging them raises the corpus likelihood under a unigram model the most (Schuster & Nakajima, 2012). Ties
    go to the more frequent pair, then to the smaller pair of strings, so training is deterministic.

    The pure score favours pairs of rare tokens (two letters seen once, always together, score 1), which spends
    the vocabulary on rare words; pairs seen fewer than ``min_frequency`` times are therefore never merged.

    Only the words that contain the merged pair are updated, and a heap with lazy deletion finds the best pair;
    a merge changes the counts of ``a`` and ``b`` and so the score of *every* pair that contains them, which is
    why those pairs are re-pushed too.

    Returns the vocabulary as a list (the index is the id); give it to ``WordPieceTokenizer(tokens=...)``.
    """
    if not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
    freq: Counter[str] = Counter()
    for text in texts:
        freq.update(basic_tokenize(text, lowercase))
    words = list(freq)
    if not words:
        raise ValueError("no words to train on: texts is empty or has no letters")
    weights = [freq[w] for w in words]
    splits = [[w[0]] + ["##" + c for c in w[1:]] for w in words]
    specials = list(special_tokens)
    alphabet = sorted({t for s in splits for t in s})
    vocab = specials + [t for t in alphabet if t not in specials]
    if vocab_size < len(vocab):
        raise ValueError(f"vocab_size={vocab_size} is smaller than the {len(specials)} special tokens plus the "
                         f"{len(alphabet)} characters of the corpus; use at least {len(vocab)}")

    tok_count: dict[str, int] = defaultdict(int)
    pair_count: dict[tuple[str, str], int] = defaultdict(int)
    where: dict[tuple[str, str], set[int]] = defaultdict(set)  # pair -> words that (may) contain it
    pairs_of: dict[str, set[tuple[str, str]]] = defaultdict(set)  # token -> pairs it is part of

    def add(wi: int, sign: int, changed_pairs: set) -> None:
        s, f = splits[wi], weights[wi] * sign
        for t in s:
            tok_count[t] += f
        for p in zip(s, s[1:]):
            pair_count[p] += f
            changed_pairs.add(p)
            if sign > 0:
                where[p].add(wi)
                pairs_of[p[0]].add(p)
                pairs_of[p[1]].add(p)

    def score(p) -> float:
        return pair_count[p] / (tok_count[p[0]] * tok_count[p[1]])

    for wi in range(len(words)):
        add(wi, +1, set())
    heap = [(-score(p), -c, p) for p, c in pair_count.items() if c >= min_frequency]
    heapq.heapify(heap)
    while len(vocab) < vocab_size and heap:
        neg_score, neg_count, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) <= 0 or neg_count != -pair_count[pair] or neg_score != -score(pair):
            continue  # stale: the pair's count or one of its tokens' counts changed since it was pushed
        a, b = pair
        new = a + b[2:] if b.startswith("##") else a + b
        if verbose:
            print(f"merge {len(vocab)}: {a!r} + {b!r} -> {new!r} (score {-neg_score:.2e}, count {-neg_count})")
        if new not in vocab:  # ("a", "##b") and ("ab",) spellings can meet: one token, two routes
            vocab.append(new)
        changed_pairs: set = set()
        for wi in where.pop(pair):
            s = splits[wi]
            if not any(x == a and y == b for x, y in zip(s, s[1:])):
                continue  # an older merge already consumed this occurrence
            add(wi, -1, changed_pairs)
            merged, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    merged.append(new)
                    i += 2
                else:
                    merged.append(s[i])
                    i += 1
            splits[wi] = merged
            add(wi, +1, changed_pairs)
        for t in (a, b, new):  # only these tokens' counts changed: every pair containing one has a new score
            changed_pairs |= pairs_of[t]
        for p in changed_pairs:
            c = pair_count.get(p, 0)
            if c >= min_frequency and c > 0:
                heapq.heappush(heap, (-score(p), -c, p))
    return vocab
