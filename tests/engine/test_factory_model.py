"""``train(cfg, model_factory=...)``: another model through the same loop, saved, resumed and evaluated."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from tgcnet.data import sample_root
from tgcnet.engine import TrainConfig, evaluate, train
from tgcnet.engine.distributed import DistInfo
from tgcnet.engine.trainer import Trainer

SAMPLE = str(sample_root())


class CaptionBlind(nn.Module):
    """A two-layer conv net that ignores the captions (a stand-in for an smp U-Net); BatchNorm buffers included."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
                                 nn.Conv2d(channels, 1, 1))

    def forward(self, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        return self.net(images)


def make(cfg: TrainConfig) -> nn.Module:
    torch.manual_seed(cfg.seed)
    return CaptionBlind()


def config(tmp_path, **kw) -> TrainConfig:
    base = dict(data=SAMPLE, out=str(tmp_path / "run"), image_size=32, batch_size=8, epochs=1, knowledge="none",
                warmup_steps=1, lr=1e-2, progress=False, device="cpu")
    return TrainConfig(**{**base, **kw})


def test_factory_model_trains_resumes_and_evaluates(tmp_path):
    run = train(config(tmp_path), model_factory=make)
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["model"]["kind"] == "model_factory" and saved["model"]["factory"].endswith(":make")
    assert saved["trainable_params"] == sum(p.numel() for p in CaptionBlind().parameters())
    # the whole state dict is saved: BatchNorm statistics are needed to rebuild the model
    from tgcnet.io import load_safetensors

    assert "net.1.running_mean" in load_safetensors(run / "best" / "model.safetensors")

    train(dataclasses.replace(config(tmp_path), epochs=2, resume=str(run)), model_factory=make)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [0, 1] and log[-1]["step"] == 8

    best = max(log, key=lambda e: e["val_dice"])
    metrics = evaluate(run, SAMPLE, "valid", out=tmp_path / "ev", device="cpu", progress=False, model_factory=make)
    assert metrics["dice"] == pytest.approx(best["val_dice"], abs=1e-9)
    assert metrics["pooled_dice"] == pytest.approx(best["val_pooled_dice"], abs=1e-9)
    assert (tmp_path / "ev" / "per_image.csv").is_file()

    with pytest.raises(ValueError, match="pass the same model_factory"):
        evaluate(run, SAMPLE, "valid", device="cpu", progress=False)


def test_factory_must_return_logits_of_the_image_size(tmp_path):
    class Wrong(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)

        def forward(self, images, captions):
            return self.conv(images)

    with pytest.raises(ValueError, match=r"must return logits of shape \(8, 1, 32, 32\)"):
        train(config(tmp_path, val_split=None), model_factory=lambda cfg: Wrong())


def test_factory_must_return_a_trainable_module(tmp_path):
    with pytest.raises(TypeError, match="must return a torch.nn.Module"):
        train(config(tmp_path), model_factory=lambda cfg: "not a model")
    frozen = CaptionBlind().requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to train"):
        train(config(tmp_path), model_factory=lambda cfg: frozen)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_feature_cache_needs_a_tgcnet(tmp_path):
    with pytest.raises(ValueError, match="cache_image_features needs a TGCNet"):
        Trainer(config(tmp_path, cache_image_features=True, augment="none"), torch.device("cpu"), DistInfo(),
                model_factory=make)


def test_cpu_kernels_applied_to_tgcnet_not_to_factory_models(tmp_path, monkeypatch):
    import tgcnet.accel

    seen: list[str] = []
    original = tgcnet.accel.optimize_for_cpu
    monkeypatch.setattr(tgcnet.accel, "optimize_for_cpu", lambda m, *a, **k: (seen.append(type(m).__name__),
                                                                             original(m, *a, **k))[1])
    Trainer(config(tmp_path, val_split=None), torch.device("cpu"), DistInfo(), model_factory=make)
    assert seen == []
    trainer = Trainer(config(tmp_path, val_split=None, image_size=64), torch.device("cpu"), DistInfo())
    assert seen == ["TGCNet"]
    trainer.model.save_pretrained(tmp_path / "saved")
    from tgcnet.engine.loading import load_inference_model

    load_inference_model(tmp_path / "saved", device="cpu", knowledge="none")
    assert seen == ["TGCNet", "TGCNet"]
