"""Shared blocks: gated cross-attention and conv-norm-act."""
import pytest
import torch
from torch import nn

from tgcnet.layers import GatedCrossAttention, conv_norm_act


def attention(gate_init: float = 0.5, seed: int = 0) -> GatedCrossAttention:
    torch.manual_seed(seed)
    return GatedCrossAttention(dim=12, context_dim=20, inner_dim=8, heads=2, gate_init=gate_init)


def test_residual_shape_and_a_closed_gate_is_the_identity():
    x, context = torch.randn(2, 5, 12), torch.randn(2, 7, 20)
    out = attention()(x, context)
    assert out.shape == x.shape and not torch.allclose(out, x)
    assert torch.equal(attention(gate_init=0.0)(x, context), x)


def test_gate_scales_the_update_by_its_tanh():
    layer = attention(gate_init=0.3)
    x, context = torch.randn(1, 4, 12), torch.randn(1, 3, 20)
    torch.testing.assert_close(layer(x, context) - x, torch.tanh(torch.tensor(0.3)) * layer.attend(x, context))


def test_masked_keys_are_ignored():
    layer = attention()
    x, context = torch.randn(2, 5, 12), torch.randn(2, 7, 20)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[:, 4:] = False
    changed = context.clone()
    changed[:, 4:] = torch.randn(2, 3, 20) * 10
    torch.testing.assert_close(layer(x, context, mask), layer(x, changed, mask))
    torch.testing.assert_close(layer(x, context, mask), layer(x, context[:, :4]))


def test_bias_is_added_to_the_attention_logits_and_keeps_the_mask():
    layer = attention()
    x, context = torch.randn(1, 3, 12), torch.randn(1, 4, 20)
    mask = torch.tensor([[True, True, True, False]])
    zero = torch.zeros(1, 3, 4)
    torch.testing.assert_close(layer(x, context, mask, zero), layer(x, context, mask))
    only_first = torch.full((1, 3, 4), -1e9)
    only_first[..., 0] = 0.0
    torch.testing.assert_close(layer(x, context, mask, only_first), layer(x, context[:, :1]))


def test_width_not_divisible_by_heads_is_named():
    with pytest.raises(ValueError, match="attention width 10 must be divisible by heads 4"):
        GatedCrossAttention(8, 8, 10, 4, 0.1)


@pytest.mark.parametrize("out_ch, groups", [(16, 2), (64, 8), (128, 8), (12, 1)])
def test_conv_norm_act(out_ch, groups):
    block = conv_norm_act(3, out_ch)
    conv, norm, act = block
    assert isinstance(norm, nn.GroupNorm) and norm.num_groups == groups and isinstance(act, nn.GELU)
    assert conv.bias is None and conv.padding == (1, 1)
    x = torch.randn(4, 3, 9, 7)
    assert block(x).shape == (4, out_ch, 9, 7)
    # GroupNorm: an image's output does not depend on its batch mates (batch 1 trains like 16)
    torch.testing.assert_close(block(x[:1]), block(x)[:1])
