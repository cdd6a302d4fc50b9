"""Which training images keep their masks: seeded, stratified on the captions, recorded and read back."""
from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import pytest

from tgcnet.data import Triple, read_split, sample_root
from tgcnet.engine.labelled_split import LabelledSplit, caption_stratum, choose_labelled


def _triples(captions: list[str]) -> list[Triple]:
    return [Triple(f"img{i:03d}.png", Path(f"img{i:03d}.png"), Path(f"mask_img{i:03d}.png"), c)
            for i, c in enumerate(captions)]


MIX = (["one infected area, lower left lung."] * 40 + ["one infected area, lower right lung."] * 40
       + ["two infected areas, lower left lung and lower right lung."] * 16 + ["pulmonary infection."] * 4)


@pytest.mark.parametrize("caption, stratum", [
    ("unilateral pulmonary infection, one infected area, lower left lung.", "sides=left count=one"),
    ("bilateral pulmonary infection, six infected areas, upper middle lower left lung and upper middle lower "
     "right lung.", "sides=both count=six"),
    ("right lung, multiple patches.", "sides=right count=multiple"),
    ("pulmonary infection.", "sides=none count=none"),
])
def test_strata_are_the_sides_and_the_stated_count(caption, stratum):
    assert caption_stratum(caption) == stratum


def test_same_seed_same_split_another_seed_another():
    train = read_split(sample_root(), "train")
    a, b = choose_labelled(train, 0.5, seed=0), choose_labelled(train, 0.5, seed=0)
    assert a == b and len(a.labelled) == 16 and len(a.unlabelled) == 16
    assert set(a.labelled).isdisjoint(a.unlabelled) and set(a.labelled) | set(a.unlabelled) == {t.name for t in train}
    assert choose_labelled(train, 0.5, seed=1).labelled != a.labelled
    assert choose_labelled(list(reversed(train)), 0.5, seed=0).labelled == tuple(reversed(a.labelled))  # file order


def test_each_stratum_keeps_its_share():
    split = choose_labelled(_triples(MIX), 0.25, seed=7)
    kept = Counter(caption_stratum(MIX[int(n[3:6])]) for n in split.labelled)
    assert kept == {"sides=left count=one": 10, "sides=right count=one": 10, "sides=both count=two": 4,
                    "sides=none count=none": 1}
    assert split.strata["sides=both count=two"] == {"labelled": 4, "images": 16}
    # largest remainder: 0.3 x (40, 40, 16, 4) = (12, 12, 4.8, 1.2) -> 30 in all
    kept = Counter(caption_stratum(MIX[int(n[3:6])]) for n in choose_labelled(_triples(MIX), 0.3, 0).labelled)
    assert sorted(kept.values()) == [1, 5, 12, 12]


def test_whole_fraction_and_at_least_one_image():
    triples = _triples(MIX[:10])
    assert choose_labelled(triples, 1.0, seed=0).unlabelled == ()
    assert len(choose_labelled(triples, 0.01, seed=0).labelled) == 1
    with pytest.raises(ValueError, match="labelled_fraction"):
        choose_labelled(triples, 0.0, seed=0)


def test_images_without_a_mask_file_are_unlabelled_and_the_fraction_applies_to_the_others():
    triples = _triples(MIX[:20])
    triples[:4] = [dataclasses.replace(t, mask_path=None) for t in triples[:4]]
    split = choose_labelled(triples, 0.5, seed=0)
    assert len(split.labelled) == 8 and set(split.missing) == {t.name for t in triples[:4]} <= set(split.unlabelled)
    only_missing = choose_labelled(triples, None, seed=0)
    assert only_missing.unlabelled == only_missing.missing and len(only_missing.labelled) == 16
    assert "16 of 20 training images labelled, 4 unlabelled (4 without a mask file)" in only_missing.describe()
    with pytest.raises(ValueError, match="none of the 2 training images has a mask"):
        choose_labelled([dataclasses.replace(t, mask_path=None) for t in triples[:2]], 0.5, seed=0)


def test_the_recorded_split_reads_back_and_refuses_other_images(tmp_path):
    triples = _triples(MIX[:20])
    split = choose_labelled(triples, 0.5, seed=3)
    path = tmp_path / "labelled.json"
    path.write_text(json.dumps(split.to_dict()))
    back = LabelledSplit.read(path)
    assert back == split and back.fraction == 0.5 and back.seed == 3
    applied = back.apply(triples, str(path))
    assert [t.name for t in applied if t.mask_path is None] == list(split.unlabelled)
    with pytest.raises(ValueError, match=r"labelled.json does not describe .* 1 training image\(s\) are not recorded"):
        back.apply(triples + _triples(["x"] * 21)[20:], str(path))
    path.write_text(json.dumps({"labelled": "all"}))
    with pytest.raises(ValueError, match="does not hold a labelled split"):
        LabelledSplit.read(path)
    with pytest.raises(FileNotFoundError, match="cannot resume a semi-supervised run without"):
        LabelledSplit.read(tmp_path / "gone.json")
