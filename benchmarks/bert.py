"""BERT speed on the CPU: an MLM training step and classifier inference, against transformers in the same run.

Config (issue 12): bert-mini's shape (4 layers, hidden 256, 4 heads, intermediate 1,024) with BERT's 30,522-token
vocabulary, sequence 128, batch 16, 2 CPU threads; dropout 0 in every model (so the losses can be compared).

MLM training step = forward + loss + backward + AdamW step, each contender on its natural path:
- ours: ``BertForMaskedLM.loss`` (the transform and the 30,522-way decoder run only at the ~15% masked positions)
  with ``llmscratch.train.configure_optimizer`` (AdamW, fused kernel where PyTorch has one);
- ours on the dense path (``F.cross_entropy(model(x).flatten(0, 1), labels)``, same optimizer), so the gain of the
  sparse loss shows on its own;
- transformers' ``BertForMaskedLM`` (``attn_implementation="sdpa"`` and ``"eager"``) with its own loss
  (``model(input_ids=x, labels=labels).loss``, computed on every position) and ``torch.optim.AdamW(fused=True)``.
All start from the same weights (ours, exported with ``save_pretrained``); the first losses on the same batch must
agree before anything is timed.

Classifier inference: ``BertForSequenceClassification`` forward under ``torch.no_grad``, batch 16 x 128 with a
right-padding attention mask (rows of 128 down to 38 real tokens), ours vs transformers (sdpa, eager); the logits
must agree. Runs are interleaved round by round and the median is reported (``benchmarks/gpt.py``'s timer), so a
busy machine slows every contender alike.

Run: ``PYTHONPATH=pkg python benchmarks/bert.py [--rounds 5] [--steps 2]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpt import print_table, warm_medians  # noqa: E402  (the shared interleaved-median timer; sets 2 threads)

from llmscratch.models.bert import BertConfig, BertForMaskedLM, BertForSequenceClassification  # noqa: E402
from llmscratch.train import configure_optimizer  # noqa: E402

CFG = dict(vocab_size=30522, max_position_embeddings=512, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
SEQ, BATCH, MASKED = 128, 16, 0.15


def batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1000, CFG["vocab_size"], (BATCH, SEQ), generator=g)
    x[:, 0], x[:, -1] = 101, 102  # [CLS] ... [SEP]
    picked = torch.rand(BATCH, SEQ, generator=g) < MASKED
    picked[:, 0] = picked[:, -1] = False
    labels = torch.where(picked, x, torch.full_like(x, -100))
    return torch.where(picked, torch.full_like(x, 103), x), labels  # masked input ([MASK] = 103), labels


def padding_mask():
    mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    for row in range(BATCH):
        mask[row, SEQ - 6 * row:] = 0 if row else 1  # 128, 122, ..., 38 real tokens
    return mask


def mlm_contenders(ours: BertForMaskedLM, folder: str) -> dict:
    from transformers import BertForMaskedLM as HFBertForMaskedLM

    dense = BertForMaskedLM(ours.cfg).train()
    dense.load_state_dict(ours.state_dict())
    hf = {a: HFBertForMaskedLM.from_pretrained(folder, attn_implementation=a).train() for a in ("sdpa", "eager")}
    lr = 1e-4
    return {
        "ours (BertForMaskedLM.loss, sparse head)": (ours.loss, configure_optimizer(ours, lr=lr)),
        "ours, dense logits + F.cross_entropy": (
            lambda x, y: F.cross_entropy(dense(x).flatten(0, 1), y.flatten()), configure_optimizer(dense, lr=lr)),
        **{f"transformers {a} (its loss)": (
            lambda x, y, m=m: m(input_ids=x, labels=y).loss,
            torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=0.01, fused=True)) for a, m in hf.items()},
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median reported)")
    ap.add_argument("--steps", type=int, default=2, help="training steps per round")
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = BertConfig.preset("bert-mini", **CFG)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, bert-mini + vocab {cfg.vocab_size}, "
          f"seq {SEQ}, batch {BATCH}, load average {load:.1f}")

    ours = BertForMaskedLM(cfg).train()
    with tempfile.TemporaryDirectory() as tmp:
        ours.save_pretrained(tmp)
        runs = mlm_contenders(ours, tmp)
    x, y = batch()
    with torch.no_grad():
        first = {name: float(loss_fn(x, y)) for name, (loss_fn, _) in runs.items()}
    print("first loss on the same batch: " + ", ".join(f"{n.split(' (')[0]} {v:.6f}" for n, v in first.items()))
    assert max(first.values()) - min(first.values()) < 1e-4, first

    def step_fn(loss_fn, opt):
        def step():
            loss = loss_fn(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    steps = {name: step_fn(*pair) for name, pair in runs.items()}
    med, _ = warm_medians(steps, args.rounds, args.steps)
    ref = med[next(iter(med))]
    tokens = BATCH * SEQ
    print_table(f"MLM training step (forward + loss + backward + AdamW), {int((y != -100).sum())} masked of "
                f"{tokens} tokens", ["model", "ms / step", "tokens/s", "this / ours"],
                [(name, f"{t * 1e3:.0f}", f"{tokens / t:,.0f}", f"{t / ref:.2f}x") for name, t in med.items()])

    from transformers import BertForSequenceClassification as HFClassifier

    clf = BertForSequenceClassification(cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:
        clf.save_pretrained(tmp)
        hf = {a: HFClassifier.from_pretrained(tmp, attn_implementation=a).eval() for a in ("sdpa", "eager")}
    ids, mask = x, padding_mask()
    runs = {"ours": lambda: clf(ids, attention_mask=mask),
            **{f"transformers {a}": (lambda m=m: m(input_ids=ids, attention_mask=mask).logits) for a, m in hf.items()}}
    with torch.no_grad():
        med, outs = warm_medians(runs, args.rounds, args.steps)
    diff = max(float((outs["ours"] - o).abs().max()) for o in outs.values())
    ref = med["ours"]
    print_table(f"Classifier inference, batch {BATCH} x {SEQ} with padding (max |logit diff| {diff:.1e})",
                ["model", "ms / batch", "sequences/s", "this / ours"],
                [(name, f"{t * 1e3:.0f}", f"{BATCH / t:,.0f}", f"{t / ref:.2f}x") for name, t in med.items()])


if __name__ == "__main__":
    main()
