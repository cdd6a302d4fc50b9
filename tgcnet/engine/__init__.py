"""Training, evaluation and prediction engine; metrics.

    from tgcnet.engine import TrainConfig, train, evaluate, predict
    run = train(TrainConfig(data="path/to/qata", preset="tgcnet-tiny", out="runs/x", epochs=5))
    metrics = evaluate(run, data="path/to/qata", split="test", out=run / "eval_test")
"""
from .metrics import MetricAccumulator, binarize_prediction, confusion_counts, dice_iou, dice_iou_from_counts
from .evaluate import evaluate
from .train import TrainConfig, train

__all__ = [
    "TrainConfig", "train", "evaluate",
    "MetricAccumulator", "binarize_prediction", "confusion_counts", "dice_iou", "dice_iou_from_counts",
]
