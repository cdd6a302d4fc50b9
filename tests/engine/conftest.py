"""A run directory as the trainer leaves it, shared by the inference, evaluation and prediction tests."""
from __future__ import annotations

import pytest
import torch

from tgcnet import create_model
from tgcnet.io import save_json_atomic


@pytest.fixture(scope="module")


def run_dir(tmp_path_factory):
    """A run directory as the trainer leaves it (best/ + train_config.json), with a briefly trained model."""
    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    model = create_model("tgcnet-tiny", knowledge=None)
    with torch.no_grad():  # bias the decoder so the prediction is not empty: exercises contours and Dice
        for name, p in model.named_parameters():
            if p.requires_grad and name.endswith("bias") and "decoder" in name:
                p.add_(0.3)
    model.save_pretrained(run / "best")
    save_json_atomic({"train": {"image_size": 64, "knowledge": "none", "threshold": 0.5}}, run / "train_config.json")
    return run
