"""Shared blocks: LayerNorm, GELU, FeedForward against PyTorch; the residual wrapper against its formulas."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llmscratch.models.layers import GELU, FeedForward, LayerNorm, ResidualSublayer


def test_layernorm_equals_by_hand_and_torch():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 16) * 4 + 2
    ln = LayerNorm(16)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    ref = nn.LayerNorm(16)
    ref.load_state_dict(ln.state_dict())
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, keepdim=True, unbiased=False)
    by_hand = (x - mean) / torch.sqrt(var + 1e-5) * ln.weight + ln.bias
    torch.testing.assert_close(ln(x), ref(x))
    torch.testing.assert_close(ln(x), by_hand)


def test_gelu_and_feedforward():
    x = torch.linspace(-5, 5, 101)
    torch.testing.assert_close(GELU()(x), nn.GELU(approximate="tanh")(x))
    torch.testing.assert_close(GELU.by_hand(x), nn.GELU(approximate="tanh")(x))
    torch.testing.assert_close(GELU("none")(x), nn.GELU()(x))
    ff = FeedForward(8)
    y = torch.randn(2, 3, 8)
    torch.testing.assert_close(ff(y), ff.proj(GELU()(ff.fc(y))))


@pytest.mark.parametrize("norm", ["pre", "post", "none"])
def test_residual_sublayer_formulas(norm):
    torch.manual_seed(0)
    sub = nn.Linear(8, 8)
    block = ResidualSublayer(8, sub, norm=norm)
    x = torch.randn(2, 4, 8)
    ln = block.norm
    expected = {"pre": x + sub(ln(x)) if norm == "pre" else None,
                "post": ln(x + sub(x)) if norm == "post" else None,
                "none": x + sub(x)}[norm]
    torch.testing.assert_close(block(x), expected)


def test_residual_sublayer_passes_kwargs_and_validates():
    class Scale(nn.Module):
        def forward(self, x, factor=1.0):
            return x * factor

    block = ResidualSublayer(4, Scale(), norm="none")
    x = torch.randn(1, 2, 4)
    torch.testing.assert_close(block(x, factor=3.0), 4 * x)
    with pytest.raises(ValueError, match="'pre', 'post' or 'none'"):
        ResidualSublayer(4, Scale(), norm="middle")
    with pytest.raises(TypeError, match="nn.Module"):
        ResidualSublayer(4, lambda x: x)


def test_residuals_keep_gradients_alive_in_a_deep_stack():
    # 50 tanh layers with small weights: without residuals the gradient at the first layer all but vanishes.
    torch.manual_seed(0)

    def first_grad(residual):
        layers = [nn.Sequential(nn.Linear(16, 16), nn.Tanh()) for _ in range(50)]
        for layer in layers:
            nn.init.normal_(layer[0].weight, std=0.1)
        blocks = [ResidualSublayer(16, layer, norm="pre") if residual else layer for layer in layers]
        out = nn.Sequential(*blocks)(torch.randn(8, 16))
        out.pow(2).sum().backward()
        return layers[0][0].weight.grad.norm().item()

    assert first_grad(residual=True) > 1e3 * first_grad(residual=False)
