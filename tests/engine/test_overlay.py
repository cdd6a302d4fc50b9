"""Overlays: contours of prediction and ground truth in their colours."""
from __future__ import annotations

import numpy as np
import pytest

from tgcnet.engine.overlay import GT_COLOR, PRED_COLOR, contour, render_overlay


def test_contour_and_overlay_colors():
    mask = np.zeros((10, 10), bool)
    mask[2:7, 3:8] = True
    edge = contour(mask)
    expected = mask.copy()
    expected[3:6, 4:7] = False  # interior of a 5x5 square
    assert np.array_equal(edge, expected)
    assert not contour(np.zeros((5, 5), bool)).any()
    assert contour(np.ones((4, 4), bool)).sum() == 12  # the image border counts as background
    image = np.full((64, 64), 90, np.uint8)
    pred, gt = np.zeros((64, 64), bool), np.zeros((64, 64), bool)
    pred[10:30, 10:30] = True
    gt[30:50, 30:50] = True
    out = np.asarray(render_overlay(image, pred, "lower left lung.", gt=gt, dice=0.0))
    assert out.shape[1] >= 448 and out.shape[0] > out.shape[1]
    colors = {tuple(c) for c in out.reshape(-1, 3)}
    assert PRED_COLOR in colors and GT_COLOR in colors
    with pytest.raises(ValueError, match="ground truth mask is 8x8"):
        render_overlay(image, pred, "x", gt=np.zeros((8, 8), bool))
