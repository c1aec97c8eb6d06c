"""Chapter 7's data tools against their references, on IMDB: EDA vs nlpaug, MinHash + LSH vs datasketch, and the
cleaning pipeline; optionally the duplicate counts of the IMDB splits.

Run from the repository root:  python benchmarks/data.py [--sentences 2000] [--docs 25000] [--rounds 2] [--report]
[--only eda minhash cleaning]

1. EDA (sentences/s): our synonym replacement, random swap and random deletion against nlpaug's ``SynonymAug``
   (WordNet) and ``RandomWordAug`` (swap, delete), each changing 10% of the words of the same sentences (IMDB
   sentences of 8-40 words), on the same WordNet (the data folder's, through NLTK). nlpaug tags parts of speech
   with NLTK's perceptron tagger, whose model is not in the data folder; its ``pos_tag`` is replaced by an
   untagged one, which makes nlpaug look up every part of speech (as EDA does) and *saves* it the tagging time,
   so its figure here is an upper bound. Synonym replacement is timed from a fresh state (as in a new process:
   ours reads WordNet's files, nlpaug gets a new NLTK WordNet reader), the load apart and with the first pass,
   then warm (ours: every word's synonyms cached; nlpaug: NLTK's synsets cached, as its first pass looks up
   every word); each cold figure is the best of ``--rounds`` fresh starts. ``--only eda`` runs this part alone.
2. MinHash (documents/s): signatures (128 permutations) and LSH candidate pairs (16 bands x 8 rows) of
   ``--docs`` training reviews, from the same word-3-shingle hashes (computed once, timed apart): ours
   (vectorised over all documents) against datasketch's ``MinHash`` (its "legacy" permutations, which give
   identical signatures) + ``MinHashLSH``; the candidate pairs are checked equal before the ratio is printed.
   datasketch's default "affine32" scheme (other permutations, so other pairs) is timed for the record.
3. The default cleaning pipeline over the IMDB train, test and unsup reviews: seconds, and its report.
``--report`` adds the exact/near duplicate counts within and across the three IMDB splits.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import time

import numpy as np

from llmscratch.data import load_imdb
from llmscratch.data import augment as A
from llmscratch.data.cleaning import default_pipeline
from llmscratch.data.dedup import MinHasher, duplicate_report, lsh_candidate_pairs, shingle_hashes


def best_of(fn, rounds):
    best, out = float("inf"), None
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def imdb_sentences(n: int) -> list[str]:
    out = []
    for review in load_imdb("train", limit=5000).text:
        for s in re.split(r"(?<=[.!?])\s+", review.replace("<br />", " ")):
            if 8 <= len(s.split()) <= 40:
                out.append(s)
                if len(out) == n:
                    return out
    return out


def bench_eda(n: int, rounds: int) -> None:
    import warnings

    import nlpaug.augmenter.word as naw
    from nlpaug.model.word_dict.wordnet import WordNet
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    wn = A.wordnet()  # puts the data folder's nltk_data on nltk.data.path, for nlpaug too
    WordNet.pos_tag = classmethod(lambda cls, tokens: [(t, "") for t in tokens])  # see the module docstring
    sents = imdb_sentences(n)
    rng = random.Random(0)

    def ours(op):
        def run():
            for s in sents:
                words = A.eda_words(s)
                arg = 0.1 if op is A.random_deletion else max(1, int(0.1 * len(words)))
                " ".join(op(words, arg, rng))
        return run

    def ours_fresh():  # a process that has not read WordNet yet: no reader, no cached synonyms
        A.wordnet_db.cache_clear()
        A._SYN_CACHE.clear()
        A._CLEAN_NAME.clear()

    def nltk_reader():  # what nltk.corpus.wordnet builds on first use (lemma index, exceptions, satellites)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return WordNetCorpusReader(wn.root, wn._omw_reader)

    nl_sr = naw.SynonymAug(aug_src="wordnet", aug_p=0.1, aug_min=1, stopwords=sorted(A.STOP_WORDS))

    def nl_sr_run():
        for s in sents:
            nl_sr.augment(s)

    def nl_fresh():
        nl_sr.model.model = None  # its previous reader (and NLTK's synset cache) goes

    def timed(fresh, load, run):
        """Best of ``rounds`` of (load, first pass, load + first pass), each from a fresh state."""
        best = [float("inf")] * 3
        for _ in range(rounds):
            fresh()
            t0 = time.perf_counter()
            load()
            t1 = time.perf_counter()
            run()
            t2 = time.perf_counter()
            best = [min(b, t) for b, t in zip(best, (t1 - t0, t2 - t1, t2 - t0))]
        return best

    o_load, o_cold, o_cold_all = timed(ours_fresh, A.wordnet_db, ours(A.synonym_replacement))
    # every word's synonyms in the cache (a second pass alone would still meet words the first pass's random
    # choices never looked up)
    for s in sents:
        for w in A.eda_words(s):
            A.synonyms(w)
    o_warm = best_of(ours(A.synonym_replacement), rounds)[0]
    n_load, n_cold, n_cold_all = timed(nl_fresh, lambda: setattr(nl_sr.model, "model", nltk_reader()),
                                       nl_sr_run)
    n_warm = best_of(nl_sr_run, rounds)[0]
    ns = len(sents)
    print(f"\n## EDA synonym replacement, {ns} IMDB sentences (best of {rounds}; ratio = nlpaug's time / ours)\n")
    print("| pass | ours s | ours sentences/s | nlpaug s | nlpaug sentences/s | ratio |\n"
          "|---|---:|---:|---:|---:|---:|")
    print(f"| one-time load (ours: WordNet's files; nlpaug: NLTK's reader) | {o_load:.3f} | — | {n_load:.3f} | — | "
          f"{n_load / o_load:.1f}x |")
    for name, o, r in [("cold: load + first pass, fresh state", o_cold_all, n_cold_all),
                       ("cold: first pass after the load (empty caches)", o_cold, n_cold),
                       ("warm: every word's synonyms cached (ours) / NLTK's synsets cached (nlpaug)", o_warm, n_warm)]:
        print(f"| {name} | {o:.3f} | {ns / o:,.0f} | {r:.3f} | {ns / r:,.0f} | **{r / o:.2f}x** |")
    print(f"| ours cold (load + first pass) vs nlpaug warm | {o_cold_all:.3f} | {ns / o_cold_all:,.0f} | "
          f"{n_warm:.3f} | {ns / n_warm:,.0f} | **{n_warm / o_cold_all:.2f}x** |")

    nl_swap = naw.RandomWordAug(action="swap", aug_p=0.1, aug_min=1)
    nl_del = naw.RandomWordAug(action="delete", aug_p=0.1, aug_min=1)
    rows = [
        ("random swap", best_of(ours(A.random_swap), rounds)[0],
         best_of(lambda: [nl_swap.augment(s) for s in sents], rounds)[0]),
        ("random deletion", best_of(ours(A.random_deletion), rounds)[0],
         best_of(lambda: [nl_del.augment(s) for s in sents], rounds)[0]),
    ]
    print(f"\n## EDA random words, {ns} IMDB sentences (sentences/s, best of {rounds}; ratio = ours / nlpaug)\n")
    print("| operation | ours | nlpaug | ratio |\n|---|---:|---:|---:|")
    for name, ours_t, ref in rows:
        print(f"| {name} | {ns / ours_t:,.0f} | {ns / ref:,.0f} | **{ref / ours_t:.2f}x** |")


def bench_minhash(n_docs: int, rounds: int) -> None:
    from datasketch import MinHash, MinHashLSH

    texts = load_imdb("train", limit=n_docs).text.tolist()
    t_sh, sets = best_of(lambda: [shingle_hashes(t) for t in texts], 1)
    hv_lists = [s.tolist() for s in sets]

    def ours():
        sig = MinHasher(128, seed=1).signatures(sets)
        return lsh_candidate_pairs(sig, bands=16)

    def theirs(scheme="legacy"):
        lsh = MinHashLSH(num_perm=128, params=(16, 8))
        ms = []
        for i, hv in enumerate(hv_lists):
            m = MinHash(num_perm=128, seed=1, hashfunc=lambda x: x, scheme=scheme)
            m.update_batch(hv)
            lsh.insert(i, m)
            ms.append(m)
        return {tuple(sorted((i, j))) for i, m in enumerate(ms) for j in lsh.query(m) if j != i}

    t_ours, pairs = best_of(ours, rounds)
    t_ref, ref_pairs = best_of(theirs, rounds)
    assert pairs == ref_pairs, "candidate pairs differ from datasketch's: fix the MinHash before timing it"
    t_aff, _ = best_of(lambda: theirs("affine32"), 1)
    print(f"\n## MinHash + LSH, {len(texts):,} reviews, 128 permutations, 16 x 8 bands "
          f"(shingling {t_sh:.1f} s, shared)\n")
    print("| implementation | s | reviews/s | ours vs it |\n|---|---:|---:|---:|")
    print(f"| ours (vectorised) | {t_ours:.2f} | {len(texts) / t_ours:,.0f} | 1.00x |")
    print(f"| datasketch legacy (same {len(pairs)} candidate pairs) | {t_ref:.2f} | {len(texts) / t_ref:,.0f} | "
          f"**{t_ref / t_ours:.2f}x** |")
    print(f"| datasketch affine32 (its default; other pairs) | {t_aff:.2f} | {len(texts) / t_aff:,.0f} | "
          f"{t_aff / t_ours:.2f}x |")


def bench_cleaning() -> None:
    texts = [t for split in ("train", "test", "unsup") for t in load_imdb(split).text]
    pipe = default_pipeline()
    t, res = best_of(lambda: pipe.run(texts), 1)
    print(f"\n## Cleaning pipeline over {len(texts):,} IMDB reviews: {t:.1f} s\n")
    print(res.report_frame().to_markdown(index=False) if _has_tabulate() else res.report_frame())


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
        return True
    except ImportError:
        return False


def dedup_report() -> None:
    splits = {s: load_imdb(s).text.tolist() for s in ("train", "test", "unsup")}
    t0 = time.perf_counter()
    rows, examples = duplicate_report(splits, threshold=0.8)
    print(f"\n## IMDB duplicates (exact key; near = MinHash Jaccard >= 0.8 on word 3-shingles), "
          f"{time.perf_counter() - t0:.0f} s\n")
    print("| split(s) | texts with an exact copy | with a near copy (incl. exact) |\n|---|---:|---:|")
    for r in rows:
        print(f"| {r['pair']} | {r['exact']:,} | {r['near']:,} |")
    for label, ex in examples.items():
        if ex:
            print(f"{label}: e.g. {ex[:3]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sentences", type=int, default=2000)
    ap.add_argument("--docs", type=int, default=25000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--report", action="store_true", help="also count IMDB's duplicates")
    ap.add_argument("--only", choices=["eda", "minhash", "cleaning"], nargs="*")
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    only = set(args.only or ["eda", "minhash", "cleaning"])
    if "eda" in only:
        bench_eda(args.sentences, args.rounds)
    if "minhash" in only:
        bench_minhash(args.docs, args.rounds)
    if "cleaning" in only:
        bench_cleaning()
    if args.report:
        dedup_report()
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
