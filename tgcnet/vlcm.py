"""VLCM, the Vision-Language Calibration Module.

Both modalities already live in CLIP's joint space, so a cosine similarity between each
pixel embedding and the sentence embedding is a meaningful (if coarse and miscalibrated
for medical images) localisation prior. VLCM calibrates it: a learnable scale and bias on
the similarity, and a bidirectional gated cross-attention - pixels read the words, then
words read the pixels - before the similarity is taken again.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tgcnet.config import VLCMConfig
from tgcnet.date import TextFeatures
from tgcnet.layers import GatedCrossAttention


@dataclass
class VLCMOutput:
    visual: torch.Tensor   # (B, D, h, w) calibrated visual embeddings
    tokens: torch.Tensor   # (B, L, D) calibrated token features
    pooled: torch.Tensor   # (B, D) calibrated sentence embedding
    prior: torch.Tensor    # (B, 1, h, w) text-conditioned prior logits


class VLCM(nn.Module):
    def __init__(self, dim: int, cfg: VLCMConfig) -> None:
        super().__init__()
        self.pixels_to_tokens = GatedCrossAttention(dim, dim, cfg.attn_dim, cfg.heads, cfg.gate_init)
        self.tokens_to_pixels = GatedCrossAttention(dim, dim, cfg.attn_dim, cfg.heads, cfg.gate_init)
        self.log_scale = nn.Parameter(torch.tensor(math.log(cfg.scale_init)))
        self.bias = nn.Parameter(torch.tensor(float(cfg.bias_init)))

    def similarity(self, visual: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """Scaled cosine similarity of every pixel (B, N, D) to the sentence (B, D) -> (B, N)."""
        cos = torch.einsum("bnd,bd->bn", F.normalize(visual, dim=-1), F.normalize(pooled, dim=-1))
        return self.log_scale.exp().to(cos.dtype) * cos + self.bias.to(cos.dtype)

    def forward(self, dense: torch.Tensor, text: TextFeatures) -> VLCMOutput:
        b, d, h, w = dense.shape
        pixels = dense.flatten(2).transpose(1, 2).to(text.tokens.dtype)   # (B, hw, D)
        pixels = self.pixels_to_tokens(pixels, text.tokens, text.mask)
        tokens = self.tokens_to_pixels(text.tokens, pixels)
        pooled = tokens[torch.arange(b, device=tokens.device), text.pool_index]
        prior = self.similarity(pixels, pooled).reshape(b, 1, h, w)
        visual = pixels.transpose(1, 2).reshape(b, d, h, w)
        return VLCMOutput(visual=visual, tokens=tokens, pooled=pooled, prior=prior)
