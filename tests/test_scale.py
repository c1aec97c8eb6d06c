"""Chapter 8 in one process: exact token-weighted accumulation (and the per-micro-batch-mean bug), bf16/fp16
autocast with loss scaling, activation checkpointing (same gradients, saved bytes against the formula) and the
memory budget (ZeRO's Figure 1). The multi-process parts are in test_distributed.py."""

from __future__ import annotations

import pytest
import torch

from llmscratch.models.gpt import GPTConfig, GPTModel
from llmscratch.train import Trainer, memory_budget, saved_activation_bytes
from llmscratch.train.memory import gpt_block_activation_bytes
from llmscratch.train.precision import cpu_has_native_bf16, resolve_precision

IGNORE = -100


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()  # tiny models: one thread is faster on a loaded machine
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gpt(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=32, context_length=12, d_model=16, n_heads=2, n_layers=2)
    return GPTModel(GPTConfig(**{**cfg, **kw}))


def _padded_batch(seed=1):
    """4 sequences of 12 tokens; the targets of rows 0-1 keep 11 and 12 tokens, rows 2-3 only 3 and 2 (the
    rest is padding, ignore_index): two micro-batches of 2 rows with 23 and 5 targets."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 32, (4, 12), generator=g)
    y = torch.randint(0, 32, (4, 12), generator=g)
    for row, keep in enumerate((11, 12, 3, 2)):
        y[row, keep:] = IGNORE
    return x, y


def _step(micro_batches, loss_weighting="tokens"):
    model = _gpt()
    trainer = Trainer(model, [micro_batches[0]], lr=0.1, grad_clip=None, device="cpu", progress=False,
                      optimizer=torch.optim.SGD(model.parameters(), lr=0.1), loss_weighting=loss_weighting)
    trainer.train_step(micro_batches)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_accumulation_is_exact_with_different_token_counts_and_the_mean_of_means_is_not():
    x, y = _padded_batch()
    one_batch = _step([(x, y)])
    two_micro = _step([(x[:2], y[:2]), (x[2:], y[2:])])
    four_micro = _step([(x[i:i + 1], y[i:i + 1]) for i in range(4)])
    assert (two_micro - one_batch).abs().max() <= 1e-6
    assert (four_micro - one_batch).abs().max() <= 1e-6
    # The bug: each micro-batch mean divided by k over-weights the 5 targets of the second micro-batch.
    buggy = _step([(x[:2], y[:2]), (x[2:], y[2:])], loss_weighting="micro_batch")
    assert (buggy - one_batch).abs().max() > 1e-3
    # With equal token counts both ways agree (the bug needs unequal micro-batches).
    full = torch.randint(0, 32, (4, 12), generator=torch.Generator().manual_seed(5))
    equal = _step([(x[:2], full[:2]), (x[2:], full[2:])], loss_weighting="micro_batch")
    assert (equal - _step([(x, full)])).abs().max() <= 1e-6


def test_accumulation_through_fit_equals_one_big_batch():
    x, y = _padded_batch()
    big, small = _gpt(), _gpt()
    for model, batches, k in ((big, [(x, y)], 1), (small, [(x[:2], y[:2]), (x[2:], y[2:])], 2)):
        # Adam divides by sqrt(v) + eps: with the default eps=1e-8 a gradient entry near 1e-8 turns float
        # rounding (1e-9) into a visible step; eps=1e-4 keeps the comparison about the arithmetic of the sum.
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, eps=1e-4)
        Trainer(model, batches, optimizer=optimizer, accumulation_steps=k, device="cpu", progress=False).fit(3)
    diff = max((a - b).abs().max().item() for a, b in zip(big.parameters(), small.parameters()))
    assert diff <= 1e-6


def test_precision_resolution_and_errors():
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("half", "cpu")
    with pytest.raises(ValueError, match="loss_weighting"):
        Trainer(_gpt(), [], device="cpu", loss_weighting="mean")
    assert cpu_has_native_bf16() in (True, False, None)


def test_bf16_autocast_trains_close_to_fp32_on_cpu():
    x, y = _padded_batch()
    losses = {}
    for precision in ("fp32", "bf16"):
        trainer = Trainer(_gpt(), [(x, y)], lr=1e-2, device="cpu", progress=False, precision=precision)
        assert trainer.amp_dtype == (torch.bfloat16 if precision == "bf16" else None)
        trainer.fit(10)
        losses[precision] = trainer.history.step_loss
    assert losses["bf16"][-1] < losses["bf16"][0] - 0.3  # it learns
    assert abs(losses["bf16"][-1] - losses["fp32"][-1]) < 0.1  # and follows the float32 run


def test_fp16_loss_scaling_skips_and_counts_overflowing_steps():
    x, y = _padded_batch()
    model = _gpt()
    trainer = Trainer(model, [(x, y)], lr=1e-2, device="cpu", progress=False, precision="fp16")
    assert trainer.scaler.is_enabled()
    # A scale of 2**100 makes every fp16 gradient overflow: the step must be skipped and the scale halved.
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 100)
    before = [p.detach().clone() for p in model.parameters()]
    trainer.train_step([(x, y)])
    assert trainer.skipped_steps == 1 and trainer.history.skipped_steps == [1]
    assert trainer.scaler.get_scale() == 2.0 ** 99
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    # A sane scale: the step is taken, nothing more is skipped.
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    trainer.train_step([(x, y)])
    assert trainer.skipped_steps == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_activation_checkpointing_gives_the_same_gradients(dropout):
    x, y = _padded_batch()
    grads = []
    for checkpointing in (False, True):
        model = _gpt(dropout=dropout, gradient_checkpointing=checkpointing)
        torch.manual_seed(7)  # the same dropout masks; the recomputation replays them
        model.loss(x, y).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert (grads[0] - grads[1]).abs().max() <= 1e-6


def test_saved_activation_bytes_match_the_formula(monkeypatch):
    import llmscratch.models.attention as attention

    monkeypatch.setattr(attention, "SHORT_CPU_SEQ", 0)  # the formula is the SDPA path's (see its docstring)
    b, t, d, h, layers = 3, 12, 16, 2, 2
    x = torch.randint(0, 32, (b, t))
    block = _gpt().blocks[0]
    hidden = torch.randn(b, t, d, requires_grad=True)
    assert saved_activation_bytes(lambda: block(hidden), exclude=block) == gpt_block_activation_bytes(b, t, d, h)
    measured = {}
    for checkpointing in (False, True):
        model = _gpt(gradient_checkpointing=checkpointing)
        measured[checkpointing] = saved_activation_bytes(lambda: model(x), exclude=model)
    per_block = gpt_block_activation_bytes(b, t, d, h) - gpt_block_activation_bytes(b, t, d, h, checkpointing=True)
    assert measured[False] - measured[True] == layers * per_block
    assert per_block == b * t * (15 * d + h + 4) * 4
    model.eval()  # no recomputation (and no saving) without training
    with torch.no_grad():
        assert saved_activation_bytes(lambda: model(x), exclude=model) == 0


def test_memory_budget_reproduces_zero_figure_1():
    gb = [memory_budget(7.5e9, "mixed", stage, 64)["total"] / 1e9 for stage in (0, 1, 2, 3)]
    assert [round(v, 1) for v in gb] == [120.0, 31.4, 16.6, 1.9]
    with pytest.raises(ValueError, match="zero_stage"):
        memory_budget(10, zero_stage=4)


def test_memory_budget_matches_measured_tensor_bytes():
    from llmscratch.train.memory import optimizer_state_bytes, tensor_bytes

    x, y = _padded_batch()
    model = _gpt()
    trainer = Trainer(model, [(x, y)], device="cpu", progress=False)
    trainer.fit(1)
    n = model.num_parameters()
    budget = memory_budget(n, "fp32")
    model.loss(x, y).backward()  # gradients exist again (fit frees them after the step)
    assert tensor_bytes(model.parameters()) == budget["params"]
    assert tensor_bytes(p.grad for p in model.parameters()) == budget["grads"]
    steps = sum(1 for _ in model.parameters()) * 4  # AdamW keeps a float32 step counter per parameter
    assert optimizer_state_bytes(trainer.optimizer) == budget["optimizer"] + steps
