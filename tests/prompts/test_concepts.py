"""Concept extraction on the real QaTa captions and on LViT/MosMed-style noisy text."""
from __future__ import annotations

import csv

import pytest

from tgcnet.prompts.concepts import (
    KINDS,
    LOCATION_KINDS,
    all_concepts,
    concept_kind,
    concept_label,
    extract_concepts,
)


def _qata_captions(root) -> dict[str, int]:
    counts: dict[str, int] = {}
    for split in ("train", "valid", "test"):
        with (root / split / "prompts.csv").open(newline="") as fh:
            for row in csv.DictReader(fh):
                counts[row["Description"]] = counts.get(row["Description"], 0) + 1
    return counts


def test_every_qata_caption_yields_finding_and_location(qata_mini_root):
    counts = _qata_captions(qata_mini_root)
    assert sum(counts.values()) == 1050
    missing = []
    for caption in counts:
        kinds = {concept_kind(k) for k in extract_concepts(caption)}
        if "finding" not in kinds or not kinds & LOCATION_KINDS or "count" not in kinds:
            missing.append(caption)
    assert not missing, f"captions without finding/location/count concepts: {missing}"


def test_qata_zones_match_the_caption_words(qata_mini_root):
    """Zones are re-derived independently from the "<levels> <side> lung" phrases of each caption."""
    for caption in _qata_captions(qata_mini_root):
        location = caption.split(", ")[2].rstrip(".")
        expected = set()
        for part in location.split(" and "):
            *levels, side, lung = part.split()
            assert lung == "lung"
            expected |= {f"zone:{lv} {side} lung" for lv in levels}
        got = {k for k in extract_concepts(caption) if k.startswith("zone:")}
        assert got == expected, caption


def test_qata_vocabulary_is_closed(qata_mini_root):
    keys = {k for c in _qata_captions(qata_mini_root) for k in extract_concepts(c)}
    assert keys <= set(all_concepts())
    assert {"finding:pulmonary infection", "laterality:bilateral", "laterality:unilateral", "count:one area",
            "count:six areas", "zone:upper left lung", "zone:lower right lung"} <= keys


@pytest.mark.parametrize("caption, expected", [
    # LViT / GuideDecoder verbatim noise
    ("Bilateral pulmonary infection, two infected areas, upper midlle left lung and upper lower right lung.",
     ["finding:pulmonary infection", "laterality:bilateral", "count:two areas", "zone:upper left lung",
      "zone:middle left lung", "zone:upper right lung", "zone:lower right lung"]),
    ("Unilateral pulmonary infection, one infected area, all left lung.",
     ["finding:pulmonary infection", "laterality:unilateral", "count:one area", "zone:upper left lung",
      "zone:middle left lung", "zone:lower left lung"]),
    ("Bilateral  pulmonary infection,  two infected areas,  lower left lung and  lower right lung .",
     ["finding:pulmonary infection", "laterality:bilateral", "count:two areas", "zone:lower left lung",
      "zone:lower right lung"]),
    ("BILATERAL PULMONARY INFECTION, TWO INFECTED AREAS, LOWERLEFT LUNG AND LOWER RIGTH LUNG.",
     ["finding:pulmonary infection", "laterality:bilateral", "count:two areas", "zone:lower left lung",
      "zone:lower right lung"]),
    # MosMedData+ (CT) captions of the LViT style
    ("Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung.",
     ["finding:pulmonary infection", "laterality:bilateral", "count:two areas", "zone:upper left lung",
      "zone:lower right lung"]),
    ("Unilateral pulmonary infection, one infected area, middle left lung.",
     ["finding:pulmonary infection", "laterality:unilateral", "count:one area", "zone:middle left lung"]),
    ("Bilateral pulmonary infection, multiple infected areas, all left lung and lower right lung.",
     ["finding:pulmonary infection", "laterality:bilateral", "count:multiple areas", "zone:upper left lung",
      "zone:middle left lung", "zone:lower left lung", "zone:lower right lung"]),
    # CT report vocabulary
    ("COVID-19 pneumonia: ground-glass opacities with crazy-paving and consolidation in the left lower lobe "
     "and RUL, peripheral distribution on CT.",
     ["modality:chest ct", "finding:covid-19", "finding:ground-glass opacity", "finding:consolidation",
      "finding:crazy paving", "distribution:peripheral", "lobe:left lower lobe", "lobe:right upper lobe"]),
    ("GGO in the upper lobe of the right lung and the lingula, 3 lesions.",
     ["finding:ground-glass opacity", "count:three areas", "lobe:lingula", "lobe:right upper lobe"]),
    ("Chest X-ray: bibasal patchy opacities and a left-sided pleural effusion.",
     ["modality:chest x-ray", "finding:opacity", "finding:pleural effusion", "laterality:left",
      "zone:lower left lung", "zone:lower right lung"]),
    ("No infected areas, normal lung.", ["finding:normal lung", "count:no areas"]),
    ("eight infected areas, right lung", ["finding:pulmonary infection", "laterality:right", "count:eight areas"]),
    ("", []),
])
def test_noisy_and_ct_captions(caption, expected):
    assert extract_concepts(caption) == expected


def test_order_is_canonical_not_caption_order():
    a = extract_concepts("lower right lung and upper left lung, bilateral pulmonary infection, two infected areas")
    b = extract_concepts("Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung.")
    assert a == b
    ranks = [KINDS.index(concept_kind(k)) for k in a]
    assert ranks == sorted(ranks)


def test_all_concepts_are_well_formed_and_unique():
    keys = all_concepts()
    assert len(keys) == len(set(keys)) == 44
    for key in keys:
        assert concept_kind(key) in KINDS and concept_label(key) == key.split(":", 1)[1]


@pytest.mark.parametrize("bad", ["finding", ":x", "zone:", "zone:  "])
def test_malformed_keys_are_rejected(bad):
    with pytest.raises(ValueError, match="kind:value"):
        concept_kind(bad)


def test_non_string_caption_is_a_type_error():
    with pytest.raises(TypeError, match="caption must be a str"):
        extract_concepts(None)  # type: ignore[arg-type]
