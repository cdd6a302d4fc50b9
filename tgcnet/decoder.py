"""Light FPN decoder over the SSE pyramid, conditioned on VLCM.

Top-down from the coarsest level to the finest. The calibrated visual embeddings join at
the ViT's own stride, every level sees the text prior as an extra channel and is
modulated (FiLM) by the calibrated sentence embedding, and the prior is added back to the
final logits with a learnable weight so the text signal reaches the output from step one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tgcnet.config import DecoderConfig
from tgcnet.layers import conv_norm_act
from tgcnet.vlcm import VLCMOutput


class Decoder(nn.Module):
    def __init__(self, in_channels: int, strides: list[int], joint_dim: int, vit_stride: int,
                 cfg: DecoderConfig) -> None:
        super().__init__()
        c = cfg.channels
        self.strides = list(strides)
        self.lateral = nn.ModuleList(nn.Conv2d(in_channels, c, 1) for _ in strides)
        self.smooth = nn.ModuleList(conv_norm_act(c + 1, c) for _ in strides)
        self.film = nn.ModuleList(nn.Linear(joint_dim, 2 * c) for _ in strides)
        for film in self.film:  # start as identity modulation
            nn.init.zeros_(film.weight)
            nn.init.zeros_(film.bias)
        self.visual_in = nn.Conv2d(joint_dim, c, 1)
        self.visual_level = min(range(len(strides)), key=lambda i: abs(strides[i] - vit_stride))
        self.head = nn.Sequential(conv_norm_act(c, c), nn.Conv2d(c, 1, 1))
        # deep supervision: a mask head per level above the finest (coarse to fine), trained only
        self.side_heads = (nn.ModuleList(nn.Conv2d(c, 1, 1) for _ in strides[1:])
                           if cfg.deep_supervision_weight > 0 else None)
        self.prior_weight = nn.Parameter(torch.tensor(float(cfg.prior_weight_init)))

    def forward(self, pyramid: list[torch.Tensor], vlcm: VLCMOutput, size: tuple[int, int],
                return_sides: bool = False) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits at ``size``; with ``return_sides`` also the side heads' logits (coarse to fine, each
        at its level's resolution; empty without deep supervision)."""
        x = None
        sides: list[torch.Tensor] = []
        for level in reversed(range(len(pyramid))):
            feat = self.lateral[level](pyramid[level])
            if level == self.visual_level:
                visual = self.visual_in(vlcm.visual.to(feat.dtype))
                feat = feat + F.interpolate(visual, size=feat.shape[-2:], mode="bilinear", align_corners=False)
            if x is not None:
                feat = feat + F.interpolate(x, size=feat.shape[-2:], mode="bilinear", align_corners=False)
            prior = F.interpolate(vlcm.prior.to(feat.dtype), size=feat.shape[-2:], mode="bilinear",
                                  align_corners=False)
            x = self.smooth[level](torch.cat([feat, prior], dim=1))
            gamma, beta = self.film[level](vlcm.pooled.to(x.dtype)).chunk(2, dim=-1)
            x = x * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]
            if return_sides and self.side_heads is not None and level > 0:
                sides.append(self.side_heads[level - 1](x))
        logits = self.head(x)
        prior = F.interpolate(vlcm.prior.to(logits.dtype), size=logits.shape[-2:], mode="bilinear",
                              align_corners=False)
        logits = logits + self.prior_weight.to(logits.dtype) * prior
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return (logits, sides) if return_sides else logits
