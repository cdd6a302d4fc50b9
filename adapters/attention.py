"""Replace ``nn.MultiheadAttention`` by the same attention over plain ``nn.Linear`` projections.

Why: ``nn.MultiheadAttention`` never calls its projections' ``forward`` (it hands the raw
``in_proj_weight`` to ``F.multi_head_attention_forward``), so LoRA on ``attn.out_proj`` is
silently dead, and peft's special MultiheadAttention layer works around that by adding the
LoRA delta into the frozen weight and subtracting it again on every forward. That round
trip is not bit-exact (frozen weights drift by float rounding at each step) and it
re-creates the frozen Parameter objects on every call. With two real Linear layers LoRA
wraps them like any other Linear, the frozen weights are never touched, and attention
runs through fused ``scaled_dot_product_attention``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class ProjectedAttention(nn.Module):
    """Self/cross attention with ``in_proj`` and ``out_proj`` as ``nn.Linear`` modules.

    Drop-in for the calls open_clip makes: ``attn(q, k, v, need_weights=False,
    attn_mask=mask)`` returning ``(output, None)``.
    """

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("only standard nn.MultiheadAttention (same q/k/v width, no bias_k, "
                             "no add_zero_attn) can be converted")
        dim = mha.embed_dim
        self.num_heads = mha.num_heads
        self.batch_first = mha.batch_first
        self.dropout = mha.dropout
        has_bias = mha.in_proj_bias is not None
        # same device and dtype as the weights they replace (a tower may be swapped after .to(...))
        factory = {"device": mha.in_proj_weight.device, "dtype": mha.in_proj_weight.dtype}
        self.in_proj = nn.Linear(dim, 3 * dim, bias=has_bias, **factory)
        self.out_proj = nn.Linear(dim, dim, bias=mha.out_proj.bias is not None, **factory)
        with torch.no_grad():
            self.in_proj.weight.copy_(mha.in_proj_weight)
            if has_bias:
                self.in_proj.bias.copy_(mha.in_proj_bias)
            self.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.out_proj.bias is not None:
                self.out_proj.bias.copy_(mha.out_proj.bias)
        self.in_proj.requires_grad_(mha.in_proj_weight.requires_grad)
        self.out_proj.requires_grad_(mha.out_proj.weight.requires_grad)

    def forward(self, query: torch.Tensor, key: Optional[torch.Tensor] = None, value: Optional[torch.Tensor] = None,
                need_weights: bool = False, attn_mask: Optional[torch.Tensor] = None,
                **_: object) -> tuple[torch.Tensor, None]:
        if need_weights:
            raise ValueError("ProjectedAttention does not return attention weights")
        if not self.batch_first:
            query = query.transpose(0, 1)
            key = None if key is None else key.transpose(0, 1)
            value = None if value is None else value.transpose(0, 1)
        self_attention = (key is None or key is query) and (value is None or value is query)
        if self_attention:
            q, k, v = self.in_proj(query).chunk(3, dim=-1)
        else:
            w, b = self.in_proj.weight, self.in_proj.bias
            wq, wk, wv = w.chunk(3)
            bq, bk, bv = (None, None, None) if b is None else b.chunk(3)
            q, k, v = F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)
        bsz, n, dim = q.shape
        q, k, v = (t.reshape(bsz, t.shape[1], self.num_heads, -1).transpose(1, 2) for t in (q, k, v))
        if attn_mask is not None:
            attn_mask = attn_mask.to(q.dtype) if attn_mask.is_floating_point() else attn_mask
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        out = self.out_proj(out.transpose(1, 2).reshape(bsz, n, dim))
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, None


def project_attention(module: nn.Module) -> int:
    """Swap every ``nn.MultiheadAttention`` inside ``module`` in place; returns how many."""
    swaps = [(parent, name, child) for parent in module.modules()
             for name, child in parent.named_children() if isinstance(child, nn.MultiheadAttention)]
    for parent, name, child in swaps:
        setattr(parent, name, ProjectedAttention(child))
    return len(swaps)
