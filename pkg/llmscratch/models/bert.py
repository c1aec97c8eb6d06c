"""BERT (Devlin et al., 2019), one readable file: config, encoder, masked-LM and classification heads, weights.

The architecture, top to bottom::

    token ids, token type ids (batch, seq)
      -> word + position + token-type embeddings -> LayerNorm -> dropout       (batch, seq, hidden)
      -> num_hidden_layers x BertLayer (post-LayerNorm, bidirectional):
             x = norm1(x + dropout(attn(x, padding mask)))     every position sees every real token
             x = norm2(x + dropout(ff(x)))                     Linear -> GELU (erf) -> Linear
      -> BertModel:  last hidden states (batch, seq, hidden), pooler = tanh(Linear(h[:, 0]))  ([CLS])
      -> BertForMaskedLM: Linear -> GELU -> LayerNorm -> decoder tied to the word embeddings  (batch, seq, vocab)
      -> BertForSequenceClassification: dropout -> Linear on the pooler output               (batch, num_labels)

Three differences from GPT-2 (chapter 3) carry the chapter: attention is *bidirectional* (no causal mask, only
a padding mask), the LayerNorm comes *after* each residual addition (post-LN, as in the original Transformer),
and a second embedding table marks which segment (sentence A or B) a token belongs to.

Attention is :class:`llmscratch.models.attention.MultiHeadAttention` (fused QKV, SDPA) with ``causal=False``;
LayerNorm, the feed-forward network and the post-LN residual come from :mod:`llmscratch.models.layers`. When
attention maps are asked for (``output_attentions=True``), the same parameters run through the explicit
reference path of :class:`~llmscratch.models.attention.ReferenceMultiHeadAttention`.

Training the masked LM: :meth:`BertForMaskedLM.loss` is *sparse*: the transform and the 30,522-way decoder run
only at the masked positions (about 15% of the tokens), where ``transformers`` runs them at every position. The
loss and the gradients are those of the dense computation (``tests/test_bert.py`` checks both).

Checkpoints: ``from_pretrained(folder or Hub name)`` and ``save_pretrained(folder)`` read and write the Hugging
Face format (``config.json`` + ``model.safetensors``), so weights move both ways with ``transformers``' ``Bert*``
classes. Hugging Face keeps separate ``query``/``key``/``value`` Linears; ours are fused into one ``qkv``
Linear, so those three are concatenated on load and split on save.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from .attention import MultiHeadAttention, ReferenceMultiHeadAttention
from .gpt import GPTModel, _read_state_dict, _resolve_checkpoint
from .layers import GELU, FeedForward, LayerNorm, ResidualSublayer

__all__ = ["BertConfig", "BertModel", "BertOutput", "BertForMaskedLM", "BertForSequenceClassification",
           "BertLayer", "BertSelfAttention", "key_padding_mask", "BERT_PRESETS"]

IGNORE_INDEX = -100
_ACTIVATIONS = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}  # HF name -> GELU approximate


@dataclass
class BertConfig:
    """Sizes and switches of a BERT model; the field names are those of Hugging Face's ``config.json``.

    The defaults are BERT-base (110M parameters). ``intermediate_size`` is ``4 * hidden_size`` in every released
    BERT; ``hidden_act="gelu"`` is the exact (erf) GELU, ``"gelu_new"`` the tanh approximation.
    ``classifier_dropout=None`` means: use ``hidden_dropout_prob``. ``gradient_checkpointing`` recomputes each
    layer's activations in the backward pass instead of storing them (``torch.utils.checkpoint``, non-reentrant):
    the same gradients for less memory and about one more forward pass of time (chapter 8).
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0
    num_labels: int = 2
    classifier_dropout: float | None = None
    gradient_checkpointing: bool = False

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size", "num_labels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"BertConfig.{name} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                             f"({self.num_attention_heads}); BERT uses heads of 64, e.g. "
                             f"num_attention_heads={max(1, self.hidden_size // 64)}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"BertConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported; use one of {sorted(_ACTIVATIONS)}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"pad_token_id ({self.pad_token_id}) must be a token id below vocab_size "
                             f"({self.vocab_size})")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def preset(cls, name: str, **overrides) -> "BertConfig":
        """A named configuration, optionally changed: ``BertConfig.preset("bert-mini", vocab_size=8000)``.

        Presets: Google's ``bert-base-uncased`` and ``bert-large-uncased``, and the small BERTs of Turc et al.
        (2019): ``bert-tiny`` (L=2, H=128), ``bert-mini`` (L=4, H=256), ``bert-small`` (L=4, H=512),
        ``bert-medium`` (L=8, H=512); all with 64-dimensional heads and ``intermediate_size = 4 H``.
        """
        if name not in BERT_PRESETS:
            raise ValueError(f"unknown BERT preset {name!r}; choose one of {', '.join(BERT_PRESETS)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown BertConfig field(s) {unknown}; known fields: {', '.join(sorted(known))}")
        return cls(**{**BERT_PRESETS[name], **overrides})


def _sizes(layers: int, hidden: int) -> dict:
    return dict(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=hidden // 64,
                intermediate_size=4 * hidden)


#: Named sizes (all uncased, vocabulary 30,522, 512 positions).
BERT_PRESETS: dict[str, dict] = {
    "bert-base-uncased": _sizes(12, 768),  # 110M
    "bert-large-uncased": _sizes(24, 1024),  # 335M
    "bert-tiny": _sizes(2, 128),  # 4.4M
    "bert-mini": _sizes(4, 256),  # 11.2M
    "bert-small": _sizes(4, 512),  # 28.8M
    "bert-medium": _sizes(8, 512),  # 41.4M
}


@dataclass
class BertOutput:
    """What :class:`BertModel` returns.

    ``last_hidden_state``: ``(batch, seq, hidden)``; ``pooler_output``: ``(batch, hidden)`` (``None`` without a
    pooler); ``attentions``: one ``(batch, heads, seq, seq)`` tensor per layer when asked for, else ``None``.
    """

    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class BertEmbeddings(nn.Module):
    """``LayerNorm(word[id] + position[i] + token_type[segment])`` then dropout: ``(B, T)`` -> ``(B, T, H)``."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids, position_ids):
        x = (self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
             + self.token_type_embeddings(token_type_ids))
        return self.dropout(self.norm(x))


def key_padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """``(batch, seq)`` 1/0 mask -> boolean ``(batch, 1, 1, seq)``: True where a key may be attended to.

    Broadcast over heads and queries, so no ``(seq, seq)`` matrix is ever built. A row that is all padding would
    leave its queries nothing to attend to (NaN after the softmax); such a row attends to every position instead
    (its outputs are padding, which nothing reads).
    """
    allowed = attention_mask.to(torch.bool)[:, None, None, :]
    return allowed | ~allowed.any(dim=-1, keepdim=True)


class BertSelfAttention(MultiHeadAttention):
    """:class:`~llmscratch.models.attention.MultiHeadAttention`, bidirectional, taking the padding mask already
    in SDPA's broadcastable form (:func:`key_padding_mask`, built once per forward pass by :class:`BertModel`).

    The parent class builds a ``(batch, 1, seq, seq)`` mask in every layer, as a causal decoder with a cache
    needs; an encoder only ever masks key *columns*. Skipping that work is what makes classifier inference on
    padded batches faster than ``transformers``' on a CPU (``benchmarks/bert.py``). Same parameters and names
    (``qkv``, ``proj``), so a state dict, ``split_qkv`` and the reference path of the parent all still apply.
    """

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``(batch, seq, hidden)``, ``key_mask`` ``(batch, 1, 1, seq)`` bool or None -> ``(batch, seq, hidden)``."""
        b, t, _ = self._check_input(x, None)
        q, k, v = self.split_qkv(x)  # (B, heads, T, head_dim) each
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, t, self.d_out))


class BertLayer(nn.Module):
    """One post-LN encoder layer: ``norm(x + attn(x))`` then ``norm(x + ff(x))``; ``(B, T, H)`` -> ``(B, T, H)``.

    Both sub-layers are :class:`~llmscratch.models.layers.ResidualSublayer` with ``norm="post"``; the residual
    dropout sits there, so the feed-forward network has none of its own.
    """

    def __init__(self, cfg: BertConfig):
        super().__init__()
        mha = BertSelfAttention(cfg.hidden_size, cfg.hidden_size, cfg.num_attention_heads,
                                cfg.max_position_embeddings, dropout=cfg.attention_probs_dropout_prob,
                                qkv_bias=True, causal=False)
        ff = FeedForward(cfg.hidden_size, cfg.intermediate_size, dropout=0.0,
                         approximate=_ACTIVATIONS[cfg.hidden_act])
        self.attn = ResidualSublayer(cfg.hidden_size, mha, norm="post", dropout=cfg.hidden_dropout_prob,
                                     eps=cfg.layer_norm_eps)
        self.ff = ResidualSublayer(cfg.hidden_size, ff, norm="post", dropout=cfg.hidden_dropout_prob,
                                   eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_attentions: bool = False, key_mask: torch.Tensor | None = None):
        """Returns ``(batch, seq, hidden)``, or ``(that, weights (batch, heads, seq, seq))`` with
        ``output_attentions``. ``key_mask``: :func:`key_padding_mask` of ``attention_mask``, if already made."""
        if not output_attentions:
            if key_mask is None and attention_mask is not None:
                key_mask = key_padding_mask(attention_mask)
            return self.ff(self.attn(x, key_mask=key_mask))
        # The explicit path: same parameters, weights materialised (ReferenceMultiHeadAttention's forward).
        y, weights = ReferenceMultiHeadAttention.forward(self.attn.sublayer, x, attention_mask,
                                                         return_weights=True)
        x = self.attn.norm(x + self.attn.dropout(y))
        return self.ff(x), weights


class _Pretrained:
    """``from_pretrained`` / ``save_pretrained`` shared by the three classes (the Hugging Face folder format)."""

    _hf_architecture = "BertModel"

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @classmethod
    def from_pretrained(cls, path_or_name: str | os.PathLike, **overrides):
        """Load a Hugging Face BERT checkpoint: a folder with ``config.json`` and ``model.safetensors`` (or
        ``pytorch_model.bin``), or a Hub name such as ``"bert-base-uncased"`` (downloaded when online).

        ``overrides``: :class:`BertConfig` fields to change, e.g. ``num_labels=3`` or ``hidden_dropout_prob=0``.
        Tensors the checkpoint lacks are freshly initialised only where a fine-tuning model expects them to be
        new (the classifier, and the pooler of a checkpoint saved without one); any other gap is an error.
        """
        folder = _resolve_checkpoint(path_or_name)
        with open(folder / "config.json") as f:
            cfg = config_from_hf(json.load(f), folder)
        cfg = replace(cfg, **overrides) if overrides else cfg
        model = cls(cfg)
        model.load_hf_state_dict(_read_state_dict(folder))
        return model

    def load_hf_state_dict(self, state: dict[str, torch.Tensor]) -> list[str]:
        """Copy a Hugging Face BERT state dict into this model; returns the names left at their initial values."""
        state = {_rename_legacy(k): v for k, v in state.items()}
        state = {k: v for k, v in state.items() if not k.endswith(("position_ids", "token_type_ids"))}
        if not any(k.startswith("bert.") for k in state):
            state = {"bert." + k: v for k, v in state.items()}  # saved from a bare BertModel
        ours = dict(self.named_parameters())
        fresh_ok = ("classifier.", "bert.pooler.", "pooler.")
        missing: list[str] = []
        with torch.no_grad():
            for our_name, hf_names in self._hf_name_map().items():
                if not all(n in state for n in hf_names):
                    if our_name.startswith(fresh_ok):
                        missing.append(our_name)
                        continue
                    absent = [n for n in hf_names if n not in state]
                    raise KeyError(f"checkpoint has no tensor {absent[0]!r} (needed for {our_name!r}); is it a "
                                   "BERT checkpoint with the config's num_hidden_layers?")
                src = torch.cat([state[n] for n in hf_names], 0) if len(hf_names) > 1 else state[hf_names[0]]
                dst = ours[our_name]
                if src.shape != dst.shape:
                    raise ValueError(f"shape mismatch for checkpoint tensor(s) {hf_names}: {tuple(src.shape)} but "
                                     f"the model's {our_name!r} is {tuple(dst.shape)}; the config does not match "
                                     "the weights (check hidden_size / vocab_size / num_labels in config.json)")
                dst.copy_(src)
        return missing

    def _hf_name_map(self) -> dict[str, list[str]]:
        """Our parameter name -> the Hugging Face tensor name(s) it is made of (three for the fused QKV)."""
        prefix = "bert." if hasattr(self, "bert") else ""
        m = {}
        e, he = prefix + "embeddings.", "bert.embeddings."
        for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
            m[f"{e}{name}.weight"] = [f"{he}{name}.weight"]
        for p in ("weight", "bias"):
            m[f"{e}norm.{p}"] = [f"{he}LayerNorm.{p}"]
        encoder = self.bert if hasattr(self, "bert") else self
        for i in range(len(encoder.layers)):
            us, hf = f"{prefix}layers.{i}.", f"bert.encoder.layer.{i}."
            for p in ("weight", "bias"):
                m[f"{us}attn.sublayer.qkv.{p}"] = [f"{hf}attention.self.{n}.{p}" for n in ("query", "key", "value")]
                m[f"{us}attn.sublayer.proj.{p}"] = [f"{hf}attention.output.dense.{p}"]
                m[f"{us}attn.norm.{p}"] = [f"{hf}attention.output.LayerNorm.{p}"]
                m[f"{us}ff.sublayer.fc.{p}"] = [f"{hf}intermediate.dense.{p}"]
                m[f"{us}ff.sublayer.proj.{p}"] = [f"{hf}output.dense.{p}"]
                m[f"{us}ff.norm.{p}"] = [f"{hf}output.LayerNorm.{p}"]
        if encoder.pooler is not None:
            for p in ("weight", "bias"):
                m[f"{prefix}pooler.{p}"] = [f"bert.pooler.dense.{p}"]
        if isinstance(self, BertForMaskedLM):
            m["head.bias"] = ["cls.predictions.bias"]
            for p in ("weight", "bias"):
                m[f"head.transform.{p}"] = [f"cls.predictions.transform.dense.{p}"]
                m[f"head.norm.{p}"] = [f"cls.predictions.transform.LayerNorm.{p}"]
        if isinstance(self, BertForSequenceClassification):
            for p in ("weight", "bias"):
                m[f"classifier.{p}"] = [f"classifier.{p}"]
        return m

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write a Hugging Face folder (``config.json`` + ``model.safetensors``) that ``transformers``'
        matching ``Bert*`` class and :meth:`from_pretrained` both load."""
        from ..utils import write_weights_folder

        ours = dict(self.named_parameters())
        state = {}
        for our_name, hf_names in self._hf_name_map().items():
            t = ours[our_name].detach().to("cpu")
            for name, part in zip(hf_names, t.chunk(len(hf_names), dim=0)):
                state[name] = part.contiguous().clone()
        if not hasattr(self, "bert"):  # a bare BertModel is saved without the "bert." prefix, as transformers does
            state = {k.removeprefix("bert."): v for k, v in state.items()}
        cfg = self.cfg
        hf_config = {"architectures": [self._hf_architecture], "model_type": "bert",
                     **{k: v for k, v in asdict(cfg).items() if k not in ("num_labels", "gradient_checkpointing")},
                     "id2label": {str(i): f"LABEL_{i}" for i in range(cfg.num_labels)},
                     "label2id": {f"LABEL_{i}": i for i in range(cfg.num_labels)},
                     "initializer_range": 0.02, "tie_word_embeddings": True, "is_decoder": False}
        return write_weights_folder(path, state, hf_config)


def _rename_legacy(name: str) -> str:
    """Old TF-converted checkpoints (bert-base-uncased's pytorch_model.bin) call LayerNorm's parameters
    gamma/beta; transformers renames them on load, and so do we."""
    return name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")


def config_from_hf(hf: dict, folder: Path | str = "config.json") -> BertConfig:
    """A :class:`BertConfig` from a Hugging Face ``config.json`` dict; unknown options that change the maths
    are refused with the reason."""
    if hf.get("model_type", "bert") != "bert":
        raise ValueError(f"{folder} is a {hf.get('model_type')!r} model, not BERT ('bert')")
    if hf.get("position_embedding_type", "absolute") != "absolute" or hf.get("is_decoder"):
        raise ValueError(f"{folder} uses a BERT variant (relative positions or is_decoder=True) this model lacks")
    if hf.get("tie_word_embeddings", True) is False:
        raise ValueError(f"{folder} has tie_word_embeddings=false; this BERT always ties the MLM decoder to the "
                         "word embeddings, as every released BERT does")
    known = {f.name for f in fields(BertConfig)}
    values = {k: v for k, v in hf.items() if k in known}
    if "id2label" in hf and "num_labels" not in hf:
        values["num_labels"] = len(hf["id2label"])
    if values.get("pad_token_id") is None:
        values["pad_token_id"] = 0
    return BertConfig(**values)


class BertModel(_Pretrained, nn.Module):
    """The BERT encoder: embeddings, ``num_hidden_layers`` post-LN layers, and (optionally) the pooler.

    ``model(input_ids, attention_mask, token_type_ids)`` returns a :class:`BertOutput`.
    """

    def __init__(self, cfg: BertConfig, add_pooling_layer: bool = True):
        super().__init__()
        if not isinstance(cfg, BertConfig):
            raise TypeError(f"BertModel needs a BertConfig, got {type(cfg).__name__}; "
                            "e.g. BertConfig.preset('bert-mini')")
        self.cfg = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.layers = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.pooler = nn.Linear(cfg.hidden_size, cfg.hidden_size) if add_pooling_layer else None
        self.apply(_init_weights)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                output_attentions: bool = False) -> BertOutput:
        """Encode a batch.

        Args:
            input_ids: ``(batch, seq)`` token ids (``[CLS] a [SEP] b [SEP]`` by convention).
            attention_mask: ``(batch, seq)``, 1 for real tokens, 0 for padding (``None``: all real).
            token_type_ids: ``(batch, seq)``, 0 for the first segment, 1 for the second (``None``: all 0).
            position_ids: ``(batch, seq)``; default ``0 .. seq-1`` (BERT pads on the right).
            output_attentions: also return every layer's attention weights (slower: explicit softmax).
        """
        self._check_ids(input_ids, attention_mask, token_type_ids)
        b, t = input_ids.shape
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if position_ids is None:
            position_ids = torch.arange(t, device=input_ids.device).unsqueeze(0)  # (1, T)
        x = self.embeddings(input_ids, token_type_ids, position_ids)  # (B, T, H)
        key_mask = key_padding_mask(attention_mask) if attention_mask is not None else None  # once, not per layer
        attentions = []
        recompute = self.cfg.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            if output_attentions:
                x, weights = layer(x, attention_mask, output_attentions=True)
                attentions.append(weights)
            elif recompute:
                # Non-reentrant: replays the RNG state, so dropout draws the same masks when recomputing.
                x = checkpoint(layer, x, key_mask=key_mask, use_reentrant=False)
            else:
                x = layer(x, key_mask=key_mask)
        pooled = torch.tanh(self.pooler(x[:, 0])) if self.pooler is not None else None  # the [CLS] position
        return BertOutput(x, pooled, tuple(attentions) if output_attentions else None)

    def _check_ids(self, input_ids, attention_mask, token_type_ids) -> None:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise ValueError(f"input_ids must be a (batch, seq) tensor of token ids, got "
                             f"{tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids)}"
                             "; for one sequence use ids.unsqueeze(0)")
        if input_ids.dtype not in (torch.long, torch.int32):
            raise TypeError(f"input_ids must hold integer token ids (torch.long), got {input_ids.dtype}")
        t = input_ids.shape[1]
        if t > self.cfg.max_position_embeddings:
            raise ValueError(f"sequence of {t} tokens is longer than max_position_embeddings "
                             f"({self.cfg.max_position_embeddings}); truncate it (e.g. to "
                             f"{self.cfg.max_position_embeddings} tokens, keeping the final [SEP])")
        for name, other in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if other is not None and other.shape != input_ids.shape:
                raise ValueError(f"{name} must have the shape of input_ids {tuple(input_ids.shape)}, got "
                                 f"{tuple(other.shape)}")


# BERT's initialisation is GPT-2's: N(0, 0.02) for Linear and Embedding weights, zero biases, LayerNorm 1 and 0.
_init_weights = GPTModel._init_weights


class BertMLMHead(nn.Module):
    """``LayerNorm(GELU(Linear(h)))`` then the decoder: ``h @ word_embeddings.T + bias``. ``(N, H)`` -> ``(N, V)``.

    The decoder matrix is the word-embedding matrix itself (tied, passed in at call time); only its bias is
    owned here.
    """

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.transform = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.act = GELU(_ACTIVATIONS[cfg.hidden_act])
        self.norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, h: torch.Tensor, decoder_weight: torch.Tensor) -> torch.Tensor:
        return F.linear(self.norm(self.act(self.transform(h))), decoder_weight, self.bias)


class BertForMaskedLM(_Pretrained, nn.Module):
    """BERT with the masked-language-model head; the decoder is tied to the word embeddings.

    ``model(input_ids, attention_mask, token_type_ids)`` returns logits ``(batch, seq, vocab)``;
    :meth:`loss` is the sparse training loss.
    """

    _hf_architecture = "BertForMaskedLM"

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.cfg = cfg
        self.bert = BertModel(cfg, add_pooling_layer=False)
        self.head = BertMLMHead(cfg)
        _init_weights(self.head.transform)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, output_attentions: bool = False):
        """Logits ``(batch, seq, vocab)`` at every position; with ``output_attentions``, ``(logits, attentions)``."""
        out = self.bert(input_ids, attention_mask, token_type_ids, output_attentions=output_attentions)
        logits = self.head(out.last_hidden_state, self.bert.embeddings.word_embeddings.weight)
        return (logits, out.attentions) if output_attentions else logits

    def loss(self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None,
             token_type_ids: torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
        """Mean cross-entropy over the masked positions (``labels != ignore_index``), computed sparsely.

        Equal to ``F.cross_entropy(model(input_ids, ...).flatten(0, 1), labels.flatten())`` (values and
        gradients), but the head runs on the ``N`` selected rows only: ``(N, H) -> (N, V)`` instead of
        ``(B*T, H) -> (B*T, V)``; with 15% masking that is about 6.7x less head work and memory.

        Args:
            input_ids: ``(batch, seq)`` masked input ids; labels: ``(batch, seq)``, the original id at the
                masked positions and ``ignore_index`` (-100) everywhere else.
        """
        if labels.shape != input_ids.shape:
            raise ValueError(f"labels {tuple(labels.shape)} must have the shape of input_ids "
                             f"{tuple(input_ids.shape)}: the original id at masked positions, -100 elsewhere")
        h = self.bert(input_ids, attention_mask, token_type_ids).last_hidden_state  # (B, T, H)
        selected = labels != ignore_index  # (B, T)
        # Boolean indexing gathers the N masked rows; its backward scatters the gradient back (zeros elsewhere).
        logits = self.head(h[selected], self.bert.embeddings.word_embeddings.weight)  # (N, V)
        return F.cross_entropy(logits.float(), labels[selected].long())


class BertForSequenceClassification(_Pretrained, nn.Module):
    """BERT with a classifier on the pooled ``[CLS]`` vector: logits ``(batch, num_labels)``."""

    _hf_architecture = "BertForSequenceClassification"

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.cfg = cfg
        self.bert = BertModel(cfg, add_pooling_layer=True)
        p = cfg.hidden_dropout_prob if cfg.classifier_dropout is None else cfg.classifier_dropout
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(cfg.hidden_size, cfg.num_labels)
        _init_weights(self.classifier)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, output_attentions: bool = False):
        """Logits ``(batch, num_labels)``; with ``output_attentions``, ``(logits, attentions)``."""
        out = self.bert(input_ids, attention_mask, token_type_ids, output_attentions=output_attentions)
        logits = self.classifier(self.dropout(out.pooler_output))
        return (logits, out.attentions) if output_attentions else logits

    def loss(self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None,
             token_type_ids: torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
        """Mean cross-entropy of the logits against ``labels`` ``(batch,)`` class ids."""
        if labels.shape != input_ids.shape[:1]:
            raise ValueError(f"labels must be one class id per sequence, shape ({input_ids.shape[0]},), got "
                             f"{tuple(labels.shape)}")
        logits = self(input_ids, attention_mask, token_type_ids)
        return F.cross_entropy(logits.float(), labels.long(), ignore_index=ignore_index)

