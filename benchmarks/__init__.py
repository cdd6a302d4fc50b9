"""The benchmarks: parameter counts, speed and accuracy, each writing JSON plus markdown to results/.

Run from the repository root as modules, e.g. ``python -m benchmarks.params``,
``python -m benchmarks.speed.run --quick``, ``python -m benchmarks.accuracy.qata_mini``; each
script's docstring gives its command. ``accuracy/`` trains and scores models on qata-mini,
``speed/`` times them. The package is not installed with tgcnet: it lives beside it in the
repository and reads nothing but tgcnet's public API.
"""
from __future__ import annotations

import os
from pathlib import Path

# offline, quiet: set before any benchmark imports transformers, open_clip or albumentations
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: the repository the benchmarks measure
REPO = Path(__file__).resolve().parents[1]
#: where every benchmark writes its reports by default (the committed results)
RESULTS = Path(__file__).resolve().parent / "results"
#: qata-mini beside the clone (``--data`` names another)
QATA_MINI = REPO.parent / "shared" / "data" / "qata-mini"
