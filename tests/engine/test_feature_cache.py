"""The frozen-ViT feature cache: same losses as without it, hits from epoch two, clear refusals."""
from __future__ import annotations

import importlib
import itertools
import json

import pytest
import torch

from tgcnet.cli import build_parser, main
from tgcnet.data import sample_root
from tgcnet.engine import TrainConfig
from tgcnet.cli.train import train_config_from_args
from tgcnet.engine.distributed import DistInfo
from tgcnet.engine.feature_cache import FeatureCache, bytes_per_image
from tgcnet.engine.trainer import Trainer

from helpers import CAPTIONS, images, tiny

model_mod = importlib.import_module("tgcnet.model")


def config(tmp_path, name: str, **kw) -> TrainConfig:
    base = dict(data=str(sample_root()), out=str(tmp_path / name), image_size=64, batch_size=8, epochs=2,
                knowledge="none", warmup_steps=1, lr=3e-3, progress=False, device="cpu", val_split=None,
                augment="none")
    base.update(kw)
    return TrainConfig(**base)


class Run:
    """A finished training run: its per-batch losses, images the ViT computed, final weights."""

    def __init__(self, cfg: TrainConfig, monkeypatch: pytest.MonkeyPatch, trainer_cls: type = Trainer) -> None:
        self.losses: list[float] = []
        original = model_mod.dice_bce_loss   # the training loss is computed by TGCNetOutput.loss

        def recording_loss(logits, masks, *args, **kwargs):
            loss = original(logits, masks, *args, **kwargs)
            self.losses.append(float(loss.detach()))
            return loss

        monkeypatch.setattr(model_mod, "dice_bce_loss", recording_loss)
        self.trainer = trainer_cls(cfg, torch.device("cpu"), DistInfo())
        vit = self.trainer.model.sse.clip_visual
        self.vit_images: list[int] = []
        forward = vit.forward
        vit.forward = lambda x: (self.vit_images.append(x.shape[0]), forward(x))[1]
        self.trainer.run()
        monkeypatch.setattr(model_mod, "dice_bce_loss", original)
        self.weights = self.trainer.model.trainable_state_dict()
        self.log = [json.loads(line) for line in (self.trainer.run_dir / "log.jsonl").read_text().splitlines()]


def assert_same_run(a: Run, b: Run) -> None:
    """Same losses up to float rounding: a cached feature was computed in another batch, which
    moves the last bit (measured: 1 ulp of one loss in 8); Adam's sign-like first steps turn
    that into ~1e-5 on the weights."""
    assert len(a.losses) == len(b.losses) == 8  # 2 epochs x 32 images / 8
    torch.testing.assert_close(torch.tensor(a.losses), torch.tensor(b.losses), rtol=1e-5, atol=1e-6)
    for k, v in a.weights.items():
        torch.testing.assert_close(b.weights[k], v, rtol=1e-3, atol=1e-4, msg=k)


class StopsAfterOneEpoch(Trainer):
    """Ends the run cleanly after epoch 1's checkpoint, as a killed run would have left it."""

    def _done(self) -> bool:
        return self.state["epoch"] >= 1 or super()._done()


@pytest.fixture(scope="module")
def uncached(tmp_path_factory) -> dict[str, Run]:
    """Reference runs without the cache, per augment mode (module scope: each is trained once)."""
    runs: dict[str, Run] = {}
    with pytest.MonkeyPatch.context() as mp:
        torch.set_num_threads(1)
        for augment in ("none", "flip"):
            runs[augment] = Run(config(tmp_path_factory.mktemp("ref"), "run", augment=augment), mp)
    return runs


@pytest.mark.parametrize("augment", ["none", "flip"])
def test_cached_training_matches_uncached(tmp_path, monkeypatch, uncached, augment):
    cached = Run(config(tmp_path, "run", augment=augment, cache_image_features=True), monkeypatch)
    assert_same_run(uncached[augment], cached)
    cache = cached.trainer.feature_cache
    # every image the ViT computed became one entry (a flip is a second entry, never a stale hit)
    assert sum(cached.vit_images) == len(cache) and 32 <= len(cache) <= (64 if augment == "flip" else 32)


def test_second_epoch_runs_no_vit(tmp_path, monkeypatch, uncached):
    cached = Run(config(tmp_path, "run", cache_image_features=True), monkeypatch)
    assert sum(uncached["none"].vit_images) == 64                # the ViT runs on every image of both epochs
    assert cached.vit_images and sum(cached.vit_images) == 32    # epoch 1 only
    assert [e["cache_hit_rate"] for e in cached.log] == [0.0, 1.0]
    assert cached.log[-1]["cache_images"] == 32


def test_stale_features_are_caught(tmp_path, monkeypatch, uncached):
    """The comparison can fail: a cache keyed by position in the batch returns other images' features."""
    positions = itertools.cycle(range(8))
    monkeypatch.setattr(FeatureCache, "key", staticmethod(lambda image: bytes([next(positions)])))
    stale = Run(config(tmp_path, "run", cache_image_features=True), monkeypatch)
    ref = torch.tensor(uncached["none"].losses)
    assert stale.losses[0] == pytest.approx(ref[0].item(), rel=1e-5)   # the first batch filled the cache
    assert not torch.allclose(torch.tensor(stale.losses), ref, rtol=1e-3, atol=1e-4)


def test_resume_refills_the_cache(tmp_path, monkeypatch, uncached):
    """Nothing of the cache is checkpointed: a resumed run starts empty and still matches."""
    first = Run(config(tmp_path, "run", cache_image_features=True), monkeypatch, StopsAfterOneEpoch)
    assert len(first.losses) == 4 and len(first.trainer.feature_cache) == 32
    resumed = Run(config(tmp_path, "run", cache_image_features=True, resume=str(tmp_path / "run")), monkeypatch)
    assert sum(resumed.vit_images) == 32 and resumed.log[-1]["cache_hit_rate"] == 0.0
    ref = uncached["none"]
    torch.testing.assert_close(torch.tensor(first.losses + resumed.losses), torch.tensor(ref.losses),
                               rtol=1e-5, atol=1e-6)


def test_full_augmentation_is_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match="augment='flip' or 'none'"):
        config(tmp_path, "run", augment="full", cache_image_features=True)
    with pytest.raises(ValueError, match="augment must be one of"):
        config(tmp_path, "run", augment="some")
    with pytest.raises(ValueError, match="cache_dtype"):
        config(tmp_path, "run", cache_image_features=True, cache_dtype="int8")
    with pytest.raises(ValueError, match="cache_max_gb"):
        config(tmp_path, "run", cache_image_features=True, cache_max_gb=0)
    assert main(["train", "--data", str(sample_root()), "--out", str(tmp_path / "x"), "--cache-image-features"]) == 2
    err = capsys.readouterr().err
    assert "--augment flip" in err and "Traceback" not in err


def test_cli_flags_parse():
    args = build_parser().parse_args(["train", "--data", "d", "--augment", "flip", "--cache-image-features",
                                      "--cache-dtype", "float16", "--cache-max-gb", "12.5"])
    cfg = train_config_from_args(args)
    assert (cfg.augment, cfg.cache_image_features, cfg.cache_dtype, cfg.cache_max_gb) == ("flip", True, "float16",
                                                                                         12.5)
    plain = train_config_from_args(build_parser().parse_args(["train", "--data", "d"]))
    assert (plain.augment, plain.cache_image_features) == ("full", False)


def test_vit_features_argument_of_forward():
    model = tiny().eval()
    x, caps = images(2, 64), CAPTIONS[:2]
    feats = model.frozen_vit_features(x)
    torch.testing.assert_close(model(x, caps, vit_features=feats), model(x, caps), rtol=0, atol=0)
    other = model.frozen_vit_features(images(2, 96))
    with pytest.raises(ValueError, match="do not belong to these images"):
        model(x, caps, vit_features=other)
    with pytest.raises(ValueError, match="do not belong to these images"):
        model(x, caps, vit_features=model.frozen_vit_features(images(3, 64)))


def test_cache_storage_dtype_limit_and_shared_blocks():
    model = tiny().eval()
    x = images(4, 64)
    exact = model.frozen_vit_features(x)
    calls: list[int] = []

    def compute(sub: torch.Tensor):
        calls.append(sub.shape[0])
        return model.frozen_vit_features(sub)

    half = FeatureCache(torch.float16)
    maps, dense = half.get(x, compute)
    assert dense.dtype == torch.float32 and maps[0] is maps[1]      # tiny's vit_indices [0, 0, 1, 1]: stored once
    torch.testing.assert_close(dense, exact[1], rtol=2e-3, atol=2e-3)
    assert half.nbytes == 4 * bytes_per_image(model, 64, torch.float16)
    again = half.get(x[[2, 0]], compute)
    assert calls == [4] and half.reset_counts() == (2, 4)
    torch.testing.assert_close(again[1], dense[[2, 0]], rtol=0, atol=0)

    small = FeatureCache(max_bytes=2 * bytes_per_image(model, 64, torch.float32))
    with pytest.warns(UserWarning, match="feature cache full"):
        maps, dense = small.get(x, compute)
    assert len(small) == 2 and small.overflow == 2
    torch.testing.assert_close(dense, exact[1], rtol=0, atol=0)  # beyond the limit: computed, still right
    torch.testing.assert_close(maps[3], exact[0][3], rtol=0, atol=0)
