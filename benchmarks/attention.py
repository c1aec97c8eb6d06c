"""Attention speed and memory: the explicit (T, T) reference vs the SDPA module vs ``nn.MultiheadAttention``.

    python benchmarks/attention.py            # CPU here; on a GPU machine add --device cuda
    python benchmarks/attention.py --quick    # two short sequences, a few seconds

Prints a Markdown table: the best milliseconds per call for the forward pass and for forward+backward, the ratio to
the hand-written batched reference measured in the same run (< 1 is faster), the size of one
``(batch, heads, T, T)`` attention matrix (computed; the reference materialises several of them, a fused SDPA
kernel none), and on CUDA the peak memory of one call (``torch.cuda.max_memory_allocated``).

The measuring code lives in ``llmscratch.models.attention.benchmark_attention``: chapter 2's notebook calls the
same function.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from llmscratch.models.attention import attention_matrix_bytes, benchmark_attention, format_benchmark


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--seq", type=int, nargs="+", default=[128, 256, 512, 1024])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--min-time", type=float, default=0.5, help="seconds to spend per measurement (at least 3 calls)")
    p.add_argument("--quick", action="store_true", help="sequences 64 and 128 only, short measurements")
    args = p.parse_args()
    if args.quick:
        args.seq, args.min_time = [64, 128], 0.2
    dtype = getattr(torch, args.dtype)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, device {args.device}, "
          f"threads {torch.get_num_threads()}, batch {args.batch}, d_model {args.d_model}, heads {args.heads}, "
          f"{args.dtype}, causal")
    start = time.perf_counter()
    rows = benchmark_attention(seq_lens=args.seq, batch=args.batch, d_model=args.d_model, num_heads=args.heads,
                               device=args.device, dtype=dtype, min_time=args.min_time, progress=True)
    print()
    print(format_benchmark(rows))
    print()
    print("Memory of the attention matrix the reference materialises (computed, per (B, H, T, T) tensor; the"
          " forward keeps scores and weights, the backward adds their gradients):")
    for t in (1024, 4096, 16384):
        mb = attention_matrix_bytes(args.batch, args.heads, t, dtype) / 2**20
        print(f"  T = {t:6d}: {mb:10.1f} MB per matrix; SDPA's fused kernel keeps O(T) per head instead "
              f"({args.batch * args.heads * t * 4 / 2**20:.2f} MB of log-sum-exp statistics)")
    print(f"\n(total {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
