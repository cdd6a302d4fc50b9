"""SSE: one fused level per CNN scale, cached ViT features reused exactly, only the frozen ViT frozen."""
import open_clip
import pytest
import torch

from tgcnet.config import get_preset


def tiny_clip(seed: int = 0) -> open_clip.model.CLIP:
    torch.manual_seed(seed)
    return open_clip.model.CLIP(**get_preset("tgcnet-tiny").clip.model_cfg)


def sse_of(fusion: str = "gated"):
    from tgcnet.sse import SSE

    config = get_preset("tgcnet-tiny", sse__fusion=fusion)
    return SSE(tiny_clip().visual, config.sse), config.sse


@pytest.mark.parametrize("fusion", ["gated", "concat"])
def test_pyramid_has_one_fused_level_per_cnn_scale(fusion):
    sse, cfg = sse_of(fusion)
    out = sse(torch.rand(2, 3, 64, 96))
    assert out.strides == [4, 8, 16, 32] == sse.strides
    assert [tuple(p.shape) for p in out.pyramid] == [(2, cfg.channels, 64 // s, 96 // s) for s in out.strides]
    assert out.dense.shape == (2, sse.clip_visual.output_dim, 4, 6)


def test_cached_vit_features_give_the_same_output():
    sse, _ = sse_of()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        fresh = sse(x)
        reused = sse(x, vit_features=sse.clip_visual(x))
    assert all(torch.equal(a, b) for a, b in zip(fresh.pyramid, reused.pyramid))
    assert torch.equal(fresh.dense, reused.dense)


def test_everything_but_the_frozen_vit_trains_and_the_gate_starts_even():
    sse, _ = sse_of()
    trainable = {n for n, p in sse.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in sse.named_parameters() if not n.startswith("clip_visual.")}
    assert all(torch.sigmoid(f.gate).eq(0.5).all() for f in sse.fusion)
    sum(p.sum() for p in sse(torch.rand(1, 3, 64, 64)).pyramid).backward()
    assert all(sse.state_dict(keep_vars=True)[n].grad is not None for n in trainable)
