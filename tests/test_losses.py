"""Dice + BCE and the auxiliary losses."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tgcnet.losses import (deep_supervision_loss, dice_bce_loss, dice_loss, guidance_outside_loss,
                           known_background_loss, language_guided_loss, presence_loss, ot_alignment_loss, pseudo_label_loss, region_count_loss,
                           soft_euler_characteristic)
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


# --------------------------------------------------------------------------- images without a mask

def _map(rows: list[str]) -> torch.Tensor:
    """A binary (1, 1, H, W) map drawn with '#' for foreground."""
    return torch.tensor([[float(c == "#") for c in row] for row in rows])[None, None]


@pytest.mark.parametrize("rows, components, holes", [
    (["#"], 1, 0),
    ([".....", ".##..", ".##..", "....."], 1, 0),
    (["#.#.#", ".....", "##..#"], 5, 0),
    (["#.", ".#"], 2, 0),                      # diagonal neighbours are two regions (4-connectivity)
    (["###", "#.#", "###"], 1, 1),             # a ring: one region with a hole
    (["#####", "#.#.#", "#####", "....#"], 1, 2),
    (["##...", "##..#", "....#"], 2, 0),       # regions touching the border count like any other
    (["....", "...."], 0, 0),
])
def test_soft_euler_characteristic_counts_regions_minus_holes_on_binary_maps(rows, components, holes):
    assert soft_euler_characteristic(_map(rows)).tolist() == [components - holes]


def test_soft_euler_characteristic_is_the_expectation_over_independent_pixels():
    """On a 1x2 map each pixel is foreground with probability p, q: E = p + q - p q (one region when both)."""
    p, q = 0.3, 0.8
    probs = torch.tensor([[[[p, q]]]], requires_grad=True)
    e = soft_euler_characteristic(probs)
    torch.testing.assert_close(e, torch.tensor([p + q - p * q]))
    e.sum().backward()
    torch.testing.assert_close(probs.grad, torch.tensor([[[[1 - q, 1 - p]]]]))


def test_region_count_loss_penalises_only_regions_beyond_the_count():
    three = _map(["#.#.#", ".....", "....."])
    logits = (three * 2 - 1) * 20  # confident: the ramp leaves the binary map
    batch = torch.cat([logits, logits, logits])
    torch.testing.assert_close(region_count_loss(batch, [1, 3, None]), torch.tensor(2.0).log1p() / 2)
    assert region_count_loss(batch, [5, 3, 4]).item() == 0.0
    assert region_count_loss(batch, [None, None, None]).item() == 0.0


def test_region_count_loss_ignores_faint_background_and_pushes_an_extra_region_down():
    logits = torch.full((1, 1, 32, 32), -3.0)  # p = 0.047 everywhere: below the ramp, no region
    assert region_count_loss(logits, [0]).item() == 0.0
    logits = (_map(["##......", "##......", "........", ".....#.."]) * 2 - 1) * 20
    logits[..., 3, 5] = 0.4  # p = 0.6: a faint second region, where the caption states one
    logits.requires_grad_(True)
    loss = region_count_loss(logits, [1])
    q = (torch.sigmoid(torch.tensor(0.4)) - 0.5) / 0.5 + 0.5  # the ramp: the faint region counts q
    torch.testing.assert_close(loss, torch.log1p(q))
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[0, 0, 3, 5] > 0
    assert logits.grad.abs().sum() == logits.grad[0, 0, 3, 5].abs()  # confident pixels lie outside the ramp


def test_region_count_loss_on_cells_sees_a_speckle_as_no_region():
    logits = torch.full((1, 1, 16, 16), -20.0)
    logits[..., 0:8, 0:8] = 20.0                     # one lesion filling a cell
    for y, x in ((3, 12), (12, 3), (12, 12)):
        logits[..., y, x] = 20.0                     # three single-pixel speckles
    assert region_count_loss(logits, [1]).item() == pytest.approx(math.log(4), abs=1e-5)
    assert region_count_loss(logits, [1], pool=8).item() == 0.0   # a speckle averages to 1/64 of its cell
    with pytest.raises(ValueError, match="pool"):
        region_count_loss(logits, [1], pool=0)


def test_pseudo_label_loss_uses_confident_pixels_only():
    teacher = torch.tensor([[[[0.95, 0.05, 0.6, 0.1]]]])  # tau 0.3: the first, second and fourth count
    logits = torch.tensor([[[[2.0, -1.0, 5.0, 3.0]]]])
    expected = (F.softplus(-torch.tensor(2.0)) + F.softplus(torch.tensor(-1.0)) + F.softplus(torch.tensor(3.0))) / 3
    torch.testing.assert_close(pseudo_label_loss(logits, teacher, 0.3), expected)
    assert pseudo_label_loss(logits, torch.full_like(teacher, 0.5), 0.3).item() == 0.0  # nothing confident
    with pytest.raises(ValueError, match="threshold"):
        pseudo_label_loss(logits, teacher, 0.5)


def test_known_background_loss_pushes_only_the_ruled_out_pixels_down():
    logits = torch.zeros(2, 1, 4, 4, requires_grad=True)
    background = torch.zeros(2, 1, 4, 4)
    background[0, ..., 2:] = 1                      # image 0: the right half ruled out; image 1: nothing
    loss = known_background_loss(logits, background)
    torch.testing.assert_close(loss, F.softplus(torch.tensor(0.0)))   # mean over the one image ruling out
    loss.backward()
    assert (logits.grad[0, ..., 2:] > 0).all() and (logits.grad[0, ..., :2] == 0).all()
    assert (logits.grad[1] == 0).all()
    assert known_background_loss(logits, torch.zeros_like(background)).item() == 0.0


def test_presence_loss_asks_the_top_pixels_of_the_region_to_be_lesion():
    logits = torch.full((2, 1, 20, 20), -5.0)
    logits[0, 0, 3, 15] = 5.0                        # one confident pixel in the right half
    right = torch.zeros(2, 1, 20, 20)
    right[..., 10:] = 1
    # k = 0.5% of 400 pixels = 2: the confident pixel and one at -5
    expected = (F.softplus(torch.tensor(-5.0)) + F.softplus(torch.tensor(5.0))) / 2
    torch.testing.assert_close(presence_loss(logits, right, [True, False]), expected)
    left = right.flip(-1)                            # the confident pixel is outside: both top pixels at -5
    torch.testing.assert_close(presence_loss(logits, left, [True, False]), F.softplus(torch.tensor(5.0)))
    assert presence_loss(logits, right, [False, False]).item() == 0.0
    with pytest.raises(ValueError, match="present has 1"):
        presence_loss(logits, right, [True])
    with pytest.raises(ValueError, match="fraction"):
        presence_loss(logits, right, [True, False], fraction=0.0)


def test_language_guided_loss_reads_the_sides_and_the_count():
    right_half = torch.zeros(1, 1, 20, 20)
    right_half[..., 12:] = 1
    logits = (right_half * 2 - 1) * 20  # one confident region, in the right half of the image
    # named right: nothing ruled out is lesion, the region is there, one region as stated
    assert language_guided_loss(logits, ["one infected area, right lung."]).item() < 1e-6
    # named left: the region lies where the caption rules lesion out, and the left half has none
    wrong = language_guided_loss(logits, ["one infected area, left lung."])
    assert wrong.item() > 20
    # a stated count of none rules out the whole image: 160 of 400 pixels at logit 20 (the count is apart)
    none = language_guided_loss(logits, ["no infected areas."])
    assert none.item() == pytest.approx(160 * 20 / 400, rel=1e-4)
    # no side and no count: nothing to say
    assert language_guided_loss(logits, ["pneumonia."]).item() == 0.0
    # an empty map is no longer the cheapest answer to a caption that names a side
    empty = torch.full_like(logits, -20.0)
    assert language_guided_loss(empty, ["one infected area, right lung."]).item() > 19
    with pytest.raises(ValueError, match="one per image"):
        language_guided_loss(logits, "left lung.")
