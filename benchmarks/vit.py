"""ViT speed on the CPU: a training step and inference of chapter 5's MNIST model, against references measured in
the same run.

Config: ``ViTConfig.preset("vit-mnist")`` (28x28x1 digits, patch 7 -> 16 patches + [CLS], d_model 64, 4 heads,
4 layers, MLP 128, 10 classes; 139k parameters), batch 128, float32, 2 CPU threads.

Contenders, all with the same weights (ours, exported with ``save_pretrained`` or copied), checked to give the
same loss on the same batch before timing:
- ours: ``ViTForImageClassification`` (fused QKV; on the CPU, attention written out for sequences up to
  ``SHORT_CPU_SEQ`` = 32 positions, SDPA beyond; patches embedded as a Linear; ``F.layer_norm``), ``F.cross_entropy`` and
  ``llmscratch.train.configure_optimizer`` (AdamW, fused kernel where PyTorch has one: the CPU since 2.4);
- transformers' ``ViTForImageClassification`` with ``attn_implementation="sdpa"`` (its default) and its own loss
  (``labels=``), with ``torch.optim.AdamW(fused=True)`` (generous to it: the Hugging Face ``Trainer`` default is
  the plain ``adamw_torch``);
- the hand-written ViT of the chapter's notebook (section 3: separate Q/K/V Linears, explicit softmax weights,
  ``nn.LayerNorm``), with ``torch.optim.AdamW`` as a reader would write it.

Training step = forward + loss + backward + AdamW step. Inference = images/s in ``eval()`` under
``torch.no_grad()``, batch 512. The contenders take turns round by round and the median per contender is reported
(``interleaved_medians`` of ``benchmarks/gpt.py``), so a busy machine slows every contender alike.

Run: ``PYTHONPATH=pkg python benchmarks/vit.py [--rounds 7] [--steps 3]``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpt import interleaved_medians  # noqa: E402  (the shared interleaved-median timer)

from llmscratch.models.vit import ViTConfig, ViTForImageClassification  # noqa: E402
from llmscratch.train import configure_optimizer  # noqa: E402

torch.set_num_threads(2)
BATCH, INFER_BATCH = 128, 512


# ---------------------------------------------------------------------- the notebook's hand-written ViT
class HandAttention(nn.Module):
    def __init__(self, d, n_heads):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d // n_heads
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.out = nn.Linear(d, d)

    def forward(self, x):
        b, t, d = x.shape
        q = self.query(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.key(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        v = self.value(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # (B, H, T, T)
        self.weights = torch.softmax(scores, dim=-1)
        return self.out((self.weights @ v).transpose(1, 2).reshape(b, t, d))


class HandBlock(nn.Module):
    def __init__(self, d, n_heads, d_ff, eps):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d, eps=eps), nn.LayerNorm(d, eps=eps)
        self.attn = HandAttention(d, n_heads)
        self.mlp = nn.Sequential(nn.Linear(d, d_ff), nn.GELU(), nn.Linear(d_ff, d))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class HandViT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.p, d = cfg.patch_size, cfg.d_model
        self.patch_embed = nn.Linear(cfg.num_channels * self.p**2, d)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.zeros(1, cfg.seq_len, d))
        self.blocks = nn.ModuleList(HandBlock(d, cfg.n_heads, cfg.d_ff, cfg.layer_norm_eps)
                                    for _ in range(cfg.n_layers))
        self.ln = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.head = nn.Linear(d, cfg.num_classes)

    def forward(self, images):
        b, c, h, w = images.shape
        x = images.reshape(b, c, h // self.p, self.p, w // self.p, self.p)  # (B, C, gh, p, gw, p)
        x = x.permute(0, 2, 4, 1, 3, 5).flatten(3).flatten(1, 2)  # (B, N, C*p*p)
        x = self.patch_embed(x)
        x = torch.cat([self.cls.expand(b, -1, -1), x], dim=1) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x)[:, 0])


@torch.no_grad()
def hand_from(ours: ViTForImageClassification) -> HandViT:
    """The notebook's model with our weights (conv kernel flattened, fused QKV split into three)."""
    hand = HandViT(ours.cfg)
    vit = ours.vit
    hand.patch_embed.weight.copy_(vit.embeddings.patch_embed.proj.weight.flatten(1))
    hand.patch_embed.bias.copy_(vit.embeddings.patch_embed.proj.bias)
    hand.cls.copy_(vit.embeddings.cls_token)
    hand.pos.copy_(vit.embeddings.position_embeddings)
    for hb, pb in zip(hand.blocks, vit.blocks):
        mha, ff = pb.attn.sublayer, pb.ff.sublayer
        for lin, w, b in zip((hb.attn.query, hb.attn.key, hb.attn.value), mha.qkv.weight.chunk(3),
                             mha.qkv.bias.chunk(3)):
            lin.weight.copy_(w)
            lin.bias.copy_(b)
        hb.attn.out.load_state_dict(mha.proj.state_dict())
        hb.mlp[0].load_state_dict(ff.fc.state_dict())
        hb.mlp[2].load_state_dict(ff.proj.state_dict())
        hb.ln1.load_state_dict(pb.attn.norm.state_dict())
        hb.ln2.load_state_dict(pb.ff.norm.state_dict())
    hand.ln.load_state_dict(vit.final_norm.state_dict())
    hand.head.load_state_dict(ours.head.state_dict())
    return hand


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds (median reported)")
    ap.add_argument("--steps", type=int, default=3, help="training steps (or inference batches) per round")
    args = ap.parse_args()
    from transformers import ViTForImageClassification as HFViT

    torch.manual_seed(0)
    cfg = ViTConfig.preset("vit-mnist")
    ours = ViTForImageClassification(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        ours.save_pretrained(tmp)
        hf = HFViT.from_pretrained(tmp, attn_implementation="sdpa")
    assert hf.config._attn_implementation == "sdpa", hf.config._attn_implementation
    hand = hand_from(ours)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(BATCH, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (BATCH,), generator=g)
    x_infer = torch.rand(INFER_BATCH, 1, 28, 28, generator=g)

    lr = 1e-3
    contenders = {
        "ours (llmscratch ViT)": (ours, lambda: F.cross_entropy(ours(x), y), configure_optimizer(ours, lr=lr)),
        "transformers sdpa (its loss)": (hf, lambda: hf(pixel_values=x, labels=y).loss,
                                         torch.optim.AdamW(hf.parameters(), lr=lr, weight_decay=0.1, fused=True)),
        "hand-written (notebook)": (hand, lambda: F.cross_entropy(hand(x), y),
                                    torch.optim.AdamW(hand.parameters(), lr=lr, weight_decay=0.1)),
    }
    with torch.no_grad():  # same function before timing
        losses = {name: loss().item() for name, (_, loss, _) in contenders.items()}
        for m, _, _ in contenders.values():
            m.eval()
        logits = {name: m(pixel_values=x).logits if m is hf else m(x) for name, (m, _, _) in contenders.items()}
    ref = logits["ours (llmscratch ViT)"]
    for name, lg in logits.items():
        torch.testing.assert_close(lg, ref, atol=1e-5, rtol=1e-4, msg=lambda s, n=name: f"{n}: {s}")
    print("same weights: initial losses", {k: round(v, 6) for k, v in losses.items()})

    def train_step(model, loss_fn, opt):
        def step():
            loss = loss_fn()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    for m, _, _ in contenders.values():
        m.train()
    steps = {name: train_step(*c) for name, c in contenders.items()}
    for fn in steps.values():  # warm-up (allocator, optimizer state)
        fn()
    train_med, _ = interleaved_medians(steps, args.rounds, args.steps)

    for m, _, _ in contenders.values():
        m.eval()

    def infer(m):
        def run():
            with torch.no_grad():
                return m(pixel_values=x_infer).logits if m is hf else m(x_infer)

        return run

    runs = {name: infer(m) for name, (m, _, _) in contenders.items()}
    for fn in runs.values():
        fn()
    infer_med, _ = interleaved_medians(runs, args.rounds, args.steps)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n### ViT (vit-mnist, {sum(p.numel() for p in ours.parameters()):,} parameters), "
          f"{torch.get_num_threads()} threads, load average {load:.1f}, median of {args.rounds} rounds\n")
    ours_name, hf_name = "ours (llmscratch ViT)", "transformers sdpa (its loss)"
    print(f"| contender | train step (ms, batch {BATCH}) | speed-up of ours | inference (images/s, batch "
          f"{INFER_BATCH}) | ours / this |")
    print("|---|---:|---:|---:|---:|")
    for name in contenders:
        ips = INFER_BATCH / infer_med[name]
        print(f"| {name} | {train_med[name] * 1e3:.1f} | {train_med[name] / train_med[ours_name]:.2f}x | "
              f"{ips:,.0f} | {infer_med[name] / infer_med[ours_name]:.2f}x |")
    tr, inf = train_med[hf_name] / train_med[ours_name], infer_med[hf_name] / infer_med[ours_name]
    print(f"\ngoal >= 1.1x transformers: training {tr:.2f}x ({'met' if tr >= 1.1 else 'missed'}), "
          f"inference {inf:.2f}x ({'met' if inf >= 1.1 else 'missed'})")


if __name__ == "__main__":
    main()
