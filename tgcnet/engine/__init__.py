"""Training, evaluation and prediction engine, and the metrics they report.

    from tgcnet.engine import TrainConfig, train, evaluate, predict
    run = train(TrainConfig(data="path/to/qata", preset="tgcnet-tiny", out="runs/x", epochs=5))
    metrics = evaluate(run, "path/to/qata", "test", out=run / "eval_test")
    predict(run, "preds", image="x.png", text="lower left lung infection.")

The functions ``train``, ``evaluate`` and ``predict`` shadow their submodules as package
attributes (as ``torch.nn.functional``-style APIs do); reach a submodule with
``importlib.import_module("tgcnet.engine.train")``.
"""
from . import checkpoint, distributed, overlay  # noqa: F401  (submodules first, then the API names)
from .metrics import MetricAccumulator, binarize_prediction, confusion_counts, dice_iou, dice_iou_from_counts
from .evaluate import evaluate
from .predict import Predictor, predict
from .train import TrainConfig, train

__all__ = [
    "TrainConfig", "train", "evaluate", "predict", "Predictor",
    "MetricAccumulator", "binarize_prediction", "confusion_counts", "dice_iou", "dice_iou_from_counts",
]
