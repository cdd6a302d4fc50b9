from __future__ import annotations

import re

import numpy as np
import pandas as pd
from PIL import Image

from tgcnet.data import detect_layout, read_split, sample_root

EXPECTED = {"train": 32, "valid": 8, "test": 8}


def test_sample_reads_cleanly_in_every_split():
    root = sample_root()
    assert root.is_dir() and detect_layout(root) == "simple"
    names = set()
    for split, n in EXPECTED.items():
        triples = read_split(root, split)  # raises DataError on any bad entry
        assert len(triples) == n
        names |= {t.name for t in triples}
        for t in triples:
            with Image.open(t.image_path) as im:
                assert im.mode == "L" and im.size == (224, 224)
            mask = np.asarray(Image.open(t.mask_path))
            assert set(np.unique(mask)) == {0, 255}
    assert len(names) == sum(EXPECTED.values())  # no image in two splits


def test_sample_mixes_single_side_and_bilateral_captions():
    for split in EXPECTED:
        captions = [t.caption for t in read_split(sample_root(), split)]
        sides = [frozenset(re.findall(r"\b(left|right)\b", c)) for c in captions]
        assert sides.count(frozenset({"left", "right"})) >= 4
        assert sides.count(frozenset({"left"})) >= 2 and sides.count(frozenset({"right"})) >= 2


def test_sample_is_small_and_documents_its_provenance():
    root = sample_root()
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert total < 2 * 1024 * 1024, f"embedded sample is {total / 1e6:.2f} MB"
    readme = (root / "README.md").read_text()
    for needle in ("QaTa-COV19", "Qatar University", "Tampere University", "15f47b21", "SGSeg", "research",
                   "default_rng(0)"):
        assert needle in readme, needle
    assert not any(p.name == "__init__.py" for p in root.rglob("*"))


def test_sample_is_a_subset_of_qata_mini(qata_mini_root):
    for split in EXPECTED:
        ours = pd.read_csv(sample_root() / split / "prompts.csv")
        theirs = pd.read_csv(qata_mini_root / split / "prompts.csv").set_index("Image")
        assert (theirs.loc[ours["Image"], "Description"].to_numpy() == ours["Description"].to_numpy()).all()
        name = ours["Image"].iloc[0]
        assert (sample_root() / split / "images" / name).read_bytes() == (qata_mini_root / split / "images" / name).read_bytes()
