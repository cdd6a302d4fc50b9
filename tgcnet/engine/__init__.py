"""Training, evaluation and prediction engine, and the metrics they report.

    from tgcnet.engine import TrainConfig, train, evaluate, predict
    run = train(TrainConfig(data="path/to/qata", preset="tgcnet-tiny", out="runs/x", epochs=5))
    metrics = evaluate(run, "path/to/qata", "test", out=run / "eval_test")
    predict(run, "preds", image="x.png", text="lower left lung infection.")

One module per concept: ``train_config`` (the settings), ``trainer`` (the loop),
``schedule`` (learning rate and time budget), ``run_dir`` (a run directory: layout,
checkpoint swap, resume), ``run_lock`` (one writer per run directory), ``train_state`` (what
a checkpoint holds), ``loading`` (finding and loading a trained model), ``inference`` (the
inference loop shared by all three), ``split_captions`` (a split's captions checked against
the text context), ``evaluation``, ``prediction``, ``metrics``, ``distributed``, ``feature_cache``,
``factory_model`` (training another model through the loop), ``labelled_split``,
``mean_teacher`` and ``semi_supervised`` (training on images without masks), ``overlay`` and ``files``
(the names of a run directory's files). No module is named like a function it exports.
The names below load on first use, so ``TrainConfig`` is available without torch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from tgcnet import lazy_exports

_EXPORTS: dict[str, str] = {
    "TrainConfig": ".train_config",
    "train": ".trainer",
    "Trainer": ".trainer",
    "evaluate": ".evaluation",
    "predict": ".prediction",
    "Predictor": ".prediction",
    "ModelFactory": ".factory_model",
    "MetricAccumulator": ".metrics",
    "binarize_prediction": ".metrics",
    "confusion_counts": ".metrics",
    "dice_iou": ".metrics",
    "dice_iou_from_counts": ".metrics",
    "write_per_image_csv": ".metrics",
}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:
    from .evaluation import evaluate
    from .factory_model import ModelFactory
    from .metrics import (MetricAccumulator, binarize_prediction, confusion_counts, dice_iou, dice_iou_from_counts,
                          write_per_image_csv)
    from .prediction import Predictor, predict
    from .train_config import TrainConfig
    from .trainer import Trainer, train


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
