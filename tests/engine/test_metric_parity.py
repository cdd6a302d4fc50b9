"""tgcnet's Dice/IoU against torchmetrics and MONAI, on the predictions of a really trained model.

A tiny model is trained for 40 steps on the embedded QaTa sample, ``tgcnet.engine.evaluate``
writes ``metrics.json`` and ``per_image.csv`` for its test split, and the same thresholded
predictions, read again through ``load_inference_model`` + ``make_loader`` at the evaluation
size, are scored by the two libraries. Agreement is to float rounding (1e-6).

Pooled (``pooled_dice``, ``pooled_iou``): TP, FP and FN summed over every pixel of the set.
GuideDecoder (Zhong et al., MICCAI 2023; ``engine/wrapper.py``) builds
``{"acc": Accuracy(task="binary"), "dice": Dice(), "MIoU": BinaryJaccardIndex()}``, calls each
metric on every batch of sigmoid probabilities and integer masks and reads ``compute()`` once
per epoch: an accumulation over the set. In torchmetrics 0.10.3, the version its README pins,
``Dice()`` is ``average="micro"``, ``mdmc_average="global"``, threshold 0.5 (``p >= 0.5``; tgcnet
takes ``p > 0.5``, which differs only at exactly 0.5), and on binary inputs it counts the
foreground class only, i.e. ``2TP / (2TP + FP + FN)`` over the set (checked against 0.10.3
itself while writing this test). ``Dice`` is gone from torchmetrics
1.x; the metrics that reproduce it, accumulated the same way, are
``BinaryF1Score()`` (= ``F1Score(task="binary")``, ``multidim_average="global"``) and
``segmentation.DiceScore(num_classes=1, include_background=True, average="micro",
aggregation_level="global")``; ``BinaryJaccardIndex()`` is unchanged. The default
``DiceScore`` (``average="macro"``, ``aggregation_level="samplewise"``) is a per-image mean
(leaving out images where mask and prediction are both empty), not this. Over a set with no
foreground at all tgcnet scores 1 and torchmetrics 0 (``zero_division=0``).

Per-image mean (``dice``, ``iou``): MONAI ``DiceMetric`` / ``MeanIoU`` with
``include_background=True`` (one channel: the foreground), ``reduction="mean"``. Empty-mask
convention, for an image whose mask is empty:

==========================  ======  ==============================  =======================
                            tgcnet  MONAI ``ignore_empty=False``    MONAI default (``True``)
==========================  ======  ==============================  =======================
prediction empty too        1       1                               nan, left out of mean
prediction not empty        0       0                               nan, left out of mean
==========================  ======  ==============================  =======================

so tgcnet equals MONAI with ``ignore_empty=False`` on every set, and MONAI's default only on
sets where every mask has foreground (as in the sample's test split). MONAI's default mean
over a set whose masks are all empty is 0.
torchmetrics' ``BinaryF1Score(multidim_average="samplewise")`` equals tgcnet's per-image Dice
with ``zero_division=1``; with its default 0 it scores an empty/empty image 0.
"""
from __future__ import annotations

import csv
import json

import pytest
import torch
from monai.metrics import DiceMetric
from monai.metrics import MeanIoU as MonaiMeanIoU
from torchmetrics import F1Score, JaccardIndex
from torchmetrics.classification import BinaryF1Score, BinaryJaccardIndex
from torchmetrics.segmentation import DiceScore

from tgcnet.data import read_split, sample_root
from tgcnet.engine import TrainConfig, evaluate, train
from tgcnet.engine.inference import make_loader
from tgcnet.engine.loading import load_inference_model
from tgcnet.engine.metrics import MetricAccumulator, binarize_prediction

# DiceScore warns about its default on construction even when ``average`` is given
pytestmark = pytest.mark.filterwarnings("ignore:DiceScore metric currently defaults:UserWarning")

TOL = 1e-6


def pooled_dice_metrics():
    """torchmetrics 1.9 metrics equal to GuideDecoder's ``Dice()`` accumulated over a set."""
    return {
        "BinaryF1Score()": BinaryF1Score(),
        'F1Score(task="binary")': F1Score(task="binary"),
        "DiceScore(micro, global)": DiceScore(num_classes=1, include_background=True, average="micro",
                                              aggregation_level="global"),
    }


def pooled_iou_metrics():
    return {"BinaryJaccardIndex()": BinaryJaccardIndex(), 'JaccardIndex(task="binary")': JaccardIndex(task="binary")}


def accumulate(metric, batches):
    """GuideDecoder's way: call the metric on every batch (forward updates the state), compute once."""
    for pred, mask in batches:
        metric(pred, mask)
    return float(metric.compute())


def monai_per_image(metric_cls, batches, ignore_empty):
    """MONAI per-image scores (N,) and their mean (``reduction="mean"``) over the batches."""
    metric = metric_cls(include_background=True, reduction="mean", ignore_empty=ignore_empty)
    for pred, mask in batches:
        metric(y_pred=pred, y=mask)
    return metric.get_buffer().flatten().double(), float(metric.aggregate())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run directory of a tiny model trained for 40 steps (predictions overlap the lesions in part)."""
    out = tmp_path_factory.mktemp("parity") / "run"
    cfg = TrainConfig(data=str(sample_root()), out=str(out), image_size=64, batch_size=8, epochs=10, max_steps=40,
                      lr=3e-3, warmup_steps=1, knowledge="none", augment="none", val_split=None, device="cpu",
                      threads=1, progress=False)
    return train(cfg)


@pytest.fixture(scope="module")
def evaluated(run, tmp_path_factory):
    """``evaluate(..., out=)`` of the test split: the returned dict, metrics.json and per_image.csv rows."""
    out = tmp_path_factory.mktemp("parity_eval")
    returned = evaluate(run, sample_root(), "test", out=out, device="cpu", progress=False)
    saved = json.loads((out / "metrics.json").read_text())
    with open(out / "per_image.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return returned, saved, rows


@pytest.fixture(scope="module")
def predictions(run):
    """(names, [(binary prediction, mask) per batch]) of the test split at the evaluation size.

    Batches of 3 (8 images: 3, 3, 2), unlike evaluate's 8, so an accumulation that weighs
    batches instead of pixels shows.
    """
    model, info = load_inference_model(run, device="cpu")
    loader = make_loader(read_split(sample_root(), "test"), int(info["image_size"]), batch_size=3)
    names, batches = [], []
    with torch.no_grad():
        for batch in loader:
            logits = model(batch["image"], batch["caption"])
            pred = binarize_prediction(logits, float(info["threshold"])).long()
            mask = (batch["mask"] > 0.5).long()
            assert pred.shape == mask.shape == (len(batch["name"]), 1, 64, 64)
            names += batch["name"]
            batches.append((pred, mask))
    return names, batches


def test_predictions_are_real_and_are_the_ones_evaluated(evaluated, predictions):
    returned, saved, rows = evaluated
    names, batches = predictions
    for key in ("dice", "iou", "pooled_dice", "pooled_iou", "n_images"):
        assert saved[key] == returned[key], key
    assert [r["name"] for r in rows] == names and saved["n_images"] == len(names) == 8
    pred = torch.cat([p for p, _ in batches]).bool()
    mask = torch.cat([m for _, m in batches]).bool()
    tp, fp, fn = (pred & mask).sum().item(), (pred & ~mask).sum().item(), (~pred & mask).sum().item()
    assert tp > 0 and fp > 0 and fn > 0, (tp, fp, fn)  # a trained model, neither empty nor perfect
    assert 2 * tp / (2 * tp + fp + fn) == pytest.approx(saved["pooled_dice"], abs=TOL)
    assert mask.flatten(1).any(1).all(), "every test mask of the sample has foreground"
    # the two definitions differ here by far more than the tolerance, so each parity below can tell them apart
    assert abs(saved["dice"] - saved["pooled_dice"]) > 1e-3 and abs(saved["iou"] - saved["pooled_iou"]) > 1e-3
    assert len({round(float(r["dice"]), 6) for r in rows}) > 2


def test_pooled_equals_torchmetrics_accumulated_over_the_set(evaluated, predictions):
    _, saved, _ = evaluated
    _, batches = predictions
    for name, metric in pooled_dice_metrics().items():
        assert accumulate(metric, batches) == pytest.approx(saved["pooled_dice"], abs=TOL), name
    for name, metric in pooled_iou_metrics().items():
        assert accumulate(metric, batches) == pytest.approx(saved["pooled_iou"], abs=TOL), name

    # wrong accumulations are told apart: the per-image mean, the mean of per-batch values
    # (what logging the batch value with on_epoch=True gives), and DiceScore's samplewise default
    reference = accumulate(BinaryF1Score(), batches)
    batch_mean = sum(float(BinaryF1Score()(p, m)) for p, m in batches) / len(batches)
    samplewise = accumulate(DiceScore(num_classes=1, include_background=True, average="micro"), batches)
    for wrong in (saved["dice"], batch_mean, samplewise):
        assert abs(wrong - reference) > 1e-4, (wrong, reference)


def test_per_image_mean_equals_monai(evaluated, predictions):
    _, saved, rows = evaluated
    _, batches = predictions
    for cls, key in ((DiceMetric, "dice"), (MonaiMeanIoU, "iou")):
        csv_scores = torch.tensor([float(r[key]) for r in rows], dtype=torch.float64)
        for ignore_empty in (False, True):  # no empty mask in this split: both settings agree
            per_image, mean = monai_per_image(cls, batches, ignore_empty)
            torch.testing.assert_close(per_image, csv_scores, atol=TOL, rtol=0)
            assert mean == pytest.approx(saved[key], abs=TOL), (key, ignore_empty)
        assert abs(mean - saved[f"pooled_{key}"]) > 1e-4  # MONAI's mean is not the pooled score


def _image(rows: int, cols: int, box=None) -> torch.Tensor:
    x = torch.zeros(1, 1, rows, cols, dtype=torch.long)
    if box is not None:
        r0, r1, c0, c1 = box
        x[..., r0:r1, c0:c1] = 1
    return x


def test_empty_mask_conventions(predictions):
    """Real predictions with three synthetic images mixed in: empty mask and empty prediction,
    empty mask and a false positive, a lesion missed entirely."""
    _, batches = predictions
    real_pred, real_mask = batches[0]
    h, w = real_pred.shape[-2:]
    blob = (10, 20, 10, 30)
    synthetic = (
        (_image(h, w), _image(h, w)),                              # both empty: tgcnet 1
        (_image(h, w, blob), _image(h, w)),                        # false positive only: 0
        (_image(h, w), _image(h, w, blob)),                        # missed lesion: 0
    )
    mixed_pred = torch.cat([real_pred[:1]] + [p for p, _ in synthetic] + [real_pred[1:]])
    mixed_mask = torch.cat([real_mask[:1]] + [m for _, m in synthetic] + [real_mask[1:]])
    mixed = [(mixed_pred[:3], mixed_mask[:3]), (mixed_pred[3:], mixed_mask[3:])]
    empty_mask = ~mixed_mask.flatten(1).bool().any(1)
    assert empty_mask.tolist() == [False, True, True, False] + [False] * (len(real_pred) - 1)

    acc = MetricAccumulator()
    for pred, mask in mixed:
        acc.update(pred, mask)
    ours = acc.compute()
    dice = torch.tensor([r["dice"] for r in ours["rows"]], dtype=torch.float64)
    iou = torch.tensor([r["iou"] for r in ours["rows"]], dtype=torch.float64)
    assert dice[1:4].tolist() == [1.0, 0.0, 0.0] and iou[1:4].tolist() == [1.0, 0.0, 0.0]

    for cls, scores, key in ((DiceMetric, dice, "dice"), (MonaiMeanIoU, iou, "iou")):
        # ignore_empty=False: MONAI scores both-empty 1 and a false positive on an empty mask 0, as tgcnet
        per_image, mean = monai_per_image(cls, mixed, ignore_empty=False)
        torch.testing.assert_close(per_image, scores, atol=TOL, rtol=0)
        assert mean == pytest.approx(ours[key], abs=TOL)
        # MONAI's default: empty masks give nan and drop out of the mean, whatever was predicted
        per_image, mean = monai_per_image(cls, mixed, ignore_empty=True)
        assert torch.isnan(per_image[empty_mask]).all() and not torch.isnan(per_image[~empty_mask]).any()
        torch.testing.assert_close(per_image[~empty_mask], scores[~empty_mask], atol=TOL, rtol=0)
        assert mean == pytest.approx(scores[~empty_mask].mean().item(), abs=TOL)
        assert abs(mean - ours[key]) > 1e-3  # so the convention matters for the reported number

    # torchmetrics per image: zero_division=1 is tgcnet's convention, the default 0 is not
    samplewise = torch.cat([BinaryF1Score(multidim_average="samplewise", zero_division=1)(p.flatten(1), m.flatten(1))
                            for p, m in mixed]).double()
    torch.testing.assert_close(samplewise, dice, atol=TOL, rtol=0)
    default = torch.cat([BinaryF1Score(multidim_average="samplewise")(p.flatten(1), m.flatten(1)) for p, m in mixed])
    assert default[1].item() == 0.0

    # pooled: the empty images only add their FP and FN; torchmetrics still agrees
    for name, metric in pooled_dice_metrics().items():
        assert accumulate(metric, mixed) == pytest.approx(ours["pooled_dice"], abs=TOL), name
    for name, metric in pooled_iou_metrics().items():
        assert accumulate(metric, mixed) == pytest.approx(ours["pooled_iou"], abs=TOL), name


def test_all_empty_set_pooled_convention():
    """No foreground anywhere in the set: tgcnet's pooled Dice/IoU is 1, torchmetrics' 0 (zero_division=0)."""
    empty = [(_image(8, 8), _image(8, 8)), (_image(8, 8), _image(8, 8))]
    acc = MetricAccumulator()
    for pred, mask in empty:
        acc.update(pred, mask)
    ours = acc.compute()
    assert ours["pooled_dice"] == ours["pooled_iou"] == ours["dice"] == 1.0
    assert accumulate(BinaryF1Score(), empty) == 0.0 and accumulate(BinaryJaccardIndex(), empty) == 0.0
    assert accumulate(BinaryF1Score(zero_division=1), empty) == 1.0
    per_image, mean = monai_per_image(DiceMetric, empty, ignore_empty=True)
    assert torch.isnan(per_image).all() and mean == 0.0  # MONAI's mean over no valid image is 0, not nan
    per_image, mean = monai_per_image(DiceMetric, empty, ignore_empty=False)
    assert per_image.tolist() == [1.0, 1.0] and mean == 1.0
