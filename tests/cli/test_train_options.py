"""``tgcnet train`` options come from TrainConfig's fields: one flag per field, same names as ever."""
from __future__ import annotations

import argparse
import dataclasses

import pytest

from tgcnet.cli import build_parser
from tgcnet.cli.train import option_name, train_config_from_args
from tgcnet.engine.train_config import AUGMENT_CHOICES, CACHE_DTYPE_CHOICES, GROUPS, TrainConfig

FLAGS = {
    "data and run": ["--data", "--layout", "--out", "--resume", "--train-split", "--val-split", "--skip-bad",
                     "--workers", "--threads", "--augment", "--recipe"],
    "frozen-feature cache": ["--cache-image-features", "--cache-dtype", "--cache-max-gb"],
    "model": ["--preset", "--pretrained", "--init-from", "--knowledge", "--set", "--caption-override"],
    "optimisation": ["--epochs", "--max-steps", "--max-minutes", "--batch-size", "--lr", "--weight-decay",
                     "--warmup-steps", "--min-lr-ratio", "--image-size", "--grad-accum", "--clip-grad", "--amp",
                     "--device", "--seed", "--deterministic", "--find-unused-parameters"],
    "checkpoints and validation": ["--checkpoint-every", "--val-every", "--eval-batch-size", "--threshold",
                                   "--no-progress"],
    "scarce masks": ["--semi-supervised", "--labelled-fraction", "--pseudo-label-weight", "--pseudo-label-threshold",
                     "--ema-decay", "--rampup-fraction", "--language-loss-weight", "--count-loss-weight"],
}


def _train_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def test_every_field_has_its_flag_in_its_group():
    parser = _train_parser()
    groups = {g.title: sorted(s for a in g._group_actions for s in a.option_strings) for g in parser._action_groups}
    for title, flags in FLAGS.items():
        assert groups[title] == sorted(flags), title
    assert {option_name(f) for f in dataclasses.fields(TrainConfig)} == {f for fs in FLAGS.values() for f in fs}
    assert list(GROUPS) == list(FLAGS)


def test_help_shows_the_field_defaults():
    text = _train_parser().format_help()
    for f in dataclasses.fields(TrainConfig):
        assert "{default}" not in f.metadata["help"] or f"{f.default}" in text, f.name
    assert "per process (default 8)" in text and "(default runs/tgcnet)" in text


def test_options_left_out_stay_out():
    args = build_parser().parse_args(["train", "--data", "d"])
    assert {k for k in vars(args) if k not in ("func", "command")} == {"data"}


def test_options_reach_the_config():
    args = build_parser().parse_args([
        "train", "--data", "d", "--lr", "0.002", "--epochs", "3", "--no-progress", "--set", "sse.channels=32",
        "--set", "laterality=patient", "--augment", "flip", "--val-split", "none", "--clip-grad", "0",
        "--cache-image-features", "--cache-dtype", "float16", "--max-minutes", "1.5", "--init-from", "x/best"])
    cfg = train_config_from_args(args)
    assert (cfg.lr, cfg.epochs, cfg.progress, cfg.augment, cfg.val_split, cfg.clip_grad) == \
        (0.002, 3, False, "flip", None, None)
    assert cfg.model_overrides == {"sse__channels": 32, "laterality": "patient"}
    assert cfg.cache_image_features and cfg.cache_dtype == "float16" and cfg.max_minutes == 1.5
    assert cfg.init_from == "x/best"
    defaults = TrainConfig(data="d")
    assert cfg.batch_size == defaults.batch_size and cfg.image_size == defaults.image_size


@pytest.mark.parametrize("argv", [["--augment", "other"], ["--epochs", "two"], ["--amp", "fp8"]])
def test_bad_values_are_usage_errors(argv):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["train", "--data", "d", *argv])
    assert info.value.code == 2


def test_choices_match_the_modules_that_use_them():
    from tgcnet.data.transforms import AUGMENT_MODES
    from tgcnet.engine.feature_cache import CACHE_DTYPES

    assert tuple(AUGMENT_MODES) == AUGMENT_CHOICES and tuple(CACHE_DTYPES) == CACHE_DTYPE_CHOICES


def test_semi_supervised_options_reach_the_config():
    args = build_parser().parse_args([
        "train", "--data", "d", "--labelled-fraction", "0.25", "--pseudo-label-threshold", "0.4", "--ema-decay",
        "0.999", "--rampup-fraction", "0.1", "--language-loss-weight", "0", "--count-loss-weight", "0.5"])
    cfg = train_config_from_args(args)
    assert cfg.semi_supervised and cfg.labelled_fraction == 0.25 and cfg.pseudo_label_weight == 0.0
    assert (cfg.pseudo_label_threshold, cfg.ema_decay, cfg.rampup_fraction, cfg.language_loss_weight,
            cfg.count_loss_weight) == (0.4, 0.999, 0.1, 0.0, 0.5)
    plain = train_config_from_args(build_parser().parse_args(["train", "--data", "d", "--semi-supervised"]))
    assert plain.semi_supervised and plain.labelled_fraction is None and plain.language_loss_weight == 1.0
    with pytest.raises(ValueError, match="--semi-supervised"):
        train_config_from_args(build_parser().parse_args(["train", "--data", "d", "--pseudo-label-weight", "1"]))
