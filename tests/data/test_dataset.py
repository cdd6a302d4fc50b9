from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from tgcnet.data import DataError, SegmentationDataset, Triple, build_transforms, collate, read_split, sample_root
from tgcnet.data.dataset import binarize_mask, load_image, load_mask


def _triple(tmp_path, name, image: np.ndarray, mask: np.ndarray, caption="left lung.") -> Triple:
    ip, mp = tmp_path / f"{name}.png", tmp_path / f"mask_{name}.png"
    Image.fromarray(image).save(ip)
    Image.fromarray(mask).save(mp)
    return Triple(name, ip, mp, caption)


def test_items_on_the_embedded_sample():
    triples = read_split(sample_root(), "valid")
    ds = SegmentationDataset(triples)
    assert len(ds) == 8
    item = ds[2]
    assert set(item) == {"image", "mask", "labelled", "caption", "name"} and item["labelled"].item() is True
    image, mask = item["image"], item["mask"]
    assert image.shape == (3, 224, 224) and image.dtype == torch.float32
    assert mask.shape == (1, 224, 224) and mask.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.max() > 0.5
    assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])  # grayscale repeated
    raw = np.array(Image.open(triples[2].mask_path))
    assert torch.equal(mask[0], torch.from_numpy(raw > 127).float())
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert item["caption"] == triples[2].caption and item["name"] == triples[2].name
    raw_image = np.array(Image.open(triples[2].image_path))
    assert torch.allclose(image[0] * 255, torch.from_numpy(raw_image).float())


def test_rgb_kept_and_zero_one_masks(tmp_path):
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[..., 0], rgb[..., 2] = 255, 10
    mask01 = np.zeros((6, 8), np.uint8)
    mask01[2:4, 1:3] = 1
    item = SegmentationDataset([_triple(tmp_path, "a", rgb, mask01)])[0]
    assert item["image"].shape == (3, 6, 8)
    assert torch.allclose(item["image"][:, 0, 0], torch.tensor([1.0, 0.0, 10 / 255]))
    assert item["mask"].sum() == 4 and item["mask"][0, 2, 1] == 1


def test_binarize_rule():
    m, binary = binarize_mask(np.array([[0, 127, 128, 255]], np.uint8))
    assert m.tolist() == [[0, 0, 1, 1]] and not binary
    m, binary = binarize_mask(np.array([[0, 1, 1]], np.uint8))
    assert m.tolist() == [[0, 1, 1]] and binary
    m, binary = binarize_mask(np.array([[0, 255]], np.uint8))
    assert m.tolist() == [[0, 1]] and binary
    m, binary = binarize_mask(np.zeros((2, 2), np.uint8))
    assert m.sum() == 0 and binary


def test_non_binary_mask_reported_once_by_name(tmp_path):
    image = np.full((4, 4), 100, np.uint8)
    mask = np.array([[0, 0, 200, 255]] * 4, np.uint8)
    ds = SegmentationDataset([_triple(tmp_path, "soft", image, mask)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, _ = ds[0], ds[0]
    assert len(caught) == 1 and "mask_soft.png" in str(caught[0].message) and "not binary" in str(caught[0].message)
    assert first["mask"][0, 0].tolist() == [0, 0, 1, 1]


def test_size_mismatch_at_load_names_both_files(tmp_path):
    t = _triple(tmp_path, "odd", np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8))
    with pytest.raises(DataError) as err:
        SegmentationDataset([t])[0]
    assert "odd.png" in str(err.value) and "mask_odd.png" in str(err.value)


def test_collate_stacks_tensors_and_lists_strings():
    triples = read_split(sample_root(), "test")[:3]
    batch = collate([SegmentationDataset(triples)[i] for i in range(3)])
    assert batch["image"].shape == (3, 3, 224, 224) and batch["mask"].shape == (3, 1, 224, 224)
    assert batch["caption"] == [t.caption for t in triples] and batch["name"] == [t.name for t in triples]


def test_collate_explains_unequal_sizes(tmp_path):
    a = _triple(tmp_path, "a", np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8))
    b = _triple(tmp_path, "b", np.zeros((6, 4), np.uint8), np.zeros((6, 4), np.uint8))
    ds = SegmentationDataset([a, b])
    with pytest.raises(ValueError, match="image_size"):
        collate([ds[0], ds[1]])
    with pytest.raises(ValueError, match="empty"):
        collate([])


def test_augmentation_depends_on_seed_epoch_index_only():
    triples = read_split(sample_root(), "train")[:8]
    ds = SegmentationDataset(triples, build_transforms(True, 64), seed=3)
    ds_again = SegmentationDataset(triples, build_transforms(True, 64), seed=3)
    forward = [ds[i] for i in range(8)]
    backward = {i: ds_again[i] for i in reversed(range(8))}  # load order does not matter
    for i in range(8):
        assert torch.equal(forward[i]["image"], backward[i]["image"])
        assert torch.equal(forward[i]["mask"], backward[i]["mask"])
        assert forward[i]["caption"] == backward[i]["caption"]
    ds_again.set_epoch(1)
    changed = sum(not torch.equal(forward[i]["image"], ds_again[i]["image"]) for i in range(8))
    assert changed >= 5
    ds_again.set_epoch(0)
    assert torch.equal(ds_again[5]["image"], forward[5]["image"])


def test_dataloader_workers_give_the_same_batches():
    triples = read_split(sample_root(), "train")[:8]
    ds = SegmentationDataset(triples, build_transforms(True, 32), seed=1)
    serial = list(DataLoader(ds, batch_size=4, collate_fn=collate))
    parallel = list(DataLoader(ds, batch_size=4, collate_fn=collate, num_workers=2))
    for a, b in zip(serial, parallel):
        assert torch.equal(a["image"], b["image"]) and a["caption"] == b["caption"]


def test_plain_callable_transform_without_rng(tmp_path):
    t = _triple(tmp_path, "p", np.full((4, 4), 255, np.uint8), np.full((4, 4), 255, np.uint8), "x")
    ds = SegmentationDataset([t], transform=lambda im, m, c: (im[:2, :2], m[:2, :2], c.upper()))
    item = ds[0]
    assert item["image"].shape == (3, 2, 2) and item["caption"] == "X" and item["mask"].sum() == 4


# --------------------------------------------------------------------------- bit depth and unreadable files

def _save(path, array: np.ndarray):
    """uint16 HxW arrays become 16-bit grayscale PNGs (mode I;16), uint8 ones 8-bit PNGs."""
    Image.fromarray(array).save(path)
    return path


@pytest.mark.parametrize("peak, bits", [(4080, 12), (65535, 16), (1000, 10), (1023, 10), (1024, 12), (16000, 14),
                                        (200, 10)])
def test_16bit_grayscale_is_scaled_by_the_smallest_bit_depth_that_holds_its_maximum(tmp_path, peak, bits):
    arr = np.linspace(0, peak, 16).round().astype(np.uint16).reshape(4, 4)
    image = load_image(_save(tmp_path / "x.png", arr))
    assert image.dtype == np.uint8 and image.shape == (4, 4)
    np.testing.assert_array_equal(image, np.round(arr * (255 / (2**bits - 1))).astype(np.uint8))


@pytest.mark.parametrize("array, expected", [
    (np.array([[0, 4080]], np.uint16), 4080 / 4095),  # 12-bit X-ray export: not 4080 / 65535 = 0.062
    (np.array([[0, 65535]], np.uint16), 1.0),
    (np.array([[0, 200]], np.uint8), 200 / 255),  # 8-bit: unchanged
], ids=["12bit", "16bit", "8bit"])
def test_item_image_values_follow_the_stored_bit_depth(tmp_path, array, expected):
    t = _triple(tmp_path, "x", array, np.zeros(array.shape, np.uint8))
    image = SegmentationDataset([t])[0]["image"]
    assert image.max().item() == pytest.approx(expected, abs=0.5 / 255)
    assert image.min().item() == 0.0


def test_16bit_colour_png_keeps_its_depth_and_channel_order(tmp_path):
    import cv2

    rgb = np.zeros((2, 2, 3), np.uint16)
    rgb[..., 0], rgb[..., 1] = 4080, 2040  # Pillow alone keeps the high byte: 15 and 7
    path = tmp_path / "rgb16.png"
    assert cv2.imwrite(str(path), rgb[..., ::-1].copy())
    image = load_image(path)
    assert image.dtype == np.uint8 and image.shape == (2, 2, 3)
    assert image[0, 0].tolist() == [254, 127, 0]
    rgb[0, 0] = 0  # as a mask: 0 and 4080 (12 bits) -> foreground above 2047
    assert cv2.imwrite(str(path), rgb[..., ::-1].copy())
    mask, binary = load_mask(path)
    assert mask.tolist() == [[0, 1], [1, 1]] and binary


@pytest.mark.parametrize("top", [255, 1000, 4095, 65535])
def test_16bit_masks_are_binarised_at_half_their_bit_depth(tmp_path, top):
    mask = np.zeros((4, 4), np.uint16)
    mask[:, :2] = top
    m, binary = load_mask(_save(tmp_path / "m.png", mask))
    assert binary and m.dtype == np.uint8
    np.testing.assert_array_equal(m, (mask > 0).astype(np.uint8))


def test_binarize_rule_above_8_bits():
    m, binary = binarize_mask(np.array([[0, 2047, 2048, 4095]], np.uint16))  # 12 bits: > 2047
    assert m.tolist() == [[0, 0, 1, 1]] and not binary
    m, _ = binarize_mask(np.array([[0, 32767, 32768, 65535]], np.uint16))  # 16 bits: > 32767
    assert m.tolist() == [[0, 0, 1, 1]]


def test_float_and_out_of_range_images_are_data_errors_naming_the_file(tmp_path):
    floats = tmp_path / "float.tif"
    Image.fromarray(np.full((4, 4), 100.0, np.float32)).save(floats)
    with pytest.raises(DataError, match=rf"{re.escape(str(floats))}.*floating-point.*8- or 16-bit"):
        load_image(floats)
    wide = tmp_path / "wide.tif"
    Image.fromarray(np.full((4, 4), 70000, np.int32)).save(wide)
    with pytest.raises(DataError, match=rf"{re.escape(str(wide))}.*70000.*0\.\.65535"):
        load_image(wide)


def test_unreadable_files_at_load_are_data_errors_naming_the_file(tmp_path):
    """read_split checks files, but they can change before training reads them."""
    t = _triple(tmp_path, "c", np.zeros((64, 64), np.uint8), np.zeros((64, 64), np.uint8))
    t.image_path.write_bytes(b"not an image")
    with pytest.raises(DataError, match=rf"cannot read image {re.escape(str(t.image_path))}"):
        SegmentationDataset([t])[0]
    jpg = tmp_path / "c.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(jpg)
    jpg.write_bytes(jpg.read_bytes()[:-200])  # truncated: Pillow says "image file is truncated", no name
    with pytest.raises(DataError, match=rf"cannot read image {re.escape(str(jpg))}.*truncated"):
        SegmentationDataset([Triple("c", jpg, t.mask_path, "x")])[0]
    t.mask_path.write_bytes(b"")
    with pytest.raises(DataError, match=rf"cannot read mask {re.escape(str(t.mask_path))}"):
        load_mask(t.mask_path)


def test_an_image_without_a_mask_is_an_unlabelled_item_augmented_as_with_its_mask():
    import dataclasses

    triples = read_split(sample_root(), "train")[:4]
    hidden = [dataclasses.replace(t, mask_path=None) if i % 2 else t for i, t in enumerate(triples)]
    transform = build_transforms(True, 64, seed=0)
    with_masks, without = (SegmentationDataset(t, transform, seed=3) for t in (triples, hidden))
    for ds in (with_masks, without):
        ds.set_epoch(2)
    for i in range(4):
        a, b = with_masks[i], without[i]
        assert torch.equal(a["image"], b["image"]) and a["caption"] == b["caption"]
        assert b["labelled"].item() is (i % 2 == 0)
        assert torch.equal(b["mask"], a["mask"] if i % 2 == 0 else torch.zeros_like(a["mask"]))
    batch = collate([without[i] for i in range(4)])
    assert batch["labelled"].tolist() == [True, False, True, False] and batch["labelled"].dtype == torch.bool
