"""Shared fixtures. Tests run offline: no hub, no albumentations update check."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def _qata_mini_root() -> Path:
    """../shared/data/qata-mini beside the clone, or $TGCNET_QATA_MINI."""
    env = os.environ.get("TGCNET_QATA_MINI")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "qata-mini"


@pytest.fixture(scope="session")
def qata_mini_root() -> Path:
    """Real QaTa sample shared beside the repository; skipped in a user's plain clone."""
    root = _qata_mini_root()
    if not (root / "train" / "prompts.csv").is_file():
        pytest.skip(f"real QaTa sample not found at {root} (only present beside the project's CI checkout; "
                    "set TGCNET_QATA_MINI to point at one)")
    return root


@pytest.fixture(autouse=True)
def one_thread():
    """Every test: tiny models on a shared 2-core CI: one intra-op thread avoids OpenMP oversubscription,
    which made a 64x64 forward pass take 1.3 s instead of 4 ms here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def onednn_calls(monkeypatch):
    """Counts calls that really went through oneDNN (a silent fallback must not pass as speed)."""
    from tgcnet import accel

    calls = []
    real = accel._onednn_linear

    def counted(*args):
        calls.append(args[0].shape)
        return real(*args)
    monkeypatch.setattr(accel, "_onednn_linear", counted)
    return calls
