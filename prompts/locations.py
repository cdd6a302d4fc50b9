"""Location words of a caption -> sides, zones and lobes: the one location grammar.

Both readers of a caption's location use this parse: the guidance masks
(``tgcnet.guidance``: which image region a caption points at) and the concept extraction
(:mod:`.concepts`: which descriptions to fetch), so they can never disagree on where a
caption says the lesion is.

A caption is read as *parts*, one per location phrase:

* a part has a side ("left", "right", or "both" when none or both are named), the zones it
  names (empty = the whole side) and the unit its noun names: "lobe" ("left lower lobe"),
  "lung" (lung, zone, field, region... ) or None when no noun closed it ("upper left and
  lower right");
* "upper middle left lung", "left lower lobe", "upper and middle lobes of the right lung",
  "lower lobes of both lungs", "bibasal", "lingula", "RUL" are each one part; adjacent
  phrases ("upper left lung lower right lung") split into several;
* "bilateral" with no zone is a flag, not a part, so "bilateral infection, lower left lung
  and lower right lung" does not also claim both whole lungs; a caption that names only
  "bilateral" gets one both-sides part;
* "all / whole / entire" (:data:`.words.WHOLE_WORDS`) name all three zones, unless a
  non-location word follows ("all infected areas").

The parser is a small state machine over :func:`.words.caption_words`, so it reads the
verbatim text data sets ship (capitals, double spaces, "midlle", "lowerleft") like the
cleaned captions, and CT report phrasing ("left lower lobe", "lower lobes of both lungs",
"bilateral lower lobes", "upper and middle lobes of the right lung") like chest X-ray
captions. Which image half "left" denotes is not decided here (see ``tgcnet.laterality``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal, Optional

from .words import WHOLE_WORDS, ZONES, caption_words

__all__ = ["ZONES", "Side", "Unit", "LocationPart", "LocationSpec", "parse_location"]

Side = Literal["left", "right", "both"]
Unit = Literal["lung", "lobe"]

# Word classes over typo-corrected words (misspellings are words.fix_word's job).
_SIDE_WORDS: dict[str, Side] = {
    "left": "left", "right": "right",
    "both": "both", "bilateral": "both", "bilaterally": "both", "bilat": "both",
}
_ZONE_WORDS: dict[str, tuple[str, ...]] = {
    "upper": ("upper",), "top": ("upper",), "superior": ("upper",),
    "middle": ("middle",),
    "lower": ("lower",), "bottom": ("lower",), "inferior": ("lower",),
    **dict.fromkeys(WHOLE_WORDS, ZONES),
}
# Words that name a side and a zone at once: lobes by name and their abbreviations.
_FIXED_PARTS: dict[str, tuple[Side, tuple[str, ...]]] = {
    "lingula": ("left", ("middle",)), "lingular": ("left", ("middle",)),
    "rul": ("right", ("upper",)), "rml": ("right", ("middle",)), "rll": ("right", ("lower",)),
    "lul": ("left", ("upper",)), "lll": ("left", ("lower",)),
}
# Nouns that end a location phrase ("... left lung", "... lower lobe"), and the unit each names.
_NOUNS: dict[str, Unit] = {
    **dict.fromkeys(("lobe", "lobes", "lobar"), "lobe"),
    **dict.fromkeys((
        "lung", "lungs", "field", "fields", "zone", "zones", "region", "regions", "segment", "segments", "area",
        "areas", "part", "parts", "portion", "portions", "third", "thirds", "side", "sides", "sided", "hemithorax",
        "hemithoraces", "lungfield", "lungfields"), "lung"),
}
_BOUNDARIES = frozenset({",", ";", ".", ":", "(", ")", "and", "or", "with", "while", "but", "plus"})
# Words that neither carry location nor break a phrase ("lower lobe OF THE left lung").
_FILLERS = frozenset({"of", "the", "a", "an", "in", "on", "at", "within"})
_UNILATERAL = frozenset({"unilateral", "unilaterally", "unilat"})
# "bilateral" said in words (not implied by "both lower zones"): what a caption *states*.
_BILATERAL_WORDS = frozenset({"bilateral", "bilaterally", "bilat"})
_BOTH_NOUNS = frozenset({"lungs", "lung", "sides", "hemithoraces", "lungfields"})


@dataclass(frozen=True)
class LocationPart:
    """One location phrase: a side ("both" when none is named), its zones (empty = all of it), its unit."""

    side: Side
    zones: frozenset[str] = frozenset()
    unit: Optional[Unit] = None

    def __post_init__(self) -> None:
        if self.side not in ("left", "right", "both"):
            raise ValueError(f"side must be 'left', 'right' or 'both', got {self.side!r}")
        bad = set(self.zones) - set(ZONES)
        if bad:
            raise ValueError(f"zones must be a subset of {ZONES}, got unknown {sorted(bad)}")
        if self.unit not in (None, "lung", "lobe"):
            raise ValueError(f"unit must be None, 'lung' or 'lobe', got {self.unit!r}")

    @property
    def phrase(self) -> str:
        """The part in plain words ("upper and lower left lung", "both lungs", "right lower lobe"),
        so a user can check how a caption was read: zones in top-to-bottom order, whatever
        order or spelling the caption used."""
        named = [z for z in ZONES if z in self.zones]
        zones = " and ".join(filter(None, (", ".join(named[:-1]), *named[-1:])))
        if self.side == "both":
            noun = "lobes of both lungs" if self.unit == "lobe" else "both lungs"
            return f"{zones} {noun}" if zones else "both lungs"
        if self.unit == "lobe" and zones:
            return f"{self.side} {zones} lobe"
        return f"{zones} {self.side} lung" if zones else f"{self.side} lung"


@dataclass(frozen=True)
class LocationSpec:
    """Parsed location of a caption: the union of its parts.

    ``bilateral`` is True / False when the caption names both sides (in any words,
    "bibasal" included) / says unilateral, None when neither. ``stated`` holds
    "bilateral" / "unilateral" when the caption says so in those words ("bilateral",
    "both lungs", "unilateral"), which is what a description of the finding should
    follow. ``everywhere`` is True when no part was found: "no constraint", not "both lungs".
    """

    parts: tuple[LocationPart, ...]
    bilateral: Optional[bool] = None
    caption: str = field(default="", compare=False)
    stated: frozenset[str] = frozenset()

    @property
    def everywhere(self) -> bool:
        return not self.parts

    @property
    def sides(self) -> frozenset[str]:
        """Lung sides the caption names ("both" expanded), empty when it names none."""
        out: set[str] = set()
        for part in self.parts:
            out.update(("left", "right") if part.side == "both" else (part.side,))
        return frozenset(out)

    @property
    def phrases(self) -> tuple[str, ...]:
        """Each part in plain words (:attr:`LocationPart.phrase`); empty when the caption names no place."""
        return tuple(dict.fromkeys(part.phrase for part in self.parts))

    @property
    def single_side(self) -> Optional[Literal["left", "right"]]:
        """"left" / "right" when every part lies on that side, else None."""
        sides = self.sides
        return next(iter(sides)) if len(sides) == 1 else None  # type: ignore[return-value]


class _Pending:
    """The phrase being read: side and zones seen so far, and how it may still grow."""

    def __init__(self) -> None:
        self.side: Optional[Side] = None
        self.zones: set[str] = set()
        self.unit: Optional[Unit] = None
        self.side_first = False  # "left lower lobe" (side, then zones) vs "lower left lung"
        self.noun = False  # a zones-only phrase ended by a noun may still get "of the left lung"
        self.side_of = False  # the side came as "... of the right": it may begin a lobe's name

    @property
    def empty(self) -> bool:
        return self.side is None and not self.zones


class _Parser:
    """Reads one caption word by word; each word class moves the pending phrase on."""

    def __init__(self) -> None:
        self.parts: list[LocationPart] = []
        self.bilateral: Optional[bool] = None
        self.stated: set[str] = set()
        self.pending = _Pending()
        self.previous = ""

    def close(self, from_noun: bool = False) -> None:
        """Emit the pending phrase. A bare "bilateral"/"both" only sets the flag unless a noun
        closed it ("both lungs")."""
        p = self.pending
        self.pending = _Pending()
        if p.side == "both":
            self.bilateral = True
            if not p.zones and not from_noun:
                return
        if p.empty:
            return
        self.parts.append(LocationPart(p.side or "both", frozenset(p.zones), p.unit))

    def side(self, side: Side) -> None:
        p = self.pending
        if p.side is not None:
            self.close()
            p = self.pending
        p.side_of, p.noun = p.noun, False  # "lower lobes of both lungs": the side completes the phrase
        p.side = side
        p.side_first = not p.zones

    def zone(self, zones: tuple[str, ...]) -> None:
        p = self.pending
        if p.side_of:  # "superior segment of the right lower lobe": a part of the right lower lobe
            self.pending = _Pending()
            self.pending.side, self.pending.side_first = p.side, True
            p = self.pending
        elif p.noun or (p.side is not None and not p.side_first):
            self.close()  # "upper left lung lower right lung", "lower lobe upper ..."
            p = self.pending
        p.zones.update(zones)

    def noun(self, unit: Unit) -> None:
        p = self.pending
        p.unit = p.unit or unit  # "lower lobe of the left lung" is a lobe
        if p.side is not None:
            self.close(from_noun=True)
        elif p.zones:
            p.noun = True  # wait for "of (the) left lung"
        else:
            p.unit = None

    def interrupt(self, breaks_zones: bool) -> None:
        """A boundary or another word ends a phrase that has a side or a noun; another word also
        drops bare zones ("all infected areas", "lower density": not a location)."""
        p = self.pending
        if p.side is not None or p.noun:
            self.close()
        elif p.zones and breaks_zones:
            self.pending = _Pending()

    def feed(self, word: str) -> None:
        if word in _FIXED_PARTS:
            self.close()
            side, zones = _FIXED_PARTS[word]
            self.pending.side, self.pending.zones, self.pending.unit = side, set(zones), "lobe"
            self.close(from_noun=True)
        elif word in _UNILATERAL:
            self.stated.add("unilateral")
            self.bilateral = False if self.bilateral is None else self.bilateral
            self.interrupt(breaks_zones=True)
        elif word in _SIDE_WORDS:
            if word in _BILATERAL_WORDS:
                self.stated.add("bilateral")
            self.side(_SIDE_WORDS[word])
        elif word in _ZONE_WORDS:
            self.zone(_ZONE_WORDS[word])
        elif word in _NOUNS:
            if self.previous == "both" and word in _BOTH_NOUNS:
                self.stated.add("bilateral")
            self.noun(_NOUNS[word])
        elif word in _BOUNDARIES:
            self.interrupt(breaks_zones=False)
        elif word not in _FILLERS:
            self.interrupt(breaks_zones=True)
        self.previous = word


@lru_cache(maxsize=4096)
def parse_location(caption: str) -> LocationSpec:
    """Parse the location phrases of a caption into a :class:`LocationSpec`.

    Never fails on text: a caption without location words gives ``everywhere=True``.
    Cached, since data sets repeat a few dozen captions thousands of times.
    """
    if not isinstance(caption, str):
        raise ValueError(f"caption must be a str, got {type(caption).__name__}")
    parser = _Parser()
    for word in caption_words(caption):
        parser.feed(word)
    parser.close()
    parts = tuple(dict.fromkeys(parser.parts))  # drop repeats, keep order
    if not parts and parser.bilateral:
        parts = (LocationPart("both"),)
    return LocationSpec(parts, parser.bilateral, caption, frozenset(parser.stated))
