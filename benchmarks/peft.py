"""LoRA speed and memory on the CPU: training step and optimizer state against full fine-tuning, against ``peft``'s
LoRA on ``transformers`` GPT-2 in the same run, and merged inference against the base model.

Config (issue 14): GPT-2 small's shape (12 layers, d_model 768, 12 heads, vocab 50,257), sequence 128, batch
``--batch`` (default 2), 2 CPU threads, dropout 0. LoRA: r = 8, alpha = 16 on the attention projections
(ours: ``attn.qkv`` and ``attn.proj``; peft: ``c_attn`` and ``attn.c_proj`` with ``fan_in_fan_out``).

Training step = forward + loss + backward + AdamW step, each contender on its natural path:
- ours, full fine-tuning: ``GPTModel.loss`` (fused LM head + cross-entropy) and ``train.configure_optimizer``;
- ours, LoRA: the same model path after :func:`llmscratch.peft.apply_lora`, AdamW (fused) on the adapters only;
- peft's LoRA on ``transformers.GPT2LMHeadModel`` (sdpa) loaded from our weights, its own loss
  (``labels=y, shift_labels=y``), ``torch.optim.AdamW(fused=True)`` on its trainable parameters.
All start from the same weights with B = 0, so their first losses must agree before anything is timed.
Optimizer state is measured (the bytes of every tensor in ``optimizer.state`` after one step), not estimated.

Inference: forward of the base model vs the LoRA model after ``merge_lora`` (same cost expected: the update is
folded into W) and unmerged (two thin extra matmuls per adapted layer), no grad, eval mode.

Run: ``PYTHONPATH=pkg python benchmarks/peft.py [--rounds 5] [--steps 2] [--batch 2] [--layers 12]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile

import torch

# This file is called peft.py: with its folder first on sys.path, ``import peft`` would import itself. Take the
# folder off the path and load benchmarks/gpt.py (the shared interleaved-median timer; sets 2 threads) by file.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
_spec = importlib.util.spec_from_file_location("benchmarks_gpt", os.path.join(_HERE, "gpt.py"))
_gpt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_gpt)
warm_medians, print_table, train_step_fn = _gpt.warm_medians, _gpt.print_table, _gpt.train_step_fn

from llmscratch.models.gpt import GPTConfig, GPTModel  # noqa: E402
from llmscratch.peft import apply_lora, merge_lora, trainable_parameters  # noqa: E402
from llmscratch.train import configure_optimizer  # noqa: E402

SEQ, R, ALPHA, LR = 128, 8, 16, 2e-4


def optimizer_state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
               if torch.is_tensor(t) and t.dim() > 0)  # the per-parameter moments, not the step counters


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median reported)")
    ap.add_argument("--steps", type=int, default=2, help="training steps per round")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--layers", type=int, default=12, help="fewer for a quick check; the issue's figure is 12")
    args = ap.parse_args()
    import peft
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPTConfig.preset("gpt2", n_layers=args.layers, context_length=1024)
    print(f"torch {torch.__version__}, peft {peft.__version__}, threads {torch.get_num_threads()}, "
          f"{cfg.n_layers} layers x {cfg.d_model}, seq {SEQ}, batch {args.batch}, LoRA r={R} alpha={ALPHA}")
    full = GPTModel(cfg).train()
    lora = GPTModel(cfg).train()
    lora.load_state_dict(full.state_dict())
    apply_lora(lora, R, ALPHA, target_modules=["attn.qkv", "attn.proj"])
    with tempfile.TemporaryDirectory() as tmp:
        full.save_pretrained(tmp)
        hf = GPT2LMHeadModel.from_pretrained(tmp, attn_implementation="sdpa")
    config = peft.LoraConfig(r=R, lora_alpha=ALPHA, target_modules=["c_attn", "attn.c_proj"], fan_in_fan_out=True,
                             lora_dropout=0.0)
    theirs = peft.get_peft_model(hf, config).train()

    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, cfg.vocab_size, (args.batch, SEQ + 1), generator=g)
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()
    runs = {
        "ours, full fine-tuning": (full.loss, configure_optimizer(full, lr=LR)),
        "ours, LoRA": (lora.loss, torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=LR,
                                                   fused=True)),
        "peft LoRA on transformers (sdpa)": (
            lambda a, b: theirs(input_ids=a, labels=b, shift_labels=b).loss,
            torch.optim.AdamW([p for p in theirs.parameters() if p.requires_grad], lr=LR, fused=True)),
    }
    with torch.no_grad():
        first = {name: float(fn(x, y)) for name, (fn, _) in runs.items()}
    print("first loss on the same batch: " + ", ".join(f"{n} {v:.6f}" for n, v in first.items()))
    assert max(first.values()) - min(first.values()) < 1e-4, first
    print(f"ours, LoRA: {trainable_parameters(lora)}")
    steps = {name: train_step_fn(fn, opt, x, y) for name, (fn, opt) in runs.items()}
    med, _ = warm_medians(steps, args.rounds, args.steps)  # the warm-up also creates the optimizer state
    state = {name: optimizer_state_bytes(opt) for name, (_, opt) in runs.items()}
    ref = med["ours, LoRA"]
    print_table("Training step (forward + loss + backward + AdamW)",
                ["contender", "ms / step", "this / ours LoRA", "optimizer state (MiB)"],
                [(name, f"{t * 1e3:.0f}", f"{t / ref:.2f}x", f"{state[name] / 2**20:.2f}")
                 for name, t in med.items()])

    full.eval()
    lora.eval()
    merged = GPTModel(cfg).eval()
    merged.load_state_dict(full.state_dict())
    apply_lora(merged, R, ALPHA, target_modules=["attn.qkv", "attn.proj"])
    merged.load_state_dict(lora.state_dict())
    merge_lora(merged)

    def infer(model):
        @torch.no_grad()
        def fn():
            return model(x)
        return fn

    fns = {"base model": infer(full), "LoRA merged": infer(merged), "LoRA unmerged": infer(lora)}
    med, outs = warm_medians(fns, args.rounds, args.steps)
    diff = (outs["LoRA merged"] - outs["LoRA unmerged"]).abs().max().item()
    print_table(f"Inference (forward, no grad), merged vs unmerged max |diff| {diff:.2e}",
                ["model", "ms / forward", "this / base"],
                [(name, f"{t * 1e3:.0f}", f"{t / med['base model']:.3f}x") for name, t in med.items()])


if __name__ == "__main__":
    main()
