"""GPT speed on the CPU: training tokens/s and greedy generation, against references measured in the same run.

Config (issue 6): 4 layers, d_model 256, 4 heads, context 256, batch 4, vocab 50257, 2 CPU threads.

Training step = forward + cross-entropy + backward + AdamW step, for:
- ours: ``llmscratch.models.gpt.GPTModel``;
- transformers' ``GPT2LMHeadModel`` with the same config, ``attn_implementation="sdpa"`` and ``"eager"``;
- a textbook GPT written below (separate Q/K/V Linears, masked_fill + softmax attention, LayerNorm and GELU
  written out), the version most tutorials build.
Every model gets the same loss code (``F.cross_entropy`` over the flattened logits) and the same optimizer
(``torch.optim.AdamW``, fused where the PyTorch build has it), so the ratio measures the model.

Generation: greedy, 200 new tokens from a 16-token prompt, batch 1: ours with the KV cache, ours without it
(the uncached loop re-runs the whole sequence each step), and transformers' ``generate`` (which uses its own
KV cache) on our weights exported with ``save_pretrained``, so all three outputs must be identical. All runs are interleaved round by round and the median is reported, so a busy machine slows every
contender alike.

Run: ``PYTHONPATH=pkg python benchmarks/gpt.py [--rounds 5] [--steps 3]``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from torch import nn
from torch.nn import functional as F

from llmscratch.generate import generate
from llmscratch.models.gpt import GPTConfig, GPTModel

torch.set_num_threads(2)

CFG = dict(vocab_size=50257, context_length=256, d_model=256, n_heads=4, n_layers=4)
BATCH = 4


# ---------------------------------------------------------------------- a textbook GPT (the reference)
class TextbookAttention(nn.Module):
    def __init__(self, d, n_heads, ctx):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d // n_heads
        self.W_query, self.W_key, self.W_value = (nn.Linear(d, d) for _ in range(3))
        self.out_proj = nn.Linear(d, d)
        self.register_buffer("mask", torch.triu(torch.ones(ctx, ctx), diagonal=1))

    def forward(self, x):
        b, t, d = x.shape
        q = self.W_query(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.W_key(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        v = self.W_value(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        scores = q @ k.transpose(2, 3)
        scores = scores.masked_fill(self.mask.bool()[:t, :t], -torch.inf)
        weights = torch.softmax(scores / self.head_dim**0.5, dim=-1)
        return self.out_proj((weights @ v).transpose(1, 2).contiguous().view(b, t, d))


class TextbookLayerNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.scale, self.shift = nn.Parameter(torch.ones(d)), nn.Parameter(torch.zeros(d))

    def forward(self, x):
        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, keepdim=True, unbiased=False)
        return self.scale * (x - mean) / torch.sqrt(var + 1e-5) + self.shift


class TextbookGELU(nn.Module):
    def forward(self, x):
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


class TextbookBlock(nn.Module):
    def __init__(self, d, n_heads, ctx):
        super().__init__()
        self.att = TextbookAttention(d, n_heads, ctx)
        self.ff = nn.Sequential(nn.Linear(d, 4 * d), TextbookGELU(), nn.Linear(4 * d, d))
        self.norm1, self.norm2 = TextbookLayerNorm(d), TextbookLayerNorm(d)

    def forward(self, x):
        x = x + self.att(self.norm1(x))
        return x + self.ff(self.norm2(x))


class TextbookGPT(nn.Module):
    def __init__(self, vocab_size, context_length, d_model, n_heads, n_layers):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(context_length, d_model)
        self.trf_blocks = nn.Sequential(*[TextbookBlock(d_model, n_heads, context_length) for _ in range(n_layers)])
        self.final_norm = TextbookLayerNorm(d_model)
        self.out_head = nn.Linear(d_model, vocab_size, bias=False)
        self.out_head.weight = self.tok_emb.weight  # tied, like the others

    def forward(self, idx):
        t = idx.shape[1]
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(t, device=idx.device))
        return self.out_head(self.final_norm(self.trf_blocks(x)))


# ---------------------------------------------------------------------- contenders
def hf_model(attn: str):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=CFG["vocab_size"], n_positions=CFG["context_length"], n_embd=CFG["d_model"],
                     n_head=CFG["n_heads"], n_layer=CFG["n_layers"], resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0, pad_token_id=50256, attn_implementation=attn)
    model = GPT2LMHeadModel(cfg)
    assert model.config._attn_implementation == attn, model.config._attn_implementation
    return model


def make_optimizer(model):
    try:
        return torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(model.parameters(), lr=3e-4, foreach=True)


def train_step_fn(model, logits_of):
    opt = make_optimizer(model)
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, CFG["vocab_size"], (BATCH, CFG["context_length"] + 1), generator=g)
    x, y = data[:, :-1], data[:, 1:]

    def step():
        logits = logits_of(model, x)  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def timed(fn, steps):
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median reported)")
    ap.add_argument("--steps", type=int, default=3, help="training steps per round")
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-generate", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, config {CFG}, batch {BATCH}")

    ours = GPTModel(GPTConfig(**CFG)).train()
    models = {
        "ours (GPTModel)": (ours, lambda m, x: m(x)),
        "transformers sdpa": (hf_model("sdpa").train(), lambda m, x: m(x).logits),
        "transformers eager": (hf_model("eager").train(), lambda m, x: m(x).logits),
        "textbook (separate QKV, masked_fill)": (TextbookGPT(**CFG).train(), lambda m, x: m(x)),
    }
    tokens = BATCH * CFG["context_length"]
    if not args.skip_train:
        steps = {name: train_step_fn(m, f) for name, (m, f) in models.items()}
        for fn in steps.values():  # warm-up: allocator, optimizer state, kernels
            fn()
        times = {name: [] for name in steps}
        for _ in range(args.rounds):
            for name, fn in steps.items():
                times[name].append(timed(fn, args.steps))
        med = {name: statistics.median(t) for name, t in times.items()}
        ref = med["ours (GPTModel)"]
        print("\n### Training (forward + backward + AdamW), tokens/s\n")
        print("| model | ms / step | tokens/s | ours / this |")
        print("|---|---:|---:|---:|")
        for name, t in med.items():
            print(f"| {name} | {t * 1e3:.0f} | {tokens / t:,.0f} | {t / ref:.2f}x |")

    if not args.skip_generate:
        n = args.new_tokens
        ours.eval()
        # transformers gets *our* weights (exported in its format), so the outputs must be identical too.
        import tempfile

        from transformers import GPT2LMHeadModel

        with tempfile.TemporaryDirectory() as tmp:
            ours.save_pretrained(tmp)
            hf = GPT2LMHeadModel.from_pretrained(tmp, attn_implementation="sdpa").eval()
        prompt = torch.randint(0, CFG["vocab_size"], (1, 16), generator=torch.Generator().manual_seed(1))

        def hf_gen(n=n):
            return hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, min_new_tokens=n,
                               do_sample=False, pad_token_id=50256, eos_token_id=None)

        runs = {
            "ours, KV cache": lambda n=n: generate(ours, prompt, n),
            "ours, no cache": lambda n=n: generate(ours, prompt, n, use_cache=False),
            "transformers generate (sdpa, its KV cache)": hf_gen,
        }
        for fn in runs.values():  # short warm-up
            fn(4)
        times = {name: [] for name in runs}
        outs = {}
        for _ in range(max(2, args.rounds // 2)):
            for name, fn in runs.items():
                t0 = time.perf_counter()
                outs[name] = fn()
                times[name].append(time.perf_counter() - t0)
        same = all(torch.equal(outs["ours, KV cache"], o) for o in outs.values())
        med = {name: statistics.median(t) for name, t in times.items()}
        ref = med["ours, KV cache"]
        print(f"\n### Greedy generation, {n} new tokens, batch 1 (outputs identical: {same})\n")
        print("| run | s | tokens/s | ours (cache) / this |")
        print("|---|---:|---:|---:|")
        for name, t in med.items():
            print(f"| {name} | {t:.2f} | {n / t:,.0f} | {t / ref:.2f}x |")


if __name__ == "__main__":
    main()
