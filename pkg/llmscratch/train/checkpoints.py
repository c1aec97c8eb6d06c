"""Self-describing, checksummed, atomically written checkpoints, and the random-number states they keep."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from ..utils import atomic_write


CHECKPOINT_FORMAT = "llmscratch.checkpoint/2"


class CheckpointMismatchError(ValueError):
    """A checkpoint was written for another model: another class, config, or tensors (missing, unexpected, or
    differently shaped)."""


class CheckpointCorruptError(ValueError):
    """A checkpoint file that cannot be read (empty, truncated, not a checkpoint) or whose tensors no longer match
    the sha256 checksums stored in it when it was saved."""


def _unwrap(model: nn.Module) -> nn.Module:
    # torch.compile and DDP wrap the model; save and load the original module, so that the names carry no
    # "_orig_mod." or "module." prefix and a checkpoint of a DDP run loads into a plain model.
    from .distributed import unwrap_model

    return unwrap_model(model)


def _atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` through :func:`llmscratch.utils.atomic_write`: a crash mid-save leaves the old file intact."""
    path = Path(path)
    with atomic_write(path) as f:
        torch.save(obj, f)
    return path


def _model_identity(model: nn.Module) -> tuple[str, dict | None]:
    """``("package.module.Class", config as a plain dict or None)`` of a model.

    The config is ``model.cfg`` or ``model.config``: a dataclass (``GPTConfig``), a ``transformers`` config
    (``to_dict()``) or a dict. It is stored as JSON-like data, so a checkpoint stays loadable with
    ``weights_only=True``; private keys and ``transformers_version`` are left out (they do not change the model).
    """
    m = _unwrap(model)
    name = f"{type(m).__module__}.{type(m).__qualname__}"
    cfg = getattr(m, "cfg", None)
    if cfg is None:
        cfg = getattr(m, "config", None)
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        d = dataclasses.asdict(cfg)
    elif callable(getattr(cfg, "to_dict", None)):
        d = cfg.to_dict()
    elif isinstance(cfg, dict):
        d = dict(cfg)
    else:
        return name, None
    d = {str(k): v for k, v in d.items() if not str(k).startswith("_") and k != "transformers_version"}
    return name, json.loads(json.dumps(d, default=str, sort_keys=True))


def _config_field_ignored(name: str) -> bool:
    # Dropout rates are a training-time choice (fine-tuning with another dropout is normal): they do not change
    # what the weights mean, so a difference there is not a mismatch. GPTConfig: dropout; GPT-2: *_pdrop.
    # Activation checkpointing changes how backward gets its activations, not what the weights compute.
    return ("dropout" in name or name.endswith("pdrop") or name.endswith("drop_rate")
            or name == "gradient_checkpointing")


def _tensor_items(obj: Any, prefix: str = ""):
    """``(dotted name, tensor)`` for every tensor inside nested dicts / lists / tuples."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensor_items(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensor_items(v, f"{prefix}.{i}" if prefix else str(i))


def _tensor_sha256(t: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes (any dtype, bf16 included: the bytes are viewed as uint8)."""
    t = t.detach()
    if t.layout != torch.strided:
        t = t.to_dense()
    t = t.cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _checksums(state: dict) -> dict[str, str]:
    return {name: _tensor_sha256(t) for name, t in _tensor_items({k: v for k, v in state.items() if k != "checksums"})}


def save_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    step: int = 0, **extra: Any) -> Path:
    """Write a checkpoint that describes itself to ``path`` atomically; return the path.

    The file holds ``model_class`` (``"llmscratch.models.gpt.GPTModel"``), ``config`` (the model's ``cfg`` as a
    dict, when it has one), ``model`` (the state dict), ``optimizer`` (its state dict or ``None``), ``step``,
    everything in ``extra``, and ``checksums``: the sha256 of every tensor in it, so that :func:`load_checkpoint`
    notices a flipped bit. A compiled model is saved under its original parameter names.
    """
    model_class, config = _model_identity(model)
    state = {
        "format": CHECKPOINT_FORMAT,
        "model_class": model_class,
        "config": config,
        "model": _unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "step": int(step),
        **extra,
    }
    state["checksums"] = _checksums(state)
    return _atomic_torch_save(state, path)


def _read_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load and verify a checkpoint file: readable, a checkpoint dict, every tensor matching its checksum."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train first, or check the path")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointCorruptError(
            f"{path} is empty (0 bytes): the save or copy that wrote it was interrupted. Use another checkpoint "
            "(an earlier last.pt or best.pt), or train again"
        )
    if not zipfile.is_zipfile(path):
        raise CheckpointCorruptError(
            f"{path} is not a checkpoint: torch.save writes a zip archive and this {size:,}-byte file is not one "
            "(it is truncated, or another kind of file). Check the path, or use another checkpoint"
        )
    # weights_only=True: a checkpoint is data, never code to execute (safe to open one from elsewhere).
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # PyTorch's message here advises weights_only=False, i.e. running whatever code the file holds: not that.
        raise CheckpointCorruptError(
            f"{path} holds Python objects other than tensors and plain containers, so save_checkpoint did not "
            "write it; llmscratch reads checkpoints with weights_only=True and never runs code stored in one. "
            "If you trust the file, load it yourself and re-save what you need with save_checkpoint"
        ) from None
    except Exception as err:  # noqa: BLE001 - re-raised with the path and the likely cause
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointCorruptError(
            f"could not read the checkpoint {path} ({type(err).__name__}: {first}): the file is damaged "
            "(truncated or partly overwritten). Use another checkpoint (an earlier last.pt or best.pt)"
        ) from err
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            raise ValueError(
                f"{path} holds a bare state dict (torch.save(model.state_dict())), not a checkpoint: load it with "
                "model.load_state_dict(torch.load(path, weights_only=True)); save_checkpoint writes files that "
                "also carry the config and checksums"
            )
        raise ValueError(f"{path} is not an llmscratch checkpoint (a dict with a 'model' state dict); "
                         f"it holds a {type(ckpt).__name__}")
    stored = ckpt.get("checksums")
    if stored is not None:
        now = _checksums(ckpt)
        bad = sorted(k for k in set(stored) | set(now) if stored.get(k) != now.get(k))
        if bad:
            raise CheckpointCorruptError(
                f"{path} is corrupted: {len(bad)} tensor(s) differ from the sha256 recorded when it was saved "
                f"({', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}): a flipped bit on the disk or in a copy. "
                "Use another checkpoint (an earlier last.pt or best.pt), or copy the file again"
            )
    return ckpt


def _check_identity(path: Path, model: nn.Module, ckpt: dict) -> None:
    """Raise :class:`CheckpointMismatchError` naming the class or the config fields that differ."""
    model_class, config = _model_identity(model)
    saved_class, saved_config = ckpt.get("model_class"), ckpt.get("config")
    if saved_class is not None and saved_class != model_class:
        raise CheckpointMismatchError(
            f"{path.name} was saved from a {saved_class}, and this model is a {model_class}: load it into a "
            f"{saved_class.rsplit('.', 1)[-1]}, or pass check_config=False to load tensors whose names and shapes "
            "fit anyway"
        )
    if saved_config is None or config is None:
        return
    missing = object()
    diffs = [f"{k}: checkpoint {saved_config.get(k, '(absent)')!r} vs model {config.get(k, '(absent)')!r}"
             for k in sorted(set(saved_config) | set(config))
             if not _config_field_ignored(k) and saved_config.get(k, missing) != config.get(k, missing)]
    if diffs:
        name = model_class.rsplit(".", 1)[-1]
        raise CheckpointMismatchError(
            f"{path.name} was saved from a {name} with another config ({'; '.join(diffs)}). Build the model with "
            f"the saved config, which is load_checkpoint(path)['config'] (e.g. GPTModel(GPTConfig(**config))), or "
            "pass check_config=False to load tensors whose names and shapes fit anyway"
        )


def _check_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = _unwrap(model).state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append("shape mismatch: " + "; ".join(shapes[:5]) + (" ..." if len(shapes) > 5 else ""))
        if missing:
            parts.append(f"missing in checkpoint: {missing[:5]}" + (" ..." if len(missing) > 5 else ""))
        if unexpected:
            parts.append(f"not in model: {unexpected[:5]}" + (" ..." if len(unexpected) > 5 else ""))
        raise CheckpointMismatchError(
            "the checkpoint does not match the model (" + " | ".join(parts) + "). Build the model with the "
            "same config as the one that was saved (e.g. the same GPTConfig), then load again"
        )


def _load_into(ckpt: dict, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
               check_config: bool = True) -> None:
    if check_config:
        _check_identity(path, model, ckpt)
    _check_state_dict(model, ckpt["model"])
    _unwrap(model).load_state_dict(ckpt["model"])
    if optimizer is not None:
        if ckpt.get("optimizer") is None:
            raise ValueError(f"{path} holds no optimizer state; pass optimizer=None to load the weights only")
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except ValueError as err:
            raise CheckpointMismatchError(
                f"the optimizer state in {path} does not fit this optimizer ({err}); build the optimizer with the "
                "same parameter groups (configure_optimizer on the same model) before loading"
            ) from err


def load_checkpoint(path: str | Path, model: nn.Module | None = None,
                    optimizer: torch.optim.Optimizer | None = None, map_location="cpu",
                    check_config: bool = True) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`, load it into ``model`` (and ``optimizer``), and
    return the dict. With ``model=None`` it only reads and verifies the file (e.g. to get ``["config"]``).

    Checks, each with an error that names the fix: the file is readable (an empty, truncated or foreign file gets
    :class:`CheckpointCorruptError`); every tensor matches its stored sha256 (a flipped bit: the same error,
    naming the tensor); the model class and config are the saved ones (:class:`CheckpointMismatchError` naming
    the fields, e.g. ``n_heads: checkpoint 4 vs model 8``; dropout rates may differ; ``check_config=False``
    skips this check); the tensors' names and shapes fit (the same error, naming the tensors). Checkpoints of
    the older format (no config, no checksums) load with the shape check only. Tensors are read onto
    ``map_location`` (the CPU by default); ``load_state_dict`` copies them to the model's device.
    """
    path = Path(path)
    ckpt = _read_checkpoint(path, map_location)
    if model is None:
        if optimizer is not None:
            raise ValueError("an optimizer state can only be loaded together with its model: pass model=")
        return ckpt
    _load_into(ckpt, path, model, optimizer, check_config)
    return ckpt


def _loader_generators(loader: Any) -> list[torch.Generator]:
    """The ``torch.Generator`` objects that decide a loader's order: ``DataLoader(generator=...)``, and its
    sampler's (``RandomSampler`` keeps the one the loader passed; a sampler built by hand may have its own)."""
    found: list[torch.Generator] = []
    batch_sampler = getattr(loader, "batch_sampler", None)
    for owner in (loader, getattr(loader, "sampler", None), getattr(batch_sampler, "sampler", None)):
        g = getattr(owner, "generator", None)
        if isinstance(g, torch.Generator) and all(g is not f for f in found):
            found.append(g)
    return found


def _rng_state(loaders: Iterable = ()) -> dict:
    """Every random-number state a training step can draw from, as tensors and plain values (a checkpoint
    stays loadable with ``weights_only=True``): PyTorch's CPU and CUDA generators (dropout; a ``DataLoader``
    without ``generator=`` seeds its shuffle from the CPU one), Python's and NumPy's (datasets that augment),
    and the generators of ``loaders``."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "loaders": [g.get_state() for loader in loaders for g in _loader_generators(loader)],
    }


def _set_rng_state(state: dict, loaders: Iterable = ()) -> None:
    """Restore what :func:`_rng_state` captured (states a checkpoint of the older format lacks are skipped)."""
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    if (py := state.get("python")) is not None:
        random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    if (npy := state.get("numpy")) is not None:
        np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                             npy["cached"]))
    if "loaders" in state:
        generators = [g for loader in loaders for g in _loader_generators(loader)]
        if len(generators) != len(state["loaders"]):
            raise CheckpointMismatchError(
                f"the checkpoint holds the state of {len(state['loaders'])} data-loader generator(s) but this "
                f"training loader has {len(generators)}: build the loader as in the saved run (the same "
                "shuffle= and generator=) so the data order can be replayed"
            )
        for g, s in zip(generators, state["loaders"]):
            g.set_state(s.cpu())


