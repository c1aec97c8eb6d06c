"""llmscratch.data.dedup: exact keys, MinHash signatures and LSH candidates against datasketch on the same
shingles, estimates against exact Jaccard, and removing test texts from a corpus."""

from __future__ import annotations

import numpy as np
import pytest

from llmscratch.data.dedup import (MinHasher, cross_duplicates, dedup_key, drop_overlapping, estimate_jaccard,
                                   exact_duplicates, jaccard, lsh_candidate_pairs, near_duplicates,
                                   shingle_hashes, without_test_texts)


@pytest.fixture(scope="module")
def reviews(data_dir):
    from llmscratch.data import load_imdb

    texts = load_imdb("train", limit=400).text.tolist()
    # near duplicates with known edits: a few words changed or dropped
    edited = [t.replace(" the ", " a ", 3) for t in texts[:20]] + [" ".join(t.split()[5:]) for t in texts[20:30]]
    return texts + edited


def test_exact_key_ignores_case_spacing_and_markup():
    assert dedup_key("A  <br />Film!") == dedup_key("a film!") != dedup_key("a film")
    assert exact_duplicates(["x y", "X   Y", "z", "x y ", "q"]) == [[0, 1, 3]]
    keep, dropped = drop_overlapping(["A b", "c", "a  B"], ["a b"])
    assert (keep, dropped) == ([1], 2)
    with pytest.raises(TypeError, match="strings"):
        dedup_key(None)


def test_shingles():
    h = shingle_hashes("The cat sat on the mat", k=3)
    assert h.dtype == np.uint64 and len(h) == 4 and (h < 2**32).all() and (np.diff(h) > 0).all()
    assert np.array_equal(shingle_hashes("the CAT sat, on the <b>mat</b>", 3), h)
    assert len(shingle_hashes("two words", 3)) == 1 and len(shingle_hashes("", 3)) == 0
    with pytest.raises(ValueError, match="positive int"):
        shingle_hashes("x", 0)


def test_signatures_and_candidates_match_datasketch(reviews):
    datasketch = pytest.importorskip("datasketch")
    sets = [shingle_hashes(t) for t in reviews] + [np.zeros(0, np.uint64)]
    sig = MinHasher(num_perm=128, seed=7).signatures(sets)
    ref = []
    for s in sets:  # datasketch on the very same shingle hashes (identity hash function, its legacy scheme)
        m = datasketch.MinHash(num_perm=128, seed=7, hashfunc=lambda x: x, scheme="legacy")
        m.update_batch(s.tolist())
        ref.append(m)
    assert np.array_equal(sig, np.array([m.hashvalues for m in ref]))
    for i, j in [(0, 400), (1, 2), (25, 425)]:
        assert estimate_jaccard(sig[i], sig[j]) == pytest.approx(ref[i].jaccard(ref[j]))
    lsh = datasketch.MinHashLSH(num_perm=128, params=(16, 8))
    for i, m in enumerate(ref):
        lsh.insert(i, m)
    expected = {tuple(sorted((i, j))) for i, m in enumerate(ref) for j in lsh.query(m) if j != i}
    pairs = lsh_candidate_pairs(sig, bands=16)
    assert pairs == expected
    assert {(i, 400 + i) for i in range(20)} <= pairs  # the edited copies are found


def test_estimates_are_within_their_standard_error(reviews):
    sets = [shingle_hashes(t) for t in reviews]
    num_perm = 256
    sig = MinHasher(num_perm, seed=3).signatures(sets)
    errors = []
    for i, j in [(k, 400 + k) for k in range(30)] + [(k, k + 1) for k in range(30)]:
        J = jaccard(sets[i], sets[j])
        sd = max(np.sqrt(J * (1 - J) / num_perm), 1 / num_perm)
        errors.append(abs(estimate_jaccard(sig[i], sig[j]) - J) / sd)
    assert max(errors) < 4.5, "an estimate is more than 4.5 standard errors off"
    assert np.mean(errors) < 1.2  # |N(0,1)| has mean 0.8


def test_near_duplicates_and_test_removal(reviews):
    pairs = near_duplicates(reviews, threshold=0.7)
    found = {(i, j) for i, j, _ in pairs}
    assert {(i, 400 + i) for i in range(30) if jaccard(shingle_hashes(reviews[i]),
                                                         shingle_hashes(reviews[400 + i])) > 0.85} <= found
    for i, j, est in pairs:
        assert est >= 0.7 and abs(est - jaccard(shingle_hashes(reviews[i]), shingle_hashes(reviews[j]))) < 0.2
    train, test = reviews[:300], reviews[300:400] + reviews[400:410] + ["Brand new review text here."]
    cross = cross_duplicates(train, test)
    # an edit that found no " the " left an exact copy
    assert cross["exact"] == [(i, 100 + i) for i in range(10) if dedup_key(train[i]) == dedup_key(test[100 + i])]
    assert {(i, 100 + i) for i in range(10)} <= {(i, j) for i, j, _ in cross["near"]}
    near_hits = {i for i, _, _ in cross["near"]}
    assert set(range(10)) <= near_hits
    keep, dropped = without_test_texts(train + [test[0], test[0].upper()], test)
    assert keep == [i for i in range(300) if i not in near_hits] and dropped == len(near_hits) + 2
    exact_hits = {i for i, _ in cross["exact"]}
    keep, dropped = without_test_texts(train + [test[0]], test, near=False)
    assert keep == [i for i in range(300) if i not in exact_hits] and dropped == len(exact_hits) + 1


def test_lsh_arguments_are_checked():
    with pytest.raises(ValueError, match="bands \\* rows"):
        lsh_candidate_pairs(np.zeros((3, 16), np.uint64), bands=4, rows=5)


def test_duplicate_report_counts_within_and_across():
    from llmscratch.data.dedup import duplicate_report

    base = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen"
    near = base.replace("seven", "SEVEN!").replace("sixteen", "")  # exact key differs, shingles mostly shared
    splits = {"a": [base, base.upper(), "q r s t u v"], "b": ["<b>" + base + "</b>", "brand new text here"],
              "c": [near, "nothing alike at all here"]}
    rows, examples = duplicate_report(splits, threshold=0.7)
    got = {r["pair"]: (r["exact"], r["near"]) for r in rows}
    J = jaccard(shingle_hashes(base), shingle_hashes(near))
    assert J >= 0.75
    assert got == {"within a": (2, 2), "a & b": (2, 2), "a & c": (0, 2), "within b": (0, 0), "b & c": (0, 1),
                   "within c": (0, 0)}
    assert examples["a & c"] and all(j == 0 for _, j, _ in examples["a & c"])


def test_load_imdb_without_test_is_computed_once(data_dir, tmp_path, monkeypatch):
    """Repeated calls reuse the comparison with the test split: in the process, and for whole splits on disk.
    (The comparison itself, without_test_texts, is tested above; a stand-in keeps this test fast.)"""
    from llmscratch.data import dedup, load_imdb

    monkeypatch.setenv("LLMSCRATCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(dedup, "_WITHOUT_TEST_MEMO", {})
    calls = []

    def stand_in(texts, test_texts, near=True, **kw):
        calls.append((len(texts), len(test_texts), near))
        keep = [i for i in range(len(texts)) if i % 3]
        return keep, len(texts) - len(keep)

    monkeypatch.setattr(dedup, "without_test_texts", stand_in)
    small = dedup.load_imdb_without_test("train", limit=300)
    assert dedup.load_imdb_without_test("train", limit=300).equals(small)
    assert calls == [(300, 25000, True)]
    assert small.equals(load_imdb("train", limit=300).iloc[[i for i in range(300) if i % 3]]
                        .reset_index(drop=True))
    full = dedup.load_imdb_without_test("train", near=False)
    assert calls[1:] == [(25000, 25000, False)] and len(full) == sum(1 for i in range(25000) if i % 3)
    assert len(list((tmp_path / "cache" / "derived").glob("imdb_train_without_test_near0_*.json"))) == 1
    monkeypatch.setattr(dedup, "_WITHOUT_TEST_MEMO", {})  # a new process: the disk copy is used
    assert dedup.load_imdb_without_test("train", near=False).equals(full) and len(calls) == 2
    with pytest.raises(ValueError, match="split='test'"):
        dedup.load_imdb_without_test("test")
