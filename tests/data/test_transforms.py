from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from tgcnet.data import build_transforms, read_split, sample_root
from tgcnet.data.dataset import load_image, load_mask
from tgcnet.data.transforms import JointTransform
from tgcnet.laterality import swap_left_right


def _single_side(triples):
    """Triples whose caption names exactly one side, with that side."""
    out = []
    for t in triples:
        sides = set(re.findall(r"\b(left|right)\b", t.caption.lower()))
        if len(sides) == 1:
            out.append((t, sides.pop()))
    return out


def _mask_side(mask: np.ndarray) -> str:
    w = mask.shape[1]
    return "left" if mask[:, : w // 2].sum() > mask[:, w // 2:].sum() else "right"


def _load(t):
    image = load_image(t.image_path)
    mask, _ = load_mask(t.mask_path)
    return image, mask


def _check_flip_is_exact_and_swaps_caption(triples, draws: int = 2):
    t_flip_only = build_transforms(True, 224, affine_p=0.0, color_p=0.0)
    n_flipped = n_kept = 0
    for i, t in enumerate(triples):
        image, mask = _load(t)
        for d in range(draws):
            out_image, out_mask, out_caption = t_flip_only(image, mask, t.caption, rng=1000 * i + d)
            if out_caption == t.caption:
                n_kept += 1
                np.testing.assert_array_equal(out_mask, mask)
                np.testing.assert_array_equal(out_image, image)
            else:
                n_flipped += 1
                assert out_caption == swap_left_right(t.caption)
                np.testing.assert_array_equal(out_mask, mask[:, ::-1])
                np.testing.assert_array_equal(out_image, image[:, ::-1])
    total = n_flipped + n_kept
    assert 0.3 * total < n_flipped < 0.7 * total, (n_flipped, n_kept)


def test_flip_swaps_real_captions_and_flips_mask_on_embedded_sample():
    triples = read_split(sample_root(), "train")
    assert all(re.search(r"\b(left|right)\b", t.caption) for t in triples)
    _check_flip_is_exact_and_swaps_caption(triples, draws=3)


def test_flip_swaps_real_captions_and_flips_mask_on_qata_mini(qata_mini_root):
    triples = read_split(qata_mini_root, "valid")[:60]
    _check_flip_is_exact_and_swaps_caption(triples)


def test_caption_side_still_matches_mask_side_under_full_augmentation(qata_mini_root):
    """With flip + affine + colour, the caption must keep describing the mask.

    On qata-mini "left" is the image's left half in 96% of single-side captions; a flip
    that forgot the caption would drop the flipped samples' agreement to about 4%.
    """
    pairs = _single_side(read_split(qata_mini_root, "train"))
    assert len(pairs) > 80
    transform = build_transforms(True, 224)
    agree = {True: [], False: []}
    for i, (t, side) in enumerate(pairs):
        image, mask = _load(t)
        for d in range(2):
            _, out_mask, out_caption = transform(image, mask, t.caption, rng=10 * i + d)
            flipped = out_caption != t.caption
            out_side = side if not flipped else ("right" if side == "left" else "left")
            assert re.search(rf"\b{out_side}\b", out_caption)
            agree[flipped].append(_mask_side(out_mask) == out_side)
    for flipped, hits in agree.items():
        assert len(hits) > 40, (flipped, len(hits))
        assert np.mean(hits) > 0.85, (flipped, np.mean(hits))


def test_eval_transform_only_resizes_with_nearest_masks():
    t = read_split(sample_root(), "test")[0]
    image, mask = _load(t)
    transform = build_transforms(False, 112)
    for seed in range(10):
        out_image, out_mask, out_caption = transform(image, mask * 255, t.caption, rng=seed)
        assert out_caption == t.caption
        assert out_image.shape == (112, 112) and out_image.dtype == np.uint8
        assert out_mask.shape == (112, 112)
        assert set(np.unique(out_mask)) <= {0, 255}
        np.testing.assert_array_equal(out_mask, mask[::2, ::2] * 255)  # nearest, no flip


def test_train_transform_shapes_and_values_grayscale_and_rgb():
    rng = np.random.default_rng(0)
    mask = np.zeros((40, 60), np.uint8)
    mask[10:30, 5:25] = 1
    transform = build_transforms(True, 32)
    for image in (rng.integers(0, 256, (40, 60), dtype=np.uint8), rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)):
        for seed in range(5):
            out_image, out_mask, _ = transform(image, mask, "upper left lung", rng=seed)
            assert out_image.shape == (32, 32) + image.shape[2:] and out_image.dtype == np.uint8
            assert out_mask.shape == (32, 32) and set(np.unique(out_mask)) <= {0, 1}


def test_augmentation_is_a_function_of_the_rng():
    t = read_split(sample_root(), "train")[3]
    image, mask = _load(t)
    a = build_transforms(True, 64)
    b = build_transforms(True, 64)
    for seed in range(6):
        out_a, out_b = a(image, mask, t.caption, rng=seed), b(image, mask, t.caption, rng=np.random.default_rng(seed))
        for x, y in zip(out_a, out_b):
            assert np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y
    busy = build_transforms(True, 64, hflip_p=0.0, affine_p=1.0, color_p=1.0)  # albumentations' draws only
    assert len({busy(image, mask, t.caption, rng=s)[0].tobytes() for s in range(8)}) == 8
    # the transform's own generator: same seed, same sequence
    c, d = build_transforms(True, 64, seed=7), build_transforms(True, 64, seed=7)
    for _ in range(4):
        assert np.array_equal(c(image, mask, t.caption)[0], d(image, mask, t.caption)[0])


def test_flip_probability_extremes():
    image = np.arange(12, dtype=np.uint8).reshape(3, 4)
    mask = (image % 2).astype(np.uint8)
    always = JointTransform(True, 4, hflip_p=1.0, affine_p=0.0, color_p=0.0)
    never = JointTransform(True, 4, hflip_p=0.0, affine_p=0.0, color_p=0.0)
    for seed in range(5):
        assert always(image, mask, "Left lung", rng=seed)[2] == "Right lung"
        assert never(image, mask, "Left lung", rng=seed)[2] == "Left lung"
    with pytest.raises(ValueError, match="differ in size"):
        always(image, mask[:, :3], "x")


def test_update_check_disabled_before_albumentations_import():
    source = Path(__import__("tgcnet.data.transforms", fromlist=["x"]).__file__).read_text()
    assert source.index('os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")') < source.index("import albumentations")
