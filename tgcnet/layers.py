"""Small building blocks shared by DATE, VLCM and the decoder."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class GatedCrossAttention(nn.Module):
    """``x + tanh(gate) * attn(norm(x), norm(context))`` with a narrow inner width.

    The inner width is smaller than CLIP's joint space so the module stays cheap in
    parameters; the gate starts small (not zero) so every weight gets a gradient from the
    first step while the pretrained features still dominate. Uses fused
    scaled_dot_product_attention.
    """

    def __init__(self, dim: int, context_dim: int, inner_dim: int, heads: int, gate_init: float) -> None:
        super().__init__()
        if inner_dim % heads:
            raise ValueError(f"attention width {inner_dim} must be divisible by heads {heads}")
        self.heads = heads
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(context_dim)
        self.to_q = nn.Linear(dim, inner_dim, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * inner_dim, bias=False)
        self.to_out = nn.Linear(inner_dim, dim)
        self.gate = nn.Parameter(torch.tensor(float(gate_init)))

    def attend(self, x: torch.Tensor, context: torch.Tensor, context_mask: Optional[torch.Tensor] = None,
               bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The attention update alone (before the gate).

        ``context_mask`` (B, M) is True for keys to keep; ``bias`` (B, N, M) is added to the
        attention logits (e.g. the log of an optimal-transport plan).
        """
        b, n, _ = x.shape
        q = self.to_q(self.norm_q(x))
        k, v = self.to_kv(self.norm_kv(context)).chunk(2, dim=-1)
        q, k, v = (t.reshape(b, t.shape[1], self.heads, -1).transpose(1, 2) for t in (q, k, v))
        mask = None if context_mask is None else context_mask[:, None, None, :]
        if bias is not None:
            bias = bias[:, None].to(q.dtype)
            mask = bias if mask is None else bias.masked_fill(~mask, float("-inf"))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: Optional[torch.Tensor] = None,
                bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        return x + torch.tanh(self.gate).to(x.dtype) * self.attend(x, context, context_mask, bias)


def conv_norm_act(in_ch: int, out_ch: int, kernel: int = 3) -> nn.Sequential:
    """Conv + GroupNorm + GELU; GroupNorm so batch 1 trains like batch 16."""
    groups = max(1, min(8, out_ch // 8)) if out_ch % 8 == 0 else 1
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False),
        nn.GroupNorm(groups, out_ch),
        nn.GELU(),
    )
