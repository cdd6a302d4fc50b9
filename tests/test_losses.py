"""Dice + BCE and the auxiliary losses."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tgcnet.losses import deep_supervision_loss, dice_bce_loss, dice_loss, guidance_outside_loss, ot_alignment_loss
from tgcnet.ot import symmetric_ot_alignment


def _target(b: int = 2, size: int = 16) -> torch.Tensor:
    t = torch.zeros(b, 1, size, size)
    t[0, :, 2:8, 3:10] = 1
    t[1, :, 10:14, 1:5] = 1
    return t


def test_perfect_prediction_gives_near_zero_dice() -> None:
    t = _target()
    logits = (t * 2 - 1) * 20
    assert dice_loss(logits, t).item() < 1e-3
    assert dice_bce_loss(logits, t).item() < 1e-3


def test_inverted_prediction_gives_near_one_dice() -> None:
    t = _target()
    assert dice_loss((1 - 2 * t) * 20, t).item() > 0.95


def test_both_empty_is_zero_not_nan() -> None:
    t = torch.zeros(2, 1, 8, 8)
    loss = dice_loss(torch.full_like(t, -30.0), t)
    assert torch.isfinite(loss) and loss.item() < 1e-3


def test_dice_is_per_image_mean() -> None:
    t = _target()
    logits = (t * 2 - 1) * 20
    logits[1] = -20  # image 1 entirely missed: its Dice loss is ~1, image 0's ~0
    assert abs(dice_loss(logits, t).item() - 0.5) < 0.05


def test_bce_part_matches_torch_and_weights_apply() -> None:
    g = torch.Generator().manual_seed(0)
    t = _target()
    logits = torch.randn(t.shape, generator=g)
    bce = F.binary_cross_entropy_with_logits(logits, t)
    torch.testing.assert_close(dice_bce_loss(logits, t, dice_weight=0.0), bce)
    torch.testing.assert_close(dice_bce_loss(logits, t, bce_weight=0.0), dice_loss(logits, t))
    torch.testing.assert_close(dice_bce_loss(logits, t, 2.0, 0.5), 2 * dice_loss(logits, t) + 0.5 * bce)


def test_target_without_channel_axis_and_bool_target() -> None:
    t = _target()
    logits = torch.randn(t.shape)
    ref = dice_bce_loss(logits, t)
    torch.testing.assert_close(dice_bce_loss(logits, t[:, 0]), ref)
    torch.testing.assert_close(dice_bce_loss(logits, t.bool()), ref)


def test_gradients_finite_including_saturated_logits() -> None:
    t = _target()
    logits = torch.cat([torch.full((1, 1, 16, 16), 80.0), torch.full((1, 1, 16, 16), -80.0)]).requires_grad_(True)
    dice_bce_loss(logits, t).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_autocast_input_is_computed_in_float32(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(1)
    t = _target(size=64)
    x = torch.randn(2, 3, 64, 64, generator=g)
    conv = torch.nn.Conv2d(3, 1, 1)
    ref = dice_bce_loss(conv(x), t)
    with torch.autocast("cpu", dtype=dtype):
        logits = conv(x)
        assert logits.dtype == dtype
        loss = dice_bce_loss(logits, t)
    assert loss.dtype == torch.float32
    assert abs(loss.item() - ref.item()) < 1e-2
    loss.backward()
    assert torch.isfinite(conv.weight.grad).all()


@pytest.mark.parametrize(
    "logits, target, field",
    [
        (torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8), "logits"),
        (torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 4), "target"),
    ],
)
def test_shape_errors_name_the_field(logits: torch.Tensor, target: torch.Tensor, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        dice_bce_loss(logits, target)


def test_dice_rejects_non_positive_eps() -> None:
    with pytest.raises(ValueError, match="eps"):
        dice_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), eps=0.0)


def test_ot_alignment_loss_is_the_symmetric_alignment_loss() -> None:
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(2, 12, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    torch.testing.assert_close(ot_alignment_loss(x, y, mask), symmetric_ot_alignment(x, y, mask).loss)


def test_guidance_outside_loss_penalises_the_wrong_side() -> None:
    guidance = torch.zeros(1, 1, 4, 4)
    guidance[..., :2] = 1  # left half allowed, at a coarser resolution than the logits
    inside = torch.full((1, 1, 16, 16), -20.0)
    inside[..., 2:6, 1:6] = 20
    outside = inside.flip(-1)
    assert guidance_outside_loss(inside, guidance).item() < 0.05
    assert guidance_outside_loss(outside, guidance).item() > 0.9
    empty = torch.full((1, 1, 16, 16), -20.0)
    assert guidance_outside_loss(empty, guidance).item() < 0.01
    with pytest.raises(ValueError, match="guidance"):
        guidance_outside_loss(inside, torch.ones(2, 1, 4, 4))


def test_deep_supervision_loss_upsamples_each_level_to_the_mask_and_averages() -> None:
    g = torch.Generator().manual_seed(0)
    target = (torch.rand(2, 1, 32, 32, generator=g) > 0.7).float()
    sides = [torch.randn(2, 1, 4, 4, generator=g), torch.randn(2, 1, 8, 8, generator=g)]
    expected = torch.stack([dice_bce_loss(F.interpolate(s, size=(32, 32), mode="bilinear", align_corners=False),
                                          target) for s in sides]).mean()
    torch.testing.assert_close(deep_supervision_loss(sides, target), expected)
    confident = [torch.where(F.max_pool2d(target, 32 // n) > 0, 20.0, -20.0) for n in (4, 8)]
    assert deep_supervision_loss(confident, torch.zeros_like(target)) > deep_supervision_loss(
        [torch.full_like(c, -20.0) for c in confident], torch.zeros_like(target))
    with pytest.raises(ValueError, match="at least one level"):
        deep_supervision_loss([], target)
    bce_free = torch.stack([dice_loss(F.interpolate(s, size=(32, 32), mode="bilinear", align_corners=False),
                                      target) for s in sides]).mean()
    torch.testing.assert_close(deep_supervision_loss(sides, target, bce_weight=0.0), bce_free)
