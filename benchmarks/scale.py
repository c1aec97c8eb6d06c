"""Chapter 8 speed on the CPU (issue 16): bf16 autocast vs float32, DDP scaling, activation checkpointing.

1. **bf16 autocast vs float32** on the chapter-3 benchmark config (4 layers, d_model 256, 4 heads, context
   256, batch 4, vocab 50257; ``benchmarks/gpt.py``): training tokens/s of ``Trainer.train_step`` with
   ``precision="bf16"`` and ``"fp32"`` (the same weights and batches; runs interleaved, median of rounds), and
   the training loss after ``--steps`` steps of each on the same batches. Whether this CPU has native bf16
   (``avx512_bf16`` / ``amx_bf16``) is printed: without it bf16 is emulated and slower; the goal of >= 1.3x
   applies where it is native.
2. **DDP scaling**: ``torchrun --nproc-per-node 2`` with 1 thread per process against one process with 1
   thread, the same per-process batch (weak scaling): efficiency = tokens/s(2 processes) / (2 x tokens/s(1)).
3. **Activation checkpointing**: bytes saved for backward (measured with ``saved_tensors_hooks``) and the
   time of a training step, with and without ``gradient_checkpointing``.

Run: ``PYTHONPATH=pkg python benchmarks/scale.py [--steps 50] [--rounds 3] [--threads 2]`` (the DDP part launches itself
under ``torchrun``). ``--small`` shrinks the model for a quick check.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from llmscratch.models.gpt import GPTConfig, GPTModel
from llmscratch.train import Trainer, saved_activation_bytes
from llmscratch.train import distributed as D
from llmscratch.train.precision import cpu_has_native_bf16

CFG = dict(vocab_size=50257, context_length=256, d_model=256, n_heads=4, n_layers=4)
SMALL = dict(vocab_size=2048, context_length=64, d_model=64, n_heads=4, n_layers=2)
BATCH = 4


def batches(cfg: dict, n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` learnable batches: each sequence follows a fixed random permutation of a 512-token sub-vocabulary
    (next = perm[current]), so the loss falls quickly from log(vocab)."""
    g = torch.Generator().manual_seed(seed)
    sub = min(512, cfg["vocab_size"])
    perm = torch.randperm(sub, generator=g)
    out = []
    for _ in range(n):
        start = torch.randint(0, sub, (BATCH,), generator=g)
        seq = [start]
        for _ in range(cfg["context_length"]):
            seq.append(perm[seq[-1]])
        ids = torch.stack(seq, 1)
        out.append((ids[:, :-1].contiguous(), ids[:, 1:].contiguous()))
    return out


def trainer(cfg: dict, precision: str, data, checkpointing: bool = False) -> Trainer:
    torch.manual_seed(0)
    model = GPTModel(GPTConfig(**cfg, gradient_checkpointing=checkpointing))
    return Trainer(model, data, lr=1e-3, device="cpu", progress=False, precision=precision)


def time_steps(t: Trainer, data, steps: int) -> float:
    start = time.perf_counter()
    for i in range(steps):
        t.train_step([data[i % len(data)]])
    return (time.perf_counter() - start) / steps


def precision_part(cfg, steps, rounds) -> dict:
    data = batches(cfg, 8)
    trainers = {p: trainer(cfg, p, data) for p in ("fp32", "bf16")}
    per_step = {p: [] for p in trainers}
    for _ in range(rounds):  # interleaved: a busy machine slows both alike
        for p, t in trainers.items():
            per_step[p].append(time_steps(t, data, 3))
    losses = {}
    for p in ("fp32", "bf16"):
        t = trainer(cfg, p, data)
        for i in range(steps):
            loss = t.train_step([data[i % len(data)]])
        losses[p] = loss
    tokens = BATCH * cfg["context_length"]
    tps = {p: tokens / statistics.median(v) for p, v in per_step.items()}
    return {"tokens_per_s": tps, "bf16_over_fp32": tps["bf16"] / tps["fp32"], "loss_after_steps": losses,
            "steps": steps}


def checkpoint_part(cfg, rounds) -> dict:
    data = batches(cfg, 2)
    x, y = data[0]
    out = {}
    times = {False: [], True: []}
    trainers = {c: trainer(cfg, "fp32", data, checkpointing=c) for c in (False, True)}
    for _ in range(rounds):
        for c, t in trainers.items():
            times[c].append(time_steps(t, data, 3))
    for c, t in trainers.items():
        t.model.train()
        out[str(c)] = {"saved_bytes": saved_activation_bytes(lambda: t.model.loss(x, y), exclude=t.model),
                       "s_per_step": statistics.median(times[c])}
    out["bytes_saved_fraction"] = 1 - out["True"]["saved_bytes"] / out["False"]["saved_bytes"]
    out["time_added_fraction"] = out["True"]["s_per_step"] / out["False"]["s_per_step"] - 1
    return out


def ddp_worker(cfg, steps, out: Path) -> None:
    """Under torchrun (or alone): tokens/s of this process's DDP training, one thread."""
    torch.set_num_threads(1)
    D.init_distributed()
    data = batches(cfg, 4, seed=D.rank())  # each process its own batches (what a sharded loader gives)
    torch.manual_seed(0)
    t = Trainer(GPTModel(GPTConfig(**cfg)), data, device="cpu", progress=False)
    t.train_step([data[0]])  # warm-up (DDP builds its buckets on the first step)
    D.barrier()
    per_step = time_steps(t, data, steps)
    tokens = BATCH * cfg["context_length"] * D.world_size()
    if D.is_main_process():
        out.write_text(json.dumps({"world": D.world_size(), "tokens_per_s": tokens / per_step}))
    D.cleanup()


def ddp_part(small: bool, steps: int) -> dict:
    here = Path(__file__).resolve()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = {}
    for world in (1, 2):
        out = Path(f"/tmp/llmscratch_scale_ddp_{world}.json")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}",
               str(here), "--ddp-worker", "--steps", str(steps), "--out", str(out)] + (["--small"] if small else [])
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        res[world] = json.loads(out.read_text())["tokens_per_s"]
    return {"tokens_per_s_1x1": res[1], "tokens_per_s_2x1": res[2], "efficiency": res[2] / (2 * res[1])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the single-process parts")
    ap.add_argument("--ddp-worker", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    cfg = SMALL if args.small else CFG
    if args.ddp_worker:
        return ddp_worker(cfg, args.steps, Path(args.out))
    torch.set_num_threads(args.threads)
    print(f"config {cfg}, batch {BATCH}; torch {torch.__version__}; {os.cpu_count()} CPUs, {args.threads} threads; "
          f"load average {os.getloadavg()[0]:.1f}")
    native = cpu_has_native_bf16()
    print(f"native bf16 on this CPU (avx512_bf16/amx_bf16): {native}")
    p = precision_part(cfg, args.steps, args.rounds)
    print(f"bf16 autocast vs fp32: {p['tokens_per_s']['bf16']:,.0f} vs {p['tokens_per_s']['fp32']:,.0f} tokens/s "
          f"= {p['bf16_over_fp32']:.2f}x; loss after {p['steps']} steps: bf16 {p['loss_after_steps']['bf16']:.4f}, "
          f"fp32 {p['loss_after_steps']['fp32']:.4f}")
    c = checkpoint_part(cfg, args.rounds)
    print(f"activation checkpointing: saved activations {c['False']['saved_bytes'] / 2**20:.1f} MiB -> "
          f"{c['True']['saved_bytes'] / 2**20:.1f} MiB ({c['bytes_saved_fraction']:.0%} less), step time "
          f"{c['False']['s_per_step']:.3f} s -> {c['True']['s_per_step']:.3f} s ({c['time_added_fraction']:+.0%})")
    d = ddp_part(args.small, max(3, args.steps // 10))
    print(f"DDP 2 processes x 1 thread: {d['tokens_per_s_2x1']:,.0f} tokens/s vs 1 x 1: "
          f"{d['tokens_per_s_1x1']:,.0f}; scaling efficiency {d['efficiency']:.0%}")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
