"""Decoder: a light FPN over the SSE pyramid, conditioned on VLCM's output."""
import pytest
import torch
import torch.nn.functional as F

from tgcnet.config import DecoderConfig
from tgcnet.decoder import Decoder
from tgcnet.vlcm import VLCMOutput

JOINT = 16


def inputs(batch: int = 2, size: int = 64, strides=(4, 8, 16, 32), channels: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pyramid = [torch.randn(batch, channels, size // s, size // s, generator=g) for s in strides]
    grid = size // 16
    vlcm = VLCMOutput(visual=torch.randn(batch, JOINT, grid, grid, generator=g), tokens=torch.zeros(batch, 3, JOINT),
                      pooled=torch.randn(batch, JOINT, generator=g),
                      prior=torch.randn(batch, 1, grid, grid, generator=g), pixels=torch.zeros(batch, grid * grid, JOINT))
    return pyramid, vlcm


def decoder(strides=(4, 8, 16, 32), channels: int = 12) -> Decoder:
    torch.manual_seed(0)
    return Decoder(channels, list(strides), JOINT, 16, DecoderConfig(channels=8))


@pytest.mark.parametrize("size, out", [(64, (64, 64)), (64, (96, 80))])
def test_logits_at_the_requested_size(size, out):
    pyramid, vlcm = inputs(size=size)
    assert decoder()(pyramid, vlcm, size=out).shape == (2, 1, *out)


@pytest.mark.parametrize("strides, level", [((4, 8, 16, 32), 2), ((4, 8), 1), ((8, 16, 32), 1), ((2, 4, 32), 1), ((2, 4, 20), 2)])
def test_visual_embeddings_join_at_the_level_nearest_the_vit_stride(strides, level):
    assert decoder(strides).visual_level == level


def test_the_prior_reaches_the_logits_with_its_learnable_weight():
    module = decoder()
    pyramid, vlcm = inputs()
    with torch.no_grad():
        module.prior_weight.fill_(0.0)
        without = module(pyramid, vlcm, size=(64, 64))
        module.prior_weight.fill_(1.5)
        with_prior = module(pyramid, vlcm, size=(64, 64))
    finest = pyramid[0].shape[-2:]
    expected = F.interpolate(F.interpolate(vlcm.prior, size=finest, mode="bilinear", align_corners=False),
                             size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(with_prior - without, 1.5 * expected, atol=1e-5, rtol=1e-5)


def test_film_starts_as_the_identity_and_the_sentence_then_matters():
    module = decoder()
    pyramid, vlcm = inputs()
    other = VLCMOutput(**{**vlcm.__dict__, "pooled": torch.randn(2, JOINT)})
    with torch.no_grad():
        torch.testing.assert_close(module(pyramid, vlcm, (64, 64)), module(pyramid, other, (64, 64)))
        for film in module.film:
            film.weight.normal_()
        assert not torch.allclose(module(pyramid, vlcm, (64, 64)), module(pyramid, other, (64, 64)))


def test_every_parameter_gets_a_gradient_once_film_moves():
    module = decoder()
    with torch.no_grad():
        for film in module.film:
            film.weight.normal_(std=0.1)
    pyramid, vlcm = inputs()
    module(pyramid, vlcm, (64, 64)).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_deep_supervision_adds_one_head_per_level_above_the_finest_and_leaves_the_logits_alone():
    plain = decoder()
    torch.manual_seed(0)
    deep = Decoder(12, [4, 8, 16, 32], JOINT, 16, DecoderConfig(channels=8, deep_supervision_weight=0.5))
    assert plain.side_heads is None and len(deep.side_heads) == 3
    extra = sum(p.numel() for p in deep.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == 3 * (8 + 1)                              # a 1x1 conv (8 -> 1) per side head
    pyramid, vlcm = inputs()
    logits, sides = deep(pyramid, vlcm, (64, 64), return_sides=True)
    assert [tuple(s.shape[-2:]) for s in sides] == [(2, 2), (4, 4), (8, 8)]   # coarse to fine, native size
    assert torch.equal(logits, deep(pyramid, vlcm, (64, 64)))                 # inference reads the finest level
    assert plain(pyramid, vlcm, (64, 64), return_sides=True)[1] == []
