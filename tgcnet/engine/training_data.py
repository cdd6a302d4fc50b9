"""What a run trains on: its splits read and checked, the labelled part chosen, the training set built.

Reading comes first and apart from the model, so a bad data set fails before anything is
built; the caption-length check comes after, since it needs the model's text context.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from tgcnet.data import SegmentationDataset, Triple, build_transforms, read_split

from .distributed import ShardedEpochSampler
from .labelled_split import LabelledSplit, choose_labelled
from .run_dir import RunDir
from .split_captions import check_caption_lengths, override_captions
from .train_config import TrainConfig

__all__ = ["TrainingSplits", "read_training_splits", "check_lengths", "check_image_size", "training_dataset",
           "batches_per_rank"]


@dataclass
class TrainingSplits:
    """The checked triples of ``train`` (and ``val`` when validating), and the labelled split of a
    semi-supervised run (None otherwise)."""

    triples: dict[str, list[Triple]]
    labelled: Optional[LabelledSplit] = None


def read_training_splits(cfg: TrainConfig, run_dir: RunDir) -> TrainingSplits:
    """Read and check the files. A semi-supervised run drops the unlabelled images' masks: a new
    run chooses them, a resumed one reads its choice back from labelled.json; both on the data
    set's own captions, before any caption override."""
    def read(split: str, unlabelled: bool = False) -> list[Triple]:
        return read_split(cfg.data, split, layout=cfg.layout, skip_bad=cfg.skip_bad, allow_missing_masks=unlabelled)

    train = read(cfg.train_split, cfg.semi_supervised)
    labelled = None
    if cfg.semi_supervised:
        labelled = (choose_labelled(train, cfg.labelled_fraction, cfg.seed) if cfg.resume is None
                    else LabelledSplit.read(run_dir.labelled_file))
        train = labelled.apply(train, str(run_dir.labelled_file))
    triples = {"train": override_captions(train, cfg.caption_override)}
    if cfg.val_split:
        triples["val"] = override_captions(read(cfg.val_split), cfg.caption_override)
    return TrainingSplits(triples, labelled)


def check_lengths(model: torch.nn.Module, splits: TrainingSplits, cfg: TrainConfig) -> dict[str, list[Triple]]:
    """Each split's triples after the caption-length check against ``model``'s text context."""
    names = {"train": cfg.train_split, "val": cfg.val_split}
    return {key: check_caption_lengths(model, rows, f"data set {cfg.data}, split {names[key]!r}", cfg.skip_bad)
            for key, rows in splits.triples.items()}


def check_image_size(patch: Optional[int], cfg: TrainConfig) -> None:
    """Here, not at the first forward: everything a run is refused for must fail before the run
    directory is written, so the corrected command starts cleanly."""
    size = cfg.image_size
    if patch is not None and size % patch:
        lower = size // patch * patch
        sizes = " or ".join(str(s) for s in (lower, lower + patch) if s > 0)
        raise ValueError(f"image_size {size} is not a multiple of the patch size {patch} of preset "
                         f"{cfg.preset!r}; use --image-size {sizes}")


def training_dataset(triples: list[Triple], cfg: TrainConfig) -> SegmentationDataset:
    """The augmented training set, its randomness seeded per item from the run's seed."""
    return SegmentationDataset(triples, build_transforms(True, cfg.image_size, seed=cfg.seed, augment=cfg.augment),
                               seed=cfg.seed)


def batches_per_rank(n_items: int, batch_size: int, rank: int, world_size: int) -> int:
    """Batches one rank runs per epoch (its shard, the last batch possibly short)."""
    per_rank = len(ShardedEpochSampler(n_items, rank=rank, world_size=world_size))
    return -(-per_rank // batch_size)
