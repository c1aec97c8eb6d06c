"""Chapter 7's data tools against their references, on IMDB: EDA vs nlpaug, MinHash + LSH vs datasketch, and the
cleaning pipeline; optionally the duplicate counts of the IMDB splits.

Run from the repository root:  python benchmarks/data.py [--sentences 2000] [--docs 25000] [--rounds 2] [--report]

1. EDA (sentences/s): our synonym replacement, random swap and random deletion against nlpaug's ``SynonymAug``
   (WordNet) and ``RandomWordAug`` (swap, delete), each changing 10% of the words of the same sentences (IMDB
   sentences of 8-40 words), on the same WordNet (the data folder's, through NLTK). nlpaug tags parts of speech
   with NLTK's perceptron tagger, whose model is not in the data folder; its ``pos_tag`` is replaced by an
   untagged one, which makes nlpaug look up every part of speech (as EDA does) and *saves* it the tagging time,
   so its figure here is an upper bound. Ours is timed cold (empty synonym cache) and warm.
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
    import nlpaug.augmenter.word as naw
    from nlpaug.model.word_dict.wordnet import WordNet

    A.wordnet()  # puts the data folder's nltk_data on nltk.data.path, for nlpaug too
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

    def cold_sr():
        A._SYN_CACHE.clear()
        ours(A.synonym_replacement)()

    nl_sr = naw.SynonymAug(aug_src="wordnet", aug_p=0.1, aug_min=1, stopwords=sorted(A.STOP_WORDS))
    nl_swap = naw.RandomWordAug(action="swap", aug_p=0.1, aug_min=1)
    nl_del = naw.RandomWordAug(action="delete", aug_p=0.1, aug_min=1)
    rows = [
        ("synonym replacement", best_of(cold_sr, 1)[0], best_of(ours(A.synonym_replacement), rounds)[0],
         best_of(lambda: [nl_sr.augment(s) for s in sents], rounds)[0]),
        ("random swap", None, best_of(ours(A.random_swap), rounds)[0],
         best_of(lambda: [nl_swap.augment(s) for s in sents], rounds)[0]),
        ("random deletion", None, best_of(ours(A.random_deletion), rounds)[0],
         best_of(lambda: [nl_del.augment(s) for s in sents], rounds)[0]),
    ]
    print(f"\n## EDA, {len(sents)} IMDB sentences (sentences/s; ratio = ours / nlpaug)\n")
    print("| operation | ours cold | ours warm | nlpaug | ratio cold | ratio warm |\n|---|---:|---:|---:|---:|---:|")
    for name, cold, warm, ref in rows:
        cold_s = f"{len(sents) / cold:,.0f}" if cold else "—"
        ratio_cold = f"{ref / cold:.2f}x" if cold else "—"
        print(f"| {name} | {cold_s} | {len(sents) / warm:,.0f} | {len(sents) / ref:,.0f} | {ratio_cold} | "
              f"**{ref / warm:.2f}x** |")


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
