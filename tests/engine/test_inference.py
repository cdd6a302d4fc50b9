"""Loaders that keep a GPU fed give the batches a single process gives: worker processes (and
pinned memory on CUDA) change when a batch is ready, never what is in it, for the evaluation
loader and for the training loader with augmentation."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from tgcnet.data import read_split, sample_root
from tgcnet.engine import TrainConfig
from tgcnet.engine.distributed import DistInfo
from tgcnet.engine.inference import make_loader
from tgcnet.engine.trainer import Trainer


def _batches(loader) -> list[dict]:
    return list(loader)


def _assert_same(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want) > 0
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], torch.Tensor):
                assert torch.equal(a[key], b[key]), key
            else:
                assert a[key] == b[key], key


def test_eval_loader_workers_give_the_single_process_batches():
    triples = read_split(sample_root(), "valid")
    alone = _batches(make_loader(triples, 64, 3, workers=0))
    loader = make_loader(triples, 64, 3, workers=2)
    assert loader.persistent_workers and not loader.pin_memory
    _assert_same(_batches(loader), alone)
    _assert_same(_batches(loader), alone)    # the kept workers serve a second pass unchanged


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    """A Trainer over the embedded sample with full augmentation: its loaders are the training loaders."""
    cfg = TrainConfig(data=str(sample_root()), out=str(tmp_path_factory.mktemp("run") / "run"), image_size=64,
                      batch_size=4, max_steps=1, val_split=None, device="cpu", progress=False, augment="full")
    return Trainer(cfg, torch.device("cpu"), DistInfo())


def test_training_loader_workers_give_the_single_process_batches(trainer):
    """Augmentation draws from a generator seeded by (seed, epoch, index), never by the worker:
    two workers give the very batches, in the same order, in every epoch."""
    by_workers = {}
    for workers in (0, 2):
        trainer.cfg = dataclasses.replace(trainer.cfg, workers=workers)
        by_workers[workers] = [_batches(trainer._loader(epoch, 0)) for epoch in (0, 1)]
    for epoch in (0, 1):
        _assert_same(by_workers[2][epoch], by_workers[0][epoch])
    first = [b["name"] for b in by_workers[0][0]]
    assert first != [b["name"] for b in by_workers[0][1]]    # a new epoch: another order, other draws
    assert not torch.equal(by_workers[0][0][0]["image"], by_workers[0][1][0]["image"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_pinned_eval_batches():
    """On a CUDA run the batches arrive page-locked, so non_blocking copies overlap the GPU's work."""
    loader = make_loader(read_split(sample_root(), "valid"), 64, 4, workers=2, pin_memory=True)
    batch = next(iter(loader))
    assert batch["image"].is_pinned() and batch["mask"].is_pinned()
    assert batch["image"].to("cuda", non_blocking=True).device.type == "cuda"
