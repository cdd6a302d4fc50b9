"""A run directory as the trainer leaves it, shared by the inference, evaluation and prediction tests."""
from __future__ import annotations

import pytest
from helpers import make_run_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory as the trainer leaves it (best/ + train_config.json), with a briefly trained model."""
    return make_run_dir(tmp_path_factory.mktemp("run"))
