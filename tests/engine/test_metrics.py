from __future__ import annotations

import csv
import math

import pytest
import torch

from tgcnet.engine.metrics import (MetricAccumulator, binarize_prediction, confusion_counts, dice_iou,
                                   dice_iou_from_counts, write_per_image_csv)


def _masks(*rows: str) -> torch.Tensor:
    """Batch (B,1,1,N) from strings like "1100"."""
    return torch.tensor([[[[int(c) for c in r]]] for r in rows], dtype=torch.float32)


def test_hand_computed_single_image():
    pred, target = _masks("1100"), _masks("1000")
    tp, fp, fn = confusion_counts(pred, target, from_logits=False)
    assert (tp.item(), fp.item(), fn.item()) == (1, 1, 0)
    dice, iou = dice_iou(pred, target, from_logits=False)
    assert dice.item() == pytest.approx(2 / 3) and iou.item() == pytest.approx(1 / 2)


def test_empty_conventions():
    pred = _masks("0000", "0100", "0000", "0110")
    target = _masks("0000", "0000", "0010", "0110")
    dice, iou = dice_iou(pred, target, from_logits=False)
    assert dice.tolist() == [1.0, 0.0, 0.0, 1.0]  # both empty -> 1; one side empty -> 0
    assert iou.tolist() == [1.0, 0.0, 0.0, 1.0]
    d, i = dice_iou_from_counts(0, 0, 0)
    assert d.item() == 1.0 and i.item() == 1.0


def test_per_image_mean_and_pooled_differ():
    # image A: 8-pixel lesion found exactly (Dice 1); image B: 1-pixel lesion missed, 1 false pixel (Dice 0)
    pred = _masks("1111111100", "0100000000")
    target = _masks("1111111100", "1000000000")
    acc = MetricAccumulator(from_logits=False)
    acc.update(pred, target, names=["a", "b"])
    out = acc.compute()
    assert out["dice"] == pytest.approx(0.5) and out["iou"] == pytest.approx(0.5)
    # pooled: TP 8, FP 1, FN 1 -> Dice 16/18, IoU 8/10
    assert out["pooled_dice"] == pytest.approx(16 / 18) and out["pooled_iou"] == pytest.approx(0.8)
    assert out["n_images"] == 2
    assert [(r["name"], r["tp"], r["fp"], r["fn"], r["dice"]) for r in out["rows"]] == [("a", 8, 0, 0, 1.0),
                                                                                        ("b", 0, 1, 1, 0.0)]


def test_logits_probabilities_and_binary_inputs():
    logits = torch.tensor([[[[-2.0, 0.1, 0.3, 3.0]]]])
    assert binarize_prediction(logits).tolist() == [[[[False, True, True, True]]]]
    assert binarize_prediction(logits, threshold=0.56).tolist() == [[[[False, False, True, True]]]]  # sigmoid(.3)=.574
    probs = torch.tensor([0.2, 0.5, 0.51, 0.9])
    assert binarize_prediction(probs, from_logits=False).tolist() == [False, False, True, True]
    assert binarize_prediction(torch.tensor([0, 2, 1])).tolist() == [False, True, True]
    assert binarize_prediction(torch.tensor([True, False])).tolist() == [True, False]
    with pytest.raises(ValueError, match="threshold"):
        binarize_prediction(probs, threshold=1.0)
    # a confident logit prediction scores like its binary mask
    target = _masks("0111")
    assert dice_iou(logits, target)[0].item() == pytest.approx(1.0)


def test_shapes_are_checked():
    a = torch.zeros(2, 1, 4, 4)
    assert confusion_counts(a[:, 0], a[:, 0])[0].shape == (2,)  # (B,H,W) accepted
    with pytest.raises(ValueError, match="shape"):
        confusion_counts(a, torch.zeros(2, 1, 4, 5))
    with pytest.raises(ValueError, match="one channel"):
        confusion_counts(torch.zeros(2, 2, 4, 4), torch.zeros(2, 2, 4, 4))


def test_accumulator_over_batches_matches_one_batch_and_writes_csv(tmp_path):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 1, 8, 8, generator=g)
    target = (torch.rand(6, 1, 8, 8, generator=g) > 0.6).float()
    target[2] = 0
    names = [f"img{i}" for i in range(6)]
    whole = MetricAccumulator()
    whole.update(logits, target, names)
    parts = MetricAccumulator()
    batch_dice = parts.update(logits[:4], target[:4], names[:4])
    assert batch_dice.shape == (4,)
    parts.update(logits[4:], target[4:], names[4:])
    a, b = whole.compute(), parts.compute()
    for key in ("dice", "iou", "pooled_dice", "pooled_iou", "n_images"):
        assert a[key] == pytest.approx(b[key])
    expected_mean = sum(r["dice"] for r in a["rows"]) / 6
    assert a["dice"] == pytest.approx(expected_mean)
    tp, fp, fn = (sum(r[k] for r in a["rows"]) for k in ("tp", "fp", "fn"))
    assert a["pooled_dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    path = write_per_image_csv(parts.rows, tmp_path / "eval" / "per_image.csv")
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == names
    assert math.isclose(float(rows[1]["dice"]), a["rows"][1]["dice"])
    parts.reset()
    with pytest.raises(ValueError, match="no images"):
        parts.compute()


def test_per_image_csv_is_all_or_nothing(tmp_path):
    """A write that fails half-way leaves the previous table whole and no temporary file beside it."""
    path = write_per_image_csv([{"name": "a", "dice": 1.0, "iou": 1.0}], tmp_path / "per_image.csv")
    before = path.read_bytes()
    with pytest.raises(ValueError):   # a row with a column the header lacks: csv refuses it mid-table
        write_per_image_csv([{"name": "b", "dice": 0.5, "iou": 0.3}, {"name": "c", "extra": 1}], path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["per_image.csv"]


def test_unnamed_rows_then_named():
    acc = MetricAccumulator(from_logits=False)
    acc.update(_masks("1"), _masks("1"))
    acc.update(_masks("0"), _masks("1"))
    acc.update(_masks("1"), _masks("1"), names=["x"])
    out = acc.compute()
    assert [r["name"] for r in out["rows"]] == ["0", "1", "x"]
    assert out["dice"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="names"):
        acc.update(_masks("1", "0"), _masks("1", "0"), names=["only-one"])


def test_sync_distributed_outside_distributed_is_a_noop():
    acc = MetricAccumulator()
    acc.update(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2), names=["a"])
    acc.sync_distributed()
    assert acc.compute()["n_images"] == 1


def _sync_worker(rank: int, init_file: str, out_file: str) -> None:
    import json

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        acc = MetricAccumulator(from_logits=False)
        if rank == 0:
            acc.update(_masks("11", "10"), _masks("11", "11"), names=["a", "b"])
        else:  # "a" again: DistributedSampler's padding of the last batch
            acc.update(_masks("00", "11"), _masks("01", "11"), names=["c", "a"])
        acc.sync_distributed()
        out = acc.compute()
        with open(f"{out_file}.{rank}", "w") as f:
            json.dump({k: out[k] for k in ("dice", "pooled_dice", "n_images")} | {"names": [r["name"] for r in out["rows"]]}, f)
    finally:
        dist.destroy_process_group()


def test_sync_distributed_gathers_and_drops_padding(tmp_path):
    import json
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_sync_worker, args=(r, str(tmp_path / "init"), str(tmp_path / "out"))) for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    results = [json.loads((tmp_path / f"out.{r}").read_text()) for r in (0, 1)]
    assert results[0] == results[1]
    assert results[0]["names"] == ["a", "b", "c"] and results[0]["n_images"] == 3
    # a (rank 0 copy kept): Dice 1; b: TP 1, FN 1 -> 2/3; c: empty prediction, one-pixel target -> 0
    assert results[0]["dice"] == pytest.approx((1 + 2 / 3 + 0) / 3)
