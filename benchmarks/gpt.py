"""GPT speed on the CPU: training tokens/s and greedy generation, against references measured in the same run.

Config (issue 6): 4 layers, d_model 256, 4 heads, context 256, batch 4, vocab 50257, 2 CPU threads.

Training step = forward + loss + backward + optimizer step, each contender on its *natural* training path:
- ours: ``GPTModel.loss(x, y)`` (LM head fused with the cross-entropy, chunked, logits never stored whole:
  ``llmscratch.losses.fused_linear_cross_entropy``) and ``llmscratch.train.configure_optimizer`` (AdamW,
  fused kernel where PyTorch has one: the CPU since 2.4). A second row shows ours on the plain logits path
  (``F.cross_entropy(model(x))``, same optimizer), so the gain of the fused loss is visible on its own;
- transformers' ``GPT2LMHeadModel`` with the same config (``attn_implementation="sdpa"`` and ``"eager"``) and its
  own loss (``model(x, labels=..., shift_labels=y).loss``), with ``torch.optim.AdamW(fused=True)``: a fused
  optimizer is *generous* to the reference (the Hugging Face ``Trainer`` default is plain ``adamw_torch``);
- a textbook GPT written below in the style of Raschka's *Build a Large Language Model (From Scratch)*, ch. 4-5
  (hand-written LayerNorm and GELU modules, separate Q/K/V Linears, a registered causal-mask buffer with
  ``masked_fill`` + softmax, ``nn.Dropout`` layers with p=0, ``F.cross_entropy`` on the flattened logits) with the
  optimizer the book uses: ``torch.optim.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1)``. Its LM head is
  tied to the embedding like the others (Raschka's is untied, which would only make it slower: 12.9 M more
  parameters in AdamW), so all models have the same 16.1 M parameters.
All models start from the same weights (ours, copied), and the script checks that their first loss on the
same batch agrees before timing.

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
from llmscratch.train import configure_optimizer

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
        self.dropout = nn.Dropout(0.0)
        self.register_buffer("mask", torch.triu(torch.ones(ctx, ctx), diagonal=1))

    def forward(self, x):
        b, t, d = x.shape
        q = self.W_query(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.W_key(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        v = self.W_value(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        scores = q @ k.transpose(2, 3)
        scores = scores.masked_fill(self.mask.bool()[:t, :t], -torch.inf)
        weights = self.dropout(torch.softmax(scores / self.head_dim**0.5, dim=-1))
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
        self.drop_shortcut = nn.Dropout(0.0)

    def forward(self, x):
        x = x + self.drop_shortcut(self.att(self.norm1(x)))
        return x + self.drop_shortcut(self.ff(self.norm2(x)))


class TextbookGPT(nn.Module):
    def __init__(self, vocab_size, context_length, d_model, n_heads, n_layers):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(context_length, d_model)
        self.drop_emb = nn.Dropout(0.0)
        self.trf_blocks = nn.Sequential(*[TextbookBlock(d_model, n_heads, context_length) for _ in range(n_layers)])
        self.final_norm = TextbookLayerNorm(d_model)
        self.out_head = nn.Linear(d_model, vocab_size, bias=False)
        self.out_head.weight = self.tok_emb.weight  # tied, like the others

    def forward(self, idx):
        t = idx.shape[1]
        x = self.drop_emb(self.tok_emb(idx) + self.pos_emb(torch.arange(t, device=idx.device)))
        return self.out_head(self.final_norm(self.trf_blocks(x)))


# ---------------------------------------------------------------------- contenders
def hf_model(attn: str, weights_dir: str):
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(weights_dir, attn_implementation=attn)  # our weights, exported
    assert model.config._attn_implementation == attn, model.config._attn_implementation
    assert model.config.resid_pdrop == model.config.embd_pdrop == model.config.attn_pdrop == 0.0
    return model


@torch.no_grad()
def textbook_from(ours: GPTModel) -> TextbookGPT:
    """The textbook model with our weights (fused QKV split into three Linears)."""
    tb = TextbookGPT(**CFG)
    tb.tok_emb.weight.copy_(ours.tok_emb.weight)
    tb.pos_emb.weight.copy_(ours.pos_emb.weight)
    for mine, theirs in zip(ours.blocks, tb.trf_blocks):
        for w, lin in zip(mine.attn.qkv.weight.chunk(3), (theirs.att.W_query, theirs.att.W_key, theirs.att.W_value)):
            lin.weight.copy_(w)
        for b, lin in zip(mine.attn.qkv.bias.chunk(3), (theirs.att.W_query, theirs.att.W_key, theirs.att.W_value)):
            lin.bias.copy_(b)
        theirs.att.out_proj.load_state_dict(mine.attn.proj.state_dict())
        theirs.ff[0].load_state_dict(mine.ff.fc.state_dict())
        theirs.ff[2].load_state_dict(mine.ff.proj.state_dict())
        for n_mine, n_theirs in ((mine.norm1, theirs.norm1), (mine.norm2, theirs.norm2)):
            n_theirs.scale.copy_(n_mine.weight)
            n_theirs.shift.copy_(n_mine.bias)
    tb.final_norm.scale.copy_(ours.final_norm.weight)
    tb.final_norm.shift.copy_(ours.final_norm.bias)
    return tb


def batch():
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, CFG["vocab_size"], (BATCH, CFG["context_length"] + 1), generator=g)
    return data[:, :-1].contiguous(), data[:, 1:].contiguous()


def contenders(ours: GPTModel, weights_dir: str) -> dict:
    """name -> (loss_fn(x, y) -> scalar loss, optimizer), each on its natural training path."""
    ours_plain = GPTModel(ours.cfg).train()
    ours_plain.load_state_dict(ours.state_dict())
    hf_sdpa, hf_eager = hf_model("sdpa", weights_dir).train(), hf_model("eager", weights_dir).train()
    tb = textbook_from(ours).train()
    lr = 4e-4
    return {
        "ours (GPTModel.loss, fused LM head + CE)": (ours.loss, configure_optimizer(ours, lr=lr)),
        "ours, logits + F.cross_entropy": (
            lambda x, y: F.cross_entropy(ours_plain(x).flatten(0, 1), y.flatten()),
            configure_optimizer(ours_plain, lr=lr)),
        "transformers sdpa (its loss)": (
            lambda x, y: hf_sdpa(input_ids=x, labels=y, shift_labels=y).loss,
            torch.optim.AdamW(hf_sdpa.parameters(), lr=lr, weight_decay=0.1, fused=True)),
        "transformers eager (its loss)": (
            lambda x, y: hf_eager(input_ids=x, labels=y, shift_labels=y).loss,
            torch.optim.AdamW(hf_eager.parameters(), lr=lr, weight_decay=0.1, fused=True)),
        "textbook (Raschka-style)": (
            lambda x, y: F.cross_entropy(tb(x).flatten(0, 1), y.flatten()),
            torch.optim.AdamW(tb.parameters(), lr=lr, weight_decay=0.1)),
    }


def train_step_fn(loss_fn, opt, x, y):
    def step():
        loss = loss_fn(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def chunk_sweep(rounds: int) -> None:
    """LM head + cross-entropy alone, forward + backward, 1,024 tokens x d 256 -> 50,257: unfused vs chunk sizes."""
    from llmscratch.losses import fused_linear_cross_entropy

    g = torch.Generator().manual_seed(0)
    n = BATCH * CFG["context_length"]
    h = torch.randn(n, CFG["d_model"], generator=g).requires_grad_()
    w = (torch.randn(CFG["vocab_size"], CFG["d_model"], generator=g) * 0.02).requires_grad_()
    y = torch.randint(0, CFG["vocab_size"], (n,), generator=g)

    def run(chunk):
        h.grad = w.grad = None
        loss = (F.cross_entropy(F.linear(h, w), y) if chunk is None
                else fused_linear_cross_entropy(h, w, y, chunk_size=chunk))
        loss.backward()

    fns = {"unfused: F.linear + F.cross_entropy": lambda: run(None),
           **{f"fused, chunk_size={c}": (lambda c=c: run(c)) for c in (128, 256, 512, 1024)}}
    med, _ = warm_medians(fns, rounds)
    ref = med["unfused: F.linear + F.cross_entropy"]
    print_table(f"LM head + cross-entropy alone ({n} tokens, forward + backward)",
                ["variant", "ms", "unfused / this"],
                [(name, f"{t * 1e3:.0f}", f"{ref / t:.2f}x") for name, t in med.items()])


def interleaved_medians(fns: dict, rounds: int, steps: int = 1) -> tuple[dict, dict]:
    """Time each function ``steps`` calls per round, the contenders taking turns each round (so drifting machine
    load hits all alike). Returns ({name: median seconds per call}, {name: last return value})."""
    times = {name: [] for name in fns}
    outs = {}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                outs[name] = fn()
            times[name].append((time.perf_counter() - t0) / steps)
    return {name: statistics.median(t) for name, t in times.items()}, outs


def warm_medians(fns: dict, rounds: int, steps: int = 1) -> tuple[dict, dict]:
    """One untimed call of each function (allocator, optimizer state, kernels), then
    :func:`interleaved_medians`."""
    for fn in fns.values():
        fn()
    return interleaved_medians(fns, rounds, steps)


def print_table(title: str, header: list[str], rows) -> None:
    """A markdown table as benchmarks/RESULTS.md keeps them: a heading, then the rows (cells already
    formatted), the first column left-aligned and the numbers right-aligned."""
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|---|" + "---:|" * (len(header) - 1))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median reported)")
    ap.add_argument("--steps", type=int, default=3, help="training steps per round")
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-generate", action="store_true")
    ap.add_argument("--chunk-sweep", action="store_true",
                    help="also time the LM head + loss alone (forward+backward) for several chunk sizes")
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, config {CFG}, batch {BATCH}")

    ours = GPTModel(GPTConfig(**CFG)).train()
    tokens = BATCH * CFG["context_length"]
    if not args.skip_train:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            ours.save_pretrained(tmp)
            runs = contenders(ours, tmp)
        x, y = batch()
        with torch.no_grad():  # same weights, same batch: the first losses must agree before anything is timed
            first = {name: float(loss_fn(x, y)) for name, (loss_fn, _) in runs.items()}
        print("first loss on the same batch: " + ", ".join(f"{n.split(' (')[0]} {v:.6f}" for n, v in first.items()))
        assert max(first.values()) - min(first.values()) < 1e-4, first
        steps = {name: train_step_fn(loss_fn, opt, x, y) for name, (loss_fn, opt) in runs.items()}
        med, _ = warm_medians(steps, args.rounds, args.steps)
        ref = med[next(iter(med))]
        print_table("Training (forward + loss + backward + optimizer step), tokens/s",
                    ["model", "ms / step", "tokens/s", "ours / this"],
                    [(name, f"{t * 1e3:.0f}", f"{tokens / t:,.0f}", f"{t / ref:.2f}x") for name, t in med.items()])

    if args.chunk_sweep:
        chunk_sweep(args.rounds)

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
        med, outs = interleaved_medians(runs, max(2, args.rounds // 2))
        same = all(torch.equal(outs["ours, KV cache"], o) for o in outs.values())
        ref = med["ours, KV cache"]
        print_table(f"Greedy generation, {n} new tokens, batch 1 (outputs identical: {same})",
                    ["run", "s", "tokens/s", "ours (cache) / this"],
                    [(name, f"{t:.2f}", f"{n / t:,.0f}", f"{t / ref:.2f}x") for name, t in med.items()])


if __name__ == "__main__":
    main()
