"""FrozenViT's fused-attention path: open_clip's own outputs, loaded weights kept, nothing trainable."""
import copy

import open_clip
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from tgcnet import create_model
from tgcnet.adapters import ProjectedAttention
from tgcnet.config import get_preset
from tgcnet.image_towers import FrozenViT


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


def test_projected_attention_keeps_device_and_dtype():
    mha = nn.MultiheadAttention(16, 2, batch_first=True).to(torch.float64)
    attn = ProjectedAttention(mha)
    assert attn.in_proj.weight.dtype == attn.out_proj.weight.dtype == torch.float64
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    torch.testing.assert_close(attn(x, x, x)[0], mha.eval()(x, x, x, need_weights=False)[0])
