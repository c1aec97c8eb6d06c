"""Model parallelism for one GPT block, on ``torch.distributed``: tensor parallel (Megatron-LM, Shoeybi et
al., 2019) by hand and with ``torch.distributed.tensor.parallel``, and pipeline stages for
``torch.distributed.pipelining``.

**Tensor parallel MLP**: ``fc`` is split by output features (*column parallel*: rank r computes the hidden
units ``r*4d/W ... (r+1)*4d/W``), GELU acts on each unit alone, and ``proj`` is split by input features (*row
parallel*: each rank multiplies its own hidden units), so each rank holds a partial sum of the output and one
all-reduce adds them. Attention splits the same way by heads: the Q, K, V rows of the rank's heads (column
parallel), attention per head, then the matching columns of the output projection (row parallel) and one
all-reduce. Two communication operators make backward right (Megatron's ``f`` and ``g``):
:class:`CopyToParallel` (forward: identity; backward: all-reduce, since every rank's branch used the input)
and :class:`ReduceFromParallel` (forward: all-reduce; backward: identity, since the sum passes the gradient
unchanged to every term).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

__all__ = ["CopyToParallel", "ReduceFromParallel", "TensorParallelMLP", "TensorParallelAttention",
           "dtensor_parallel_mlp", "pipeline_stage_modules"]


class CopyToParallel(torch.autograd.Function):
    """Megatron's ``f``: identity forward, all-reduce of the gradient in backward."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class ReduceFromParallel(torch.autograd.Function):
    """Megatron's ``g``: all-reduce forward (sum the ranks' partial outputs), identity backward."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad


def _shard(t: torch.Tensor | None, dim: int, rank: int, world: int) -> nn.Parameter | None:
    if t is None:
        return None
    return nn.Parameter(t.detach().chunk(world, dim=dim)[rank].clone())


class TensorParallelMLP(nn.Module):
    """This rank's part of a :class:`llmscratch.models.layers.FeedForward`: ``(batch, seq, d)`` ->
    ``(batch, seq, d)``, equal on every rank to the full MLP's output (dropout 0)."""

    def __init__(self, ff: nn.Module, rank: int, world: int):
        super().__init__()
        if ff.fc.out_features % world:
            raise ValueError(f"the hidden size {ff.fc.out_features} must be divisible by the {world} ranks")
        self.fc_weight = _shard(ff.fc.weight, 0, rank, world)  # column parallel: (4d / W, d)
        self.fc_bias = _shard(ff.fc.bias, 0, rank, world)
        self.proj_weight = _shard(ff.proj.weight, 1, rank, world)  # row parallel: (d, 4d / W)
        self.proj_bias = nn.Parameter(ff.proj.bias.detach().clone()) if ff.proj.bias is not None else None
        self.approximate = ff.act.approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = CopyToParallel.apply(x)
        h = F.gelu(F.linear(x, self.fc_weight, self.fc_bias), approximate=self.approximate)  # (B, T, 4d/W)
        y = ReduceFromParallel.apply(F.linear(h, self.proj_weight))  # the partial sums, added over ranks
        return y + self.proj_bias if self.proj_bias is not None else y


class TensorParallelAttention(nn.Module):
    """This rank's heads of a causal :class:`llmscratch.models.attention.MultiHeadAttention` (no KV cache,
    dropout 0): ``(batch, seq, d)`` -> ``(batch, seq, d)``, equal on every rank to the full module's output."""

    def __init__(self, attn: nn.Module, rank: int, world: int):
        super().__init__()
        if attn.num_heads % world or attn.num_kv_heads != attn.num_heads:
            raise ValueError(f"{attn.num_heads} heads (no grouped K/V) must be divisible by the {world} ranks")
        hd, d = attn.head_dim, attn.num_heads * attn.head_dim
        self.heads, self.head_dim = attn.num_heads // world, hd
        # The fused QKV weight is [Q; K; V] by rows: take this rank's heads from each of the three.
        q, k, v = attn.qkv.weight.detach().split(d, dim=0)
        self.qkv_weight = nn.Parameter(torch.cat([t.chunk(world, 0)[rank] for t in (q, k, v)]).clone())
        if attn.qkv.bias is not None:
            qb, kb, vb = attn.qkv.bias.detach().split(d)
            self.qkv_bias = nn.Parameter(torch.cat([t.chunk(world)[rank] for t in (qb, kb, vb)]).clone())
        else:
            self.qkv_bias = None
        self.proj_weight = _shard(attn.proj.weight, 1, rank, world)  # the columns of this rank's heads
        self.proj_bias = nn.Parameter(attn.proj.bias.detach().clone()) if attn.proj.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        x = CopyToParallel.apply(x)
        q, k, v = F.linear(x, self.qkv_weight, self.qkv_bias).split(self.heads * self.head_dim, dim=-1)
        q, k, v = (z.view(b, t, self.heads, self.head_dim).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, heads/W, T, hd)
        y = ReduceFromParallel.apply(F.linear(y.transpose(1, 2).reshape(b, t, -1), self.proj_weight))
        return y + self.proj_bias if self.proj_bias is not None else y


def dtensor_parallel_mlp(ff: nn.Module, mesh) -> nn.Module:
    """The same column-then-row split by PyTorch: ``parallelize_module`` with ``ColwiseParallel`` on ``fc``
    and ``RowwiseParallel`` on ``proj`` (weights become ``DTensor`` shards; the output is replicated)."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    return parallelize_module(ff, mesh, {"fc": ColwiseParallel(), "proj": RowwiseParallel()})


class _FirstStage(nn.Module):
    def __init__(self, model: nn.Module, blocks: list[nn.Module]):
        super().__init__()
        self.tok_emb, self.pos_emb, self.drop_emb = model.tok_emb, model.pos_emb, model.drop_emb
        self.blocks = nn.ModuleList(blocks)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # (B, T) ids -> (B, T, d) hidden states
        pos = torch.arange(idx.shape[1], device=idx.device).unsqueeze(0)
        x = self.drop_emb(self.tok_emb(idx) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x)
        return x


class _LastStage(nn.Module):
    def __init__(self, model: nn.Module, blocks: list[nn.Module]):
        super().__init__()
        self.blocks, self.final_norm, self.lm_head = nn.ModuleList(blocks), model.final_norm, model.lm_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, T, vocab) logits
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.final_norm(x))


def pipeline_stage_modules(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """A :class:`llmscratch.models.gpt.GPTModel` cut in two stages at half its blocks: embeddings and the first
    blocks, then the other blocks, the final LayerNorm and the LM head. The stages share the model's modules.
    The model must not tie its embedding to the LM head (``tie_weights=False``): a tied matrix would live on
    both stages."""
    if model.cfg.tie_weights:
        raise ValueError("pipeline stages need GPTConfig(tie_weights=False): the tied embedding / LM head "
                         "matrix would be needed on both stages")
    half = len(model.blocks) // 2
    if half == 0:
        raise ValueError("pipeline stages need a model with at least 2 blocks")
    return _FirstStage(model, list(model.blocks[:half])), _LastStage(model, list(model.blocks[half:]))
