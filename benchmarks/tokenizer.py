"""Encoding speed: llmscratch's Python BPETokenizer (GPT-2 files) against tiktoken, on the same IMDB reviews.

Run from the repository root:  python benchmarks/tokenizer.py [--reviews 2000] [--rounds 3]

Both tokenizers encode the same texts one by one (tiktoken's ``encode_ordinary``, ours ``encode``, no special
tokens); the ids are checked equal before timing. "cold" is our first pass, which fills the per-pre-token cache
(a fresh tokenizer); "warm" is a second pass over the same texts with the cache full. The table gives the best of
``--rounds`` runs and the ratio to tiktoken measured in the same run.

A second table times one long pre-token (the letters of *The Verdict* without spaces or punctuation, cut to
1,000 / 10,000 / 30,000 characters): the package's heap merge (``apply_merges``), the simple loop the book shows
(``apply_merges_simple``, quadratic; skipped past ``--simple-max`` characters) and tiktoken, each checked equal.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from llmscratch.data import load_imdb
from llmscratch.tokenizers import BPETokenizer, gpt2_tokenizer


def best_of(fn, rounds):
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reviews", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--long", type=int, nargs="*", default=[1000, 10000, 30000],
                    help="lengths of the long pre-tokens to time")
    ap.add_argument("--simple-max", type=int, default=30000, help="longest pre-token given to the simple loop")
    args = ap.parse_args()

    texts = load_imdb("train", limit=args.reviews)["text"].tolist()
    n_chars = sum(map(len, texts))
    ref = gpt2_tokenizer()
    ours = BPETokenizer.gpt2()
    ref_ids = [ref.encode_ordinary(t) for t in texts]
    assert [ours.encode(t) for t in texts] == ref_ids, "ids differ from tiktoken: fix the tokenizer before timing it"
    n_tokens = sum(map(len, ref_ids))

    def cold():
        fresh = BPETokenizer.gpt2()
        for t in texts:
            fresh.encode(t)

    t_load = best_of(BPETokenizer.gpt2, args.rounds)
    t_cold = best_of(cold, args.rounds) - t_load  # loading the files is not encoding
    t_warm = best_of(lambda: [ours.encode(t) for t in texts], args.rounds)
    t_ref = best_of(lambda: [ref.encode_ordinary(t) for t in texts], args.rounds)

    print(f"{len(texts)} IMDB reviews, {n_chars:,} characters, {n_tokens:,} tokens; best of {args.rounds} rounds")
    print(f"python {platform.python_version()}, torch {torch.__version__}, {platform.processor() or platform.machine()}")
    print(f"{'tokenizer':<38} {'seconds':>8} {'tokens/s':>12} {'x tiktoken time':>16}")
    rows = [("tiktoken (Rust), encode_ordinary", t_ref), ("llmscratch BPETokenizer, cold cache", t_cold),
            ("llmscratch BPETokenizer, warm cache", t_warm)]
    for name, t in rows:
        print(f"{name:<38} {t:>8.3f} {n_tokens / t:>12,.0f} {t / t_ref:>16.1f}")
    print(f"(loading GPT-2's files into BPETokenizer: {t_load:.2f} s, not included above)")
    long_pretokens(ours, ref, args)


def long_pretokens(ours, ref, args) -> None:
    from llmscratch.data import load_the_verdict

    letters = "".join(c for c in load_the_verdict() if c.isalpha())
    print(f"\none pre-token of n letters (The Verdict without spaces); best of {args.rounds} rounds, seconds")
    print(f"{'n':>8} {'tiktoken':>10} {'heap merge':>11} {'simple loop':>12} {'heap / tiktoken':>16}")
    for n in args.long:
        word = (letters * (n // len(letters) + 1))[:n]
        ids = [ours.byte_ids[b] for b in word.encode("utf-8")]
        fast = ours.apply_merges(ids)
        assert fast == ref.encode_ordinary(word), "heap merge differs from tiktoken"
        t_ref = best_of(lambda: ref.encode_ordinary(word), args.rounds)
        t_fast = best_of(lambda: ours.apply_merges(ids), args.rounds)
        simple = "skipped"
        if n <= args.simple_max:
            assert ours.apply_merges_simple(ids) == fast, "simple loop differs from the heap merge"
            simple = f"{best_of(lambda: ours.apply_merges_simple(ids), 1):.4f}"
        print(f"{n:>8,} {t_ref:>10.4f} {t_fast:>11.4f} {simple:>12} {t_fast / t_ref:>16.1f}")


if __name__ == "__main__":
    main()
