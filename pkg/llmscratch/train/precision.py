"""Mixed precision with ``torch.amp``: which dtype a device trains in, and fp16's dynamic loss scaling.

- **bf16** (bfloat16) keeps float32's 8 exponent bits, so gradients neither underflow nor overflow more than in
  float32: autocast alone is enough. GPUs since Ampere have it (``torch.cuda.is_bf16_supported()``); CPUs run
  it natively with AVX512-BF16 / AMX, and emulate it (slowly) otherwise.
- **fp16** has 5 exponent bits: gradients below about 6e-8 flush to zero. ``torch.amp.GradScaler`` multiplies
  the loss by a large factor before ``backward`` (so the gradients are scaled up into fp16's range), divides the
  gradients by it before the optimizer step, skips the step when a gradient overflowed to inf/NaN and halves the
  factor then; after ``growth_interval`` good steps it doubles it (Micikevicius et al., 2018).
- **fp32**: no autocast.

The weights and optimizer states stay in float32 in every mode (autocast only runs matmuls in low precision).
"""

from __future__ import annotations

import torch

from ..utils import get_device

__all__ = ["PRECISIONS", "resolve_precision", "amp_dtype_of", "make_grad_scaler", "cpu_has_native_bf16"]

#: Values of ``Trainer(precision=...)``.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: str | torch.device = "auto") -> str:
    """``"bf16"``, ``"fp16"`` or ``"fp32"`` for a ``precision`` request on ``device``.

    ``"auto"``: bf16 on a CUDA GPU that supports it, fp16 (with loss scaling) on older GPUs such as Colab's T4,
    float32 on the CPU and MPS (CPU autocast only pays off with native bf16 and large matrices; ask for
    ``"bf16"`` explicitly there). An explicit ``"bf16"`` on a GPU without it is an error that names the fix.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
    dev = get_device(device)
    if precision == "auto":
        if dev.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if precision == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"{torch.cuda.get_device_name(dev)} has no bfloat16: use precision='fp16' (with loss "
                         "scaling) or 'auto', which picks it")
    if precision != "fp32" and dev.type not in ("cuda", "cpu"):
        raise ValueError(f"autocast to {precision} is supported here on 'cuda' and 'cpu', not {dev.type!r}: "
                         "use precision='fp32'")
    return precision


def amp_dtype_of(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision (``None`` for fp32)."""
    return _DTYPES[precision]


def make_grad_scaler(precision: str, device: str | torch.device) -> torch.amp.GradScaler:
    """A ``torch.amp.GradScaler`` for ``device``'s type, enabled only for fp16 (bf16 and fp32 need no scaling)."""
    dev = get_device(device)
    return torch.amp.GradScaler(dev.type, enabled=precision == "fp16")


def cpu_has_native_bf16() -> bool | None:
    """Whether this CPU computes bf16 in hardware (``avx512_bf16`` or ``amx_bf16`` in /proc/cpuinfo's flags);
    ``None`` where that file does not exist (macOS, Windows)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return None
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))
