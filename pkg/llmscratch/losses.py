"""Losses that save memory and time: a fused, chunked LM head + cross-entropy.

A language model's last step, ``logits = hidden @ W.T`` then ``F.cross_entropy(logits, targets)``, materialises
a ``(N, V)`` logits tensor (N = batch * seq tokens, V = vocabulary) and, in the backward pass, a second one for its
gradient: for GPT-2's 50,257-token vocabulary and N = 1,024 tokens that is 2 x 206 MB of float32, written and
read several times (matmul, log-softmax, its backward, two more matmuls). At small model widths this memory
traffic, not the arithmetic, is a large part of a training step.

:func:`fused_linear_cross_entropy` (the technique of Liger-Kernel's ``FusedLinearCrossEntropy`` and of Apple's
"cut cross-entropy", Wijmans et al., 2025) walks over the tokens in chunks of ``chunk_size`` rows. For each chunk
it computes the logits, the loss, and straight away the gradient of the loss with respect to the logits,

    d loss / d logits = (softmax(logits) - one_hot(targets)) / n_valid,

then turns it into the gradients of the two inputs, ``grad_hidden[chunk] = g @ W`` and ``grad_W += g.T @ h``,
and drops it. Only one ``(chunk_size, V)`` buffer ever exists; the gradients are computed during the forward pass
and handed out (scaled by the incoming gradient) in the backward pass. The result equals
``F.cross_entropy(F.linear(hidden, weight), targets, ignore_index=-100)`` (mean over the non-ignored targets) up
to float rounding; ``tests/test_losses.py`` checks the loss and both gradients against it.
"""

from __future__ import annotations

import torch

__all__ = ["fused_linear_cross_entropy", "DEFAULT_CHUNK_SIZE", "IGNORE_INDEX"]

IGNORE_INDEX = -100
#: Rows per chunk. Measured on a 2-core x86 CPU (benchmarks/gpt.py config: 1,024 tokens, d 256, V 50,257):
#: 512 rows (a 103 MB float32 logits buffer) was the fastest of 128-1,024 (`--chunk-sweep`); see RESULTS.md.
DEFAULT_CHUNK_SIZE = 512


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """Forward computes the mean loss *and* both gradients chunk by chunk; backward scales them."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size: int, ignore_index: int, grad_enabled: bool):
        n, d = hidden.shape
        # Under torch.no_grad (evaluation) only the loss is computed: no gradient work at all.
        need_h = grad_enabled and ctx.needs_input_grad[0]
        need_w = grad_enabled and ctx.needs_input_grad[1]
        need_grad = need_h or need_w
        valid = targets != ignore_index  # (N,)
        count = valid.sum()
        low = hidden.dtype in (torch.float16, torch.bfloat16)  # then softmax and sums run in float32
        acc = torch.float32 if low else hidden.dtype
        inv_count = 1.0 / count.clamp(min=1).to(acc)  # gradient scale of the mean
        safe_targets = torch.where(valid, targets, torch.zeros_like(targets))  # gather needs an in-range index
        total = torch.zeros((), dtype=acc, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if need_h else None
        grad_weight = torch.empty(weight.shape, dtype=acc, device=weight.device) if need_w else None
        # The logits of a chunk are computed *transposed*, (V, rows) = W @ h_chunk.T: with W stored (V, d),
        # this orientation is about 2x faster than h_chunk @ W.T on a CPU (MKL, measured; see RESULTS.md), and
        # the two gradient matmuls take it as it is. The softmax then runs down the columns (dim 0).
        buf = torch.empty((weight.shape[0], min(chunk_size, n)), dtype=hidden.dtype, device=hidden.device)
        for start in range(0, n, chunk_size):
            end = min(start + chunk_size, n)
            rows = end - start
            h, y, ok = hidden[start:end], safe_targets[start:end], valid[start:end]
            cols = torch.arange(rows, device=hidden.device)
            # One buffer for every chunk: on the CPU a fresh 50 MB tensor per chunk would cost page faults.
            logits_t = torch.mm(weight, h.t(), out=buf[:, :rows])  # (V, rows), in hidden's dtype
            if low:
                logits_t = logits_t.float()  # softmax statistics in float32
            target_logit = logits_t[y, cols]  # (rows,), read before logits_t is overwritten
            col_max = logits_t.amax(dim=0)  # (rows,)
            probs_t = logits_t.sub_(col_max).exp_()  # in place: logits -> exp(logits - max)
            sum_exp = probs_t.sum(dim=0)  # (rows,)
            lse = col_max + sum_exp.log()
            total += torch.where(ok, lse - target_logit, torch.zeros_like(lse)).sum()
            if not need_grad:
                continue
            # g = (softmax - one_hot) / count for valid tokens, 0 for ignored ones: one in-place pass.
            col_scale = ok.to(acc) * inv_count  # (rows,)
            g_t = probs_t.mul_(col_scale / sum_exp)  # (V, rows)
            g_t.index_put_((y, cols), -col_scale, accumulate=True)
            g_t = g_t.to(hidden.dtype) if low else g_t
            if grad_hidden is not None:
                torch.mm(g_t.t(), weight, out=grad_hidden[start:end])  # (rows, d)
            if grad_weight is not None:
                if start == 0:  # the first chunk writes, the others accumulate (no 50 MB zero fill)
                    torch.mm(g_t, h, out=grad_weight) if not low else grad_weight.copy_(torch.mm(g_t, h))
                elif not low:
                    grad_weight.addmm_(g_t, h)  # (V, d), accumulated over chunks
                else:
                    grad_weight += torch.mm(g_t, h).float()
        loss = total / count  # NaN when every target is ignored, as F.cross_entropy
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        ctx.save_for_backward(grad_hidden if grad_hidden is not None else torch.empty(0),
                              grad_weight if grad_weight is not None else torch.empty(0))
        return loss  # float32 for bf16/fp16 inputs (as F.cross_entropy(logits.float(), ...))

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        gh = gw = None
        scale_is_one = bool(torch.equal(grad_output, torch.ones_like(grad_output)))
        if ctx.needs_input_grad[0] and grad_hidden.numel():
            gh = grad_hidden if scale_is_one else grad_hidden * grad_output.to(grad_hidden.dtype)
        if ctx.needs_input_grad[1] and grad_weight.numel():
            gw = grad_weight if scale_is_one else grad_weight * grad_output.to(grad_weight.dtype)
        return gh, gw, None, None, None, None


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                               chunk_size: int = DEFAULT_CHUNK_SIZE,
                               ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T`` against ``targets`` without materialising the logits.

    Equal (up to float rounding) to ``F.cross_entropy(F.linear(hidden, weight), targets,
    ignore_index=ignore_index)``, with gradients for ``hidden`` and ``weight``; see the module docstring.

    Args:
        hidden: final hidden states ``(..., d)``, e.g. ``(batch, seq, d_model)`` after the final LayerNorm.
        weight: the LM head / tied embedding matrix ``(vocab, d)`` (as stored by ``nn.Linear``).
        targets: next-token ids with ``hidden``'s leading shape, e.g. ``(batch, seq)``; ``ignore_index`` skipped.
        chunk_size: tokens per chunk; the peak extra memory is ``chunk_size * vocab`` floats.
        ignore_index: target value that contributes neither loss nor gradient (padding).

    Under autocast (bf16/fp16 on a GPU) the matmuls run in the autocast dtype and the softmax in float32, like
    ``F.linear`` followed by ``F.cross_entropy(logits.float(), ...)``.
    """
    if not isinstance(hidden, torch.Tensor) or not isinstance(weight, torch.Tensor) or not isinstance(targets, torch.Tensor):
        raise TypeError("hidden, weight and targets must be tensors")
    if weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"weight must be (vocab, d) with d = hidden.shape[-1] = {hidden.shape[-1]}, got "
                         f"{tuple(weight.shape)}; pass the nn.Linear weight (out_features, in_features)")
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"targets {tuple(targets.shape)} must have hidden's shape without its last dimension "
                         f"{tuple(hidden.shape[:-1])}, e.g. (batch, seq) for hidden (batch, seq, d)")
    if targets.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"targets must be integer token ids, got dtype {targets.dtype}")
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = targets.reshape(-1).long()
    if hidden.shape[0] == 0:
        raise ValueError("hidden has no rows (an empty batch): nothing to compute a loss over")
    valid = (targets != ignore_index)
    bad = valid & ((targets < 0) | (targets >= weight.shape[0]))
    if bool(bad.any()):
        raise IndexError(f"target id {int(targets[bad][0])} is outside the vocabulary [0, {weight.shape[0]}) "
                         f"and is not ignore_index ({ignore_index})")
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)  # differentiable casts, as autocast's F.linear
        with torch.autocast(device_type, enabled=False):
            return _FusedLinearCrossEntropy.apply(hidden, weight, targets, chunk_size, ignore_index,
                                              torch.is_grad_enabled())
    if hidden.dtype != weight.dtype:
        raise TypeError(f"hidden ({hidden.dtype}) and weight ({weight.dtype}) must have the same dtype; "
                        "cast one, or run under torch.autocast")
    return _FusedLinearCrossEntropy.apply(hidden, weight, targets, chunk_size, ignore_index,
                                              torch.is_grad_enabled())
