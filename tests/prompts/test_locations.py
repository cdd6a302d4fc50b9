"""The one location grammar: the parse both the guidance masks and the concept extraction read."""
from __future__ import annotations

import csv

import pytest

from tgcnet.prompts.concepts import extract_concepts
from tgcnet.prompts.locations import LocationPart, parse_location

L, R, B = "left", "right", "both"


def _parts(caption: str) -> set[tuple[str, tuple[str, ...], str | None]]:
    return {(p.side, tuple(sorted(p.zones)), p.unit) for p in parse_location(caption).parts}


@pytest.mark.parametrize("caption, parts", [
    ("left lower lobe and upper right lung", {(L, ("lower",), "lobe"), (R, ("upper",), "lung")}),
    ("upper left and lower right", {(L, ("upper",), None), (R, ("lower",), None)}),
    ("consolidation in the RUL and LLL", {(R, ("upper",), "lobe"), (L, ("lower",), "lobe")}),
    ("lingular consolidation", {(L, ("middle",), "lobe")}),
    ("upper third of the left lung", {(L, ("upper",), "lung")}),
    ("superior segment of the right lower lobe", {(R, ("lower",), "lobe")}),
    ("Upper midlle LOWERLEFT lung", {(L, ("lower", "middle", "upper"), "lung")}),
    ("bibasal opacities", {(B, ("lower",), "lung")}),
])
def test_parts_carry_side_zones_and_unit(caption, parts):
    assert _parts(caption) == parts


@pytest.mark.parametrize("caption, stated, bilateral", [
    ("bilateral pulmonary infection, lower left lung", {"bilateral"}, True),
    ("lower lobes of both lungs", {"bilateral"}, True),
    ("bibasal opacities", set(), True),  # both sides named, "bilateral" not said
    ("unilateral pulmonary infection, lower left lung", {"unilateral"}, False),
    ("lower left lung", set(), None),
])
def test_stated_extent_is_what_the_words_say(caption, stated, bilateral):
    spec = parse_location(caption)
    assert spec.stated == frozenset(stated) and spec.bilateral is bilateral


def test_midline_is_not_a_zone():
    assert parse_location("opacity near the midline").everywhere


def test_location_part_rejects_an_unknown_unit():
    with pytest.raises(ValueError, match="unit"):
        LocationPart("left", unit="segment")  # type: ignore[arg-type]


def test_concepts_and_guidance_read_the_same_locations(qata_mini_root):
    """On every real caption the zone concepts are exactly the parsed parts' zones and sides."""
    captions = set()
    for split in ("train", "valid", "test"):
        with (qata_mini_root / split / "prompts.csv").open(newline="") as fh:
            captions |= {row["Description"] for row in csv.DictReader(fh)}
    for caption in captions:
        parsed = {f"zone:{z} {s} lung" for p in parse_location(caption).parts
                  for s in ((L, R) if p.side == B else (p.side,)) for z in p.zones}
        assert parsed == {k for k in extract_concepts(caption) if k.startswith("zone:")}, caption


@pytest.mark.parametrize("caption, phrases", [
    ("Bilateral pulmonary infection, upper left lung and lower right lung.", ("upper left lung", "lower right lung")),
    ("infection in lower middle upper left lung", ("upper, middle and lower left lung",)),
    ("left lower lobe consolidation", ("left lower lobe",)),
    ("opacities in the lower lobes of both lungs", ("lower lobes of both lungs",)),
    ("bilateral pulmonary infection", ("both lungs",)),
    ("right lung", ("right lung",)),
    ("pulmonary infection, all infected areas", ()),
])
def test_phrases_say_how_a_caption_was_read(caption, phrases):
    assert parse_location(caption).phrases == phrases
