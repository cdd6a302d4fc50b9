"""VLCM, the Vision-Language Calibration Module.

Both modalities already live in CLIP's joint space, so a cosine similarity between each
pixel embedding and the sentence embedding is a meaningful (if coarse and miscalibrated
for medical images) localisation prior. VLCM calibrates it: a learnable scale and bias on
the similarity, and a bidirectional gated cross-attention - pixels read the words, then
words read the pixels - before the similarity is taken again. SSA's options plug in here:
an optimal-transport plan can bias the pixel->token attention, and a guidance mask from
the caption's location words can pull the prior towards the named region.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from tgcnet.config import SSAConfig, VLCMConfig
from tgcnet.date import TextFeatures
from tgcnet.layers import GatedCrossAttention
from tgcnet.ot import cosine_cost, plan_to_attention, sinkhorn_log


@dataclass
class VLCMOutput:
    visual: torch.Tensor   # (B, D, h, w) calibrated visual embeddings
    tokens: torch.Tensor   # (B, L, D) calibrated token features
    pooled: torch.Tensor   # (B, D) calibrated sentence embedding
    prior: torch.Tensor    # (B, 1, h, w) text-conditioned prior logits
    pixels: torch.Tensor   # (B, hw, D) calibrated pixels, for the OT alignment loss


class VLCM(nn.Module):
    def __init__(self, dim: int, cfg: VLCMConfig, ssa: Optional[SSAConfig] = None) -> None:
        super().__init__()
        self.ssa = ssa or SSAConfig()
        self.pixels_to_tokens = GatedCrossAttention(dim, dim, cfg.attn_dim, cfg.heads, cfg.gate_init)
        self.tokens_to_pixels = GatedCrossAttention(dim, dim, cfg.attn_dim, cfg.heads, cfg.gate_init)
        self.log_scale = nn.Parameter(torch.tensor(math.log(cfg.scale_init)))
        self.bias = nn.Parameter(torch.tensor(float(cfg.bias_init)))
        self.guidance_strength = (nn.Parameter(torch.tensor(float(self.ssa.guidance_strength_init)))
                                  if self.ssa.guidance_prior else None)

    def similarity(self, visual: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """Scaled cosine similarity of every pixel (B, N, D) to the sentence (B, D) -> (B, N)."""
        cos = torch.einsum("bnd,bd->bn", F.normalize(visual, dim=-1), F.normalize(pooled, dim=-1))
        return self.log_scale.exp().to(cos.dtype) * cos + self.bias.to(cos.dtype)

    def _ot_bias(self, pixels: torch.Tensor, text: TextFeatures) -> torch.Tensor:
        """Log of the pixel->token transport plan (rows normalised), computed without grad."""
        with torch.no_grad():
            plan = sinkhorn_log(cosine_cost(pixels, text.tokens), col_mask=text.mask,
                                epsilon=self.ssa.ot_epsilon, n_iters=self.ssa.ot_iters)
            return plan_to_attention(plan, log=True)

    def forward(self, dense: torch.Tensor, text: TextFeatures,
                guidance: Optional[torch.Tensor] = None) -> VLCMOutput:
        b, d, h, w = dense.shape
        pixels = dense.flatten(2).transpose(1, 2).to(text.tokens.dtype)   # (B, hw, D)
        bias = self._ot_bias(pixels, text) if self.ssa.ot_attention else None
        pixels = self.pixels_to_tokens(pixels, text.tokens, text.mask, bias)
        tokens = self.tokens_to_pixels(text.tokens, pixels)
        pooled = text.pool(tokens)
        prior = self.similarity(pixels, pooled).reshape(b, 1, h, w)
        if self.guidance_strength is not None:
            if guidance is None:
                raise ValueError("ssa.guidance includes 'prior' but no guidance mask was given")
            # outside the named region the prior is pushed down; inside (or "everywhere") it is untouched
            prior = prior - self.guidance_strength.to(prior.dtype) * (1 - guidance.to(prior.dtype))
        visual = pixels.transpose(1, 2).reshape(b, d, h, w)
        return VLCMOutput(visual=visual, tokens=tokens, pooled=pooled, prior=prior, pixels=pixels)
