"""Vision Transformer (Dosovitskiy et al., 2021), one readable file: config, patches, encoder, classifier,
Hugging Face weights and the attention analyses of chapter 5.

The architecture, top to bottom::

    images (batch, channels, height, width)                          float, e.g. scaled to [0, 1]
      -> PatchEmbedding: Conv2d(kernel = stride = patch)            (batch, n_patches, d_model)
         (the same as cutting the image into patches and applying one Linear to every flattened patch)
      -> prepend the learned [CLS] vector                            (batch, 1 + n_patches, d_model)
      -> + learned position embeddings -> dropout
      -> n_layers x ViTBlock (pre-LayerNorm, bidirectional):
             x = x + dropout(attn(norm(x)))     multi-head self-attention, no causal mask
             x = x + dropout(ff(norm(x)))       Linear -> GELU (exact) -> Linear
      -> final LayerNorm -> take the [CLS] position -> Linear head
    logits (batch, num_classes)

An image becomes a sequence: a 28x28 MNIST digit cut into 7x7 patches is a "sentence" of 16 "words" (plus
[CLS]). Everything after the patch embedding is the encoder of chapters 2-4: attention is
:class:`llmscratch.models.attention.MultiHeadAttention` (fused QKV, SDPA) with ``causal=False``, and each
sub-layer is a :class:`llmscratch.models.layers.ResidualSublayer` with ``norm="pre"`` around the attention or
:class:`~llmscratch.models.layers.FeedForward`.

Checkpoints: :meth:`ViTForImageClassification.from_pretrained` reads a Hugging Face ViT folder (or a Hub name
such as ``google/vit-base-patch16-224`` when online); :meth:`~ViTForImageClassification.save_pretrained` writes
one that ``transformers.ViTForImageClassification`` loads. The tests check that both give the same logits and
the same attention maps.

Analyses (chapter 5, Dosovitskiy et al. Fig. 7, Abnar & Zuidema 2020): :func:`attention_rollout`,
:func:`mean_attention_distance`, :func:`position_similarity` and :func:`neighbour_similarity_gap`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..utils import write_weights_folder
from .attention import MultiHeadAttention, reference_attention
from .gpt import _read_state_dict, _resolve_checkpoint
from .layers import FeedForward, LayerNorm, ResidualSublayer

__all__ = [
    "ViTConfig", "PRESETS", "PatchEmbedding", "ViTEmbeddings", "ViTBlock", "ViTModel", "ViTForImageClassification",
    "patchify", "unpatchify", "attention_rollout", "mean_attention_distance", "position_similarity",
    "neighbour_similarity_gap", "patch_grid_distances",
]


# ==============================================================================================================
# Configuration
# ==============================================================================================================


@dataclass
class ViTConfig:
    """Sizes and switches of a ViT. The defaults are ViT-Base/16 at 224x224 (86M parameters).

    Args:
        image_size: side of the (square) training images, in pixels.
        patch_size: side of a patch; must divide ``image_size``. ``n_patches = (image_size // patch_size) ** 2``.
        num_channels: 3 for RGB, 1 for grayscale (MNIST).
        d_model: width of the residual stream (Hugging Face: ``hidden_size``).
        n_heads: attention heads; must divide ``d_model``.
        n_layers: encoder blocks.
        d_ff: hidden width of the feed-forward network (ViT: ``4 * d_model``).
        num_classes: outputs of the classification head.
        dropout: dropout on the embeddings and on both residual branches (Hugging Face: ``hidden_dropout_prob``).
        attn_dropout: dropout on the attention weights (``attention_probs_dropout_prob``).
        layer_norm_eps: LayerNorm epsilon (Hugging Face's ViT: 1e-12).
        qkv_bias: bias in the Q/K/V projection (ViT has one).
    """

    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    d_model: int = 768
    n_heads: int = 12
    n_layers: int = 12
    d_ff: int = 3072
    num_classes: int = 1000
    dropout: float = 0.0
    attn_dropout: float = 0.0
    layer_norm_eps: float = 1e-12
    qkv_bias: bool = True

    def __post_init__(self):
        for name in ("image_size", "patch_size", "num_channels", "d_model", "n_heads", "n_layers", "d_ff",
                     "num_classes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ViTConfig.{name} must be a positive int, got {value!r}")
        if self.image_size % self.patch_size != 0:
            fits = [p for p in range(1, self.image_size + 1) if self.image_size % p == 0]
            raise ValueError(
                f"patch_size ({self.patch_size}) must divide image_size ({self.image_size}); patch sizes that fit: "
                f"{fits}"
            )
        if self.d_model % self.n_heads != 0:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads}); "
                f"e.g. n_heads={max(h for h in range(1, self.n_heads + 1) if self.d_model % h == 0)}"
            )
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def grid_size(self) -> int:
        """Patches per side: ``image_size // patch_size``."""
        return self.image_size // self.patch_size

    @property
    def n_patches(self) -> int:
        return self.grid_size**2

    @property
    def seq_len(self) -> int:
        """Tokens the encoder sees: the patches plus [CLS]."""
        return self.n_patches + 1

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @classmethod
    def preset(cls, name: str, **overrides) -> "ViTConfig":
        """A named configuration, optionally changed: ``ViTConfig.preset("vit-mnist", n_layers=4)``.

        Presets: the three sizes of Touvron et al. / Dosovitskiy et al. at 224x224 with 16x16 patches
        (``vit-base-patch16-224``, ``vit-small-patch16-224``, ``vit-tiny-patch16-224``) and ``vit-mnist``, the
        chapter's teaching size (28x28 grayscale digits, 10 classes) that trains on a laptop CPU.
        """
        if name not in PRESETS:
            raise ValueError(f"unknown ViT preset {name!r}; choose one of {', '.join(PRESETS)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown ViTConfig field(s) {unknown}; known fields: {', '.join(sorted(known))}")
        return cls(**{**PRESETS[name], **overrides})


#: Named sizes. The 224x224 rows are the published ImageNet models; ``vit-mnist`` is for teaching on a CPU.
PRESETS: dict[str, dict] = {
    "vit-base-patch16-224": dict(d_model=768, n_heads=12, n_layers=12, d_ff=3072),  # 86M
    "vit-small-patch16-224": dict(d_model=384, n_heads=6, n_layers=12, d_ff=1536),  # 22M
    "vit-tiny-patch16-224": dict(d_model=192, n_heads=3, n_layers=12, d_ff=768),  # 5.7M
    "vit-mnist": dict(image_size=28, patch_size=7, num_channels=1, d_model=64, n_heads=4, n_layers=4, d_ff=128,
                      num_classes=10),
}


# ==============================================================================================================
# Patches
# ==============================================================================================================


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut images into non-overlapping square patches and flatten each one.

    ``(B, C, H, W) -> (B, n_patches, C * patch_size**2)``; patches in row-major order (left to right, then top
    to bottom), each flattened channel first, then rows, then columns: the order of a ``Conv2d`` weight
    ``(d_model, C, p, p)`` flattened, so ``patchify(x, p) @ conv.weight.flatten(1).T + conv.bias`` equals the
    strided convolution (the tests check it).
    """
    b, c, h, w = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not divisible by patch_size {p}; pad or resize the images")
    gh, gw = h // p, w // p
    x = images.reshape(b, c, gh, p, gw, p)  # (B, C, gh, p, gw, p): split each side into (grid, within-patch)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, gh, gw, C, p, p): grid position first, one patch per (gh, gw)
    return x.reshape(b, gh * gw, c * p * p)  # (B, n_patches, C*p*p)


def unpatchify(patches: torch.Tensor, patch_size: int, channels: int, height: int, width: int) -> torch.Tensor:
    """The inverse of :func:`patchify`: ``(B, n_patches, C * p**2) -> (B, C, H, W)``."""
    b = patches.shape[0]
    p = patch_size
    gh, gw = height // p, width // p
    x = patches.reshape(b, gh, gw, channels, p, p)  # (B, gh, gw, C, p, p)
    x = x.permute(0, 3, 1, 4, 2, 5)  # (B, C, gh, p, gw, p)
    return x.reshape(b, channels, height, width)  # (B, C, H, W)


class PatchEmbedding(nn.Module):
    """Linear embedding of every patch, as one strided convolution (kernel = stride = patch size).

    A convolution whose kernel covers exactly one patch and moves one patch at a time computes, for each patch,
    ``weight . patch + bias``: a Linear layer applied to every flattened patch, without cutting the image first.

    Shapes: ``(B, C, H, W) -> (B, (H/p) * (W/p), d_model)``.
    """

    def __init__(self, patch_size: int, num_channels: int, d_model: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(num_channels, d_model, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # The weights are kept as a Conv2d (the Hugging Face layout), but applied as the equal Linear on the
        # cut patches: on the CPU the convolution's backward costs 4x more (MNIST batch of 128: 4.5 vs 1.0 ms).
        patches = patchify(images, self.patch_size)  # (B, n_patches, C*p*p), row-major patch order
        return F.linear(patches, self.proj.weight.flatten(1), self.proj.bias)  # (B, n_patches, d_model)


class ViTEmbeddings(nn.Module):
    """Patch embeddings, the [CLS] token and learned position embeddings.

    Shapes: ``(B, C, H, W) -> (B, 1 + n_patches, d_model)``.
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbedding(cfg.patch_size, cfg.num_channels, cfg.d_model)
        # [CLS]: a learned vector prepended to every sequence; its final state is the image's summary.
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.d_model))
        # One learned vector per position (0 = [CLS], then the patches in row-major order). Attention is
        # permutation-invariant; without these the model could not tell where a patch came from.
        self.position_embeddings = nn.Parameter(torch.zeros(1, cfg.seq_len, cfg.d_model))
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, images: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        b, _, h, w = images.shape
        x = self.patch_embed(images)  # (B, n_patches, d_model)
        cls = self.cls_token.expand(b, -1, -1)  # (B, 1, d_model), a view: no copy per image
        x = torch.cat([cls, x], dim=1)  # (B, 1 + n_patches, d_model)
        pos = self.interpolated_positions(h, w) if interpolate_pos_encoding else self.position_embeddings
        return self.dropout(x + pos)  # (B, 1 + n_patches, d_model)

    def interpolated_positions(self, height: int, width: int) -> torch.Tensor:
        """Position embeddings for ``height x width`` images: the patch grid resized by bicubic interpolation.

        The [CLS] position is kept as it is. A model trained at 224x224 (a 14x14 grid) can thus read 384x384
        images (24x24); the same recipe as DINO and Hugging Face's ``interpolate_pos_encoding``.
        Returns ``(1, 1 + (height/p) * (width/p), d_model)``.
        """
        p, g, d = self.cfg.patch_size, self.cfg.grid_size, self.cfg.d_model
        new_h, new_w = height // p, width // p
        if (new_h, new_w) == (g, g):
            return self.position_embeddings
        cls_pos = self.position_embeddings[:, :1]  # (1, 1, d)
        grid = self.position_embeddings[:, 1:].reshape(1, g, g, d)  # (1, g, g, d): back onto the patch grid
        grid = grid.permute(0, 3, 1, 2)  # (1, d, g, g): channels first, as F.interpolate wants
        grid = F.interpolate(grid, size=(new_h, new_w), mode="bicubic", align_corners=False)  # (1, d, new_h, new_w)
        grid = grid.permute(0, 2, 3, 1).reshape(1, new_h * new_w, d)  # (1, new_h*new_w, d), row-major again
        return torch.cat([cls_pos, grid], dim=1)  # (1, 1 + new_h*new_w, d)


# ==============================================================================================================
# Encoder
# ==============================================================================================================


class ViTBlock(nn.Module):
    """One pre-LayerNorm encoder block: ``x + attn(norm(x))`` then ``x + ff(norm(x))``, no causal mask.

    Built from the shared pieces: :class:`ResidualSublayer` (``norm="pre"``) around
    :class:`MultiHeadAttention` (``causal=False``: every patch sees every patch) and around
    :class:`FeedForward` (exact GELU, as ViT). Shapes: ``(B, T, d_model) -> (B, T, d_model)``.
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        d, eps = cfg.d_model, cfg.layer_norm_eps
        mha = MultiHeadAttention(d, d, cfg.n_heads, context_length=cfg.seq_len, dropout=cfg.attn_dropout,
                                 qkv_bias=cfg.qkv_bias, causal=False)
        # The context length only guards GPT against positions it has no embedding for; a ViT reading larger
        # images (interpolated positions) has longer sequences, so the guard is lifted here.
        mha.context_length = 2**31 - 1
        self.attn = ResidualSublayer(d, mha, norm="pre", dropout=cfg.dropout, eps=eps)
        # FeedForward's own dropout stays 0: the residual wrapper drops the branch once (ViT's hidden dropout).
        self.ff = ResidualSublayer(d, FeedForward(d, cfg.d_ff, approximate="none"), norm="pre",
                                   dropout=cfg.dropout, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ff(self.attn(x))

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The attention weights this block applies to its input ``x`` ``(B, T, d)``: ``(B, n_heads, T, T)``.

        SDPA never returns the weights, so they are computed here explicitly from the same Q and K
        (:func:`reference_attention`); used for plots and analyses, never in training.
        """
        mha = self.attn.sublayer
        q, k, v = mha.split_qkv(self.attn.norm(x))  # each (B, n_heads, T, head_dim)
        return reference_attention(q, k, v)[1]  # (B, n_heads, T, T); rows sum to 1


class ViTModel(nn.Module):
    """Embeddings, ``n_layers`` :class:`ViTBlock` and the final LayerNorm.

    ``model(images)`` with ``images`` a float tensor ``(B, C, H, W)`` returns the final hidden states
    ``(B, 1 + n_patches, d_model)`` (position 0 is [CLS]).
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = ViTEmbeddings(cfg)
        self.blocks = nn.ModuleList(ViTBlock(cfg) for _ in range(cfg.n_layers))
        self.final_norm = LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)

    def forward(self, images: torch.Tensor, return_attention: bool = False, interpolate_pos_encoding: bool = False):
        """Hidden states ``(B, 1 + n_patches, d_model)``; with ``return_attention`` also a tuple of
        ``n_layers`` attention maps, each ``(B, n_heads, T, T)`` (rows: queries, columns: keys; 0 = [CLS])."""
        _check_images(images, self.cfg, interpolate_pos_encoding)
        x = self.embeddings(images, interpolate_pos_encoding)  # (B, T, d)
        maps = []
        for block in self.blocks:
            if return_attention:
                maps.append(block.attention_weights(x))  # (B, n_heads, T, T)
            x = block(x)  # (B, T, d)
        x = self.final_norm(x)
        return (x, tuple(maps)) if return_attention else x


class ViTForImageClassification(nn.Module):
    """A :class:`ViTModel` and a linear head on the final [CLS] state.

    ``model(images)`` returns logits ``(B, num_classes)``; ``model(images, return_attention=True)`` returns
    ``(logits, attention_maps)`` with ``n_layers`` maps of shape ``(B, n_heads, T, T)``.
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        if not isinstance(cfg, ViTConfig):
            raise TypeError(f"ViTForImageClassification needs a ViTConfig, got {type(cfg).__name__}; "
                            "e.g. ViTConfig.preset('vit-mnist')")
        self.cfg = cfg
        self.vit = ViTModel(cfg)
        self.head = nn.Linear(cfg.d_model, cfg.num_classes)
        self.apply(self._init_weights)
        nn.init.trunc_normal_(self.vit.embeddings.cls_token, std=0.02)
        nn.init.trunc_normal_(self.vit.embeddings.position_embeddings, std=0.02)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # Hugging Face's ViT initialisation: truncated normal (std 0.02) for every matrix, zero biases.
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor, return_attention: bool = False,
                interpolate_pos_encoding: bool = False):
        out = self.vit(images, return_attention=return_attention, interpolate_pos_encoding=interpolate_pos_encoding)
        hidden, maps = out if return_attention else (out, None)
        logits = self.head(hidden[:, 0])  # (B, num_classes): the [CLS] position only
        return (logits, maps) if return_attention else logits

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------ Hugging Face checkpoints
    @classmethod
    def from_pretrained(cls, path_or_name: str | os.PathLike, **overrides) -> "ViTForImageClassification":
        """Load a Hugging Face ViT classification checkpoint.

        ``path_or_name``: a local folder with ``config.json`` and ``model.safetensors`` (or
        ``pytorch_model.bin``), e.g. written by ``transformers``' ``save_pretrained`` or by
        :meth:`save_pretrained`; or a Hub name such as ``"google/vit-base-patch16-224"``, downloaded when online.
        ``overrides``: ViTConfig fields to change, e.g. ``dropout=0.1``.
        """
        folder = _resolve_checkpoint(path_or_name)
        with open(folder / "config.json") as f:
            hf = json.load(f)
        cfg = _config_from_hf(hf, folder)
        cfg = replace(cfg, **overrides) if overrides else cfg
        model = cls(cfg)
        model.load_hf_state_dict(_read_state_dict(folder))
        if hf.get("id2label"):
            model.id2label = {int(k): v for k, v in hf["id2label"].items()}
        return model

    def load_hf_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Copy a Hugging Face ``ViTForImageClassification`` state dict into this model.

        Hugging Face keeps separate ``query``/``key``/``value`` Linears; ours is one fused ``qkv`` Linear, so the
        three are concatenated (in that order, the order :meth:`MultiHeadAttention.split_qkv` reads).
        """
        # The pooler (a Linear + tanh on [CLS]) is only used by ViTModel's pooled output, never by the classifier.
        state = {k: v for k, v in state.items() if ".pooler." not in k and not k.startswith("pooler.")}
        if "classifier.weight" in state and not any(k.startswith("vit.") for k in state):
            raise ValueError("unexpected checkpoint layout: a classifier without 'vit.' tensors")
        state = {(k if k.startswith(("vit.", "classifier.")) else "vit." + k): v for k, v in state.items()}
        ours = dict(self.named_parameters())
        with torch.no_grad():
            for our_name, hf_names in self._hf_name_map().items():
                missing = [n for n in hf_names if n not in state]
                if missing:
                    hint = (" (the checkpoint has no classification head: it is a ViTModel, e.g. an ImageNet-21k "
                            "backbone; fine-tune a head on it)") if our_name.startswith("head.") else ""
                    raise KeyError(f"checkpoint has no tensor {missing[0]!r} (needed for {our_name!r}){hint}; "
                                   "is it a ViT checkpoint with the config's num_hidden_layers?")
                src = torch.cat([state.pop(n) for n in hf_names]) if len(hf_names) > 1 else state.pop(hf_names[0])
                dst = ours[our_name]
                if src.shape != dst.shape:
                    raise ValueError(
                        f"shape mismatch for checkpoint tensor(s) {hf_names}: {tuple(src.shape)} but the model's "
                        f"{our_name!r} is {tuple(dst.shape)}; the config does not match the weights (check "
                        "hidden_size, image_size, patch_size, num_channels and id2label in config.json)"
                    )
                dst.copy_(src)
        if state:
            raise ValueError(f"checkpoint has tensors the model does not use: {sorted(state)[:8]}; "
                             "is it a ViT checkpoint (model_type 'vit')?")

    def _hf_name_map(self) -> dict[str, list[str]]:
        """Our parameter name -> the Hugging Face tensor name(s) it is made of (Hub layout, ``vit.encoder...``)."""
        m = {"vit.embeddings.cls_token": ["vit.embeddings.cls_token"],
             "vit.embeddings.position_embeddings": ["vit.embeddings.position_embeddings"]}
        for wb in ("weight", "bias"):
            m[f"vit.embeddings.patch_embed.proj.{wb}"] = [f"vit.embeddings.patch_embeddings.projection.{wb}"]
            for i in range(self.cfg.n_layers):
                hf, us = f"vit.encoder.layer.{i}.", f"vit.blocks.{i}."
                m[f"{us}attn.norm.{wb}"] = [f"{hf}layernorm_before.{wb}"]
                if wb == "weight" or self.cfg.qkv_bias:
                    m[f"{us}attn.sublayer.qkv.{wb}"] = [f"{hf}attention.attention.{n}.{wb}"
                                                         for n in ("query", "key", "value")]
                m[f"{us}attn.sublayer.proj.{wb}"] = [f"{hf}attention.output.dense.{wb}"]
                m[f"{us}ff.norm.{wb}"] = [f"{hf}layernorm_after.{wb}"]
                m[f"{us}ff.sublayer.fc.{wb}"] = [f"{hf}intermediate.dense.{wb}"]
                m[f"{us}ff.sublayer.proj.{wb}"] = [f"{hf}output.dense.{wb}"]
            m[f"vit.final_norm.{wb}"] = [f"vit.layernorm.{wb}"]
            m[f"head.{wb}"] = [f"classifier.{wb}"]
        return m

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write a Hugging Face ViT folder (``config.json`` + ``model.safetensors``) that
        ``transformers.ViTForImageClassification.from_pretrained`` and :meth:`from_pretrained` both load."""
        cfg = self.cfg
        ours = dict(self.named_parameters())
        state = {}
        d = cfg.d_model
        for our_name, hf_names in self._hf_name_map().items():
            t = ours[our_name].detach().to("cpu")
            parts = t.split(d) if len(hf_names) > 1 else [t]  # the fused qkv back into query, key, value
            for hf_name, part in zip(hf_names, parts):
                state[hf_name] = part.contiguous().clone()
        labels = getattr(self, "id2label", None) or {i: str(i) for i in range(cfg.num_classes)}
        hf_config = {
            "architectures": ["ViTForImageClassification"], "model_type": "vit",
            "image_size": cfg.image_size, "patch_size": cfg.patch_size, "num_channels": cfg.num_channels,
            "hidden_size": d, "num_attention_heads": cfg.n_heads, "num_hidden_layers": cfg.n_layers,
            "intermediate_size": cfg.d_ff, "hidden_act": "gelu", "hidden_dropout_prob": cfg.dropout,
            "attention_probs_dropout_prob": cfg.attn_dropout, "layer_norm_eps": cfg.layer_norm_eps,
            "qkv_bias": cfg.qkv_bias, "initializer_range": 0.02, "encoder_stride": cfg.patch_size,
            "id2label": {str(i): str(v) for i, v in labels.items()},
            "label2id": {str(v): int(i) for i, v in labels.items()},
            "llmscratch_config": asdict(cfg),
        }
        return write_weights_folder(path, state, hf_config)


def _config_from_hf(hf: dict, folder: Path) -> ViTConfig:
    if hf.get("model_type", "vit") != "vit":
        raise ValueError(f"{folder}/config.json is a {hf.get('model_type')!r} model, not a ViT ('vit')")
    if hf.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"{folder}/config.json uses activation {hf.get('hidden_act')!r}; this ViT uses the exact "
                         "GELU ('gelu'), as every released ViT does")
    image_size, patch_size = hf.get("image_size", 224), hf.get("patch_size", 16)
    if isinstance(image_size, (list, tuple)) or isinstance(patch_size, (list, tuple)):
        if len(set(image_size if isinstance(image_size, (list, tuple)) else [image_size])) > 1 or \
                len(set(patch_size if isinstance(patch_size, (list, tuple)) else [patch_size])) > 1:
            raise ValueError(f"{folder}/config.json has non-square images or patches; this ViT supports square ones")
        image_size = image_size[0] if isinstance(image_size, (list, tuple)) else image_size
        patch_size = patch_size[0] if isinstance(patch_size, (list, tuple)) else patch_size
    num_classes = len(hf["id2label"]) if hf.get("id2label") else int(hf.get("num_labels", 2))
    return ViTConfig(
        image_size=image_size, patch_size=patch_size, num_channels=hf.get("num_channels", 3),
        d_model=hf["hidden_size"], n_heads=hf["num_attention_heads"], n_layers=hf["num_hidden_layers"],
        d_ff=hf["intermediate_size"], num_classes=num_classes, dropout=float(hf.get("hidden_dropout_prob", 0.0)),
        attn_dropout=float(hf.get("attention_probs_dropout_prob", 0.0)),
        layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)), qkv_bias=bool(hf.get("qkv_bias", True)),
    )


def _check_images(images, cfg: ViTConfig, interpolate_pos_encoding: bool) -> None:
    """Reject what a user commonly gets wrong, with the fix in the message."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor (B, C, H, W), got {type(images).__name__}; "
                        "e.g. torch.as_tensor(array).float() / 255")
    if not images.is_floating_point():
        raise TypeError(
            f"images must be floating point, got dtype {images.dtype}; convert pixels with images.float() / 255 "
            "(and normalise them the way the model was trained)"
        )
    if images.dim() == 3 and cfg.num_channels == 1:
        raise ValueError(f"images must be (B, C, H, W), got {tuple(images.shape)}: add the channel dimension "
                         "with images.unsqueeze(1)")
    if images.dim() != 4:
        raise ValueError(f"images must be a 4-D batch (B, C, H, W), got shape {tuple(images.shape)}; "
                         "a single image needs images.unsqueeze(0)")
    b, c, h, w = images.shape
    if c != cfg.num_channels:
        hint = (f"; the last dimension is {images.shape[-1]}: channels-last images need images.permute(0, 3, 1, 2)"
                if images.shape[-1] == cfg.num_channels else "")
        if cfg.num_channels == 3 and c == 1:
            hint += "; repeat a grayscale channel with images.expand(-1, 3, -1, -1)"
        elif cfg.num_channels == 1 and c == 3:
            hint += "; convert RGB to grayscale, e.g. images.mean(dim=1, keepdim=True)"
        raise ValueError(f"the model expects {cfg.num_channels} channel(s), got {c} (images {tuple(images.shape)})"
                         f"{hint}")
    p = cfg.patch_size
    if h % p or w % p:
        raise ValueError(
            f"image size {h}x{w} is not divisible by the patch size {p}: resize (F.interpolate) or pad (F.pad) the "
            f"images to a multiple of {p}, e.g. {math.ceil(h / p) * p}x{math.ceil(w / p) * p}"
        )
    if (h, w) != (cfg.image_size, cfg.image_size) and not interpolate_pos_encoding:
        raise ValueError(
            f"images are {h}x{w} but the model's position embeddings are for {cfg.image_size}x{cfg.image_size}; "
            f"resize the images, or pass interpolate_pos_encoding=True to interpolate the position embeddings"
        )


# ==============================================================================================================
# What the attention does: rollout, distances, position embeddings
# ==============================================================================================================


def attention_rollout(attentions, head_fusion: str = "mean") -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020): how much each input token flows into each output token.

    Each layer's attention, fused over heads (``"mean"``, ``"max"`` or ``"min"``), is mixed with the identity
    for the residual connection and renormalised: ``A_hat = (A + I) / rowsum(A + I)``; the layers are then
    multiplied from the first to the last: ``R = A_hat_L @ ... @ A_hat_1``.

    Args:
        attentions: a sequence of ``n_layers`` tensors ``(B, n_heads, T, T)`` (as returned with
            ``return_attention=True``) or one ``(n_layers, B, n_heads, T, T)`` tensor.

    Returns: ``(B, T, T)``; row 0 is the [CLS] token's rollout, ``R[:, 0, 1:]`` its map over the patches.
    """
    if head_fusion not in ("mean", "max", "min"):
        raise ValueError(f"head_fusion must be 'mean', 'max' or 'min', got {head_fusion!r}")
    layers = list(attentions)
    if not layers or any(a.dim() != 4 or a.shape[-1] != a.shape[-2] for a in layers):
        raise ValueError("attentions must be n_layers tensors of shape (B, n_heads, T, T), e.g. the maps of "
                         "model(images, return_attention=True)")
    t = layers[0].shape[-1]
    eye = torch.eye(t, device=layers[0].device, dtype=layers[0].dtype)
    rollout = None
    for a in layers:
        fused = {"mean": lambda x: x.mean(1), "max": lambda x: x.amax(1), "min": lambda x: x.amin(1)}[head_fusion](a)
        a_hat = fused + eye  # (B, T, T): the residual path carries each token to itself
        a_hat = a_hat / a_hat.sum(dim=-1, keepdim=True)
        rollout = a_hat if rollout is None else a_hat @ rollout  # later layers multiply from the left
    return rollout


def patch_grid_distances(grid_size: int, patch_size: int = 1) -> torch.Tensor:
    """Euclidean distances between patch centres on a ``grid_size x grid_size`` grid, in pixels (or in patches
    with ``patch_size=1``): ``(n_patches, n_patches)``, row-major patch order."""
    r = torch.arange(grid_size, dtype=torch.float32)
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    centres = torch.stack([yy.flatten(), xx.flatten()], dim=1) * patch_size  # (n_patches, 2)
    return torch.cdist(centres, centres)  # (n_patches, n_patches)


def mean_attention_distance(attentions, patch_size: int) -> torch.Tensor:
    """Mean attention distance per layer and head, in pixels (Dosovitskiy et al. 2021, Fig. 7 right).

    For each patch query, the distance to each patch key weighted by the attention between them, summed over
    the keys; averaged over queries and images. [CLS] has no place in the image, so its row and column are
    dropped and each patch row is renormalised over the patch keys.

    Returns ``(n_layers, n_heads)``.
    """
    out = []
    for a in attentions:
        pa = a[..., 1:, 1:]  # (B, H, N, N): patch-to-patch
        pa = pa / pa.sum(dim=-1, keepdim=True)
        g = math.isqrt(pa.shape[-1])
        if g * g != pa.shape[-1]:
            raise ValueError(f"{pa.shape[-1]} patches do not form a square grid")
        dist = patch_grid_distances(g, patch_size).to(pa)  # (N, N)
        out.append((pa * dist).sum(-1).mean(dim=(0, 2)))  # (H,)
    return torch.stack(out)  # (n_layers, n_heads)


def position_similarity(model: nn.Module) -> torch.Tensor:
    """Cosine similarity between the learned position embeddings of every pair of patches (not [CLS]):
    ``(n_patches, n_patches)``. Reshape row ``i`` to ``(grid, grid)`` to see patch ``i``'s map (Fig. 7 centre)."""
    emb = _vit_of(model).embeddings.position_embeddings[0, 1:].detach()  # (N, d)
    emb = F.normalize(emb, dim=-1)
    return emb @ emb.T  # (N, N)


def neighbour_similarity_gap(similarity: torch.Tensor) -> tuple[float, float]:
    """Mean similarity of 4-neighbour patches and of patches at least half the grid apart, from a
    ``(n_patches, n_patches)`` matrix such as :func:`position_similarity`'s. Returns ``(near, far)``."""
    n = similarity.shape[0]
    g = math.isqrt(n)
    dist = patch_grid_distances(g)
    near = similarity[dist == 1].mean().item()
    far = similarity[dist >= g / 2].mean().item()
    return near, far


def _vit_of(model: nn.Module) -> ViTModel:
    if isinstance(model, ViTForImageClassification):
        return model.vit
    if isinstance(model, ViTModel):
        return model
    raise TypeError(f"expected a ViTForImageClassification or ViTModel, got {type(model).__name__}")
