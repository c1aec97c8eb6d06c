"""Parameter-efficient fine-tuning: LoRA (Hu et al., 2021) for every package model, and its exchange with ``peft``.

LoRA freezes a pretrained ``nn.Linear`` ``W`` (``out x in``) and learns a low-rank update beside it::

    y = x W^T + b + scaling * dropout(x) A^T B^T        A: (r, in), B: (out, r), r << min(in, out)

``B`` starts at zero, so an untouched adapter leaves the model exactly as it was; ``scaling`` is ``alpha / r``
(rsLoRA, Kalajdzievski 2023: ``alpha / sqrt(r)``, which keeps the update's size steady as ``r`` grows).
After training, :func:`merge_lora` folds ``scaling * B A`` into ``W`` so inference costs nothing extra.

- :func:`apply_lora` wraps the named ``nn.Linear`` layers of a model (GPT, BERT, ViT: any ``nn.Module``) in
  :class:`LoRALinear`, and named ``nn.Embedding`` layers (GPT's ``tok_emb``) in :class:`LoRAEmbedding`, and
  freezes everything else (except ``modules_to_save``, e.g. a new classification head).
- :func:`merge_lora` / :func:`unmerge_lora`; :func:`trainable_parameters` (count, share, optimizer-state bytes).
- :func:`lora_state_dict`, :func:`save_lora`, :func:`load_lora`: adapters (and the saved head) only, as
  safetensors; the base model is loaded separately.
- :func:`export_peft_adapter` / :func:`import_peft_adapter`: the ``peft`` folder format
  (``adapter_config.json`` + ``adapter_model.safetensors``) for a GPT or BERT loaded from a Hugging Face
  checkpoint, so ``peft.PeftModel.from_pretrained`` on the ``transformers`` model gives the same logits.
- :class:`BottleneckAdapter` / :func:`apply_adapters`: Houlsby adapters (identity at initialisation).
- :class:`PromptTuning` (prompt tuning; P-tuning with ``peft``'s ``PromptEncoder`` layers), :class:`PrefixTuning`
  and :func:`virtual_token_mask`: virtual tokens, with the padding mask extended by ``P`` ones in front (the
  virtual tokens are attended to, padding is not), equal to ``peft`` on padded ``transformers`` GPT-2 batches.

:class:`LoRALinear` *is* an ``nn.Linear`` holding the same ``weight`` and ``bias`` parameters as the layer it
replaced, so parameter names, ``module.qkv.weight`` accesses and the models' ``save_pretrained`` are unchanged;
the adapter adds ``lora_A`` and ``lora_B`` next to them. :class:`LoRAEmbedding` is the same for an
``nn.Embedding``, with ``peft``'s names and initialisation for embeddings (``lora_embedding_A`` starts at zero).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
from torch import nn
from torch.nn import functional as F

from .models.attention import check_attention_mask
from .utils import atomic_write, write_weights_folder

__all__ = [
    "LoRALinear", "LoRAEmbedding", "apply_lora", "merge_lora", "unmerge_lora", "lora_layers", "lora_state_dict", "save_lora",
    "load_lora", "TrainableReport", "trainable_parameters", "export_peft_adapter", "import_peft_adapter",
    "BottleneckAdapter", "apply_adapters", "PrefixTuning", "PromptTuning", "virtual_token_mask",
]


class _Mergeable:
    """Merge / unmerge for a LoRA layer whose frozen ``weight`` has the shape of its ``delta_weight()``."""

    merged: bool
    weight: nn.Parameter

    def _share_and_scale(self, base: nn.Module, r: int, alpha: float, use_rslora: bool,
                         scaling: float | None) -> None:
        """Share and freeze ``base.weight``; set the rank and ``scaling`` (``alpha / r``, rsLoRA's
        ``alpha / sqrt(r)``, or given directly)."""
        _check_rank(r)
        self.weight = base.weight
        self.weight.requires_grad_(False)
        self.r, self.alpha, self.use_rslora = r, float(alpha), use_rslora
        self.scaling = float(scaling) if scaling is not None else (
            alpha / math.sqrt(r) if use_rslora else alpha / r)
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            raise RuntimeError("this LoRA layer is already merged; merging again would add the update twice "
                               "(call unmerge_lora(model) first)")
        self.weight.copy_((self.weight.float() + self.delta_weight()).to(self.weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            raise RuntimeError("this LoRA layer is not merged; there is nothing to unmerge (merge_lora(model))")
        self.weight.copy_((self.weight.float() - self.delta_weight()).to(self.weight.dtype))
        self.merged = False

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        """The trained tensors by attribute name: ``lora_A``/``lora_B`` or ``lora_embedding_A``/``_B``."""
        return {n: p for n, p in self.named_parameters(recurse=False) if n.startswith("lora_")}

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, r={self.r}, alpha={self.alpha:g}, scaling={self.scaling:g}"
                f"{', merged' if self.merged else ''}")


class LoRALinear(_Mergeable, nn.Linear):
    """An ``nn.Linear`` plus a low-rank update ``scaling * B A``; shapes ``(..., in) -> (..., out)``.

    Args:
        base: the layer to adapt; its ``weight`` and ``bias`` parameters are shared (not copied) and frozen.
        r: rank of the update (``A``: ``(r, in)``, ``B``: ``(out, r)``).
        alpha: scale numerator; ``scaling = alpha / r`` (or ``alpha / sqrt(r)`` with ``use_rslora``).
        dropout: dropout on the adapter's input only (the frozen path sees ``x`` unchanged), as in the paper.
        scaling: set the scale directly (used when importing an adapter whose rank was stacked); overrides alpha.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0, use_rslora: bool = False,
                 scaling: float | None = None):
        nn.Module.__init__(self)  # not nn.Linear.__init__: the parameters come from ``base``
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
        self._share_and_scale(base, r, alpha, use_rslora, scaling)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.bias = base.bias
        if self.bias is not None:
            self.bias.requires_grad_(False)
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, device=w.device, dtype=w.dtype))
        # A as nn.Linear's default init (what peft uses); B = 0, so the update starts at exactly zero.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def delta_weight(self) -> torch.Tensor:
        """``scaling * B A``, ``(out, in)``, computed in float32 (a bf16 product would add its own rounding)."""
        return self.scaling * (self.lora_B.float() @ self.lora_A.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if self.merged:
            return y
        # Two thin matmuls (in -> r -> out); never the (out, in) product B A.
        return y + F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B) * self.scaling


class LoRAEmbedding(_Mergeable, nn.Embedding):
    """An ``nn.Embedding`` plus a low-rank update of its table; ids ``(...)`` -> vectors ``(..., dim)``.

    ``peft``'s LoRA ``Embedding`` layer: the table ``W`` (``num_embeddings x dim``) becomes
    ``W + scaling * (B A)^T`` with ``lora_embedding_A``: ``(r, num_embeddings)`` and ``lora_embedding_B``:
    ``(dim, r)``. Looking up id ``i`` adds ``scaling * B A[:, i]``: every id has its own ``r`` coefficients
    (a column of ``A``), mixed by a shared ``B``. The initialisation is the reverse of :class:`LoRALinear`'s:
    ``A`` starts at zero (an id's coefficients stay zero until that id is trained on), ``B`` is standard normal;
    the update is again exactly zero at the start. No dropout, as in ``peft`` (dropping an id's lookup is not
    dropping features).

    With tied weights (GPT's ``lm_head`` shares ``tok_emb.weight``) the unmerged update changes the input
    embedding only, as in ``peft``; merging writes it into the shared table, so the LM head changes too.

    Args:
        base: the embedding to adapt; its ``weight`` is shared (not copied) and frozen.
        r, alpha, use_rslora, scaling: as for :class:`LoRALinear`.
    """

    def __init__(self, base: nn.Embedding, r: int, alpha: float, use_rslora: bool = False,
                 scaling: float | None = None):
        nn.Module.__init__(self)  # not nn.Embedding.__init__: the table comes from ``base``
        self._share_and_scale(base, r, alpha, use_rslora, scaling)
        for attr in ("num_embeddings", "embedding_dim", "padding_idx", "max_norm", "norm_type",
                     "scale_grad_by_freq", "sparse"):
            setattr(self, attr, getattr(base, attr))
        w = base.weight
        self.lora_embedding_A = nn.Parameter(torch.zeros(r, self.num_embeddings, device=w.device, dtype=w.dtype))
        self.lora_embedding_B = nn.Parameter(torch.empty(self.embedding_dim, r, device=w.device, dtype=w.dtype))
        nn.init.normal_(self.lora_embedding_B)  # peft's init; A = 0 makes the update start at exactly zero

    def delta_weight(self) -> torch.Tensor:
        """``scaling * (B A)^T``, ``(num_embeddings, dim)``, in float32."""
        return self.scaling * (self.lora_embedding_B.float() @ self.lora_embedding_A.float()).T

    def _lookup(self, x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return F.embedding(x, table, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq,
                           self.sparse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._lookup(x, self.weight)
        if self.merged:
            return y
        # Look up each id's r coefficients (a column of A), then map them to the d_model update with B.
        return y + (self._lookup(x, self.lora_embedding_A.T) @ self.lora_embedding_B.T) * self.scaling


def _check_rank(r) -> None:
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise ValueError(f"LoRA rank r must be a positive int, got {r!r}; typical values are 4, 8 or 16")


def _matches(name: str, targets: Iterable[str]) -> bool:
    """peft's rule: a target is a module's full name or a dotted suffix of it (``"attn.qkv"``, ``"qkv"``)."""
    return any(name == t or name.endswith("." + t) for t in targets)


def _linear_names(model: nn.Module, kind: type = nn.Linear) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, kind) and n]


def _suffixes(names: list[str]) -> list[str]:
    """Layer-independent names for an error message: ``blocks.3.attn.qkv`` -> ``attn.qkv``."""
    out = []
    for n in names:
        parts = n.split(".")
        digits = [i for i, p in enumerate(parts) if p.isdigit()]
        s = ".".join(parts[digits[-1] + 1:]) if digits else n
        if s not in out:
            out.append(s)
    return out


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def apply_lora(model: nn.Module, r: int, alpha: float, dropout: float = 0.0,
               target_modules: Iterable[str] = ("attn.qkv", "attn.proj"), use_rslora: bool = False,
               modules_to_save: Iterable[str] = ()) -> nn.Module:
    """Wrap the ``nn.Linear`` layers named by ``target_modules`` in :class:`LoRALinear` and the
    ``nn.Embedding`` layers named there in :class:`LoRAEmbedding`; freeze the rest.

    Args:
        model: any module (``GPTModel``, ``BertForSequenceClassification``, ``ViT``...); changed in place.
        r, alpha, dropout, use_rslora: see :class:`LoRALinear` (``dropout`` applies to the Linear adapters only;
            embeddings have none, as in ``peft``).
        target_modules: full module names or dotted suffixes (``"attn.qkv"`` matches ``blocks.0.attn.qkv`` in every
            block; BERT's are ``"attn.sublayer.qkv"``, ``"ff.sublayer.fc"``...); GPT's token embedding is
            ``"tok_emb"`` (``peft``: ``"wte"``).
        modules_to_save: modules trained in full and saved with the adapters (a new classification head, e.g.
            ``"lm_head"`` or ``"classifier"``); matched like ``target_modules``.

    Returns the model. Raises ``ValueError`` when a target matches no ``nn.Linear`` or ``nn.Embedding`` (listing
    those that exist).
    """
    _check_rank(r)
    targets = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    keep = [modules_to_save] if isinstance(modules_to_save, str) else list(modules_to_save)
    if not targets:
        raise ValueError("target_modules is empty; name the Linear layers to adapt, e.g. ['attn.qkv', 'attn.proj']")
    linears, embeddings = _linear_names(model), _linear_names(model, nn.Embedding)
    for t in targets:
        if not any(_matches(n, [t]) for n in linears + embeddings):
            raise ValueError(f"target module {t!r} matches no nn.Linear or nn.Embedding in {type(model).__name__}; "
                             f"its Linear layers are (per block): {', '.join(_suffixes(linears))}; its Embedding "
                             f"layers: {', '.join(_suffixes(embeddings)) or 'none'}")
    chosen = [n for n in linears + embeddings if _matches(n, targets)]
    for n in chosen:
        if isinstance(model.get_submodule(n), _Mergeable):
            raise ValueError(f"{n!r} already has a LoRA adapter; apply_lora once per model (merge_lora first to "
                             "stack a second adapter on the merged weights)")
    for p in model.parameters():
        p.requires_grad_(False)
    for n in chosen:
        m = model.get_submodule(n)
        _set_module(model, n, LoRAEmbedding(m, r, alpha, use_rslora) if isinstance(m, nn.Embedding)
                    else LoRALinear(m, r, alpha, dropout, use_rslora))
    kept = [n for n, _ in model.named_modules() if n and keep and _matches(n, keep)]
    for t in keep:
        if not any(_matches(n, [t]) for n in kept):
            raise ValueError(f"modules_to_save {t!r} matches no module of {type(model).__name__}")
    for n in kept:
        for p in model.get_submodule(n).parameters():
            p.requires_grad_(True)
    model._lora_config = dict(r=r, alpha=float(alpha), dropout=float(dropout), use_rslora=use_rslora,
                              target_modules=targets, modules_to_save=keep)
    return model


def lora_layers(model: nn.Module) -> dict[str, LoRALinear | LoRAEmbedding]:
    """Module name -> :class:`LoRALinear` or :class:`LoRAEmbedding`, in model order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, _Mergeable)}


def _require_lora(model: nn.Module, what: str) -> dict[str, LoRALinear | LoRAEmbedding]:
    layers = lora_layers(model)
    if not layers:
        raise ValueError(f"{what}: the model has no LoRA layers; call apply_lora(model, r, alpha, ...) first")
    return layers


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight (``W += scaling * B A``): inference at the base model's cost.
    In float32 the output is unchanged to ~1e-6; in bf16 the sum is rounded to bf16 (measure it)."""
    layers = _require_lora(model, "merge_lora")
    if any(m.merged for m in layers.values()):
        raise RuntimeError("the model's LoRA layers are already merged; merging twice would add the update twice "
                           "(unmerge_lora(model) first)")
    for m in layers.values():
        m.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo :func:`merge_lora` (``W -= scaling * B A``) to keep training the adapters."""
    layers = _require_lora(model, "unmerge_lora")
    if not all(m.merged for m in layers.values()):
        raise RuntimeError("the model's LoRA layers are not merged; nothing to unmerge (merge_lora(model) first)")
    for m in layers.values():
        m.unmerge()
    return model


# ---------------------------------------------------------------------- what is trained, what is saved
@dataclass
class TrainableReport:
    """What fine-tuning trains: ``trainable`` of ``total`` parameters, and AdamW's state for them (two fp32
    moments per trainable parameter: ``optimizer_bytes``)."""

    trainable: int
    total: int
    optimizer_bytes: int

    @property
    def share(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return (f"trainable {self.trainable:,} of {self.total:,} parameters ({100 * self.share:.3f}%); "
                f"AdamW state {self.optimizer_bytes / 2**20:.2f} MiB")


def trainable_parameters(model: nn.Module) -> TrainableReport:
    """Count trainable and all parameters (a tied matrix once) and AdamW's state bytes (``exp_avg`` and
    ``exp_avg_sq``, float32 each: 8 bytes per trainable parameter)."""
    params = list(model.parameters())  # a shared tensor is yielded once
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return TrainableReport(trainable, sum(p.numel() for p in params), 8 * trainable)


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters (``*.lora_A``, ``*.lora_B``; ``*.lora_embedding_A/B``) and the ``modules_to_save`` given to
    :func:`apply_lora`:
    everything fine-tuning changed, nothing of the frozen base."""
    layers = _require_lora(model, "lora_state_dict")
    if any(m.merged for m in layers.values()):
        raise RuntimeError("the adapters are merged into the weights; unmerge_lora(model) before saving them "
                           "(a saved adapter is applied on top of the unmerged base)")
    state = {}
    for n, m in layers.items():
        state.update({f"{n}.{k}": p for k, p in m.adapter_parameters().items()})
    keep = getattr(model, "_lora_config", {}).get("modules_to_save", [])
    for name, p in model.named_parameters():
        if keep and any(_matches(name.rpartition(".")[0], [k]) or name.startswith(k + ".") for k in keep):
            state[name] = p
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_lora(model: nn.Module, path: str | os.PathLike) -> int:
    """Write :func:`lora_state_dict` as one safetensors file (config in its metadata); returns its size in bytes."""
    from safetensors.torch import save

    cfg = getattr(model, "_lora_config", None)
    if cfg is None:
        raise ValueError("save_lora: the model has no LoRA configuration; call apply_lora(model, ...) first")
    data = save(lora_state_dict(model), metadata={"llmscratch_lora": json.dumps(cfg)})
    with atomic_write(path) as f:
        f.write(data)
    return len(data)


def load_lora(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load adapters (and saved heads) from :func:`save_lora` into ``model``: the same base model, loaded
    separately. LoRA is applied first (with the saved configuration) if the model has none yet. A tensor of
    another shape (an adapter trained on another model size) is an error naming it."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    if "llmscratch_lora" not in meta:
        raise ValueError(f"{path} is not a LoRA file written by save_lora (no 'llmscratch_lora' metadata); for a "
                         "peft adapter folder use import_peft_adapter")
    cfg = json.loads(meta["llmscratch_lora"])
    if not lora_layers(model):
        apply_lora(model, cfg["r"], cfg["alpha"], cfg["dropout"], cfg["target_modules"], cfg["use_rslora"],
                   cfg["modules_to_save"])
    ours = dict(model.named_parameters())
    missing = [k for k in state if k not in ours]
    if missing:
        raise ValueError(f"{path} has tensors this model lacks: {missing[:4]}; was it saved from a model with other "
                         "target_modules or another number of layers?")
    for k, v in state.items():
        if v.shape != ours[k].shape:
            raise ValueError(f"adapter tensor {k!r} has shape {tuple(v.shape)} but this model's is "
                             f"{tuple(ours[k].shape)}: the adapter was trained on a model of another shape "
                             "(d_model / rank / number of labels); load it onto the base model it was trained on")
    not_loaded = [f"{n}.{k}" for n, m in lora_layers(model).items() for k in m.adapter_parameters()
                  if f"{n}.{k}" not in state]
    if not_loaded:
        raise ValueError(f"{path} lacks adapters this model has: {not_loaded[:4]}")
    with torch.no_grad():
        for k, v in state.items():
            ours[k].copy_(v)
    return model


# ---------------------------------------------------------------------- the peft folder format
def _hf_modules(model: nn.Module) -> tuple[dict[str, list[str]], bool, str | None]:
    """Our module name -> the Hugging Face module name(s) it holds (three for BERT's fused QKV), whether those
    are GPT-2 ``Conv1D`` layers (peft's ``fan_in_fan_out``), and peft's task type."""
    from .models.bert import _Pretrained
    from .models.gpt import GPTModel

    out: dict[str, list[str]] = {}
    if isinstance(model, GPTModel):
        for hf, (ours, _) in model._hf_name_map().items():
            if hf.endswith(".weight"):  # blocks and the embeddings (tok_emb <-> wte, pos_emb <-> wpe)
                out[ours.removesuffix(".weight")] = ["transformer." + hf.removesuffix(".weight")]
        return out, True, "CAUSAL_LM"
    if isinstance(model, _Pretrained):
        for ours, hf in model._hf_name_map().items():
            if ours.endswith(".weight"):
                names = [h.removesuffix(".weight") for h in hf]
                if not hasattr(model, "bert"):  # a bare BertModel's modules have no "bert." prefix in transformers
                    names = [h.removeprefix("bert.") for h in names]
                out[ours.removesuffix(".weight")] = names
        return out, False, None
    raise TypeError(f"peft export/import knows GPTModel and the BERT classes, not {type(model).__name__}")


def export_peft_adapter(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write the model's LoRA adapters as a ``peft`` folder (``adapter_config.json`` +
    ``adapter_model.safetensors``) for the matching ``transformers`` model.

    A fused layer (BERT's ``qkv``) becomes one peft adapter per Hugging Face layer (``query``, ``key``,
    ``value``), each with the shared ``A`` and its rows of ``B``: the same update, exactly. An embedding adapter
    (GPT's ``tok_emb`` -> ``transformer.wte``) is saved under peft's names ``lora_embedding_A`` /
    ``lora_embedding_B`` (no ``.weight``), its ``A`` cut to the real vocabulary. ``modules_to_save``
    (heads) are not exported: peft keeps them under its own names; save them with :func:`save_lora`.
    """
    layers = _require_lora(model, "export_peft_adapter")
    if any(m.merged for m in layers.values()):
        raise RuntimeError("export_peft_adapter: the adapters are merged; unmerge_lora(model) first")
    names, fan_in_fan_out, task = _hf_modules(model)
    rs = {m.r for m in layers.values()}
    scalings = {m.scaling for m in layers.values()}
    if len(rs) > 1 or len(scalings) > 1:
        raise ValueError("export_peft_adapter needs one rank and one scaling for all layers (peft's config has one)")
    r, scaling = rs.pop(), scalings.pop()
    state, targets = {}, []
    for n, m in layers.items():
        if n not in names:
            raise ValueError(f"LoRA layer {n!r} has no Hugging Face counterpart; peft cannot load it")
        hf = names[n]
        if isinstance(m, LoRAEmbedding):
            (h,) = hf
            rows = _hf_rows(model, n, m.num_embeddings)  # a padded vocabulary's extra rows are never looked up
            state[f"base_model.model.{h}.lora_embedding_A"] = m.lora_embedding_A.detach()[:, :rows].to(
                "cpu").contiguous().clone()
            state[f"base_model.model.{h}.lora_embedding_B"] = m.lora_embedding_B.detach().to("cpu").contiguous(
                ).clone()
            targets.append(h)
            continue
        for h, b in zip(hf, m.lora_B.detach().chunk(len(hf), dim=0)):
            state[f"base_model.model.{h}.lora_A.weight"] = m.lora_A.detach().to("cpu").contiguous().clone()
            state[f"base_model.model.{h}.lora_B.weight"] = b.to("cpu").contiguous().clone()
            targets.append(h)
    first = next(iter(layers.values()))
    dropout = max([float(getattr(getattr(m, "lora_dropout", None), "p", 0.0)) for m in layers.values()])
    # peft computes scaling from (lora_alpha, r, use_rslora); write the alpha that gives ours exactly.
    alpha = scaling * (math.sqrt(r) if first.use_rslora else r)
    config = {"peft_type": "LORA", "task_type": task, "r": r, "lora_alpha": alpha,
              "lora_dropout": dropout, "use_rslora": first.use_rslora,
              "target_modules": sorted(targets), "fan_in_fan_out": fan_in_fan_out, "bias": "none",
              "modules_to_save": None, "inference_mode": True, "base_model_name_or_path": None}
    return write_weights_folder(path, state, config, weights_name="adapter_model.safetensors",
                                config_name="adapter_config.json")


def import_peft_adapter(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Apply a ``peft`` LoRA adapter folder (written by ``PeftModel.save_pretrained`` for the matching
    ``transformers`` model) to our model: the same logits as the peft model.

    Separate Hugging Face layers that we fuse (BERT's ``query``/``key``/``value`` -> ``qkv``) become one adapter
    of rank ``3 r``: ``A`` stacked, ``B`` block-diagonal, which is exactly the three updates side by side.
    An embedding adapter (``transformer.wte``'s ``lora_embedding_A/B``) becomes a :class:`LoRAEmbedding` on
    ``tok_emb`` (``A`` padded with zero columns for a padded vocabulary).
    """
    from safetensors.torch import load_file

    folder = Path(path)
    with open(folder / "adapter_config.json", encoding="utf-8") as f:
        cfg = json.load(f)
    if cfg.get("peft_type") != "LORA":
        raise ValueError(f"{folder} holds a {cfg.get('peft_type')!r} adapter; import_peft_adapter reads LoRA")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise ValueError("import_peft_adapter needs one rank and alpha for all layers (no rank/alpha_pattern)")
    if lora_layers(model):
        raise ValueError("the model already has LoRA layers; import onto a freshly loaded base model")
    r, alpha, rs = cfg["r"], cfg["lora_alpha"], bool(cfg.get("use_rslora", False))
    scaling = alpha / math.sqrt(r) if rs else alpha / r
    raw = load_file(str(folder / "adapter_model.safetensors"))
    # peft saves "base_model.model.<module>.lora_A.weight" (older versions add the adapter name: ".default").
    ab: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in raw.items():
        k = k.removeprefix("base_model.model.").replace(".default.", ".").removesuffix(".default")
        mod, _, rest = k.rpartition(".lora_")
        if not mod:
            raise ValueError(f"{folder} holds {k!r}, not a LoRA tensor; only LoRA A/B are imported")
        ab.setdefault(mod, {})[rest.removesuffix(".weight")] = v
    names, _, _ = _hf_modules(model)
    for ours, hf in names.items():
        present = [h for h in hf if h in ab]
        if not present:
            continue
        if len(present) != len(hf):
            raise ValueError(f"peft adapts {present} but not all of {hf}, which this model fuses into {ours!r}")
        base = model.get_submodule(ours)
        parts = [ab.pop(h) for h in hf]
        if isinstance(base, nn.Embedding):
            rows = _hf_rows(model, ours, base.num_embeddings)
            _set_module(model, ours, _import_embedding(base, hf[0], parts[0], rows, alpha, rs, scaling))
            continue
        if set(parts[0]) != {"A", "B"}:
            raise ValueError(f"peft's adapter for {hf} has {sorted(parts[0])}, not a Linear's lora_A / lora_B")
        A = torch.cat([p["A"] for p in parts], 0)  # (k r, in)
        B = torch.block_diag(*[p["B"] for p in parts])  # (out, k r)
        if A.shape[1] != base.in_features or B.shape[0] != base.out_features:
            raise ValueError(f"adapter for {hf} has shapes A {tuple(A.shape)}, B {tuple(B.shape)} that do not fit "
                             f"{ours!r} ({base.out_features} x {base.in_features}): another model size")
        layer = LoRALinear(base, A.shape[0], alpha, float(cfg.get("lora_dropout", 0.0)), rs, scaling=scaling)
        with torch.no_grad():
            layer.lora_A.copy_(A)
            layer.lora_B.copy_(B)
        _set_module(model, ours, layer)
    if ab:
        raise ValueError(f"{folder} adapts modules this model lacks: {sorted(ab)[:4]}")
    for n, p in model.named_parameters():
        p.requires_grad_(".lora_" in n)
    model._lora_config = dict(r=r, alpha=float(alpha), dropout=float(cfg.get("lora_dropout", 0.0)), use_rslora=rs,
                              target_modules=list(lora_layers(model)), modules_to_save=[])
    return model


def _hf_rows(model: nn.Module, name: str, rows: int) -> int:
    """Rows of the Hugging Face table for our embedding ``name``: GPT's padded ``tok_emb`` has ``vocab_size``."""
    cfg = getattr(model, "cfg", None)
    return min(rows, cfg.vocab_size) if name == "tok_emb" and hasattr(cfg, "vocab_size") else rows


def _import_embedding(base: nn.Embedding, hf: str, part: dict[str, torch.Tensor], rows: int, alpha: float,
                      rs: bool, scaling: float) -> LoRAEmbedding:
    """peft's ``lora_embedding_A`` ``(r, rows)`` / ``lora_embedding_B`` ``(dim, r)`` as a :class:`LoRAEmbedding`."""
    if set(part) != {"embedding_A", "embedding_B"}:
        raise ValueError(f"peft's adapter for the embedding {hf!r} has {sorted(part)}, not lora_embedding_A / "
                         "lora_embedding_B")
    A, B = part["embedding_A"], part["embedding_B"]
    if A.shape[1] != rows or B.shape[0] != base.embedding_dim or A.shape[0] != B.shape[1]:
        raise ValueError(f"embedding adapter for {hf!r} has shapes A {tuple(A.shape)}, B {tuple(B.shape)} that do "
                         f"not fit a table of {rows} x {base.embedding_dim}: another model size")
    layer = LoRAEmbedding(base, A.shape[0], alpha, rs, scaling=scaling)
    with torch.no_grad():
        layer.lora_embedding_A.zero_()  # columns of a padded vocabulary's extra rows stay zero
        layer.lora_embedding_A[:, :rows].copy_(A)
        layer.lora_embedding_B.copy_(B)
    return layer


# ---------------------------------------------------------------------- bottleneck adapters (Houlsby et al., 2019)
class BottleneckAdapter(nn.Module):
    """``h + up(GELU(down(h)))``: ``d -> bottleneck -> d``, ``(..., d) -> (..., d)``. ``up`` starts at zero, so
    an untrained adapter is exactly the identity and fine-tuning starts from the pretrained model."""

    def __init__(self, d: int, bottleneck: int):
        super().__init__()
        _check_rank(bottleneck)
        self.down = nn.Linear(d, bottleneck)
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck, d)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(self.act(self.down(h)))

    def _hook(self, module, args, output):  # forward hook on the sub-layer it follows
        return self(output)


def apply_adapters(model: nn.Module, bottleneck: int, target_modules: Iterable[str] = ("attn", "ff"),
                   train_norms: bool = True, modules_to_save: Iterable[str] = ()) -> nn.Module:
    """Insert a :class:`BottleneckAdapter` after the output of each named sub-layer (Houlsby: after attention and
    after the feed-forward network, before the residual addition); freeze everything else except the LayerNorms
    (``train_norms``, as Houlsby does) and ``modules_to_save``.

    The adapter becomes a child ``adapter`` of the sub-layer (saved in its state dict) and runs as a forward hook on
    it, so no model code changes. Targets for GPT: ``"attn"``, ``"ff"``; for BERT: ``"attn.sublayer"``,
    ``"ff.sublayer"``. The sub-layer's output width is read from its last ``nn.Linear``.
    """
    targets = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    keep = [modules_to_save] if isinstance(modules_to_save, str) else list(modules_to_save)
    names = [n for n, _ in model.named_modules() if n]
    chosen = [n for n in names if _matches(n, targets) and not n.endswith(".adapter")]
    for t in targets:
        if not any(_matches(n, [t]) for n in chosen):
            raise ValueError(f"adapter target {t!r} matches no module of {type(model).__name__}; e.g. "
                             f"{', '.join(_suffixes([n for n in names if '.' in n])[:12])}")
    for p in model.parameters():
        p.requires_grad_(False)
    for n in chosen:
        sub = model.get_submodule(n)
        if hasattr(sub, "adapter"):
            raise ValueError(f"{n!r} already has an adapter")
        linears = [m for m in sub.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(f"{n!r} has no nn.Linear to read its output width from")
        w = linears[-1].weight
        sub.adapter = BottleneckAdapter(linears[-1].out_features, bottleneck).to(w.device, w.dtype)
        sub.register_forward_hook(sub.adapter._hook)
    from .models.layers import LayerNorm

    for n, m in model.named_modules():
        if isinstance(m, BottleneckAdapter) or (train_norms and isinstance(m, (nn.LayerNorm, LayerNorm))) \
                or (keep and _matches(n, keep)):
            for p in m.parameters():
                p.requires_grad_(True)
    return model


# ---------------------------------------------------------------------- virtual tokens and the padding mask
def virtual_token_mask(attention_mask: torch.Tensor | None, num_virtual_tokens: int,
                       batch: int, seq: int) -> torch.Tensor | None:
    """The padding mask extended by ``num_virtual_tokens`` ones in front: ``(batch, seq)`` -> ``(batch, P + seq)``.

    Every real token may attend to every virtual token (they are never padding); padded positions stay masked.
    ``None`` stays ``None`` (no padding). This is what ``peft`` does with ``prefix_attention_mask``.
    """
    if attention_mask is None:
        return None
    if tuple(attention_mask.shape) != (batch, seq):
        raise ValueError(f"attention_mask must have the input's shape (batch, seq) = {(batch, seq)}, got "
                         f"{tuple(attention_mask.shape)}; give it for the real tokens only: the "
                         f"{num_virtual_tokens} virtual tokens are added in front here")
    mask = check_attention_mask(attention_mask)
    return torch.cat([mask.new_ones(batch, num_virtual_tokens), mask], dim=1)


# ---------------------------------------------------------------------- prefix tuning (Li & Liang, 2021)
class PrefixTuning(nn.Module):
    """Prefix tuning / P-tuning v2 for a :class:`~llmscratch.models.gpt.GPTModel`: ``num_virtual_tokens``
    trained key/value vectors per layer and head, placed in each attention layer's KV cache before the input, so
    every real token attends to them; the model itself is frozen and unchanged.

    ``prefix``: ``(num_virtual_tokens, n_layers * 2 * d_model)``, laid out as ``peft``'s
    ``PrefixTuningConfig`` embedding (per layer: keys then values, heads then head_dim), so its weights copy over
    (:meth:`load_peft`). Positions of the real tokens start after the prefix, as in ``transformers``.

    ``forward(idx, attention_mask=None)``: ``(batch, seq)`` (and the padding mask of the real tokens,
    ``(batch, seq)``, 1 = token, 0 = padding) -> logits ``(batch, seq, vocab)``.
    """

    def __init__(self, model: nn.Module, num_virtual_tokens: int):
        super().__init__()
        _check_rank(num_virtual_tokens)
        self.model = model
        for p in model.parameters():
            p.requires_grad_(False)
        cfg = model.cfg
        self.num_virtual_tokens = num_virtual_tokens
        w = model.tok_emb.weight
        self.prefix = nn.Parameter(torch.randn(num_virtual_tokens, cfg.n_layers * 2 * cfg.d_model,
                                               device=w.device, dtype=w.dtype) * 0.02)

    def caches(self, batch: int, seq: int) -> list:
        """One KV cache per layer, holding the prefix (length ``num_virtual_tokens``) and room for ``seq`` more."""
        cfg, p = self.model.cfg, self.num_virtual_tokens
        kv = self.prefix.view(p, cfg.n_layers * 2, cfg.n_heads, cfg.head_dim).permute(1, 2, 0, 3)  # (2L, h, P, hd)
        caches = self.model.new_cache(batch, max_len=p + seq)
        for i, c in enumerate(caches):
            c.append(kv[2 * i].expand(batch, -1, -1, -1), kv[2 * i + 1].expand(batch, -1, -1, -1))
        return caches

    def forward(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        _check_ids(idx)
        b, t = idx.shape
        _check_fits(self.num_virtual_tokens, t, self.model.cfg.context_length)
        mask = virtual_token_mask(attention_mask, self.num_virtual_tokens, b, t)  # (B, P + T): the cache's too
        return self.model(idx, attention_mask=mask, cache=self.caches(b, t))

    @torch.no_grad()
    def load_peft(self, weight: torch.Tensor) -> "PrefixTuning":
        """Copy ``peft``'s prefix embedding (``prompt_encoder.embedding.weight``, no projection) into ours."""
        if weight.shape != self.prefix.shape:
            raise ValueError(f"peft prefix weight has shape {tuple(weight.shape)}, ours is "
                             f"{tuple(self.prefix.shape)} (num_virtual_tokens x n_layers*2*d_model)")
        self.prefix.copy_(weight)
        return self


def _check_ids(idx: torch.Tensor) -> None:
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2:
        shape = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise ValueError(f"idx must be token ids of shape (batch, seq), got {shape}; for one sequence use "
                         "idx.unsqueeze(0)")


def _check_fits(p: int, t: int, context_length: int) -> None:
    if p + t > context_length:
        raise ValueError(f"{p} virtual + {t} real tokens exceed the context length {context_length}; crop the "
                         f"input to {context_length - p} tokens (or use fewer virtual tokens)")


# ---------------------------------------------------------------------- prompt tuning and P-tuning
class PromptTuning(nn.Module):
    """Prompt tuning (Lester et al., 2021) and P-tuning (Liu et al., 2021) for a
    :class:`~llmscratch.models.gpt.GPTModel`: ``num_virtual_tokens`` trained vectors placed before the token
    embeddings of every input; the model is frozen (its LoRA adapters, if any, stay trainable: prompt + LoRA).

    Args:
        model: the GPT; unchanged (the prompt is put in by a forward hook on ``tok_emb`` during the call).
        num_virtual_tokens: prompt length ``P``; real tokens take positions ``P..P+T-1``, as in ``peft``.
        init_ids: token ids whose embeddings initialise the prompt (Lester: vocabulary embeddings beat random
            vectors); default: ``P`` random ids of the vocabulary.
        encoder: ``None`` (prompt tuning: the vectors are the parameters), ``"mlp"`` or ``"lstm"`` (P-tuning: the
            vectors are reparameterised by a small prompt encoder, which is trained and then can be discarded).
            The encoders are ``peft``'s ``PromptEncoder`` layer for layer (MLP: ``d -> h -> h -> d`` with ReLUs;
            LSTM: a 2-layer bidirectional LSTM of width ``h``, then ``2h -> 2h -> d``), so
            :meth:`load_peft` copies a ``peft`` P-tuning encoder over.
        hidden: the encoder's width ``h`` (``peft``'s ``encoder_hidden_size``); default ``d_model``.

    ``forward(idx, attention_mask=None)``: ``(batch, seq)`` (and the padding mask of the real tokens,
    ``(batch, seq)``, 1 = token, 0 = padding; the virtual tokens are always attended to) -> logits
    ``(batch, seq, vocab)`` for the real tokens.
    """

    def __init__(self, model: nn.Module, num_virtual_tokens: int, init_ids: torch.Tensor | None = None,
                 encoder: str | None = None, hidden: int | None = None):
        super().__init__()
        _check_rank(num_virtual_tokens)
        if encoder not in (None, "mlp", "lstm"):
            raise ValueError(f"encoder must be None (prompt tuning), 'mlp' or 'lstm' (P-tuning), got {encoder!r}")
        if hidden is not None and encoder is None:
            raise ValueError("hidden is the P-tuning encoder's width; prompt tuning (encoder=None) has no encoder")
        self.model, self.num_virtual_tokens = model, num_virtual_tokens
        for n, p in model.named_parameters():
            if ".lora_" not in n:
                p.requires_grad_(False)
        emb = model.tok_emb.weight
        if init_ids is None:
            init_ids = torch.randint(0, model.cfg.vocab_size, (num_virtual_tokens,))
        init_ids = torch.as_tensor(init_ids).flatten()
        if init_ids.numel() != num_virtual_tokens:
            raise ValueError(f"init_ids has {init_ids.numel()} ids for {num_virtual_tokens} virtual tokens; give one "
                             "id per virtual token (e.g. a tokenized task description, repeated or cut)")
        self.prompt = nn.Parameter(emb.detach()[init_ids.to(emb.device)].clone())  # (P, d)
        d = emb.shape[1]
        h = hidden or d
        _check_rank(h)
        self.encoder_type = encoder
        if encoder == "mlp":
            self.mlp_head = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, d))
        elif encoder == "lstm":
            self.lstm_head = nn.LSTM(d, h, num_layers=2, bidirectional=True, batch_first=True)
            self.mlp_head = nn.Sequential(nn.Linear(2 * h, 2 * h), nn.ReLU(), nn.Linear(2 * h, d))
        if encoder is not None:
            self.to(emb.device)

    def virtual_tokens(self) -> torch.Tensor:
        """The ``(P, d_model)`` vectors placed before the input (through the P-tuning encoder if there is one)."""
        if self.encoder_type is None:
            return self.prompt
        h = self.prompt.unsqueeze(0)  # (1, P, d): the LSTM reads the P prompt vectors as one sequence
        if self.encoder_type == "lstm":
            h = self.lstm_head(h)[0]  # (1, P, 2h)
        return self.mlp_head(h).squeeze(0)

    def forward(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        _check_ids(idx)
        b, t = idx.shape
        p = self.num_virtual_tokens
        _check_fits(p, t, self.model.cfg.context_length)
        mask = virtual_token_mask(attention_mask, p, b, t)  # (B, P + T)
        prompt = self.virtual_tokens().to(self.model.tok_emb.weight.dtype)

        def insert(module, args, out):  # (B, P + T, d): the P placeholder embeddings become the prompt
            return torch.cat([prompt.expand(b, -1, -1), out[:, p:]], dim=1)

        # P placeholder ids (0) in front, so the model sees P + T positions, with the extended mask: positions
        # count from the mask (real tokens after the prompt), padding is masked, the prompt is attended to.
        full = torch.cat([idx.new_zeros(b, p), idx], dim=1)
        handle = self.model.tok_emb.register_forward_hook(insert)
        try:
            logits = self.model(full, attention_mask=mask)
        finally:
            handle.remove()
        return logits[:, p:]

    @torch.no_grad()
    def load_peft(self, prompt_encoder: nn.Module) -> "PromptTuning":
        """Copy a ``peft`` prompt encoder (``peft_model.prompt_encoder["default"]``) into ours: its
        ``embedding.weight`` is our ``prompt``; P-tuning's ``mlp_head`` / ``lstm_head`` map by name."""
        theirs = {k: v for k, v in prompt_encoder.state_dict().items()}
        ours = {"embedding.weight" if k == "prompt" else k: v for k, v in self.state_dict().items()
                if not k.startswith("model.")}
        if set(theirs) != set(ours):
            raise ValueError(f"the peft prompt encoder has {sorted(theirs)}, ours has {sorted(ours)}: use the same "
                             "encoder type (None / 'mlp' / 'lstm'); peft's LSTM needs encoder_num_layers=2 and "
                             "encoder_dropout=0")
        for k, v in theirs.items():
            if v.shape != ours[k].shape:
                raise ValueError(f"peft's {k} has shape {tuple(v.shape)}, ours {tuple(ours[k].shape)}: the same "
                                 "num_virtual_tokens, d_model and hidden (encoder_hidden_size) are needed")
        for k, v in theirs.items():
            ours[k].copy_(v)
        return self
