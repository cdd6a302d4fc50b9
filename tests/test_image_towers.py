"""Image towers: the dense path through each tower's own head equals open_clip's encode_image.

Real weights cannot be downloaded here, so these parity checks on tiny random towers of
the same kinds (open_clip ViT; timm ViT trunks as in BiomedCLIP, SigLIP, EVA) are what
shows a real checkpoint will behave: tgcnet reuses the tower's head, it learns no bridge.
"""
import copy

import open_clip
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from tgcnet import create_model
from tgcnet.adapters import ProjectedAttention
from tgcnet.backbone import instantiate
from tgcnet.config import get_preset
from tgcnet.image_towers import FrozenTimmViT, FrozenViT, _attention_pool_values, image_tower

ATOL = 1e-5


def native_clip(image_size: int, seed: int = 0, **vision) -> open_clip.model.CLIP:
    cfg = get_preset("tgcnet-tiny").clip.model_cfg
    cfg["vision_cfg"] = {**cfg["vision_cfg"], "image_size": image_size, **vision}
    torch.manual_seed(seed)
    return open_clip.model.CLIP(**cfg)


def timm_clip(pool: str, proj: str, model: str = "tgcnet_vit_micro_patch16_224", seed: int = 0):
    cfg = get_preset("tgcnet-tiny").clip.model_cfg
    cfg["vision_cfg"] = {"timm_model_name": model, "timm_pool": pool, "timm_proj": proj, "image_size": 224}
    torch.manual_seed(seed)
    clip = instantiate({**cfg, "custom_text": True})
    with torch.no_grad():   # LayerNorms start at 1/0: give them values so a missed norm shows
        for name, p in clip.visual.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return clip


def reference(visual, size: int):
    """open_clip's own tower at ``size`` (timm: resized the way timm resizes)."""
    ref = copy.deepcopy(visual).eval()
    if size != 224 and isinstance(ref, open_clip.timm_model.TimmModel):
        ref.set_input_size(size)
    return ref


@pytest.mark.parametrize("size", [224, 320])
@pytest.mark.parametrize("vision", [{}, {"pool_type": "avg"}, {"final_ln_after_pool": True}])
def test_native_vit_pooled_path_equals_encode_image(size, vision):
    clip = native_clip(size, **vision)
    ref = reference(clip.visual, size)
    x = torch.randn(2, 3, size, size)
    tower = FrozenViT(clip.visual, (0, 1))
    with torch.no_grad():
        expected = ref(x)
    torch.testing.assert_close(tower.pooled_embedding(x), expected, atol=ATOL, rtol=0)
    maps, dense = tower(x)
    assert dense.shape == (2, tower.output_dim, size // 16, size // 16)
    assert [m.shape[1] for m in maps] == [tower.width] * 2


@pytest.mark.parametrize("size", [224, 320])
@pytest.mark.parametrize("pool,proj", [("", "linear"), ("", "mlp"), ("avg", "linear"), ("map", "none")])
def test_timm_vit_pooled_path_equals_encode_image(size, pool, proj):
    """BiomedCLIP ('' + linear), MLP heads, average pooling and SigLIP's latent-attention head."""
    clip = timm_clip(pool, proj)
    ref = reference(clip.visual, size)
    x = torch.randn(2, 3, size, size)
    tower = image_tower(clip.visual, (0, 1))
    assert isinstance(tower, FrozenTimmViT)
    with torch.no_grad():
        expected = ref(x)
    torch.testing.assert_close(tower.pooled_embedding(x), expected, atol=ATOL, rtol=0)
    maps, dense = tower(x)
    assert dense.shape == (2, expected.shape[1], size // 16, size // 16) and tower.output_dim == expected.shape[1]


@pytest.mark.parametrize("proj", ["linear", "mlp"])
def test_timm_dense_tokens_go_through_the_pooled_tokens_head(proj):
    """Each patch token takes the path the CLS token takes to encode_image."""
    clip = timm_clip("", proj)
    ref = reference(clip.visual, 224)
    x = torch.randn(1, 3, 224, 224)
    _, dense = image_tower(clip.visual, (0, 1))(x)
    with torch.no_grad():
        tokens = ref.trunk.forward_features(x)[:, ref.trunk.num_prefix_tokens:]
        expected = ref.head(ref.trunk.fc_norm(tokens))
    torch.testing.assert_close(dense.flatten(2).transpose(1, 2), expected, atol=ATOL, rtol=0)


def test_latent_attention_head_on_one_token_is_its_value_path():
    """With one key the attention is 1: the value path is the pool itself, token by token."""
    pool = timm_clip("map", "none").visual.trunk.attn_pool.eval()
    tokens = torch.randn(3, 5, pool.kv.in_features)
    with torch.no_grad():
        per_token = _attention_pool_values(pool, tokens)
        one_by_one = torch.stack([pool(tokens[:, i:i + 1]) for i in range(tokens.shape[1])], dim=1)
    torch.testing.assert_close(per_token, one_by_one, atol=ATOL, rtol=0)


def test_eva_style_trunk_pooled_path_equals_encode_image():
    clip = timm_clip("", "linear", model="eva02_tiny_patch14_224")
    ref = reference(clip.visual, 224)
    x = torch.randn(1, 3, 224, 224)
    tower = image_tower(clip.visual, (0, -1))
    with torch.no_grad():
        expected = ref(x)
    torch.testing.assert_close(tower.pooled_embedding(x), expected, atol=ATOL, rtol=0)
    assert tower(x)[1].shape[-2:] == (16, 16)


def test_parity_check_can_fail():
    """A head that is not the tower's own (here: one proj weight changed) is caught."""
    clip = timm_clip("", "linear")
    ref = reference(clip.visual, 224)
    tower = image_tower(clip.visual, (0, 1))
    with torch.no_grad():
        tower.visual.head.proj.weight[0, 0] += 0.5
        x = torch.randn(1, 3, 224, 224)
        assert not torch.allclose(tower.pooled_embedding(x), ref(x), atol=ATOL)


def test_frozen_and_eval_whatever_the_caller_does():
    tower = image_tower(timm_clip("", "linear").visual, (0, 1))
    tower.train()
    assert not tower.training and not tower.visual.training
    assert not any(p.requires_grad for p in tower.parameters())


@pytest.mark.parametrize("build", [lambda: FrozenViT(native_clip(224).visual, (0, 1)),
                                   lambda: image_tower(timm_clip("", "linear").visual, (0, 1))],
                         ids=["open_clip", "timm"])
def test_frozen_linears_are_the_blocks_gemms(build):
    """Every linear layer of the blocks (q/k/v, attention output, MLP), for a caller to route."""
    tower = build()
    linears = tower.frozen_linears()
    assert len(linears) == 4 * 2 and all(isinstance(m, nn.Linear) for m in linears)
    assert {id(m) for m in linears} == {id(m) for m in tower.blocks().modules() if isinstance(m, nn.Linear)}
    assert not any(m.weight.requires_grad for m in linears)


@pytest.mark.parametrize("vision,kind", [
    ({"layers": [1, 1, 1, 1], "width": 16, "image_size": 64}, "ModifiedResNet"),
    ({"timm_model_name": "convnext_atto", "timm_pool": "avg", "timm_proj": "linear", "image_size": 224}, "ConvNeXt"),
])
def test_tower_without_patch_grid_is_one_clear_error(vision, kind):
    cfg = get_preset("tgcnet-tiny").clip.model_cfg
    cfg["vision_cfg"] = vision
    with pytest.raises(ValueError, match=f"{kind}.*supported image towers: open_clip's VisionTransformer"):
        create_model("tgcnet-tiny", clip__model_cfg=cfg)


def test_vit_index_out_of_range_is_named():
    with pytest.raises(ValueError, match="sse.vit_indices entry 5 is out of range for a ViT of 2 blocks"):
        image_tower(timm_clip("", "linear").visual, (0, 5))


# ------------------------------------------------------------------ FrozenViT's fused attention

def tiny_clip(seed: int = 0, **vision) -> open_clip.model.CLIP:
    cfg = get_preset("tgcnet-tiny").clip.model_cfg
    cfg["vision_cfg"] = {**cfg["vision_cfg"], **vision}
    torch.manual_seed(seed)
    return open_clip.model.CLIP(**cfg)


def open_clip_reference(visual, x: torch.Tensor, indices: list[int]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """What open_clip itself computes: NCHW intermediates and ln_post'd tokens through ``proj``."""
    visual = copy.deepcopy(visual).eval()
    visual.output_tokens = True
    with torch.no_grad():
        maps = visual.forward_intermediates(x, indices=indices, intermediates_only=True)["image_intermediates"]
        _, tokens = visual(x)
    grid = (x.shape[2] // visual.patch_size[0], x.shape[3] // visual.patch_size[1])
    dense = (tokens @ visual.proj).transpose(1, 2).reshape(x.shape[0], -1, *grid)
    return maps, dense


@pytest.mark.parametrize("vision", [{}, {"width": 96, "head_width": 16, "layers": 3}])
def test_fused_vit_matches_open_clip(vision):
    visual = tiny_clip(**vision).visual
    depth = len(visual.transformer.resblocks)
    ref_maps, ref_dense = open_clip_reference(visual, x := torch.randn(2, 3, 224, 224), list(range(depth)))
    vit = FrozenViT(visual, tuple(range(depth)))
    assert vit.fused_attention
    assert all(isinstance(b.attn, ProjectedAttention) for b in vit.visual.transformer.resblocks)
    maps, dense = vit(x)
    for got, want in zip(maps, ref_maps):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(dense, ref_dense, atol=1e-5, rtol=1e-4)


def test_fused_equals_unfused_at_another_input_size():
    """Off the native grid the positional embedding is resized; both paths must still agree."""
    clip = tiny_clip()
    fused = FrozenViT(copy.deepcopy(clip.visual), (0, 1, 1))
    plain = FrozenViT(clip.visual, (0, 1, 1), fused_attention=False)
    assert not plain.fused_attention
    assert all(isinstance(b.attn, nn.MultiheadAttention) for b in plain.visual.transformer.resblocks)
    x = torch.randn(3, 3, 96, 160)
    (fm, fd), (pm, pd) = fused(x), plain(x)
    assert [m.shape for m in fm] == [(3, 64, 6, 10)] * 3 and fd.shape == (3, 64, 6, 10)
    for got, want in zip([*fm, fd], [*pm, pd]):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_fused_vit_stays_frozen_and_out_of_autograd():
    vit = FrozenViT(tiny_clip().visual, (0, 1))
    assert not any(p.requires_grad for p in vit.parameters())
    vit.train()
    assert not vit.training and not vit.visual.training
    maps, dense = vit(torch.randn(1, 3, 64, 64, requires_grad=True))
    assert dense.grad_fn is None and all(m.grad_fn is None for m in maps)


def test_open_clip_checkpoint_loads_before_the_swap(tmp_path):
    """Checkpoint keys are open_clip's (``attn.in_proj_weight``); the fused tower computes with them."""
    clip = tiny_clip(seed=7)
    state = clip.state_dict()
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" in state
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "clip.safetensors"))
    model = create_model("tgcnet-tiny", pretrained=str(tmp_path / "clip.safetensors"), knowledge=None)
    vit = model.sse.clip_visual
    assert vit.fused_attention
    attn = vit.visual.transformer.resblocks[0].attn
    assert torch.equal(attn.in_proj.weight, state["visual.transformer.resblocks.0.attn.in_proj_weight"])
    x = torch.randn(2, 3, 224, 224)
    ref_maps, ref_dense = open_clip_reference(clip.visual, x, [0, 1])
    maps, dense = vit(x)
    torch.testing.assert_close(maps[0], ref_maps[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(maps[-1], ref_maps[1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(dense, ref_dense, atol=1e-5, rtol=1e-4)
