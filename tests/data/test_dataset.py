from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from tgcnet.data import DataError, SegmentationDataset, Triple, build_transforms, collate, read_split, sample_root
from tgcnet.data.dataset import binarize_mask


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
    assert set(item) == {"image", "mask", "caption", "name"}
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
