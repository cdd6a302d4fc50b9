"""What a run trains on: splits read before the model, the labelled part, the image-size check, batches per rank."""
from __future__ import annotations

import pytest

from tgcnet.data import sample_root
from tgcnet.engine import TrainConfig
from tgcnet.engine.run_dir import RunDir
from tgcnet.engine.training_data import batches_per_rank, check_image_size, read_training_splits


def test_splits_are_read_with_the_caption_override_and_a_labelled_part(tmp_path):
    cfg = TrainConfig(data=str(sample_root()), out=str(tmp_path / "run"), caption_override="lung.")
    splits = read_training_splits(cfg, RunDir(cfg.out))
    assert set(splits.triples) == {"train", "val"} and splits.labelled is None
    assert {t.caption for rows in splits.triples.values() for t in rows} == {"lung."}
    semi = TrainConfig(data=str(sample_root()), out=str(tmp_path / "semi"), labelled_fraction=0.5, val_split=None)
    splits = read_training_splits(semi, RunDir(semi.out))
    assert set(splits.triples) == {"train"} and splits.labelled is not None
    unlabelled = [t for t in splits.triples["train"] if t.mask_path is None]
    assert len(unlabelled) == len(splits.labelled.unlabelled) == len(splits.triples["train"]) // 2


def test_image_size_must_be_a_multiple_of_the_patch():
    check_image_size(16, TrainConfig(data="d", image_size=64))
    check_image_size(None, TrainConfig(data="d", image_size=65))   # a model without a patch grid takes any size
    with pytest.raises(ValueError, match="use --image-size 48 or 64"):
        check_image_size(16, TrainConfig(data="d", image_size=50))


@pytest.mark.parametrize("items, batch, world, expected", [(32, 8, 1, 4), (33, 8, 1, 5), (32, 8, 2, 2), (9, 4, 2, 2)])
def test_batches_per_rank(items, batch, world, expected):
    assert all(batches_per_rank(items, batch, rank, world) == expected for rank in range(world))
