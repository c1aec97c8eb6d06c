"""Duplicates: exact (a hash of a normalised text) and near (MinHash signatures + locality-sensitive hashing).

Near duplicates are texts whose sets of word shingles (runs of ``k`` consecutive words) have a high Jaccard
similarity ``|A & B| / |A | B|``. MinHash (Broder 1997) estimates it without comparing sets: under a random
permutation of all shingles, the smallest shingle of A equals that of B with probability exactly J(A, B), so the
fraction of ``num_perm`` permutations whose minima agree estimates J with standard deviation
``sqrt(J (1 - J) / num_perm)``. LSH then avoids comparing all pairs: the signature is cut into ``bands`` bands of
``rows`` values, and two texts become a *candidate pair* when any band is identical, which happens with
probability ``1 - (1 - J**rows)**bands`` (an S-curve whose midpoint is near ``(1 / bands) ** (1 / rows)``).

The permutations are the classic ``(a * h + b) mod (2**61 - 1)``, truncated to 32 bits, with ``a, b`` drawn as
``datasketch`` draws them for its ``"legacy"`` scheme: on the same shingle hashes the two libraries give the same
signatures, which the tests check, and the benchmark compares their speed.

Also here: the exact-match helpers chapter 4 introduced (``normalize_text``, ``overlap_mask``,
``drop_overlapping``), and :func:`without_test_texts` / :func:`load_imdb_without_test`, which every chapter that
pretrains uses so that no test review leaks into training.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections import defaultdict
from typing import Iterable, Sequence

import numpy as np

__all__ = [
    "normalize_text",
    "overlap_mask",
    "drop_overlapping",
    "dedup_key",
    "exact_duplicates",
    "shingle_hashes",
    "jaccard",
    "MinHasher",
    "estimate_jaccard",
    "lsh_candidate_pairs",
    "near_duplicates",
    "cross_duplicates",
    "without_test_texts",
    "duplicate_report",
    "load_imdb_without_test",
]

MERSENNE_PRIME = np.uint64((1 << 61) - 1)
MAX_HASH = np.uint64((1 << 32) - 1)
_WORD = re.compile(r"\w+")


# --------------------------------------------------------------------------------------------------------------
# Exact duplicates
# --------------------------------------------------------------------------------------------------------------


def normalize_text(text: str) -> str:
    """Lowercase and collapse every run of whitespace to one space: the key two texts are compared by."""
    if not isinstance(text, str):
        raise TypeError(f"texts must be strings, got {type(text).__name__}")
    return " ".join(text.lower().split())


def overlap_mask(texts: Iterable[str], reference: Iterable[str]) -> list[bool]:
    """For each of ``texts``, whether its normalised form is the normalised form of some ``reference`` text.

    Used for data hygiene: a pretraining or fine-tuning corpus must not contain the evaluation set's texts, or the
    test accuracy measures memory instead of generalisation.
    """
    keys = {normalize_text(r) for r in reference}
    return [normalize_text(t) in keys for t in texts]


def drop_overlapping(texts: Iterable[str], reference: Iterable[str]) -> tuple[list[int], int]:
    """Indices of ``texts`` to keep (those not found in ``reference``) and how many were dropped.

    Returning indices (not texts) lets a caller keep the labels that go with the texts:
    ``keep, dropped = drop_overlapping(df.text, test.text); df = df.iloc[keep]``.
    """
    mask = overlap_mask(texts, reference)
    keep = [i for i, hit in enumerate(mask) if not hit]
    return keep, len(mask) - len(keep)


def dedup_key(text: str) -> str:
    """The exact-duplicate key: HTML removed, NFKC, lowercased, whitespace collapsed; hashed (blake2b, 128 bits)."""
    from .cleaning import normalize_unicode, strip_html

    if not isinstance(text, str):
        raise TypeError(f"texts must be strings, got {type(text).__name__}")
    norm = normalize_text(normalize_unicode(strip_html(text)))
    return hashlib.blake2b(norm.encode("utf-8"), digest_size=16).hexdigest()


def exact_duplicates(texts: Sequence[str]) -> list[list[int]]:
    """Groups (lists of indices, in order) of texts with the same :func:`dedup_key`; only groups of 2 or more."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, t in enumerate(texts):
        groups[dedup_key(t)].append(i)
    return [g for g in groups.values() if len(g) > 1]


# --------------------------------------------------------------------------------------------------------------
# Shingles and MinHash
# --------------------------------------------------------------------------------------------------------------

_TOKEN_HASH: dict[str, int] = {}


def _token_hashes(tokens: list[str]) -> np.ndarray:
    cache = _TOKEN_HASH
    out = []
    for tok in tokens:
        h = cache.get(tok)
        if h is None:
            h = cache[tok] = zlib.crc32(tok.encode("utf-8")) | (len(tok) << 32)
        out.append(h)
    return np.array(out, dtype=np.uint64)


def shingle_hashes(text: str, k: int = 3) -> np.ndarray:
    """The set of word ``k``-shingles of a text as unique 32-bit hashes: a sorted ``(n_shingles,)`` uint64 array.

    Words are ``\\w+`` runs of the lowercased, HTML-stripped text. A text shorter than ``k`` words is one
    shingle (all its words); an empty text has none. The hash is deterministic across processes (crc32 per word,
    combined with a 64-bit multiply-xor mix), so signatures of separate corpora can be compared.
    """
    from .cleaning import strip_html

    if not isinstance(text, str):
        raise TypeError(f"texts must be strings, got {type(text).__name__}")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k (words per shingle) must be a positive int, got {k!r}")
    tokens = _WORD.findall(strip_html(text).lower())
    if not tokens:
        return np.zeros(0, dtype=np.uint64)
    th = _token_hashes(tokens)
    n = max(len(th) - k + 1, 1)
    h = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):  # wrapping arithmetic is the point of the mix
        for j in range(min(k, len(th))):
            h = (h ^ th[j:j + n]) * np.uint64(0x9E3779B97F4A7C15)
            h ^= h >> np.uint64(29)
    return np.unique(h & MAX_HASH)


def jaccard(a, b) -> float:
    """Exact Jaccard similarity of two sets (or arrays of unique hashes); 0 for two empty sets."""
    a, b = set(np.asarray(a).tolist()), set(np.asarray(b).tolist())
    union = len(a | b)
    return len(a & b) / union if union else 0.0


class MinHasher:
    """MinHash signatures: ``signatures(list of shingle-hash arrays) -> (n_texts, num_perm)`` uint64 array.

    Permutation ``p``: ``h -> ((a_p * h + b_p) mod (2**61 - 1)) & (2**32 - 1)``, with ``a_p, b_p`` drawn from
    ``np.random.RandomState(seed)`` in datasketch's legacy order. An empty set's signature is all ``2**32 - 1``.
    All texts are hashed in one vectorised pass (chunks of ``chunk`` shingles) rather than one call per text.
    """

    def __init__(self, num_perm: int = 128, seed: int = 1, chunk: int = 1 << 16):
        if not isinstance(num_perm, int) or num_perm < 1:
            raise ValueError(f"num_perm must be a positive int, got {num_perm!r}")
        self.num_perm, self.seed, self.chunk = num_perm, seed, chunk
        gen = np.random.RandomState(seed)
        ab = np.array([(gen.randint(1, MERSENNE_PRIME, dtype=np.uint64),
                        gen.randint(0, MERSENNE_PRIME, dtype=np.uint64)) for _ in range(num_perm)],
                      dtype=np.uint64)
        self.a, self.b = ab[:, 0].copy(), ab[:, 1].copy()

    def _permute(self, hv: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):  # a * h + b wraps modulo 2**64 before the mod, as datasketch's does
            x = hv[:, None] * self.a
            x += self.b
        # x mod (2**61 - 1) without a division: 2**61 = 1 (mod p), so x = (x & p) + (x >> 61) (mod p), and that
        # sum is below p + 8, so one conditional subtraction finishes it (4x faster than numpy's %)
        r = x >> np.uint64(61)
        x &= MERSENNE_PRIME
        x += r
        x -= MERSENNE_PRIME * (x >= MERSENNE_PRIME)
        x &= MAX_HASH
        return x

    def signature(self, hashes: np.ndarray) -> np.ndarray:
        """The ``(num_perm,)`` signature of one set of shingle hashes."""
        return self.signatures([hashes])[0]

    def signatures(self, sets: Sequence[np.ndarray]) -> np.ndarray:
        sizes = np.array([len(s) for s in sets], dtype=np.int64)
        sig = np.full((len(sets), self.num_perm), MAX_HASH, dtype=np.uint64)
        nonempty = np.flatnonzero(sizes)
        i = 0
        while i < len(nonempty):  # a chunk of whole texts whose shingles fit in about `chunk` rows
            j, total = i, 0
            while j < len(nonempty) and (j == i or total + sizes[nonempty[j]] <= self.chunk):
                total += sizes[nonempty[j]]
                j += 1
            docs = nonempty[i:j]
            hv = np.concatenate([np.asarray(sets[d], dtype=np.uint64) for d in docs])
            starts = np.concatenate([[0], np.cumsum(sizes[docs])[:-1]])
            sig[docs] = np.minimum.reduceat(self._permute(hv), starts, axis=0)
            i = j
        return sig


def estimate_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """The fraction of permutations whose minima agree: an unbiased estimate of the Jaccard similarity."""
    if sig_a.shape != sig_b.shape:
        raise ValueError(f"signatures differ in length ({sig_a.shape} vs {sig_b.shape}): use one MinHasher")
    return float(np.mean(sig_a == sig_b))


def lsh_candidate_pairs(signatures: np.ndarray, bands: int, rows: int | None = None) -> set[tuple[int, int]]:
    """Pairs ``(i, j)``, ``i < j``, whose signatures agree on all ``rows`` values of at least one band.

    Band ``t`` is columns ``t * rows .. (t + 1) * rows - 1`` (as in datasketch); ``rows`` defaults to
    ``num_perm // bands``. A bucket of ``m`` identical bands contributes ``m (m - 1) / 2`` pairs.
    """
    n, num_perm = signatures.shape
    rows = rows or num_perm // bands
    if bands < 1 or rows < 1 or bands * rows > num_perm:
        raise ValueError(f"bands * rows must be at most num_perm ({num_perm}), got {bands} * {rows}")
    pairs: set[tuple[int, int]] = set()
    # one 64-bit key per band (a multiply-xor mix of its rows); two different bands share a key with
    # probability about 2**-64, so buckets of equal keys are buckets of equal bands
    mult = np.random.RandomState(0).randint(1, 1 << 62, size=rows, dtype=np.uint64) | np.uint64(1)
    for t in range(bands):
        band = signatures[:, t * rows:(t + 1) * rows]
        with np.errstate(over="ignore"):
            keys = np.bitwise_xor.reduce(band * mult + (band >> np.uint64(7)) * mult[::-1], axis=1)
            keys = keys + band[:, 0]
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        edges = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
        starts, ends = np.r_[0, edges], np.r_[edges, n]
        multi = ends - starts > 1  # buckets with more than one text
        for s, e in zip(starts[multi], ends[multi]):
            members = sorted(order[s:e].tolist())
            pairs.update((members[x], members[y]) for x in range(len(members))
                         for y in range(x + 1, len(members)))
    return pairs


def near_duplicates(texts: Sequence[str], threshold: float = 0.8, k: int = 3, num_perm: int = 128,
                    bands: int = 16, seed: int = 1, sets: Sequence[np.ndarray] | None = None
                    ) -> list[tuple[int, int, float]]:
    """Pairs ``(i, j, estimated_jaccard)`` of texts whose shingle sets have estimated Jaccard >= ``threshold``.

    LSH proposes candidates (with 16 bands of 8 rows, pairs at J = 0.8 are found with probability 0.947, at
    J = 0.5 with 0.06); each candidate is then kept only if its MinHash estimate reaches ``threshold``.
    Pass ``sets`` (from :func:`shingle_hashes`) to reuse shingles already computed.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    sets = [shingle_hashes(t, k) for t in texts] if sets is None else sets
    sig = MinHasher(num_perm, seed).signatures(sets)
    out = []
    for i, j in sorted(lsh_candidate_pairs(sig, bands)):
        if len(sets[i]) == 0:  # empty texts are exact duplicates of each other, not near ones
            continue
        est = float(np.mean(sig[i] == sig[j]))
        if est >= threshold:
            out.append((i, j, est))
    return out


def cross_duplicates(a: Sequence[str], b: Sequence[str], threshold: float = 0.8, k: int = 3,
                     num_perm: int = 128, bands: int = 16, seed: int = 1) -> dict:
    """Texts of ``a`` that also sit in ``b``: exact (same :func:`dedup_key`) and near (MinHash >= threshold).

    Returns ``{"exact": [(i, j), ...], "near": [(i, j, est), ...]}`` with ``i`` indexing ``a`` and ``j`` ``b``;
    "near" includes the exact pairs (their estimate is 1).
    """
    keys_b: dict[str, list[int]] = defaultdict(list)
    for j, t in enumerate(b):
        keys_b[dedup_key(t)].append(j)
    exact = [(i, j) for i, t in enumerate(a) for j in keys_b.get(dedup_key(t), ())]
    pairs = near_duplicates(list(a) + list(b), threshold, k, num_perm, bands, seed)
    na = len(a)
    near = [(i, j - na, e) for i, j, e in pairs if i < na <= j]
    return {"exact": exact, "near": near}


def duplicate_report(splits: dict[str, Sequence[str]], threshold: float = 0.8, k: int = 3,
                     num_perm: int = 128, bands: int = 16, seed: int = 1) -> tuple[list[dict], dict]:
    """Exact and near duplicates within each named split and across each pair, in one MinHash pass.

    Returns ``(rows, examples)``. A row: ``{"within": name}`` or ``{"a": name, "b": other}``, with ``exact`` (texts
    of the split, or of ``a``, that have an exact copy elsewhere in it, or in ``b``) and ``near`` (the same
    with estimated Jaccard >= ``threshold``, exact copies included). ``examples`` maps the row's label to a few
    ``(i, j, estimate)`` pairs of indices into the two splits.
    """
    names = list(splits)
    texts = [t for n in names for t in splits[n]]
    owner = np.concatenate([np.full(len(splits[n]), g) for g, n in enumerate(names)])
    local = np.concatenate([np.arange(len(splits[n])) for n in names])
    keys = [dedup_key(t) for t in texts]
    by_key: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        by_key[key].append(i)
    near_pairs = near_duplicates(texts, threshold, k, num_perm, bands, seed)
    rows, examples = [], {}
    for ga, a in enumerate(names):
        for gb in range(ga, len(names)):
            b = names[gb]
            label = f"within {a}" if ga == gb else f"{a} & {b}"
            exact_hit = set()
            for group in by_key.values():
                if len(group) > 1:
                    in_a = [i for i in group if owner[i] == ga]
                    in_b = [i for i in group if owner[i] == gb]
                    if ga == gb and len(in_a) > 1 or ga != gb and in_a and in_b:
                        exact_hit.update(in_a)
            near_hit, ex = set(), []
            for i, j, e in near_pairs:
                if {owner[i], owner[j]} == {ga, gb} and (ga != gb or owner[i] == ga):
                    near_hit.add(i if owner[i] == ga else j)
                    if ga == gb:
                        near_hit.add(j)
                    ex.append((int(local[i]), int(local[j]), e))
            rows.append({"pair": label, "exact": len(exact_hit), "near": len(near_hit | exact_hit)})
            examples[label] = ex[:5]
    return rows, examples


def without_test_texts(texts: Sequence[str], test_texts: Sequence[str], near: bool = True,
                       threshold: float = 0.8, k: int = 3) -> tuple[list[int], int]:
    """Indices of ``texts`` to keep, none of them an exact or (``near=True``) near duplicate of a test text, and
    how many were dropped. Indices keep labels aligned: ``df.iloc[keep]``."""
    keys = {dedup_key(t) for t in test_texts}
    drop = {i for i, t in enumerate(texts) if dedup_key(t) in keys}
    if near:
        drop.update(i for i, _, _ in cross_duplicates(texts, test_texts, threshold, k)["near"])
    keep = [i for i in range(len(texts)) if i not in drop]
    return keep, len(texts) - len(keep)


_WITHOUT_TEST_MEMO: dict[tuple, list[int]] = {}


def _without_test_keep(split: str, near: bool, limit: int | None, path) -> list[int]:
    """The kept row indices of :func:`load_imdb_without_test`, computed once per process and, for whole splits,
    once per machine: stored in the user cache under a name made of the two files' sha256 (so another version
    of the data cannot reuse them), written atomically."""
    import json

    from ..utils import atomic_write
    from .loaders import load_imdb
    from .registry import REGISTRY, cache_dir, fetch

    files = [fetch(f"imdb/imdb_{s}.csv.gz", path) for s in (split, "test")]  # verified: the hashes name content
    key = (split, near, limit, *(str(f.resolve()) for f in files))
    if key in _WITHOUT_TEST_MEMO:
        return _WITHOUT_TEST_MEMO[key]
    digest = hashlib.sha256("".join(REGISTRY[f"imdb/imdb_{s}.csv.gz"].sha256 for s in (split, "test"))
                            .encode()).hexdigest()[:16]
    disk = cache_dir() / "derived" / f"imdb_{split}_without_test_near{int(near)}_{digest}.json"
    keep = None
    if limit is None and disk.is_file():
        try:
            keep = json.loads(disk.read_text())
        except (OSError, ValueError):
            keep = None  # a damaged cache file is recomputed and replaced
    if keep is None:
        df = load_imdb(split, path=path, limit=limit)
        test = load_imdb("test", path=path).text.tolist()
        keep, _ = without_test_texts(df.text.tolist(), test, near=near)
        if limit is None:
            try:
                disk.parent.mkdir(parents=True, exist_ok=True)
                with atomic_write(disk, "w") as fh:
                    fh.write(json.dumps(keep))
            except OSError:
                pass  # a read-only cache only costs the recomputation next time
    _WITHOUT_TEST_MEMO[key] = keep
    return keep


def load_imdb_without_test(split: str = "unsup", near: bool = True, limit: int | None = None, path=None):
    """An IMDB split (``"train"`` or ``"unsup"``) with every review that duplicates a test review removed.

    The corpus to pretrain or fine-tune on: a test review that also sits in the training data is memorised, not
    predicted. Returns a DataFrame like :func:`llmscratch.data.load_imdb` (index reset). The comparison with the
    test split (seconds to minutes) runs once: its result is kept for the process and, for a whole split, in the
    user cache, so repeated calls only read the CSV.
    """
    from .loaders import load_imdb

    if split == "test":
        raise ValueError("split='test' would remove itself: use 'train' or 'unsup'")
    keep = _without_test_keep(split, near, limit, path)
    df = load_imdb(split, path=path, limit=limit)
    return df.iloc[keep].reset_index(drop=True)
