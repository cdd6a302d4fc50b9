"""The frozen image towers SSE reads: one small interface per kind of CLIP image tower.

SSE never looks inside open_clip. It asks an image tower for two things at any input
size divisible by the patch: the intermediate maps of some blocks (B, width, h, w), and
dense patch embeddings in CLIP's joint image-text space (B, D, h, w). Each patch token is
projected the way the tower's head projects its pooled token, so that the same head
applied to the pooled token is exactly open_clip's ``encode_image``
(:meth:`FrozenImageTower.pooled_embedding`; the parity tests check it).

Two kinds have a patch grid: open_clip's own ``VisionTransformer`` (OpenAI / LAION CLIPs)
and a timm ViT trunk inside open_clip's ``TimmModel`` (BiomedCLIP, SigLIP, EVA-style
towers). ResNet and ConvNeXt towers have no patch tokens to give, and are refused by name.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.timm_model import TimmModel
from open_clip.transformer import VisionTransformer
from timm.layers import Format
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer as TimmVisionTransformer
from torch import nn

from tgcnet.adapters import project_attention

ViTOutput = tuple[list[torch.Tensor], torch.Tensor]


class FrozenImageTower(nn.Module):
    """What SSE needs of a frozen CLIP image tower; subclasses wrap one open_clip tower type.

    Always in eval mode and without autograd: nothing in it is trained. ``no_grad`` rather
    than ``inference_mode``: the outputs feed trainable fusion convs, which must save them
    for backward, and inference tensors cannot be saved.
    """

    patch_size: int      # pixels per patch side
    width: int           # channels of the intermediate maps
    output_dim: int      # D, the joint image-text space

    def __init__(self, indices: tuple[int, ...], depth: int) -> None:
        super().__init__()
        for i in indices:
            if not -depth <= i < depth:
                raise ValueError(f"sse.vit_indices entry {i} is out of range for a ViT of {depth} blocks")
        self.indices = [i % depth for i in indices]   # one block per scale, repeats allowed
        self._unique = sorted(set(self.indices))      # what the tower computes

    def train(self, mode: bool = True) -> "FrozenImageTower":
        return super().train(False)

    def frozen_state_names(self) -> list[str]:
        """Names (inside this tower) of the state that never trains and is never saved: all of it.

        The model asks each tower rather than guessing from names, so a tower holding something
        trainable (as the text tower holds LoRA) says so in its own answer.
        """
        return list(self.state_dict())

    def blocks(self) -> nn.Module:
        """The transformer blocks: where the tower's GEMMs, hence its CPU time, are."""
        raise NotImplementedError

    def frozen_linears(self) -> list[nn.Linear]:
        """The blocks' linear layers, all frozen: the tower's GEMMs, which a caller may route to
        the kernel fastest on its machine (:func:`tgcnet.accel.optimize_for_cpu`)."""
        return [m for m in self.blocks().modules() if isinstance(m, nn.Linear)]

    def forward(self, x: torch.Tensor) -> ViTOutput:
        """Maps (B, width, h, w) at ``indices`` and dense joint embeddings (B, D, h, w)."""
        raise NotImplementedError

    def pooled_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """The head applied to the pooled token: open_clip's ``encode_image`` of ``x``."""
        raise NotImplementedError


class FrozenViT(FrozenImageTower):
    """open_clip's own ``VisionTransformer`` at any input size.

    open_clip adds a positional embedding of fixed grid size; here it is resized
    bicubically to the input's grid (cached per size) so 320x320 works as well as 224.

    ``fused_attention`` (default on) swaps each block's ``nn.MultiheadAttention`` for
    :class:`~tgcnet.adapters.ProjectedAttention` (the same weights as two ``nn.Linear``,
    attention through ``scaled_dot_product_attention``): the same outputs within float
    rounding, without MultiheadAttention's separate softmax/bmm path. Pass ``visual``
    with its weights already loaded: the swap renames the attention parameters
    (``attn.in_proj_weight`` -> ``attn.in_proj.weight``), so an open_clip checkpoint no
    longer loads into it afterwards. tgcnet loads CLIP weights in ``backbone.load_clip``,
    before this, and never saves the frozen tower.
    """

    def __init__(self, visual: VisionTransformer, indices: tuple[int, ...], fused_attention: bool = True) -> None:
        if visual.attn_pool is not None:
            raise ValueError("open_clip VisionTransformer with an attentional pooler (CoCa-style) is not supported: "
                             "its patch tokens are pooled by attention, with no per-patch projection to reuse")
        super().__init__(indices, len(visual.transformer.resblocks))
        self.fused_attention = fused_attention and project_attention(visual.transformer) > 0
        self.visual = visual.requires_grad_(False).eval()
        self.patch_size = int(visual.patch_size[0])
        self.width = int(visual.conv1.out_channels)
        self.output_dim = int(visual.output_dim)
        self._pos_cache: dict[tuple[int, int, torch.dtype, torch.device], torch.Tensor] = {}

    def blocks(self) -> nn.Module:
        return self.visual.transformer

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

    def _blocks(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], tuple[int, int]]:
        """Last block's tokens (CLS first), the tokens of the ``_unique`` blocks, and the grid."""
        v = self.visual
        x = v.conv1(x)
        grid = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = v.ln_pre(torch.cat([cls, x], dim=1) + self._pos_embed(grid, x.dtype))
        last, inter = v.transformer.forward_intermediates(x, indices=self._unique, stop_early=False)
        return last, inter, grid

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        proj = self.visual.proj
        return x if proj is None else x @ proj.to(x.dtype)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> ViTOutput:
        b = x.shape[0]
        last, inter, grid = self._blocks(x)
        by_block = {i: t[:, 1:].transpose(1, 2).reshape(b, -1, *grid) for i, t in zip(self._unique, inter)}
        dense = self._project(self.visual.ln_post(last[:, 1:]))
        return [by_block[i] for i in self.indices], dense.transpose(1, 2).reshape(b, -1, *grid)

    @torch.no_grad()
    def pooled_embedding(self, x: torch.Tensor) -> torch.Tensor:
        v = self.visual
        last = self._blocks(x)[0]
        if v.final_ln_after_pool:
            pooled = v.ln_post(last[:, 1:].mean(dim=1) if v.pool_type == "avg" else last[:, 0])
        else:
            normed = v.ln_post(last)
            pooled = normed[:, 1:].mean(dim=1) if v.pool_type == "avg" else normed[:, 0]
        return self._project(pooled)


def _allow_any_input_size(trunk: nn.Module) -> None:
    """Switch a timm ViT to its dynamic-size path (what ``dynamic_img_size=True`` builds):
    the positional embedding is resampled to each input's grid by timm's own
    ``resample_abs_pos_embed``, and left untouched at the size it was trained at."""
    pe = trunk.patch_embed
    trunk.dynamic_img_size = True
    pe.strict_img_size = False
    pe.flatten = False
    pe.output_fmt = Format.NHWC


def _attention_pool_values(pool: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Each token through a latent attention pool (SigLIP's "map" head) as if it were the only
    key: attention over one key is 1, so the pool's output is its value path, projected."""
    b, n, c = tokens.shape
    values = pool.kv(tokens).reshape(b, n, 2, c)[:, :, 1]
    x = pool.proj(values)
    return x + pool.mlp(pool.norm(x)) if pool.mlp is not None else x


class FrozenTimmViT(FrozenImageTower):
    """A timm ViT trunk in open_clip's ``TimmModel`` (BiomedCLIP, SigLIP, EVA-style towers).

    Intermediate maps come from timm's ``forward_intermediates``; each patch token of the
    last block goes through the trunk's own head path (``fc_norm``, ``head``; a latent
    attention pool through its value path) and then ``TimmModel.head`` (linear or MLP
    projection), the path the pooled token takes in ``encode_image``.
    """

    def __init__(self, visual: TimmModel, indices: tuple[int, ...]) -> None:
        trunk = visual.trunk
        _check_timm_vit(visual)
        super().__init__(indices, len(trunk.blocks))
        self.visual = visual.requires_grad_(False).eval()
        _allow_any_input_size(trunk)
        self.patch_size = int(trunk.patch_embed.patch_size[0])
        self.width = int(trunk.num_features)
        self.output_dim = _timm_output_dim(visual)
        self.num_prefix_tokens = int(getattr(trunk, "num_prefix_tokens", 0))

    def blocks(self) -> nn.Module:
        return self.visual.trunk.blocks

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's head path after pooling, then ``TimmModel.head``: pooled or per token."""
        trunk = self.visual.trunk
        return self.visual.head(trunk.head(trunk.head_drop(trunk.fc_norm(x))))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> ViTOutput:
        b = x.shape[0]
        trunk = self.visual.trunk
        last, inter = trunk.forward_intermediates(x, indices=self._unique, norm=False, output_fmt="NCHW")
        by_block = dict(zip(self._unique, inter))
        grid = tuple(inter[0].shape[-2:])
        tokens = last[:, self.num_prefix_tokens:]
        pool = getattr(trunk, "attn_pool", None)
        if pool is not None:
            tokens = _attention_pool_values(pool, tokens)
        dense = self._head(tokens)
        return [by_block[i] for i in self.indices], dense.transpose(1, 2).reshape(b, -1, *grid)

    @torch.no_grad()
    def pooled_embedding(self, x: torch.Tensor) -> torch.Tensor:
        trunk = self.visual.trunk
        return self._head(trunk.pool(trunk.forward_features(x)))


def _check_timm_vit(visual: TimmModel) -> None:
    trunk = visual.trunk
    is_vit = all(hasattr(trunk, a) for a in ("patch_embed", "blocks", "forward_intermediates", "fc_norm"))
    if not is_vit or "pool" in dict(visual.head.named_children()):
        raise ValueError(f"the timm image tower {type(trunk).__name__} has no patch grid tgcnet can read; "
                         f"{_SUPPORTED}")
    patch = tuple(trunk.patch_embed.patch_size)
    if patch[0] != patch[1]:
        raise ValueError(f"timm image tower with non-square patches {patch} is not supported")
    if getattr(getattr(trunk, "attn_pool", None), "pos_embed", None) is not None:
        raise ValueError("timm attention-pool head with its own positional embedding is not supported")


def _timm_output_dim(visual: TimmModel) -> int:
    """D of ``encode_image``: the last projection's width, else the trunk's feature width."""
    linears = [m for m in (*visual.head.modules(), visual.trunk.head) if isinstance(m, nn.Linear)]
    return int(linears[-1].out_features) if linears else int(visual.trunk.num_features)


_SUPPORTED = ("supported image towers: open_clip's VisionTransformer (OpenAI/LAION ViT CLIPs) and timm ViT trunks "
              "in open_clip's TimmModel (BiomedCLIP, SigLIP, EVA-style); ResNet and ConvNeXt towers have no "
              "patch tokens")


def image_tower(visual: nn.Module, indices: tuple[int, ...]) -> FrozenImageTower:
    """The :class:`FrozenImageTower` for an open_clip image tower, chosen by its type."""
    if isinstance(visual, VisionTransformer):
        return FrozenViT(visual, indices)
    if isinstance(visual, TimmModel):
        return FrozenTimmViT(visual, indices)
    raise ValueError(f"the CLIP image tower is a {type(visual).__name__}; {_SUPPORTED}")


# ------------------------------------------------------------------ tiny timm ViT for tests and CPU presets

default_cfgs = generate_default_cfgs({"tgcnet_vit_micro_patch16_224.untrained": {
    "num_classes": 0, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}})


@register_model
def tgcnet_vit_micro_patch16_224(pretrained: bool = False, **kwargs) -> nn.Module:
    """A 2-block, 64-wide ViT-B/16 look-alike: BiomedCLIP's image-tower layout at test size."""
    if pretrained:
        raise ValueError("tgcnet_vit_micro_patch16_224 has no pretrained weights (it exists for tests)")
    args = dict(patch_size=16, embed_dim=64, depth=2, num_heads=2)
    return build_model_with_cfg(TimmVisionTransformer, "tgcnet_vit_micro_patch16_224", pretrained=False,
                                **dict(args, **kwargs))
