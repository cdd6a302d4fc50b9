"""SSE, the Semantic-Structural Synergy Encoder.

A frozen CLIP ViT gives semantics at stride 16; a small trainable timm CNN gives the
structure ViT patches blur (boundaries, small lesions) at strides 4..32. They are fused
per scale, and the last ViT tokens are mapped with CLIP's own image head (``visual.proj``,
or a timm tower's projection) into the joint image-text space, so VLCM can compare pixels
with words without a learned bridge. The ViT is any CLIP image tower with a patch grid
(:mod:`tgcnet.image_towers`).
"""
from __future__ import annotations

from dataclasses import dataclass

import timm
import torch
import torch.nn.functional as F
from torch import nn

from tgcnet.config import SSEConfig
from tgcnet.image_towers import FrozenImageTower, ViTOutput, image_tower
from tgcnet.layers import conv_norm_act


@dataclass
class SSEOutput:
    pyramid: list[torch.Tensor]   # fused features, finest first, each (B, channels, H/s, W/s)
    strides: list[int]            # stride of each pyramid level
    dense: torch.Tensor           # (B, D, H/p, W/p) visual embeddings in the joint space (p: ViT patch)


class ScaleFusion(nn.Module):
    """Fuse one CNN scale with the (resized) ViT map: gated sum or concat + conv."""

    def __init__(self, vit_ch: int, cnn_ch: int, channels: int, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.vit_proj = nn.Conv2d(vit_ch, channels, 1)
        self.cnn_proj = nn.Conv2d(cnn_ch, channels, 1)
        if mode == "gated":
            # per-channel gate starting at sigmoid(0) = 0.5: an even mix of both branches
            self.gate = nn.Parameter(torch.zeros(1, channels, 1, 1))
            self.out = conv_norm_act(channels, channels)
        else:
            self.out = conv_norm_act(2 * channels, channels)

    def forward(self, vit_map: torch.Tensor, cnn_map: torch.Tensor) -> torch.Tensor:
        v = self.vit_proj(vit_map.to(cnn_map.dtype))
        v = F.interpolate(v, size=cnn_map.shape[-2:], mode="bilinear", align_corners=False)
        c = self.cnn_proj(cnn_map)
        if self.mode == "gated":
            return self.out(c + torch.sigmoid(self.gate).to(c.dtype) * v)
        return self.out(torch.cat([c, v], dim=1))


class SSE(nn.Module):
    def __init__(self, visual: nn.Module, cfg: SSEConfig) -> None:
        """``visual``: an open_clip image tower (see :func:`tgcnet.image_towers.image_tower`)."""
        super().__init__()
        self.clip_visual: FrozenImageTower = image_tower(visual, tuple(cfg.vit_indices))
        self.cnn = timm.create_model(cfg.cnn_name, pretrained=False, features_only=True,
                                     out_indices=tuple(cfg.cnn_out_indices), **dict(cfg.cnn_kwargs))
        cnn_channels = self.cnn.feature_info.channels()
        self.strides = list(self.cnn.feature_info.reduction())
        self.fusion = nn.ModuleList(
            ScaleFusion(self.clip_visual.width, ch, cfg.channels, cfg.fusion) for ch in cnn_channels)
        self.channels = cfg.channels

    def forward(self, x: torch.Tensor, vit_features: ViTOutput | None = None) -> SSEOutput:
        """``vit_features``: a precomputed ``clip_visual(x)`` (frozen, so it can be cached per image)."""
        vit_maps, dense = self.clip_visual(x) if vit_features is None else vit_features
        cnn_maps = self.cnn(x)
        pyramid = [fuse(v, c) for fuse, v, c in zip(self.fusion, vit_maps, cnn_maps)]
        return SSEOutput(pyramid=pyramid, strides=self.strides, dense=dense)
