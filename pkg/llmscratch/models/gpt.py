"""GPT-2 (Radford et al., 2019), one readable file: config, transformer block, model, Hugging Face weights.

The architecture, top to bottom::

    token ids (batch, seq)
      -> token embedding + position embedding -> dropout            (batch, seq, d_model)
      -> n_layers x TransformerBlock (pre-LayerNorm):
             x = x + dropout(attn(norm1(x)))       causal multi-head attention
             x = x + ff(norm2(x))                  Linear -> GELU -> Linear -> dropout
      -> final LayerNorm -> LM head (weights tied to the token embedding)
    logits (batch, seq, vocab_size)

Attention is :class:`llmscratch.models.attention.MultiHeadAttention` (fused QKV, SDPA, KV cache); LayerNorm,
GELU and the feed-forward network come from :mod:`llmscratch.models.layers`. Chapter 3 of the book builds each
piece by hand and checks it against this file.

Checkpoints: :meth:`GPTModel.from_pretrained` reads a Hugging Face GPT-2 folder (``config.json`` plus
``model.safetensors`` or ``pytorch_model.bin``) and :meth:`GPTModel.save_pretrained` writes one, so weights
move both ways between this model and ``transformers.GPT2LMHeadModel``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
from torch import nn

from torch.utils.checkpoint import checkpoint

from .attention import KVCache, MultiHeadAttention, check_attention_mask
from ..losses import fused_linear_cross_entropy
from .layers import FeedForward, LayerNorm
from ..utils import write_weights_folder

__all__ = ["GPTConfig", "GPTModel", "TransformerBlock", "PRESETS", "check_token_ids"]


def check_token_ids(idx: torch.Tensor, vocab_size: int, what: str = "idx") -> None:
    """Raise a ValueError naming the id, the vocabulary and the likely cause when ``idx`` holds an id outside
    ``[0, vocab_size)``.

    One fused min/max reduction and one device sync; skipped inside a ``torch.compile`` graph (where a
    data-dependent ``if`` would break the graph). Without it an out-of-range id is an opaque ``IndexError`` on
    the CPU and a device-side assert that poisons the CUDA context on a GPU.
    """
    if idx.numel() == 0 or torch.compiler.is_compiling():
        return
    lo, hi = torch.aminmax(idx)
    lo, hi = torch.stack([lo, hi]).tolist()
    if lo >= 0 and hi < vocab_size:
        return
    bad = lo if lo < 0 else hi
    if bad == -100:
        cause = ("-100 is the ignore_index of the loss *targets*, not a token: pad inputs with a real id (e.g. "
                 "<|endoftext|>, 50256 for GPT-2) and pass attention_mask (0 at the padding)")
    elif bad < 0:
        cause = "negative ids are never tokens: pad with a real id and pass attention_mask (0 at the padding)"
    else:
        cause = ("the ids come from a tokenizer with a larger vocabulary than the model's (check "
                 "GPTConfig.vocab_size against the tokenizer's n_vocab)")
    raise ValueError(f"{what} holds token id {bad}, outside the model's vocabulary (0 to {vocab_size - 1}, "
                     f"vocab_size={vocab_size}); {cause}")


@dataclass
class GPTConfig:
    """Sizes and switches of a GPT-2-style model. The defaults are GPT-2 small (124M parameters).

    Args:
        vocab_size: number of token ids (GPT-2's BPE: 50,257).
        context_length: longest sequence the model accepts (GPT-2: 1024 positions).
        d_model: embedding / residual-stream width.
        n_heads: attention heads; ``d_model`` must be divisible by it.
        n_layers: transformer blocks.
        dropout: dropout on embeddings, attention weights and both residual branches (training only).
        qkv_bias: bias in the fused Q/K/V projection (GPT-2 has one).
        bias: bias in the other Linear layers and LayerNorms (GPT-2 has them).
        tie_weights: share the token embedding with the LM head (GPT-2 does; saves ``vocab_size * d_model``).
        padded_vocab_size: optionally allocate the embedding / LM head with this many rows (a multiple of 64,
            e.g. 50304 for GPT-2) so GPU matmuls hit tensor-core friendly shapes; logits are still cut to
            ``vocab_size``. ``None``: no padding.
        layer_norm_eps: LayerNorm epsilon (GPT-2: 1e-5).
        gradient_checkpointing: activation checkpointing per block in training (``torch.utils.checkpoint``,
            non-reentrant): a block keeps only its input for backward and runs its forward again there, so the
            activations stored for backward shrink from every block's intermediates to one ``(batch, seq,
            d_model)`` tensor per block, for about one more forward pass of compute. Same gradients (dropout
            masks are replayed). No effect in eval mode, without gradients or with a KV cache.
    """

    vocab_size: int = 50257
    context_length: int = 1024
    d_model: int = 768
    n_heads: int = 12
    n_layers: int = 12
    dropout: float = 0.0
    qkv_bias: bool = True
    bias: bool = True
    tie_weights: bool = True
    padded_vocab_size: int | None = None
    layer_norm_eps: float = 1e-5
    gradient_checkpointing: bool = False

    def __post_init__(self):
        for name in ("vocab_size", "context_length", "d_model", "n_heads", "n_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive int, got {value!r}")
        if self.d_model % self.n_heads != 0:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads}); "
                f"e.g. n_heads={max(h for h in range(1, self.n_heads + 1) if self.d_model % h == 0)}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.padded_vocab_size is not None:
            if not isinstance(self.padded_vocab_size, int) or self.padded_vocab_size < self.vocab_size:
                raise ValueError(
                    f"padded_vocab_size must be an int >= vocab_size ({self.vocab_size}), got "
                    f"{self.padded_vocab_size!r}; e.g. {self.pad_to_multiple(64)} (the next multiple of 64)"
                )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def embedding_rows(self) -> int:
        """Rows of the token embedding / LM head: ``padded_vocab_size`` when set, else ``vocab_size``."""
        return self.padded_vocab_size or self.vocab_size

    def pad_to_multiple(self, multiple: int = 64) -> int:
        """The smallest multiple of ``multiple`` that holds ``vocab_size`` (50257 -> 50304 for 64)."""
        return -(-self.vocab_size // multiple) * multiple

    @classmethod
    def preset(cls, name: str, **overrides) -> "GPTConfig":
        """A named configuration, optionally changed: ``GPTConfig.preset("gpt2", context_length=256)``.

        Presets: the four GPT-2 sizes (``gpt2``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl``) and small
        teaching sizes that train on a laptop CPU (``gpt-nano``, ``gpt-micro``, ``gpt-mini``).
        """
        if name not in PRESETS:
            raise ValueError(f"unknown GPT preset {name!r}; choose one of {', '.join(PRESETS)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown GPTConfig field(s) {unknown}; known fields: {', '.join(sorted(known))}")
        return cls(**{**PRESETS[name], **overrides})


#: Named sizes. The GPT-2 rows are OpenAI's released models; the small ones are for teaching on a CPU.
PRESETS: dict[str, dict] = {
    "gpt2": dict(d_model=768, n_heads=12, n_layers=12),  # 124M
    "gpt2-medium": dict(d_model=1024, n_heads=16, n_layers=24),  # 355M
    "gpt2-large": dict(d_model=1280, n_heads=20, n_layers=36),  # 774M
    "gpt2-xl": dict(d_model=1600, n_heads=25, n_layers=48),  # 1558M
    "gpt-mini": dict(d_model=192, n_heads=6, n_layers=6, context_length=256),
    "gpt-micro": dict(d_model=128, n_heads=4, n_layers=4, context_length=256),
    "gpt-nano": dict(d_model=48, n_heads=3, n_layers=3, context_length=128),
}


class TransformerBlock(nn.Module):
    """One pre-LayerNorm GPT-2 block: ``x + attn(norm1(x))`` then ``x + ff(norm2(x))``.

    The LayerNorm sits *before* each sub-layer (GPT-2; the original Transformer put it after), so the residual
    "shortcut" path carries the input unchanged from the embedding to the last layer, which keeps gradients
    healthy in deep stacks. Shapes: ``(batch, seq, d_model)`` -> ``(batch, seq, d_model)``.
    """

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.norm1 = LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.attn = MultiHeadAttention(
            cfg.d_model, cfg.d_model, cfg.n_heads, cfg.context_length, dropout=cfg.dropout,
            qkv_bias=cfg.qkv_bias, causal=True, proj_bias=cfg.bias,
        )
        self.drop_shortcut = nn.Dropout(cfg.dropout)  # on the attention branch; FeedForward drops its own output
        self.norm2 = LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.ff = FeedForward(cfg.d_model, 4 * cfg.d_model, dropout=cfg.dropout, bias=cfg.bias)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.drop_shortcut(self.attn(self.norm1(x), attention_mask=attention_mask, cache=cache))
        x = x + self.ff(self.norm2(x))
        return x


class GPTModel(nn.Module):
    """GPT-2: embeddings, ``n_layers`` transformer blocks, final LayerNorm, LM head.

    ``model(idx)`` with ``idx`` a LongTensor ``(batch, seq)`` returns logits ``(batch, seq, vocab_size)``:
    at every position, unnormalised scores for the next token.
    """

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if not isinstance(cfg, GPTConfig):
            raise TypeError(f"GPTModel needs a GPTConfig, got {type(cfg).__name__}; e.g. GPTConfig.preset('gpt2')")
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.embedding_rows, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.d_model)
        self.drop_emb = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layers))
        self.final_norm = LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.d_model, cfg.embedding_rows, bias=False)
        if cfg.tie_weights:
            # One matrix both maps ids to vectors and scores vectors against every id (Press & Wolf, 2017).
            self.lm_head.weight = self.tok_emb.weight
        self.apply(self._init_weights)
        # GPT-2's init: scale the layers that write into the residual stream by 1/sqrt(2 * n_layers), so the
        # variance of the stream does not grow with depth (two residual additions per block).
        for block in self.blocks:
            for proj in (block.attn.proj, block.ff.proj):
                nn.init.normal_(proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    # ------------------------------------------------------------------ forward
    def forward(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cache: list[KVCache] | None = None, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token logits.

        Args:
            idx: token ids ``(batch, seq)``; with a cache, only the new tokens.
            attention_mask: ``(batch, past + seq)``, 1 for real tokens, 0 for padding (left padding for
                generation, right padding for training both work). Positions then count real tokens only, so
                a left-padded prompt gets the same positions as the unpadded one.
            cache: from :meth:`new_cache`, one :class:`KVCache` per block; filled in place.
            position_ids: ``(batch, seq)`` explicit positions (rarely needed; derived from the cache length and
                the attention mask otherwise).

        Returns: logits ``(batch, seq, vocab_size)``.
        """
        x = self.hidden_states(idx, attention_mask=attention_mask, cache=cache, position_ids=position_ids)
        logits = self.lm_head(x)  # (B, T, embedding_rows)
        if self.cfg.padded_vocab_size is not None and self.cfg.padded_vocab_size != self.cfg.vocab_size:
            logits = logits[..., : self.cfg.vocab_size]  # padding rows are never real tokens
        return logits

    def hidden_states(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      cache: list[KVCache] | None = None, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Everything but the LM head: the final-LayerNorm output ``(batch, seq, d_model)``.

        Arguments as :meth:`forward`; ``forward`` is ``lm_head(hidden_states(...))``.
        """
        if idx.dim() != 2:
            raise ValueError(f"idx must be token ids of shape (batch, seq), got shape {tuple(idx.shape)}; "
                             "for one sequence use idx.unsqueeze(0)")
        if idx.dtype not in (torch.long, torch.int32, torch.int64):
            raise TypeError(f"idx must hold integer token ids (torch.long), got {idx.dtype}; ids are never "
                            "fractional: convert with idx.long() (or build them with torch.long)")
        check_token_ids(idx, self.cfg.vocab_size)
        b, t = idx.shape
        past = cache[0].length if cache else 0
        if past + t > self.cfg.context_length:
            raise ValueError(
                f"sequence of {past + t} tokens ({past} cached + {t} new) is longer than the context length "
                f"{self.cfg.context_length}; crop it to the last {self.cfg.context_length} tokens "
                "(idx[:, -context_length:]) or use generate(..., crop=True)"
            )
        if cache is not None and len(cache) != len(self.blocks):
            raise ValueError(f"cache has {len(cache)} layers but the model has {len(self.blocks)}; "
                             "make it with model.new_cache(batch)")
        if cache is not None and cache[0].k.shape[0] != b:
            raise ValueError(f"the KV cache was made for a batch of {cache[0].k.shape[0]} but idx has a batch of "
                             f"{b}; make one for this batch with model.new_cache({b}) (a cache holds one row per "
                             "sequence), or cache.reorder(index) each layer to select rows")
        if attention_mask is not None:
            if attention_mask.shape != (b, past + t):
                raise ValueError(
                    f"attention_mask must have shape (batch, cached + new) = {(b, past + t)}, got "
                    f"{tuple(attention_mask.shape)}; 1 for real tokens, 0 for padding"
                )
            attention_mask = check_attention_mask(attention_mask)  # bool from here on: no check per layer
        if position_ids is None:
            if attention_mask is None:
                position_ids = torch.arange(past, past + t, device=idx.device).unsqueeze(0)  # (1, T)
            else:
                # Position of a real token = number of real tokens before it, so padding does not shift positions.
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]  # (B, T)
        x = self.drop_emb(self.tok_emb(idx) + self.pos_emb(position_ids))  # (B, T, d_model)
        recompute = self.cfg.gradient_checkpointing and self.training and torch.is_grad_enabled() and cache is None
        for i, block in enumerate(self.blocks):
            if recompute:
                # Non-reentrant: works with keyword arguments and inputs that need no grad, and replays the RNG
                # state, so dropout draws the same masks in the recomputation as in the forward pass.
                x = checkpoint(block, x, attention_mask, use_reentrant=False)
            else:
                x = block(x, attention_mask=attention_mask, cache=cache[i] if cache is not None else None)
        return self.final_norm(x)

    def loss(self, idx: torch.Tensor, targets: torch.Tensor, attention_mask: torch.Tensor | None = None,
             ignore_index: int = -100, chunk_size: int | None = None) -> torch.Tensor:
        """Mean next-token cross-entropy of ``idx`` against ``targets`` (a scalar), for training.

        Equal to ``F.cross_entropy(model(idx).flatten(0, 1), targets.flatten(), ignore_index=-100)`` up to float
        rounding, but faster and lighter: the LM head and the loss run fused and chunked
        (:func:`llmscratch.losses.fused_linear_cross_entropy`), so the ``(batch * seq, vocab)`` logits and
        their gradient are never stored whole. :func:`llmscratch.train.calc_loss_batch` calls this method when a
        model has it.

        Args:
            idx: token ids ``(batch, seq)``.
            targets: next-token ids ``(batch, seq)``; ``ignore_index`` (-100) marks positions without a loss
                (set padded positions to it; ``attention_mask`` alone does not remove them from the loss).
            attention_mask: ``(batch, seq)``, 1 for real tokens, 0 for padding, as in :meth:`forward`.
            chunk_size: tokens per chunk (default :data:`llmscratch.losses.DEFAULT_CHUNK_SIZE`).
        """
        if targets.shape != idx.shape:
            raise ValueError(f"targets {tuple(targets.shape)} must have the shape of idx {tuple(idx.shape)}: "
                             "targets[:, i] is the token that follows idx[:, i]")
        x = self.hidden_states(idx, attention_mask=attention_mask)  # (B, T, d_model)
        weight = self.lm_head.weight[: self.cfg.vocab_size]  # drop padding rows (a view; no copy)
        kwargs = {} if chunk_size is None else {"chunk_size": chunk_size}
        return fused_linear_cross_entropy(x, weight, targets, ignore_index=ignore_index, **kwargs)


    def new_cache(self, batch: int, max_len: int | None = None, device=None, dtype=None) -> list[KVCache]:
        """An empty KV cache: one preallocated :class:`KVCache` per block, ``max_len`` positions each
        (default: the context length). Pass it to ``model(idx, cache=cache)``; it fills as tokens go in."""
        max_len = self.cfg.context_length if max_len is None else max_len
        if not 1 <= max_len <= self.cfg.context_length:
            raise ValueError(f"cache max_len must be in [1, context_length={self.cfg.context_length}], got {max_len}")
        return [block.attn.new_cache(batch, max_len, device=device, dtype=dtype) for block in self.blocks]

    # ------------------------------------------------------------------ size, memory, speed
    def num_parameters(self, tied: bool = True, non_embedding: bool = False) -> int:
        """Number of parameters.

        ``tied=True`` counts a shared embedding / LM-head matrix once (what is stored in memory: 124,439,808 for
        ``gpt2``); ``tied=False`` counts it twice, as an untied model would have (163,037,184 for ``gpt2``).
        ``non_embedding=True`` leaves out the position embedding (as nanoGPT: the token embedding is also the LM head).
        """
        n = sum(p.numel() for p in self.parameters())  # parameters() yields a shared tensor once
        if not tied and self.cfg.tie_weights:
            n += self.lm_head.weight.numel()
        if non_embedding:
            # As nanoGPT: position embeddings out; the token embedding stays, as it is also the LM head.
            n -= self.pos_emb.weight.numel()
        return n

    def memory_bytes(self) -> int:
        """Bytes taken by the parameters (tied matrices counted once) and buffers."""
        return sum(p.numel() * p.element_size() for p in self.parameters()) + sum(
            b.numel() * b.element_size() for b in self.buffers())

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward), PaLM appendix B: ``6 N + 12 L d T``."""
        t = self.cfg.context_length if seq_len is None else seq_len
        n = self.num_parameters(non_embedding=True)
        return 6 * n + 12 * self.cfg.n_layers * self.cfg.d_model * t

    def estimate_mfu(self, tokens_per_iter: int, dt: float, peak_flops: float | None = None,
                     seq_len: int | None = None) -> float:
        """Model FLOPs utilisation: achieved training FLOP/s over the device's peak (Chowdhery et al., 2022).

        Args:
            tokens_per_iter: tokens processed per optimizer step (batch * seq * accumulation steps).
            dt: seconds per step.
            peak_flops: the device's peak FLOP/s; default: bf16 dense peak of the current CUDA GPU if known
                (A100 312e12, H100 989e12, ...), otherwise this must be given.
        """
        if dt <= 0:
            raise ValueError(f"dt must be positive seconds per iteration, got {dt}")
        if peak_flops is None:
            peak_flops = _gpu_peak_flops()
            if peak_flops is None:
                raise ValueError("peak_flops unknown for this device; pass it, e.g. peak_flops=312e12 for an A100")
        return self.flops_per_token(seq_len) * tokens_per_iter / dt / peak_flops

    def configure_optimizer(self, lr: float = 3e-4, weight_decay: float = 0.1,
                            betas=(0.9, 0.95)) -> torch.optim.AdamW:
        """AdamW with weight decay on matrices only (not biases, LayerNorms), fused kernel where available.

        The same as :func:`llmscratch.train.configure_optimizer` (which it calls), with nanoGPT's lr default.
        """
        from ..train import configure_optimizer

        return configure_optimizer(self, lr=lr, weight_decay=weight_decay, betas=betas)

    # ------------------------------------------------------------------ Hugging Face checkpoints
    @classmethod
    def from_pretrained(cls, path_or_name: str | os.PathLike, **overrides) -> "GPTModel":
        """Load a Hugging Face GPT-2 checkpoint.

        ``path_or_name``: a local folder with ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``),
        e.g. written by ``transformers``' ``save_pretrained`` or by :meth:`save_pretrained`; or a Hub name
        (``"gpt2"``, ``"gpt2-medium"``, ``"openai-community/gpt2-large"``, ...), downloaded when online.
        ``overrides``: GPTConfig fields to change, e.g. ``dropout=0.1`` or ``padded_vocab_size=50304``.

        Hugging Face's GPT-2 stores its linear layers as ``Conv1D`` with weights ``(in, out)``; ``nn.Linear``
        keeps ``(out, in)``, so those four matrices per block are transposed on the way in.
        """
        folder = _resolve_checkpoint(path_or_name)
        with open(folder / "config.json") as f:
            hf = json.load(f)
        cfg = replace(_config_from_hf(hf, folder), **overrides) if overrides else _config_from_hf(hf, folder)
        state = _read_state_dict(folder)
        model = cls(cfg)
        model.load_hf_state_dict(state)
        return model

    def load_hf_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Copy a Hugging Face GPT-2 state dict (``GPT2LMHeadModel`` or ``GPT2Model`` keys) into this model."""
        state = {k.removeprefix("transformer."): v for k, v in state.items()}
        # Old checkpoints store the causal mask as a buffer; SDPA does not need it.
        state = {k: v for k, v in state.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
        hf_head = state.pop("lm_head.weight", None)
        ours = dict(self.named_parameters())
        done: set[str] = set()
        with torch.no_grad():
            for hf_name, (our_name, transpose) in self._hf_name_map().items():
                if hf_name not in state:
                    raise KeyError(f"checkpoint has no tensor {hf_name!r} (needed for {our_name!r}); "
                                   "is it a GPT-2 checkpoint with the config's n_layer?")
                src = state.pop(hf_name)
                src = src.t() if transpose else src
                dst = ours[our_name]
                if our_name == "tok_emb.weight" and src.shape[0] == self.cfg.vocab_size != dst.shape[0]:
                    dst = dst[: self.cfg.vocab_size]  # padded vocabulary: the extra rows keep their init
                if src.shape != dst.shape:
                    raise ValueError(
                        f"shape mismatch for checkpoint tensor {hf_name!r}: {tuple(src.shape)}"
                        f"{' (after transposing Conv1D)' if transpose else ''} but the model's {our_name!r} is "
                        f"{tuple(dst.shape)}; the config does not match the weights (check n_embd / n_layer / "
                        "vocab_size / n_positions in config.json)"
                    )
                dst.copy_(src)
                done.add(our_name)
            if not self.cfg.tie_weights:
                if hf_head is None:
                    raise KeyError("checkpoint has no 'lm_head.weight' but the config says tie_weights=False")
                dst = self.lm_head.weight[: self.cfg.vocab_size]
                if hf_head.shape != dst.shape:
                    raise ValueError(f"shape mismatch for checkpoint tensor 'lm_head.weight': {tuple(hf_head.shape)} "
                                     f"but the model's 'lm_head.weight' is {tuple(dst.shape)}")
                dst.copy_(hf_head)
        if state:
            raise ValueError(f"checkpoint has tensors the model does not use: {sorted(state)[:8]}; "
                             "is it a GPT-2 checkpoint (model_type 'gpt2')?")

    def _hf_name_map(self) -> dict[str, tuple[str, bool]]:
        """Hugging Face GPT-2 tensor name -> (our parameter name, transpose?)."""
        m = {"wte.weight": ("tok_emb.weight", False), "wpe.weight": ("pos_emb.weight", False),
             "ln_f.weight": ("final_norm.weight", False)}
        if self.cfg.bias:
            m["ln_f.bias"] = ("final_norm.bias", False)
        for i in range(self.cfg.n_layers):
            hf, us = f"h.{i}.", f"blocks.{i}."
            pairs = [("ln_1", "norm1", False), ("attn.c_attn", "attn.qkv", True), ("attn.c_proj", "attn.proj", True),
                     ("ln_2", "norm2", False), ("mlp.c_fc", "ff.fc", True), ("mlp.c_proj", "ff.proj", True)]
            for hf_mod, our_mod, is_conv1d in pairs:
                m[f"{hf}{hf_mod}.weight"] = (f"{us}{our_mod}.weight", is_conv1d)
                has_bias = self.cfg.qkv_bias if our_mod == "attn.qkv" else self.cfg.bias
                if has_bias:
                    m[f"{hf}{hf_mod}.bias"] = (f"{us}{our_mod}.bias", False)
        return m

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write a Hugging Face GPT-2 folder (``config.json`` + ``model.safetensors``) that
        ``transformers.GPT2LMHeadModel.from_pretrained`` and :meth:`from_pretrained` both load."""
        cfg = self.cfg
        if not (cfg.bias and cfg.qkv_bias):
            raise ValueError("the Hugging Face GPT-2 format needs bias=True and qkv_bias=True; this model has none "
                             "in some layers, so save it with torch.save(model.state_dict(), ...) instead")
        ours = dict(self.named_parameters())
        state = {}
        for hf_name, (our_name, transpose) in self._hf_name_map().items():
            t = ours[our_name].detach()
            if our_name == "tok_emb.weight":
                t = t[: cfg.vocab_size]
            t = t.t() if transpose else t
            state["transformer." + hf_name] = t.to("cpu").contiguous().clone()
        if not cfg.tie_weights:
            state["lm_head.weight"] = self.lm_head.weight.detach()[: cfg.vocab_size].to("cpu").contiguous().clone()
        hf_config = {
            "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": cfg.vocab_size, "n_positions": cfg.context_length, "n_ctx": cfg.context_length,
            "n_embd": cfg.d_model, "n_head": cfg.n_heads, "n_layer": cfg.n_layers, "n_inner": None,
            "activation_function": "gelu_new", "layer_norm_epsilon": cfg.layer_norm_eps,
            "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
            "initializer_range": 0.02, "tie_word_embeddings": cfg.tie_weights,
            # GPT-2's <|endoftext|> is id 50256; a smaller teaching vocabulary has no such id.
            "bos_token_id": 50256 if cfg.vocab_size > 50256 else None,
            "eos_token_id": 50256 if cfg.vocab_size > 50256 else None, "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
            "llmscratch_config": asdict(cfg),
        }
        return write_weights_folder(path, state, hf_config)


# ---------------------------------------------------------------------- helpers for checkpoints and MFU
_HUB_ALIASES = {"gpt2": "openai-community/gpt2", "gpt2-medium": "openai-community/gpt2-medium",
                "gpt2-large": "openai-community/gpt2-large", "gpt2-xl": "openai-community/gpt2-xl"}


def _resolve_checkpoint(path_or_name) -> Path:
    """A local checkpoint folder for a path, or for a Hub name (local Hugging Face cache first, then download)."""
    path = Path(path_or_name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json; a GPT-2 checkpoint folder needs config.json and "
                                    "model.safetensors (or pytorch_model.bin), e.g. from save_pretrained")
        return path
    name = str(path_or_name)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"{name!r} is not a checkpoint folder (a folder with config.json and "
                                "model.safetensors) nor a Hugging Face Hub name such as 'gpt2'")
    repo_id = _HUB_ALIASES.get(name, name)
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:  # pragma: no cover - huggingface_hub comes with transformers
        raise ImportError("loading by name needs huggingface_hub (pip install huggingface_hub), "
                          "or pass a local checkpoint folder") from err
    patterns = ["config.json", "model.safetensors"]
    try:  # already downloaded once? then no network is needed
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception:  # noqa: BLE001 - any miss in the local cache means: try the network
        pass
    offline = os.environ.get("LLMSCRATCH_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
    hint = (f"connect to the internet (Colab is online) and call from_pretrained({name!r}) again, or pass a local "
            "folder with config.json and model.safetensors (e.g. written by save_pretrained)")
    if offline:
        raise RuntimeError(f"cannot download {repo_id!r}: this session is offline (LLMSCRATCH_OFFLINE=1 or "
                           f"HF_HUB_OFFLINE=1) and it is not in the local Hugging Face cache; {hint}")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as err:  # noqa: BLE001 - network errors come in many types
        raise RuntimeError(f"could not download {repo_id!r} from the Hugging Face Hub ({type(err).__name__}: "
                           f"{str(err)[:200]}); {hint}") from err


def _config_from_hf(hf: dict, folder: Path) -> GPTConfig:
    if hf.get("model_type", "gpt2") != "gpt2":
        raise ValueError(f"{folder}/config.json is a {hf.get('model_type')!r} model, not GPT-2 ('gpt2')")
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"{folder}/config.json uses activation {act!r}; this GPT-2 uses the tanh GELU "
                         "('gelu_new'), as every released GPT-2 does")
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn") or \
            hf.get("scale_attn_weights", True) is False or hf.get("n_inner") not in (None, 4 * hf["n_embd"]):
        raise ValueError(f"{folder}/config.json uses a GPT-2 variant option (scale_attn_by_inverse_layer_idx, "
                         "reorder_and_upcast_attn, scale_attn_weights=False or n_inner != 4*n_embd) this model lacks")
    return GPTConfig(
        vocab_size=hf["vocab_size"], context_length=hf["n_positions"], d_model=hf["n_embd"],
        n_heads=hf["n_head"], n_layers=hf["n_layer"], dropout=float(hf.get("resid_pdrop", 0.0)),
        qkv_bias=True, bias=True, tie_weights=bool(hf.get("tie_word_embeddings", True)),
        layer_norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
    )


def _read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    st, binf = folder / "model.safetensors", folder / "pytorch_model.bin"
    if st.is_file():
        from safetensors.torch import load_file

        return load_file(str(st))
    if binf.is_file():
        return torch.load(binf, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{folder} has neither model.safetensors nor pytorch_model.bin")


# bf16 dense peak FLOP/s of common GPUs, for estimate_mfu (the datasheets' "without sparsity" numbers).
_PEAK_FLOPS = {"A100": 312e12, "H100": 989e12, "H200": 989e12, "L4": 121e12, "A10G": 125e12, "T4": 65e12,
               "V100": 125e12, "RTX 4090": 165e12, "RTX 3090": 71e12}


def _gpu_peak_flops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, flops in _PEAK_FLOPS.items():
        if key in name:
            return flops
    return None
