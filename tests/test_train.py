"""Tests of llmscratch.train: losses against hand computations and transformers, the loop's arithmetic
(clipping, accumulation, schedule), and checkpoints (round trip, atomic write, mismatch errors)."""

from __future__ import annotations

import math
import os

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from llmscratch import train as T
from llmscratch.models.gpt import GPTConfig, GPTModel
from llmscratch.train import (
    CheckpointMismatchError,
    History,
    Trainer,
    calc_loss_batch,
    calc_loss_loader,
    configure_optimizer,
    load_checkpoint,
    lr_at,
    perplexity,
    save_checkpoint,
)

VOCAB, SEQ = 17, 8


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class TinyLM(nn.Module):
    """ids (batch, seq) -> logits (batch, seq, vocab): embedding, a position-wise MLP with dropout, tied head."""

    def __init__(self, vocab=VOCAB, d=16, dropout=0.0):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.mlp = nn.Sequential(nn.Linear(d, 32), nn.GELU(), nn.Dropout(dropout), nn.Linear(32, d))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.emb.weight  # tied, like GPT-2

    def forward(self, idx):
        x = self.emb(idx)
        return self.head(self.norm(x + self.mlp(x)))


def _data(n=24, seed=0):
    """Sequences following a fixed permutation (next = perm[current]): learnable, so the loss must fall."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(VOCAB, generator=g)
    seqs = torch.empty(n, SEQ + 1, dtype=torch.long)
    seqs[:, 0] = torch.randint(0, VOCAB, (n,), generator=g)
    for t in range(SEQ):
        seqs[:, t + 1] = perm[seqs[:, t]]
    return TensorDataset(seqs[:, :-1], seqs[:, 1:])


def _loader(batch_size=4, shuffle=False, n=24, **kw):
    return DataLoader(_data(n), batch_size=batch_size, shuffle=shuffle, **kw)


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return TinyLM(**kw)


class RecordingSGD(torch.optim.SGD):
    """SGD that keeps a copy of the gradients it was asked to apply (after clipping/unscaling)."""

    def __init__(self, params, lr=0.0):
        super().__init__(params, lr=lr)
        self.seen: list[list[torch.Tensor]] = []

    def step(self, closure=None):
        self.seen.append([p.grad.detach().clone() for g in self.param_groups for p in g["params"]])
        return super().step(closure)


# ---- losses ------------------------------------------------------------------------------------------------


def test_calc_loss_batch_equals_hand_log_softmax():
    model = _model()
    x, y = next(iter(_loader()))
    loss = calc_loss_batch(model, x, y, "cpu")
    logp = torch.log_softmax(model(x), dim=-1)  # (B, T, V)
    hand = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1).mean()
    torch.testing.assert_close(loss, hand)
    assert loss.requires_grad


def test_calc_loss_batch_equals_transformers_gpt2_loss():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    ids = torch.randint(0, 50, (3, 12))
    with torch.no_grad():
        ref = hf(ids, labels=ids).loss  # transformers shifts the labels itself
        ours = calc_loss_batch(hf, ids[:, :-1], ids[:, 1:])  # .logits is picked from the output object
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_calc_loss_batch_ignores_padding_and_handles_classifiers():
    model = _model()
    x, y = next(iter(_loader()))
    y2 = y.clone()
    y2[:, -3:] = -100
    logits = model(x)
    hand = F.cross_entropy(logits[:, :-3].reshape(-1, VOCAB), y[:, :-3].reshape(-1))
    torch.testing.assert_close(calc_loss_batch(model, x, y2), hand)
    clf = nn.Linear(5, 3)
    xs, ys = torch.randn(6, 5), torch.tensor([0, 1, 2, 0, 1, 2])
    torch.testing.assert_close(calc_loss_batch(clf, xs, ys), F.cross_entropy(clf(xs), ys))


def test_calc_loss_batch_errors_name_the_fix():
    model = _model()
    x, y = next(iter(_loader()))
    with pytest.raises(ValueError, match="targets must have the logits' shape"):
        calc_loss_batch(model, x, y[:, :-1])
    with pytest.raises(TypeError, match="integer"):
        calc_loss_batch(model, x, y.float())


def test_calc_loss_loader_equals_hand_computation_token_weighted():
    model = _model()
    loader = _loader(batch_size=5, n=23)  # batches of 5,5,5,5,3: the last one is smaller
    xs, ys = loader.dataset.tensors
    with torch.no_grad():
        logp = torch.log_softmax(model(xs), dim=-1)
    nll = -logp.gather(-1, ys.unsqueeze(-1)).squeeze(-1)  # (23, SEQ)
    assert calc_loss_loader(model, loader) == pytest.approx(nll.mean().item(), rel=1e-5)
    # the first two batches only: 10 sequences
    assert calc_loss_loader(model, loader, num_batches=2) == pytest.approx(nll[:10].mean().item(), rel=1e-5)
    # equal batch sizes: token-weighted mean == mean of batch means (Raschka's definition)
    eq = _loader(batch_size=4, n=24)
    means = [calc_loss_batch(model, x, y).item() for x, y in eq]
    assert calc_loss_loader(model, eq) == pytest.approx(sum(means) / len(means), rel=1e-5)


def test_calc_loss_loader_errors():
    model = _model()
    with pytest.raises(ValueError, match="empty"):
        calc_loss_loader(model, DataLoader(_data(3), batch_size=4, drop_last=True))
    with pytest.raises(ValueError, match="num_batches"):
        calc_loss_loader(model, _loader(), num_batches=0)
    with pytest.raises(TypeError, match=r"\(inputs, targets\) pair"):
        calc_loss_loader(model, [torch.zeros(2, 3, dtype=torch.long)])


def test_perplexity_is_exp_of_loss_and_uniform_gives_vocab_size():
    for loss in (0.0, 0.5, 2.3, 10.8):
        assert perplexity(loss) == pytest.approx(math.exp(loss))
    t = torch.tensor([0.1, 1.0, 3.0])
    torch.testing.assert_close(perplexity(t), torch.exp(t))
    assert perplexity(1e6) == math.inf
    with pytest.raises(ValueError, match="NaN"):
        perplexity(float("nan"))

    class Uniform(nn.Module):  # the same logit for every token: perplexity is the vocabulary size
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.zeros(()))

        def forward(self, idx):
            return self.p + torch.zeros(*idx.shape, VOCAB)

    assert perplexity(calc_loss_loader(Uniform(), _loader())) == pytest.approx(VOCAB, rel=1e-5)


def test_calc_loss_batch_uses_a_models_loss_method_with_the_same_result():
    torch.manual_seed(0)
    model = GPTModel(GPTConfig.preset("gpt-nano", vocab_size=VOCAB, context_length=SEQ))
    inputs, targets = torch.randint(0, VOCAB, (3, SEQ)), torch.randint(0, VOCAB, (3, SEQ))
    targets[1, 5:] = -100

    class LogitsOnly(nn.Module):  # the same model seen without its .loss method
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    calls = []
    original = GPTModel.loss

    def spy(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    results = []
    for m in (model, LogitsOnly(model)):
        model.zero_grad(set_to_none=True)
        GPTModel.loss = spy
        try:
            loss = calc_loss_batch(m, inputs, targets)
        finally:
            GPTModel.loss = original
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    assert len(calls) == 1  # the fused path ran for the GPTModel, the logits path for the wrapper
    (fused_loss, fused_grads), (ref_loss, ref_grads) = results
    torch.testing.assert_close(fused_loss, ref_loss)
    for name, g in ref_grads.items():
        torch.testing.assert_close(fused_grads[name], g, atol=1e-6, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


def test_a_loss_module_attribute_is_not_taken_for_a_loss_method():
    class WithCriterion(TinyLM):
        def __init__(self):
            super().__init__()
            self.loss = nn.CrossEntropyLoss()  # takes logits, not (inputs, targets)

    torch.manual_seed(0)
    model = WithCriterion()
    inputs, targets = torch.randint(0, VOCAB, (2, SEQ)), torch.randint(0, VOCAB, (2, SEQ))
    expected = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
    torch.testing.assert_close(calc_loss_batch(model, inputs, targets), expected)


# ---- optimizer and schedule ----------------------------------------------------------------------------------


def test_configure_optimizer_groups_and_tied_weights():
    model = _model()
    opt = configure_optimizer(model, lr=1e-3, weight_decay=0.1)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))  # the tied weight appears once
    try:  # the fused kernel is used exactly when this PyTorch has one for the CPU
        torch.optim.AdamW([nn.Parameter(torch.zeros(1))], fused=True)
        cpu_fused = True
    except (RuntimeError, TypeError, ValueError):
        cpu_fused = False
    assert opt.defaults["fused"] is True if cpu_fused else opt.defaults["foreach"] is True
    assert GPTModel(GPTConfig.preset("gpt-nano", vocab_size=11)).configure_optimizer().defaults["fused"] == cpu_fused
    with pytest.raises(ValueError, match="lr"):
        configure_optimizer(model, lr=0)


def test_lr_schedule_formula():
    lr, warm, total, lo = 1e-3, 10, 110, 1e-4
    assert lr_at(0, lr, warm, total, lo) == pytest.approx(lr / warm)
    assert lr_at(9, lr, warm, total, lo) == pytest.approx(lr)
    assert lr_at(10, lr, warm, total, lo) == pytest.approx(lr)
    assert lr_at(60, lr, warm, total, lo) == pytest.approx((lr + lo) / 2)  # halfway down the cosine
    assert lr_at(110, lr, warm, total, lo) == pytest.approx(lo)
    for s in range(10, 110):
        expected = lo + 0.5 * (lr - lo) * (1 + math.cos(math.pi * (s - warm) / (total - warm)))
        assert lr_at(s, lr, warm, total, lo) == pytest.approx(expected)
    assert lr_at(50, lr, 0, None, schedule="constant") == lr
    with pytest.raises(ValueError, match="total_steps"):
        lr_at(5, lr, 0, None)


# ---- the loop ----------------------------------------------------------------------------------------------


def test_training_reduces_loss_by_half():
    torch.manual_seed(0)
    model = _model()
    loader, val = _loader(shuffle=True), _loader(n=8)
    before = calc_loss_loader(model, loader)
    trainer = Trainer(model, loader, val, lr=1e-2, eval_every=3, progress=False, device="cpu")
    history = trainer.fit(epochs=6)
    after = history.train_loss[-1]
    # stated margin: the final train loss is below half of the initial one (log 17 = 2.83 at the start)
    assert after < 0.5 * before, (before, after)
    assert history.val_loss[-1] < 0.5 * before
    assert trainer.step == 6 * 6 and history.steps[-1] == 36
    assert history.tokens_seen[-1] == 6 * 24 * SEQ
    assert len(history.step_loss) == len(history.step_lr) == 36
    assert history.epochs[-1] == 6 and len(history.epoch_end()) == 6
    assert "ppl(val)" in history.table()
    assert history.plot() is not None


def test_gradient_clipping_bounds_the_norm_and_keeps_the_direction():
    model = _model()
    x, y = next(iter(_loader()))
    # the raw gradient, computed independently
    ref = _model()
    (calc_loss_batch(ref, x, y) * 100).backward()
    raw = [p.grad.clone() for p in ref.parameters()]
    raw_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in raw])).item()
    clip = 0.05
    assert raw_norm > 10 * clip  # otherwise the test would prove nothing

    opt = RecordingSGD(model.parameters())
    trainer = Trainer(model, _loader(), grad_clip=clip, optimizer=opt, progress=False, device="cpu",
                      loss_fn=lambda m, a, b, d: calc_loss_batch(m, a, b, d) * 100)
    trainer.train_step([(x, y)])
    seen = opt.seen[0]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in seen])).item()
    assert norm <= clip * (1 + 1e-5)
    assert norm == pytest.approx(clip, rel=1e-4)
    for g, r in zip(seen, raw):
        torch.testing.assert_close(g, r * (clip / raw_norm), rtol=1e-4, atol=1e-8)


def test_accumulating_k_micro_batches_equals_one_big_batch():
    x, y = _data(8).tensors
    big_opt = RecordingSGD((big := _model()).parameters())
    Trainer(big, [], optimizer=big_opt, grad_clip=None, progress=False, device="cpu").train_step([(x, y)])
    small_opt = RecordingSGD((small := _model()).parameters())
    micro = [(x[i : i + 2], y[i : i + 2]) for i in range(0, 8, 2)]
    Trainer(small, [], optimizer=small_opt, grad_clip=None, progress=False, device="cpu").train_step(micro)
    for a, b in zip(big_opt.seen[0], small_opt.seen[0]):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
    # and through fit(): loader batches of 2 with accumulation_steps=4 == loader batches of 8
    fit_opt = RecordingSGD((fitted := _model()).parameters())
    Trainer(fitted, _loader(batch_size=2, n=8), optimizer=fit_opt, grad_clip=None, accumulation_steps=4,
            progress=False, device="cpu").fit(1)
    assert len(fit_opt.seen) == 1
    for a, b in zip(big_opt.seen[0], fit_opt.seen[0]):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_trainer_argument_errors():
    model = _model()
    with pytest.raises(ValueError, match="accumulation_steps"):
        Trainer(model, _loader(), accumulation_steps=0)
    with pytest.raises(ValueError, match="eval_every"):
        Trainer(model, _loader(), eval_every=0)
    with pytest.raises(ValueError, match="precision"):
        Trainer(model, _loader(), precision="fp8")
    with pytest.raises(ValueError, match="training loader is empty"):
        Trainer(model, DataLoader(_data(3), batch_size=4, drop_last=True), progress=False).fit(1)


def test_warmup_cosine_is_applied_to_the_optimizer():
    model = _model()
    trainer = Trainer(model, _loader(), lr=1e-2, warmup_steps=2, schedule="cosine", min_lr=1e-3,
                      progress=False, device="cpu")
    h = trainer.fit(2)  # 12 steps
    expected = [lr_at(s, 1e-2, 2, 12, 1e-3) for s in range(12)]
    assert h.step_lr == pytest.approx(expected)


def test_callback_runs_each_epoch_with_a_greedy_sample():
    class Tok:  # a character tokenizer over 17 letters
        def encode(self, s):
            return [ord(c) - 97 for c in s]

        def decode(self, ids):
            return "".join(chr(i + 97) for i in ids)

    lines = []
    cb = T.sample_callback(Tok(), prompt="abc", max_new_tokens=4, printer=lines.append)
    model = _model()
    Trainer(model, _loader(), callback=cb, progress=False, device="cpu").fit(2)
    assert len(lines) == 2 and [e for e, _ in cb.samples] == [1, 2]
    # the sample is the greedy continuation, computed here independently
    ids = torch.tensor([[0, 1, 2]])
    model.eval()
    with torch.no_grad():
        for _ in range(4):
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert cb.samples[-1][1] == Tok().decode(ids[0].tolist())


# ---- checkpoints -------------------------------------------------------------------------------------------


def test_checkpoint_round_trip_resumes_identically(tmp_path):
    path = tmp_path / "ckpt.pt"

    def make():
        torch.manual_seed(1)
        m = TinyLM(dropout=0.2)  # dropout: the RNG state must be restored too
        return Trainer(m, _loader(), lr=5e-3, warmup_steps=3, schedule="cosine", progress=False, device="cpu")

    batches = list(_loader())
    a = make()
    a.fit(1)
    a.save_checkpoint(path)
    expected = [a.train_step([b]) for b in batches[:3]]

    b = make()
    torch.manual_seed(999)  # a different RNG state, which load_checkpoint must undo
    b.load_checkpoint(path)
    assert (b.step, b.epoch, b.tokens_seen, b.total_steps) == (6, 1, 24 * SEQ, 6)
    assert b.history.train_loss == a.history.train_loss[: len(b.history.train_loss)]
    got = [b.train_step([x]) for x in batches[:3]]
    assert got == expected  # bit-identical next-step losses
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_checkpoint_mismatch_names_the_tensor(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", _model(), step=3)
    with pytest.raises(CheckpointMismatchError, match=r"mlp\.0\.weight: checkpoint \(32, 16\) vs model \(32, 24\)"):
        load_checkpoint(path, _other_width_model())
    # another class: named first; check_config=False goes on to the tensors, which name what is missing
    with pytest.raises(CheckpointMismatchError, match=r"saved from a \S*TinyLM.*this model is a \S*\.Sequential"):
        load_checkpoint(path, nn.Sequential(_model(), nn.Linear(2, 2)))
    with pytest.raises(CheckpointMismatchError, match="missing in checkpoint"):
        load_checkpoint(path, nn.Sequential(_model(), nn.Linear(2, 2)), check_config=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nope.pt", _model())
    with pytest.raises(ValueError, match="no optimizer state"):
        load_checkpoint(path, _model(), torch.optim.SGD(_model().parameters(), lr=0.1))
    ckpt = load_checkpoint(path, m := _model(seed=5))
    assert ckpt["step"] == 3
    torch.testing.assert_close(m.emb.weight, _model().emb.weight)


def _other_width_model():
    m = _model()
    m.mlp[0] = nn.Linear(24, 32)
    return m


def test_atomic_write_keeps_the_old_checkpoint_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    old = _model(seed=1)
    save_checkpoint(path, old, step=1)
    before = path.read_bytes()

    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")  # a partial write, then the disk "fills up"
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, _model(seed=2), step=2)
    monkeypatch.setattr(torch, "save", real_save)

    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt"]  # no temporary file left behind
    m = _model(seed=3)
    assert load_checkpoint(path, m)["step"] == 1
    torch.testing.assert_close(m.emb.weight, old.emb.weight)


def test_history_round_trips_through_a_dict():
    h = History(steps=[1], epochs=[1], tokens_seen=[8], train_loss=[2.0], val_loss=[None], lr=[1e-3])
    assert History.from_dict(h.to_dict()) == h
    with pytest.raises(ValueError, match="nothing to plot"):
        History().plot()


# ---- checkpoints that describe themselves ------------------------------------------------------------------


def _gpt(**overrides):
    torch.manual_seed(0)
    base = dict(vocab_size=50, context_length=16, d_model=32, n_heads=4, n_layers=2)
    return GPTModel(GPTConfig(**{**base, **overrides}))


@pytest.mark.parametrize("field, saved, other", [("n_heads", 4, 8), ("layer_norm_eps", 1e-5, 1e-6),
                                                 ("tie_weights", True, False)])
def test_a_checkpoint_names_the_config_field_that_differs(tmp_path, field, saved, other):
    path = save_checkpoint(tmp_path / "gpt.pt", _gpt(**{field: saved}))
    ckpt = load_checkpoint(path)  # no model: read and verify only
    assert ckpt["model_class"] == "llmscratch.models.gpt.GPTModel" and ckpt["config"][field] == saved
    # n_heads and layer_norm_eps leave every tensor shape unchanged: only the config check can see them
    with pytest.raises(CheckpointMismatchError, match=rf"{field}: checkpoint {saved!r} vs model {other!r}"):
        load_checkpoint(path, _gpt(**{field: other}))
    model = _gpt(**{field: saved})
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    load_checkpoint(path, model)  # the saved config loads, and with the saved weights
    for a, b in zip(model.state_dict().values(), _gpt(**{field: saved}).state_dict().values()):
        assert torch.equal(a, b)
    # rebuilding the model from the checkpoint's own config, as the message says
    load_checkpoint(path, GPTModel(GPTConfig(**ckpt["config"])))
    # dropout is a training-time choice: fine-tuning with another dropout loads
    load_checkpoint(path, _gpt(**{field: saved}, dropout=0.1))


def test_check_config_false_loads_fitting_tensors_despite_another_config(tmp_path):
    path = save_checkpoint(tmp_path / "gpt.pt", _gpt(n_heads=4))
    model = _gpt(n_heads=8)
    load_checkpoint(path, model, check_config=False)
    assert torch.equal(model.tok_emb.weight, _gpt(n_heads=4).tok_emb.weight)


def _flip_one_byte_in_a_tensor(path):
    """Flip a byte inside the stored bytes of the largest tensor (torch.save writes a zip of raw storages)."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = int.from_bytes(raw[info.header_offset + 26: info.header_offset + 28], "little"), \
        int.from_bytes(raw[info.header_offset + 28: info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len  # storages are stored uncompressed
    raw[start + info.file_size // 2] ^= 0x10
    path.write_bytes(bytes(raw))


def test_a_flipped_byte_in_a_tensor_is_detected(tmp_path):
    path = save_checkpoint(tmp_path / "gpt.pt", _gpt())
    _flip_one_byte_in_a_tensor(path)
    torch.load(path, weights_only=True)  # PyTorch itself reads it without complaint
    with pytest.raises(T.CheckpointCorruptError, match=r"gpt\.pt is corrupted: 1 tensor\(s\) differ from the sha256 "
                       r"recorded when it was saved \(model\.blocks\.\d\.ff\.\w+\.weight\)"):
        load_checkpoint(path, _gpt())


def test_unreadable_files_get_a_clear_message(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(T.CheckpointCorruptError, match="is empty \\(0 bytes\\)"):
        load_checkpoint(empty, _model())
    noise = tmp_path / "noise.pt"
    noise.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                    dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(T.CheckpointCorruptError, match="not a checkpoint: torch.save writes a zip archive"):
        load_checkpoint(noise, _model())
    truncated = tmp_path / "truncated.pt"
    whole = save_checkpoint(tmp_path / "whole.pt", _model()).read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(T.CheckpointCorruptError, match="truncated"):
        load_checkpoint(truncated, _model())
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": _model().state_dict(), "extra": History()}, pickled)  # a Python object inside
    with pytest.raises(T.CheckpointCorruptError, match="never runs code") as err:
        load_checkpoint(pickled, _model())
    assert "weights_only=False" not in str(err.value) and err.value.__cause__ is None
    bare = tmp_path / "bare.pt"
    torch.save(_model().state_dict(), bare)
    with pytest.raises(ValueError, match=r"bare state dict.*model\.load_state_dict\(torch\.load"):
        load_checkpoint(bare, _model())


def test_trainer_load_checkpoint_of_weights_only_says_what_to_call(tmp_path):
    path = save_checkpoint(tmp_path / "weights.pt", _model())
    trainer = Trainer(_model(seed=3), _loader(), progress=False, device="cpu")
    with pytest.raises(ValueError, match=r"weights only.*llmscratch\.train\.load_checkpoint\(path, trainer\.model\)"):
        trainer.load_checkpoint(path)
    T.load_checkpoint(path, trainer.model)  # what the message says works
    assert torch.equal(trainer.model.emb.weight, _model().emb.weight)


def test_checkpoint_dir_writes_last_and_best(tmp_path):
    with pytest.raises(ValueError, match="need checkpoint_dir"):
        Trainer(_model(), _loader(), checkpoint_every=2)
    with pytest.raises(ValueError, match="pass a val_loader"):
        Trainer(_model(), _loader(), checkpoint_dir=tmp_path, keep_best=True)
    saves = []
    trainer = Trainer(_model(), _loader(), _loader(n=8), lr=1e-2, eval_every=2, progress=False, device="cpu",
                      checkpoint_dir=tmp_path, checkpoint_every=4, keep_best=True)
    real = trainer.save_checkpoint
    trainer.save_checkpoint = lambda p: saves.append((trainer.step, p.name)) or real(p)
    trainer.fit(2)  # 12 steps
    assert [s for s, name in saves if name == "last.pt"] == [4, 8, 12, 12]  # every 4 steps, and at the end
    best = load_checkpoint(tmp_path / "best.pt", _model())
    assert best["best_val"] == min(v for v in trainer.history.val_loss)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]
    assert os.stat(tmp_path / "last.pt").st_mode & 0o044  # the user's umask, not 0600


# ---- a non-finite loss is caught before the optimizer step -------------------------------------------------


def _step_fails(trainer, batch, match):
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    state = (trainer.step, trainer.tokens_seen, len(trainer.history.step_loss))
    with pytest.raises(FloatingPointError, match=match) as err:
        trainer.train_step(batch)
    assert "learning rate" not in str(err.value) or "diverged" in str(err.value)
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, before[k]) and torch.isfinite(v).all()
    assert (trainer.step, trainer.tokens_seen, len(trainer.history.step_loss)) == state
    assert all(p.grad is None for p in trainer.model.parameters())
    return str(err.value)


def test_nan_inputs_are_named_as_the_cause_and_the_weights_stay():
    clf = nn.Linear(5, 3)
    trainer = Trainer(clf, [], progress=False, device="cpu")
    x, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 0, 1, 2])
    x[2, 3] = float("nan")
    x[4, 0] = float("inf")
    msg = _step_fails(trainer, [(x, y)], r"inputs contain 2 NaN/inf value\(s\) out of 30")
    assert "optimizer step 1" in msg and "weights were not updated" in msg
    # in the 2nd micro-batch of an accumulated step, after the 1st one's backward: nothing of it may remain
    good = torch.randn(6, 5)
    _step_fails(trainer, [(good, y), (x, y)], r"micro-batch 2 of 2 of optimizer step 1: its inputs")
    assert trainer.train_step([(good, y)]) > 0  # and the trainer goes on


def test_a_batch_of_only_ignored_targets_is_named_as_the_cause():
    trainer = Trainer(_model(), [], progress=False, device="cpu")
    x, y = next(iter(_loader()))
    _step_fails(trainer, [(x, torch.full_like(y, -100))], r"every target in it is ignore_index \(-100\)")
    # the same through GPTModel's fused loss method
    gpt = Trainer(_gpt(), [], progress=False, device="cpu")
    ids = torch.randint(0, 50, (2, 9))
    _step_fails(gpt, [(ids[:, :-1], torch.full((2, 8), -100))], "every target in it is ignore_index")


def test_overflowing_outputs_and_broken_weights_are_told_apart():
    class Blowup(nn.Module):  # finite weights, logits that overflow: what a diverging run looks like
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            return self.lin(x) * 1e38 * 1e38

    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    _step_fails(Trainer(Blowup(), [], progress=False, device="cpu"), [(x, y)],
                r"outputs \(logits\) overflow to NaN/inf although its inputs and weights are finite: training "
                r"diverged\. Lower the learning rate")
    broken = nn.Linear(4, 3)
    trainer = Trainer(broken, [], progress=False, device="cpu")
    with torch.no_grad():
        broken.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"weights were already non-finite before this step \(weight\)"):
        trainer.train_step([(x, y)])
