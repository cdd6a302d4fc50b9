"""ProjectedAttention: nn.MultiheadAttention with its projections as separate linears (LoRA targets)."""
import torch
from torch import nn

from tgcnet.adapters import ProjectedAttention


def test_projected_attention_keeps_device_and_dtype():
    mha = nn.MultiheadAttention(16, 2, batch_first=True).to(torch.float64)
    attn = ProjectedAttention(mha)
    assert attn.in_proj.weight.dtype == attn.out_proj.weight.dtype == torch.float64
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    torch.testing.assert_close(attn(x, x, x)[0], mha.eval()(x, x, x, need_weights=False)[0])
