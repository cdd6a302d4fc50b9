from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tgcnet.io import load_safetensors
from tgcnet.data import sample_root
from tgcnet.engine import TrainConfig, train
from tgcnet.engine.distributed import DistInfo, ShardedEpochSampler, epoch_order
from tgcnet.engine.train_config import parse_overrides
from tgcnet.engine.trainer import Trainer



def config(tmp_path, **kw) -> TrainConfig:
    base = dict(data=str(sample_root()), out=str(tmp_path / "run"), image_size=64, batch_size=8, epochs=1,
                knowledge="none", warmup_steps=1, progress=False, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def run_trainer(cfg: TrainConfig) -> Trainer:
    trainer = Trainer(cfg, torch.device("cpu"), DistInfo())
    trainer.run()
    return trainer


def test_train_writes_run_directory(tmp_path):
    from tgcnet import create_model

    cfg = config(tmp_path, epochs=2, lr=3e-3)
    trainer = run_trainer(cfg)
    run = tmp_path / "run"
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["train"]["image_size"] == 64 and saved["model"]["name"] == "tgcnet-tiny"
    assert saved["trainable_params"] == sum(p.numel() for p in trainer.model.trainable_parameters())
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [0, 1] and [e["step"] for e in log] == [4, 8]  # 32 images / 8
    for key in ("train_loss", "lr", "time", "val_dice", "val_iou", "val_pooled_dice", "val_pooled_iou",
                "val_n_images", "val_side_error"):
        assert key in log[-1], key
    assert log[-1]["val_n_images"] == 8 and math.isfinite(log[-1]["train_loss"])
    assert (run / "best" / "config.json").is_file() and (run / "best" / "inference.json").is_file()
    state = json.loads((run / "last" / "trainer_state.json").read_text())
    assert state["epoch"] == 2 and state["global_step"] == 8 and state["batches_done"] == 0

    # only trainable weights are saved, they moved, and the frozen towers did not
    fresh = create_model("tgcnet-tiny", knowledge=None)
    weights = load_safetensors(run / "last" / "model.safetensors")
    assert set(weights) == set(fresh.trainable_state_dict())
    assert any(not torch.equal(weights[k], v) for k, v in fresh.trainable_state_dict().items())
    frozen = {k: v for k, v in trainer.model.state_dict().items() if k.startswith("sse.clip_visual.")}
    assert frozen and all(torch.equal(v, fresh.state_dict()[k]) for k, v in frozen.items())


class GradRecorder(Trainer):
    """Keeps the gradients of the first optimizer step (Adam's first step is sign-like, so
    comparing weights after it would magnify rounding noise in near-zero gradients)."""

    def _optimizer_step(self) -> None:
        if not hasattr(self, "grads"):
            self.grads = [p.grad.detach().clone() for p in self.params]
        super()._optimizer_step()


def test_grad_accumulation_matches_a_bigger_batch(tmp_path):
    """4 x 2 accumulated == 8 in one batch: the same images, the loss averaged the same way."""
    common = dict(max_steps=1, val_split=None, clip_grad=None)
    big = GradRecorder(config(tmp_path / "a", batch_size=8, **common), torch.device("cpu"), DistInfo())
    big.run()
    acc = GradRecorder(config(tmp_path / "b", batch_size=4, grad_accum=2, **common), torch.device("cpu"), DistInfo())
    acc.run()
    assert len(big.grads) == len(acc.grads) == len(big.params)
    assert any(g.abs().sum() > 0 for g in big.grads)
    for g_big, g_acc in zip(big.grads, acc.grads):
        torch.testing.assert_close(g_acc, g_big, rtol=1e-3, atol=1e-7)


def test_bf16_autocast_on_cpu_trains(tmp_path):
    trainer = run_trainer(config(tmp_path, amp="bf16", max_steps=2, val_split=None))
    assert trainer.state["global_step"] == 2 and math.isfinite(trainer.state["loss_sum"])


def test_fp16_needs_cuda(tmp_path):
    with pytest.raises(ValueError, match="fp16 needs a CUDA"):
        run_trainer(config(tmp_path, amp="fp16", max_steps=1, val_split=None))


def test_run_directory_is_not_overwritten(tmp_path):
    train(config(tmp_path, max_steps=1, val_split=None))
    with pytest.raises(ValueError, match="already holds a training run"):
        train(config(tmp_path, max_steps=1, val_split=None))
    with pytest.raises(ValueError, match="seed: saved 0, now 1"):
        train(config(tmp_path, seed=1, resume=str(tmp_path / "run")))


@pytest.mark.parametrize("field,value", [("epochs", 0), ("batch_size", 0), ("lr", -1.0), ("grad_accum", 0),
                                         ("amp", "fp8"), ("threshold", 1.5)])
def test_bad_settings_are_named(tmp_path, field, value):
    with pytest.raises(ValueError, match=field):
        config(tmp_path, **{field: value})


def test_model_overrides_reach_the_model(tmp_path):
    trainer = run_trainer(config(tmp_path, max_steps=1, val_split=None,
                                 model_overrides=parse_overrides(["decoder.channels=8"])))
    assert trainer.model.config.decoder.channels == 8
    assert parse_overrides(["date.lora.r=2", "laterality=patient"]) == {"date__lora__r": 2, "laterality": "patient"}
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["sse.channels"])


def test_sampler_order_sharding_and_skip():
    order = epoch_order(10, seed=3, epoch=1)
    assert sorted(order.tolist()) == list(range(10))
    assert not np.array_equal(order, epoch_order(10, seed=3, epoch=2))
    assert np.array_equal(order, epoch_order(10, seed=3, epoch=1))
    shards = [list(ShardedEpochSampler(10, seed=3, epoch=1, rank=r, world_size=4)) for r in range(4)]
    assert all(len(s) == 3 for s in shards)  # padded like DistributedSampler
    assert set().union(*map(set, shards)) == set(range(10))
    whole = list(ShardedEpochSampler(10, seed=3, epoch=1))
    assert list(ShardedEpochSampler(10, seed=3, epoch=1, skip=4)) == whole[4:]
    assert len(ShardedEpochSampler(10, seed=3, epoch=1, skip=4)) == 6


def test_caption_override_replaces_every_caption(tmp_path):
    trainer = Trainer(config(tmp_path, caption_override="chest x-ray.", max_steps=1), torch.device("cpu"), DistInfo())
    assert {t.caption for t in trainer.train_set.triples} == {"chest x-ray."}
    assert {t.caption for t in trainer.val_loader.dataset.triples} == {"chest x-ray."}
    with pytest.raises(ValueError, match="caption_override"):
        Trainer(config(tmp_path, caption_override="  "), torch.device("cpu"), DistInfo())


LONG_CAPTION = "bilateral pulmonary infection, " * 30 + "lower left lung."


def _sample_with_long_caption(tmp_path, split: str = "train"):
    """A copy of the embedded sample whose first ``split`` caption is longer than the text context."""
    import csv
    import shutil

    root = tmp_path / "data"
    shutil.copytree(sample_root(), root)
    table = root / split / "prompts.csv"
    with open(table, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    rows[1][1] = LONG_CAPTION
    with open(table, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return root, rows[1][0]


def test_over_long_caption_fails_before_training_naming_the_file(tmp_path):
    from tgcnet.data import DataError

    root, name = _sample_with_long_caption(tmp_path)
    with pytest.raises(DataError, match=rf"split 'train': 1 of 32 captions are too long\n.*{name}: caption has "
                                        r"\d+ tokens, more than the 75") as err:
        Trainer(config(tmp_path, data=str(root)), torch.device("cpu"), DistInfo())
    assert [p.name for p, _ in err.value.problems] == [name]
    assert not (tmp_path / "run" / "last").exists()


def test_skip_bad_drops_over_long_captions(tmp_path):
    root, name = _sample_with_long_caption(tmp_path)
    with pytest.warns(UserWarning, match="skipped 1 entries"):
        trainer = Trainer(config(tmp_path, data=str(root), skip_bad=True), torch.device("cpu"), DistInfo())
    names = [t.name for t in trainer.train_set.triples]
    assert len(names) == 31 and name not in names
    assert trainer.batches_per_epoch == 4  # the step plan counts the kept triples (31 / 8)


def test_image_size_not_a_multiple_of_the_patch_fails_before_writing(tmp_path):
    with pytest.raises(ValueError, match=r"image_size 100 is not a multiple of the patch size 16 .*96 or 112"):
        Trainer(config(tmp_path, image_size=100), torch.device("cpu"), DistInfo())
    with pytest.raises(ValueError, match="image_size 100"):
        train(config(tmp_path, image_size=100))
    assert not (tmp_path / "run").exists()


def test_fp16_on_cpu_fails_before_writing(tmp_path):
    with pytest.raises(ValueError, match="fp16 needs a CUDA"):
        train(config(tmp_path, amp="fp16", max_steps=1, val_split=None))
    assert not (tmp_path / "run").exists()


def test_run_directory_without_checkpoint_is_fresh(tmp_path):
    """Leftovers of a run that never reached its first checkpoint are replaced, not resumed or refused."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_config.json").write_text(json.dumps({"train": {"image_size": 100}}))
    (run / "log.jsonl").write_text(json.dumps({"epoch": 0, "step": 99}) + "\n")
    train(config(tmp_path, max_steps=1, val_split=None))
    assert json.loads((run / "train_config.json").read_text())["train"]["image_size"] == 64
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1]


def test_run_directory_with_only_a_best_model_is_not_overwritten(tmp_path):
    train(config(tmp_path, max_steps=1, val_split=None))
    import shutil

    shutil.rmtree(tmp_path / "run" / "last")
    with pytest.raises(ValueError, match=r"already holds a training run.*best"):
        train(config(tmp_path, max_steps=1, val_split=None))


def test_deep_supervision_trains_the_side_heads_and_saves_them(tmp_path):
    from tgcnet import TGCNet

    cfg = config(tmp_path, max_steps=2, val_split=None,
                 model_overrides=parse_overrides(["decoder.deep_supervision_weight=0.5"]))
    trainer = run_trainer(cfg)
    heads = trainer.model.decoder.side_heads
    state = trainer.optimizer.state
    assert heads is not None and all(state[p]["exp_avg"].abs().sum() > 0 for p in heads.parameters())
    saved = TGCNet.from_pretrained(tmp_path / "run" / "last", knowledge=None)
    assert saved.config.decoder.deep_supervision_weight == 0.5
    for (name, mine), theirs in zip(heads.state_dict().items(), saved.decoder.side_heads.state_dict().values()):
        assert torch.equal(mine, theirs), name


# --------------------------------------------------------------------------- scarce masks (semi-supervised)

def _sample_without_masks(tmp_path, split: str = "train", n: int = 4):
    """A copy of the embedded sample whose first ``n`` masks of ``split`` are gone."""
    import shutil

    from tgcnet.data import read_split

    root = tmp_path / "data"
    shutil.copytree(sample_root(), root)
    gone = read_split(root, split)[:n]
    for t in gone:
        t.mask_path.unlink()
    return root, [t.name for t in gone]


def test_labelled_fraction_trains_and_records_the_split(tmp_path, capsys):
    trainer = run_trainer(config(tmp_path, labelled_fraction=0.5, max_steps=4))
    run = tmp_path / "run"
    split = json.loads((run / "labelled.json").read_text())
    assert (split["fraction"], split["seed"], len(split["labelled"]), len(split["unlabelled"])) == (0.5, 0, 16, 16)
    assert {t.name for t in trainer.train_set.triples if t.mask_path is None} == set(split["unlabelled"])
    saved = json.loads((run / "train_config.json").read_text())["train"]
    assert saved["semi_supervised"] and (saved["pseudo_label_weight"], saved["language_loss_weight"],
                                       saved["count_loss_weight"]) == (0.0, 1.0, 0.0)
    entry = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
    assert entry["train_language_loss"] >= 0
    assert entry["train_pseudo_label_loss"] is None and entry["train_count_loss"] is None   # off by default
    assert not (run / "last" / "teacher.safetensors").exists()   # no pseudo-labels, no teacher
    assert capsys.readouterr().err.count("semi-supervised: 16 of 32 training images labelled, 16 unlabelled") == 1


def test_batches_without_a_labelled_image_stay_finite(tmp_path):
    trainer = run_trainer(config(tmp_path, labelled_fraction=0.01, max_steps=4, val_split=None))
    assert len(trainer.labelled.labelled) == 1  # so at least three of the four batches have no mask at all
    assert math.isfinite(trainer.state["loss_sum"])
    assert all(torch.isfinite(v).all() for v in trainer.model.trainable_state_dict().values())


def test_missing_masks_need_semi_supervised_and_then_train_as_unlabelled(tmp_path, capsys):
    from tgcnet.data import DataError

    root, gone = _sample_without_masks(tmp_path)
    with pytest.raises(DataError, match="--semi-supervised") as err:
        Trainer(config(tmp_path, data=str(root)), torch.device("cpu"), DistInfo())
    assert sorted(p.name for p, _ in err.value.problems) == sorted(gone)
    trainer = run_trainer(config(tmp_path, data=str(root), semi_supervised=True, max_steps=1, val_split=None))
    assert {t.name for t in trainer.train_set.triples if t.mask_path is None} == set(gone)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "28 of 32 training images labelled, 4 unlabelled (4 without a mask file)" in err
    assert json.loads((tmp_path / "run" / "labelled.json").read_text())["missing_masks"] == gone


def test_validation_without_masks_is_refused_even_when_semi_supervised(tmp_path):
    from tgcnet.data import DataError

    root, _ = _sample_without_masks(tmp_path, split="valid", n=1)
    with pytest.raises(DataError, match="(?s)split 'valid'.*validation and test splits need every mask"):
        Trainer(config(tmp_path, data=str(root), semi_supervised=True), torch.device("cpu"), DistInfo())
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("settings, words", [
    ({"pseudo_label_weight": 1.0}, "only semi-supervised training has"),
    ({"language_loss_weight": 0.5}, "--semi-supervised"),
    ({"count_loss_weight": 0.5}, "--semi-supervised"),
    ({"semi_supervised": True, "count_loss_weight": -1.0}, "count_loss_weight=-1.0"),
    ({"labelled_fraction": 0.0}, "labelled_fraction=0.0"),
    ({"labelled_fraction": 1.5}, "labelled_fraction=1.5"),
    ({"semi_supervised": True, "pseudo_label_weight": -1.0}, "pseudo_label_weight=-1.0"),
    ({"semi_supervised": True, "pseudo_label_threshold": 0.5}, "pseudo_label_threshold=0.5"),
    ({"semi_supervised": True, "ema_decay": 1.0}, "ema_decay=1.0"),
    ({"semi_supervised": True, "rampup_fraction": 2.0}, "rampup_fraction=2.0"),
])
def test_bad_semi_supervised_settings_are_named(tmp_path, settings, words):
    with pytest.raises(ValueError, match=words):
        config(tmp_path, **settings)


def test_semi_supervised_settings_default_on_with_it_and_off_without():
    plain = TrainConfig(data="d")
    assert not plain.semi_supervised
    assert plain.pseudo_label_weight == plain.language_loss_weight == plain.count_loss_weight == 0.0
    semi = TrainConfig(data="d", labelled_fraction=0.25)
    assert semi.semi_supervised
    assert (semi.pseudo_label_weight, semi.language_loss_weight, semi.count_loss_weight) == (0.0, 1.0, 0.0)
    assert TrainConfig.from_dict(semi.to_dict()) == semi
