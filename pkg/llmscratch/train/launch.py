"""Small distributed runs of chapter 8, launched with ``torchrun`` (and once without it, as the reference).

::

    torchrun --standalone --nproc-per-node 2 -m llmscratch.train.launch all --out runs/2proc
    python -m llmscratch.train.launch data-parallel --out runs/1proc  # one process, the same global batch
    python -m llmscratch.train.launch resume --out runs/back --resume-from runs/2proc/ckpt/last.pt

``data-parallel`` trains a tiny GPT for ``--steps`` optimizer steps with the *unchanged*
:class:`llmscratch.train.Trainer` three ways: DDP, ZeRO-1 (``ZeroRedundancyOptimizer``) and FSDP2
(``fully_shard``); it writes each run's weights (``ddp.pt``, ``zero1.pt``, ``fsdp.pt``) and every rank's
optimizer-state bytes. It also stops a DDP run half-way with a checkpoint (``ckpt/last.pt``), and with
``--resume-from`` it then continues such a checkpoint (written by a run on any number of processes) to
``--steps`` into ``resumed.pt``. ``resume`` does only that last part (no training from scratch): continue
``--resume-from`` into ``resumed.pt``. A checkpoint resumes on any world size because the data of one
optimizer step does not depend on it: the per-process batch is ``--global-batch / (world size x
--accumulation)`` and the ``DistributedSampler`` deals the examples round-robin, so the global batch of every
step, and the number of micro-batches per epoch in each process, are the same for 1 or 2 processes.
``model-parallel`` (2 processes) checks tensor parallelism (by hand and with ``torch.distributed.tensor``)
and a two-stage GPipe pipeline against the full model computed in the same process, and writes the largest
differences. Everything lands in ``--out`` (``results.json`` plus the weight files), written by rank 0.
The data has a different number of padding targets in every row, so exact token weighting matters.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from ..models.gpt import GPTConfig, GPTModel
from ..utils import atomic_write
from . import distributed as D
from .loop import Trainer
from .memory import optimizer_state_bytes

VOCAB, SEQ = 32, 12


def tiny_gpt(seed: int = 0, **overrides) -> GPTModel:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=VOCAB, context_length=SEQ, d_model=16, n_heads=2, n_layers=2)
    return GPTModel(GPTConfig(**{**cfg, **overrides}))


def tiny_data(n: int = 32, seed: int = 0, padded: bool = True) -> TensorDataset:
    """``n`` random sequences; row i keeps ``2 + 5i mod 11`` targets and pads the rest (``-100``)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, VOCAB, (n, SEQ), generator=g)
    y = torch.randint(0, VOCAB, (n, SEQ), generator=g)
    if padded:
        for i in range(n):
            y[i, 2 + (5 * i) % 11:] = -100
    return TensorDataset(x, y)


def _optimizer(params, zero: bool = False):
    # eps=1e-4: with Adam's default 1e-8, gradient entries near 1e-8 turn float rounding into visible steps,
    # and the comparisons are about the parallel arithmetic, not about Adam's sensitivity there.
    kw = dict(lr=1e-2, eps=1e-4, weight_decay=0.1, foreach=False)
    if zero:
        from torch.distributed.optim import ZeroRedundancyOptimizer

        return ZeroRedundancyOptimizer(params, optimizer_class=torch.optim.AdamW, **kw)
    return torch.optim.AdamW(params, **kw)


def _full_state(model) -> dict[str, torch.Tensor]:
    """The unsharded weights (FSDP's DTensors gathered: a collective, every rank must call it)."""
    out = {}
    for k, v in D.unwrap_model(model).state_dict().items():
        out[k] = (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
    return out


def _save(obj, path: Path) -> None:
    with atomic_write(path) as f:
        torch.save(obj, f)


def _gather(value) -> list:
    if not D.is_distributed():
        return [value]
    values = [None] * D.world_size()
    torch.distributed.all_gather_object(values, value)
    return values


def _train(kind: str, steps: int, global_batch: int, accumulation: int, checkpoint_dir=None, resume_from=None):
    world = D.world_size()
    if global_batch % (world * accumulation):
        raise SystemExit(f"--global-batch {global_batch} must be divisible by {world} processes x {accumulation}")
    model = tiny_gpt()
    if kind == "fsdp" and D.is_distributed():
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        register_fsdp_forward_method(model, "loss")  # the trainer calls model.loss, not only forward
    optimizer = _optimizer(model.parameters(), zero=kind == "zero1" and D.is_distributed())
    loader = DataLoader(tiny_data(), batch_size=global_batch // (world * accumulation), shuffle=False)
    trainer = Trainer(model, loader, optimizer=optimizer, accumulation_steps=accumulation, device="cpu",
                      progress=False, eval_batches=1, checkpoint_dir=checkpoint_dir)
    if resume_from is not None:
        trainer.load_checkpoint(resume_from)
    trainer.fit(1, max_steps=steps)
    return trainer, optimizer_state_bytes(optimizer)


def data_parallel(args, results: dict) -> None:
    out = Path(args.out)
    for kind in ("ddp", "zero1", "fsdp") if D.is_distributed() else ("ddp",):
        trainer, opt_bytes = _train(kind, args.steps, args.global_batch, args.accumulation)
        state = _full_state(trainer.model)
        per_rank = _gather(opt_bytes)
        if D.is_main_process():
            _save(state, out / f"{kind}.pt")
            results[kind] = {"optimizer_bytes_per_rank": per_rank, "step_loss": trainer.history.step_loss,
                             "world_size": D.world_size()}
    # Stopped half-way with a checkpoint, for --resume-from (on this or another number of processes).
    _train("ddp", args.steps // 2, args.global_batch, args.accumulation, checkpoint_dir=out / "ckpt")
    if args.resume_from:
        resume(args, results)


def resume(args, results: dict) -> None:
    """Continue ``--resume-from`` (a DDP checkpoint of a run on any number of processes) to ``--steps``."""
    trainer, _ = _train("ddp", args.steps, args.global_batch, args.accumulation, resume_from=args.resume_from)
    state = _full_state(trainer.model)
    if D.is_main_process():
        _save(state, Path(args.out) / "resumed.pt")
        results["resumed"] = {"from": str(args.resume_from), "world_size": D.world_size(),
                              "step_loss": trainer.history.step_loss}


def model_parallel(args, results: dict) -> None:
    from torch.nn import functional as F

    from .parallel import TensorParallelAttention, TensorParallelMLP, dtensor_parallel_mlp, pipeline_stage_modules

    if D.world_size() != 2:
        raise SystemExit("model-parallel runs on 2 processes: torchrun --nproc-per-node 2 ...")
    rank, world = D.rank(), D.world_size()
    torch.manual_seed(1)
    x = torch.randn(4, SEQ, 16)  # the same input on both ranks (same seed)
    block = tiny_gpt().blocks[0]

    def diffs(full: torch.nn.Module, part: torch.nn.Module, grads: dict) -> dict:
        xf, xp = x.clone().requires_grad_(), x.clone().requires_grad_()
        yf, yp = full(xf), part(xp)
        yf.square().sum().backward()
        yp.square().sum().backward()
        out = {"output": (yf - yp).abs().max().item(), "input_grad": (xf.grad - xp.grad).abs().max().item()}
        for name, (pgrad, fgrad) in grads.items():
            g = pgrad()
            g = g.full_tensor() if hasattr(g, "full_tensor") else g
            out[name] = (g - fgrad()).abs().max().item()
        return out

    mlp, attn = block.ff, block.attn
    tp_mlp, tp_attn = TensorParallelMLP(mlp, rank, world), TensorParallelAttention(attn, rank, world)
    d = attn.d_out
    res = {
        "mlp_by_hand": diffs(mlp, tp_mlp, {
            "fc_weight_grad": (lambda: tp_mlp.fc_weight.grad, lambda: mlp.fc.weight.grad.chunk(world, 0)[rank]),
            "proj_weight_grad": (lambda: tp_mlp.proj_weight.grad,
                                 lambda: mlp.proj.weight.grad.chunk(world, 1)[rank])}),
        "attention_by_hand": diffs(attn, tp_attn, {
            "qkv_weight_grad": (lambda: tp_attn.qkv_weight.grad, lambda: torch.cat(
                [t.chunk(world, 0)[rank] for t in attn.qkv.weight.grad.split(d)])),
            "proj_weight_grad": (lambda: tp_attn.proj_weight.grad,
                                 lambda: attn.proj.weight.grad.chunk(world, 1)[rank])}),
    }
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (world,))
    reference = tiny_gpt().blocks[0].ff
    dt_mlp = dtensor_parallel_mlp(tiny_gpt().blocks[0].ff, mesh)
    res["mlp_dtensor"] = diffs(reference, dt_mlp, {
        "fc_weight_grad": (lambda: dt_mlp.fc.weight.grad, lambda: reference.fc.weight.grad),
        "proj_weight_grad": (lambda: dt_mlp.proj.weight.grad, lambda: reference.proj.weight.grad)})

    # Pipeline: stage 0 on rank 0, stage 1 on rank 1, GPipe over 4 micro-batches; compared with one process.
    from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

    data = tiny_data(8, padded=False)
    ids, targets = data.tensors

    def loss_fn(logits, target):
        return F.cross_entropy(logits.flatten(0, 1), target.flatten())

    full = tiny_gpt(tie_weights=False)
    loss_fn(full(ids), targets).backward()
    piped = tiny_gpt(tie_weights=False)
    stage_module = pipeline_stage_modules(piped)[rank]
    stage = PipelineStage(stage_module, rank, world, torch.device("cpu"))
    schedule = ScheduleGPipe(stage, n_microbatches=4, loss_fn=loss_fn)
    losses: list = []
    if rank == 0:
        schedule.step(ids)
    else:
        schedule.step(target=targets, losses=losses)
    reference = dict(full.named_parameters())
    on_stage = {id(p) for p in stage_module.parameters()}
    grad_diff = max((p.grad - reference[n].grad).abs().max().item() for n, p in piped.named_parameters()
                    if id(p) in on_stage)
    loss = sum(v.detach().item() for v in losses) / len(losses) if losses else None  # the last stage has the losses
    gathered = _gather({"grad": grad_diff, "loss": loss})
    full_loss = loss_fn(full(ids), targets).item()
    pipe = {"grad_max_abs_diff": max(g["grad"] for g in gathered),
            "loss_diff": abs(gathered[-1]["loss"] - full_loss), "n_microbatches": 4}
    res["pipeline_gpipe"] = pipe
    results["model_parallel"] = res


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m llmscratch.train.launch", description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=["data-parallel", "model-parallel", "all", "resume"])
    parser.add_argument("--out", required=True, help="folder for results.json and the weights")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--global-batch", type=int, default=8, help="sequences per optimizer step, all ranks")
    parser.add_argument("--accumulation", type=int, default=2, help="micro-batches per optimizer step")
    parser.add_argument("--resume-from", help="continue this checkpoint (data-parallel and resume)")
    args = parser.parse_args(argv)
    if args.mode == "resume" and not args.resume_from:
        parser.error("resume needs --resume-from PATH (a ckpt/last.pt written by data-parallel or all)")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread each; and 1 and 2 processes then compute alike
    D.init_distributed()
    out = Path(args.out)
    if D.is_main_process():
        out.mkdir(parents=True, exist_ok=True)
    D.barrier()
    results: dict = {"world_size": D.world_size()}
    try:
        if args.mode in ("data-parallel", "all"):
            data_parallel(args, results)
        if args.mode in ("model-parallel", "all"):
            model_parallel(args, results)
        if args.mode == "resume":
            resume(args, results)
        if D.is_main_process():
            with atomic_write(out / "results.json", "w") as f:
                json.dump(results, f, indent=1)
    finally:
        D.cleanup()
        torch.set_num_threads(threads)  # main() may run inside a notebook kernel or a test process


if __name__ == "__main__":
    main()
