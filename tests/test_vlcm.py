"""VLCM: calibrated pixel-text similarity and bidirectional gated cross-attention."""
import math

import pytest
import torch

from tgcnet.config import SSAConfig, VLCMConfig
from tgcnet.date import TextFeatures
from tgcnet.vlcm import VLCM

DIM = 16


def text(batch: int = 2, length: int = 6, real: int = 4, seed: int = 0) -> TextFeatures:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, length, DIM, generator=g)
    mask = torch.zeros(batch, length, dtype=torch.bool)
    mask[:, :real] = True
    weights = torch.zeros(batch, length)
    weights[:, real - 1] = 1.0                     # pooled at the last real token (EOT)
    return TextFeatures(tokens=tokens, mask=mask, pooled=tokens[:, real - 1], pool_weights=weights)


def vlcm(ssa: SSAConfig | None = None) -> VLCM:
    torch.manual_seed(0)
    return VLCM(DIM, VLCMConfig(attn_dim=8, heads=2), ssa)


def test_output_shapes():
    dense = torch.randn(2, DIM, 3, 5)
    out = vlcm()(dense, text())
    assert out.visual.shape == (2, DIM, 3, 5) and out.prior.shape == (2, 1, 3, 5)
    assert out.tokens.shape == (2, 6, DIM) and out.pooled.shape == (2, DIM) and out.pixels.shape == (2, 15, DIM)
    torch.testing.assert_close(out.visual.flatten(2).transpose(1, 2), out.pixels)


def test_similarity_is_a_scaled_and_shifted_cosine():
    module = vlcm()
    cfg = VLCMConfig()
    pooled = torch.randn(1, DIM)
    visual = torch.stack([pooled[0] * 3, -pooled[0]])[None]       # same and opposite direction
    sim = module.similarity(visual, pooled)
    torch.testing.assert_close(sim, torch.tensor([[cfg.scale_init + cfg.bias_init, -cfg.scale_init + cfg.bias_init]]))
    assert module.log_scale.item() == pytest.approx(math.log(cfg.scale_init))


def test_padding_tokens_change_nothing_that_is_read():
    """Keys outside the text mask are never attended to, and pooling weights are zero there."""
    module = vlcm()
    dense = torch.randn(2, DIM, 2, 2)
    features = text()
    noisy = text()
    noisy.tokens[:, 4:] = torch.randn(2, 2, DIM) * 10
    a, b = module(dense, features), module(dense, noisy)
    for name in ("visual", "prior", "pooled"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name))
    torch.testing.assert_close(a.tokens[:, :4], b.tokens[:, :4])


def test_every_parameter_gets_a_gradient():
    module = vlcm()
    out = module(torch.randn(2, DIM, 2, 3), text())
    (out.prior.sum() + out.visual.square().mean()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_guidance_prior_needs_a_mask_and_only_lowers_outside_it():
    module = vlcm(SSAConfig(guidance="prior"))
    dense, features = torch.randn(1, DIM, 2, 2), text(batch=1)
    with pytest.raises(ValueError, match="no guidance mask was given"):
        module(dense, features)
    inside = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    guided = module(dense, features, inside).prior
    plain = module(dense, features, torch.ones_like(inside)).prior
    torch.testing.assert_close(guided[..., 0, :], plain[..., 0, :])
    torch.testing.assert_close(guided[..., 1, :], plain[..., 1, :] - module.guidance_strength)
    assert vlcm().guidance_strength is None          # off: no parameter either
