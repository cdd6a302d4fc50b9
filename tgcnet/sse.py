"""SSE, the Semantic-Structural Synergy Encoder.

A frozen CLIP ViT gives semantics at stride 16; a small trainable timm CNN gives the
structure ViT patches blur (boundaries, small lesions) at strides 4..32. They are fused
per scale, and the last ViT tokens are mapped with CLIP's own ``visual.proj`` into the
joint image-text space so VLCM can compare pixels with words without a learned bridge.
"""
from __future__ import annotations

from dataclasses import dataclass

import timm
import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from torch import nn

from tgcnet.adapters import project_attention
from tgcnet.config import SSEConfig
from tgcnet.kernels import use_onednn_linears
from tgcnet.layers import conv_norm_act


@dataclass
class SSEOutput:
    pyramid: list[torch.Tensor]   # fused features, finest first, each (B, channels, H/s, W/s)
    strides: list[int]            # stride of each pyramid level
    dense: torch.Tensor           # (B, D, H/16, W/16) visual embeddings in the joint space


class FrozenViT(nn.Module):
    """Dense features of a frozen open_clip ViT at any input size.

    open_clip adds a positional embedding of fixed grid size; here it is resized
    bicubically to the input's grid (cached per size) so 320x320 works as well as 224.
    Always runs without autograd and in eval mode: nothing in it is trained.

    ``fused_attention`` (default on) swaps each block's ``nn.MultiheadAttention`` for
    :class:`~tgcnet.adapters.ProjectedAttention` (the same weights as two ``nn.Linear``,
    attention through ``scaled_dot_product_attention``): the same outputs within float
    rounding, without MultiheadAttention's separate softmax/bmm path. Pass ``visual``
    with its weights already loaded: the swap renames the attention parameters
    (``attn.in_proj_weight`` -> ``attn.in_proj.weight``), so an open_clip checkpoint no
    longer loads into it afterwards. tgcnet loads CLIP weights in ``backbone.load_clip``,
    before this, and never saves the frozen tower.

    ``onednn_linear`` (default on) runs the blocks' linear layers through oneDNN on a CPU
    in float32 (:mod:`tgcnet.kernels`): about half the time where MKL falls back to AVX2.
    """

    def __init__(self, visual: VisionTransformer, indices: tuple[int, ...], fused_attention: bool = True,
                 onednn_linear: bool = True) -> None:
        super().__init__()
        self.fused_attention = fused_attention and project_attention(visual.transformer) > 0
        self.onednn_linear = onednn_linear and use_onednn_linears(visual.transformer) > 0
        self.visual = visual.requires_grad_(False).eval()
        depth = len(visual.transformer.resblocks)
        for i in indices:
            if not -depth <= i < depth:
                raise ValueError(f"sse.vit_indices entry {i} is out of range for a ViT of {depth} blocks")
        self.indices = [i % depth for i in indices]          # one block per scale, repeats allowed
        self._unique = sorted(set(self.indices))                  # what forward_intermediates returns
        self.patch_size = int(visual.patch_size[0])
        self.width = int(visual.conv1.out_channels)
        self._pos_cache: dict[tuple[int, int, torch.dtype, torch.device], torch.Tensor] = {}

    def train(self, mode: bool = True) -> "FrozenViT":
        return super().train(False)

    def _pos_embed(self, grid: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
        pos = self.visual.positional_embedding
        key = (*grid, dtype, pos.device)
        if key not in self._pos_cache:
            cls_pos, patch_pos = pos[:1], pos[1:]
            old = self.visual.grid_size
            if tuple(grid) != tuple(old):
                patch_pos = patch_pos.reshape(1, old[0], old[1], -1).permute(0, 3, 1, 2)
                patch_pos = F.interpolate(patch_pos.float(), size=grid, mode="bicubic", align_corners=False)
                patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)
            self._pos_cache[key] = torch.cat([cls_pos, patch_pos.to(cls_pos.dtype)]).to(dtype)
        return self._pos_cache[key]

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Intermediate maps (B, width, h, w) at ``indices`` and dense joint embeddings (B, D, h, w).

        ``no_grad`` rather than ``inference_mode``: the outputs feed trainable fusion convs,
        which must save them for backward, and inference tensors cannot be saved.
        """
        v = self.visual
        b = x.shape[0]
        x = v.conv1(x)
        grid = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).expand(b, 1, -1)
        x = torch.cat([cls, x], dim=1) + self._pos_embed(grid, x.dtype)
        x = v.ln_pre(x)
        last, inter = v.transformer.forward_intermediates(x, indices=self._unique, stop_early=False)
        by_block = {i: t[:, 1:].transpose(1, 2).reshape(b, -1, *grid) for i, t in zip(self._unique, inter)}
        maps = [by_block[i] for i in self.indices]
        dense = v.ln_post(last[:, 1:])
        if v.proj is not None:
            dense = dense @ v.proj.to(dense.dtype)
        return maps, dense.transpose(1, 2).reshape(b, -1, *grid)


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
    def __init__(self, visual: VisionTransformer, cfg: SSEConfig, onednn_linear: bool = True) -> None:
        super().__init__()
        self.clip_visual = FrozenViT(visual, tuple(cfg.vit_indices), onednn_linear=onednn_linear)
        self.cnn = timm.create_model(cfg.cnn_name, pretrained=False, features_only=True,
                                     out_indices=tuple(cfg.cnn_out_indices), **dict(cfg.cnn_kwargs))
        cnn_channels = self.cnn.feature_info.channels()
        self.strides = list(self.cnn.feature_info.reduction())
        self.fusion = nn.ModuleList(
            ScaleFusion(self.clip_visual.width, ch, cfg.channels, cfg.fusion) for ch in cnn_channels)
        self.channels = cfg.channels

    def forward(self, x: torch.Tensor,
                vit_features: tuple[list[torch.Tensor], torch.Tensor] | None = None) -> SSEOutput:
        """``vit_features``: a precomputed ``clip_visual(x)`` (frozen, so it can be cached per image)."""
        vit_maps, dense = self.clip_visual(x) if vit_features is None else vit_features
        cnn_maps = self.cnn(x)
        pyramid = [fuse(v, c) for fuse, v, c in zip(self.fusion, vit_maps, cnn_maps)]
        return SSEOutput(pyramid=pyramid, strides=self.strides, dense=dense)
