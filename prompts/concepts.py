"""Concept extraction: caption -> canonical concept keys.

A caption such as "Bilateral pulmonary infection, two infected areas, upper left lung and
lower right lung." names a handful of medical concepts. The knowledge bank and the
generator both work per concept, so two captions that name the same concepts share the
same descriptions (and the model can share their text embeddings).

Concept keys
------------
A key is ``"<kind>:<value>"``, lower case, stable across releases (caches and the shipped
bank are indexed by it, so renaming a key orphans cached descriptions). Kinds, in the order
`extract_concepts` returns them:

=============  ===========================================================================
kind           values
=============  ===========================================================================
modality       ``chest x-ray``, ``chest ct``
finding        ``pulmonary infection``, ``covid-19``, ``pneumonia``, ``ground-glass
               opacity``, ``consolidation``, ``crazy paving``, ``opacity``,
               ``reticulation``, ``air bronchogram``, ``pleural effusion``, ``normal lung``
laterality     ``bilateral``, ``unilateral``, ``left``, ``right`` (``left``/``right`` only
               when a side is named without a zone, e.g. "left lung")
count          ``no areas``, ``one area``, ``two areas`` ... ``ten areas``,
               ``multiple areas``
distribution   ``peripheral``, ``central``, ``diffuse``
zone           ``{upper,middle,lower} {left,right} lung`` (zones of each lung field)
lobe           ``{left,right} {upper,lower} lobe``, ``right middle lobe``, ``lingula``
=============  ===========================================================================

Within a kind, keys come in the vocabulary order above (not caption order), so captions
naming the same concepts yield identical lists. "left"/"right" are the words of the
caption; which image half they denote depends on the data set (QaTa-COV19 uses the image
side, see tgcnet.laterality), so nothing here maps them to image sides.

Location kinds (laterality, zone, lobe) come from the one location parse,
:func:`.locations.parse_location`, which the guidance masks also read; the other kinds are
keyword patterns over :func:`.words.caption_words`. Both read the same typo-corrected words,
so any case, double spaces, hyphens, glued words ("lowerleft"), single-letter typos
("midlle", "rigth", "lef"), "all left lung" (= upper, middle and lower left lung), "upper
lower right lung" (= upper and lower), apex/apical (upper), base/basal (lower) and
bibasal/biapical (both sides) are read like the cleaned captions. Negation is handled only for "no infected areas" / "normal lung"; "no left lung infection"
is read as naming the left lung.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Iterable

from .locations import LocationPart, parse_location
from .words import NUMBERS, SIDES, ZONES, caption_words

__all__ = [
    "KINDS",
    "LOCATION_KINDS",
    "all_concepts",
    "concept_kind",
    "concept_label",
    "extract_concepts",
]

KINDS: tuple[str, ...] = ("modality", "finding", "laterality", "count", "distribution", "zone", "lobe")
LOCATION_KINDS: frozenset[str] = frozenset({"laterality", "distribution", "zone", "lobe"})

_MODALITIES = ("chest x-ray", "chest ct")
_FINDINGS = (
    "pulmonary infection", "covid-19", "pneumonia", "ground-glass opacity", "consolidation",
    "crazy paving", "opacity", "reticulation", "air bronchogram", "pleural effusion", "normal lung",
)
_LATERALITIES = ("bilateral", "unilateral", "left", "right")
_COUNTS = tuple(f"{n} area" if n == "one" else f"{n} areas" for n in NUMBERS) + ("multiple areas",)
_DISTRIBUTIONS = ("peripheral", "central", "diffuse")
_ZONE_LABELS = tuple(f"{zone} {side} lung" for side in SIDES for zone in ZONES)
_LOBES = ("left upper lobe", "lingula", "left lower lobe", "right upper lobe", "right middle lobe",
          "right lower lobe")

_VOCAB: dict[str, tuple[str, ...]] = {
    "modality": _MODALITIES, "finding": _FINDINGS, "laterality": _LATERALITIES, "count": _COUNTS,
    "distribution": _DISTRIBUTIONS, "zone": _ZONE_LABELS, "lobe": _LOBES,
}
# Rank of every key: kind first, then vocabulary position; sorting by it gives the stable order.
_RANK: dict[str, int] = {
    f"{kind}:{value}": i * 100 + j for i, kind in enumerate(KINDS) for j, value in enumerate(_VOCAB[kind])
}


def all_concepts() -> list[str]:
    """Every key the extractor can return, so a bank's coverage can be checked exhaustively."""
    return sorted(_RANK, key=_RANK.__getitem__)


def concept_kind(key: str) -> str:
    """The kind part of a key; raises on keys without one so typos surface early."""
    kind, sep, value = key.partition(":")
    if not sep or not kind or not value.strip():
        raise ValueError(f"concept key {key!r} is not of the form 'kind:value'")
    return kind


def concept_label(key: str) -> str:
    """The human-readable part of a key, which is what a language model is asked about."""
    concept_kind(key)
    return key.partition(":")[2].strip()


# --------------------------------------------------------------------------- keywords

_FINDING_PATTERNS: tuple[tuple[str, str], ...] = (
    ("normal lung", r"\bno (?:infected |affected )?(?:areas?|regions?|lesions?)\b|\bnormal (?:lungs?|chest)\b"
                    r"|\bno (?:infection|abnormalit(?:y|ies))\b|\bclear lungs?\b"),
    ("covid-19", r"\b(?:covid(?: 19)?|sars cov 2|2019 ncov|(?:novel )?coronavirus)"
                 r"(?: (?:pneumonia|infection|disease))?\b"),
    ("ground-glass opacity", r"\bground glass(?: (?:opacit(?:y|ies)|opacifications?|attenuation|"
                             r"densit(?:y|ies)|pattern))?\b|\bggos?\b"),
    ("crazy paving", r"\bcrazy paving(?: pattern)?\b"),
    ("air bronchogram", r"\bair bronchograms?\b"),
    ("pleural effusion", r"\b(?:pleural )?effusions?\b"),
    ("consolidation", r"\bconsolidat\w*"),
    ("reticulation", r"\breticula\w*|\b(?:interlobular )?septal thickening\b"),
    ("pneumonia", r"\bpneumoni(?:a|as|tis)\b"),
    ("opacity", r"\b(?:(?:airspace|patchy|hazy) )?(?:opacit(?:y|ies)|opacifications?|infiltrat\w*)"),
    ("pulmonary infection", r"\b(?:pulmonary |lung )?infect\w*"),
)
_MODALITY_PATTERNS = (
    ("chest x-ray", r"\b(?:cxr|x rays?|radiograph\w*|chest films?|roentgen\w*)\b"),
    ("chest ct", r"\b(?:ct|hrct|mdct|computed tomography|ct scans?)\b"),
)
_DISTRIBUTION_PATTERNS = (
    ("peripheral", r"\bperipher\w*|\bsubpleural\b"),
    ("central", r"\bcentral(?:ly)?\b|\b(?:peri|para)?hilar\b"),
    ("diffuse", r"\bdiffuse(?:ly)?\b|\bextensive\b|\bwidespread\b"),
)
_COUNT_RE = re.compile(
    r"\b(\d+|zero|no|none|single|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|"
    r"multiple|several|many|numerous|multifocal)"
    r"(?: \w+){0,2}? (?:areas?|regions?|lesions?|foci|focus|patch(?:es)?|sites?|opacities|zones?|lobes?)\b"
)
_COUNT_WORDS = {"zero": "no", "none": "no", "single": "one", "several": "multiple", "many": "multiple",
                "numerous": "multiple", "multifocal": "multiple"}


# --------------------------------------------------------------------------- locations

def _lobe(side: str, zone: str) -> str:
    """Anatomical lobe for a side and zone; the left lung has a lingula, not a middle lobe."""
    return "lingula" if (side, zone) == ("left", "middle") else f"{side} {zone} lobe"


def _part_keys(part: LocationPart) -> list[str]:
    """Keys of one parsed location phrase.

    A phrase whose noun is a lobe names lobes ("lower lobes" = both lower lobes; the left
    lung has no middle lobe), any other phrase with zones names zones of the lung field; a
    side with no zone names the side ("left lung", "right-sided"). A zones-only phrase
    with neither side nor noun ("upper and lower") is too vague to name a concept.
    """
    sides = SIDES if part.side == "both" else (part.side,)
    zones = [z for z in ZONES if z in part.zones]
    if part.unit == "lobe" and zones:
        return [f"lobe:{_lobe(s, z)}" for s in sides for z in zones
                if not (part.side == "both" and (s, z) == ("left", "middle"))]
    if zones and (part.side != "both" or part.unit is not None):
        return [f"zone:{z} {s} lung" for s in sides for z in zones]
    if not zones and part.side != "both" and part.unit is not None:
        return [f"laterality:{part.side}"]
    return []


def _location_keys(caption: str) -> set[str]:
    """Laterality, zone and lobe keys, all read from the one location parse."""
    spec = parse_location(caption)
    keys = {f"laterality:{word}" for word in spec.stated}
    for part in spec.parts:
        keys.update(_part_keys(part))
    return keys


# --------------------------------------------------------------------------- extraction

def _search(text: str, kind: str, table: Iterable[tuple[str, str]]) -> set[str]:
    """kind:value for each (value, regex) of ``table`` that occurs anywhere in ``text``."""
    return {f"{kind}:{value}" for value, regex in table if re.search(regex, text)}


def _counts(text: str) -> set[str]:
    keys = set()
    for m in _COUNT_RE.finditer(text):
        word = m[1]
        if word.isdigit():
            n = int(word)
            word = NUMBERS[n] if n < len(NUMBERS) else "multiple"
        word = _COUNT_WORDS.get(word, word)
        if word in ("eleven", "twelve"):
            word = "multiple"
        keys.add(f"count:{word} area" if word == "one" else f"count:{word} areas")
    return keys


def _findings(text: str) -> set[str]:
    """Findings in priority order; each match is blanked so "covid 19 infection" is one finding."""
    keys = set()
    for value, regex in _FINDING_PATTERNS:
        text, n = re.subn(regex, " | ", text)
        if n:
            keys.add(f"finding:{value}")
    return keys


@lru_cache(maxsize=8192)
def _extract(caption: str) -> tuple[str, ...]:
    text = " ".join(caption_words(caption))
    keys = (_search(text, "modality", _MODALITY_PATTERNS) | _findings(text)
            | _search(text, "distribution", _DISTRIBUTION_PATTERNS) | _counts(text) | _location_keys(caption))
    return tuple(sorted(keys, key=_RANK.__getitem__))


def extract_concepts(caption: str) -> list[str]:
    """Canonical concept keys named by `caption`, in the stable order of the module docstring.

    Deterministic and cached: captions repeat thousands of times in a data set.
    """
    if not isinstance(caption, str):
        raise TypeError(f"caption must be a str, got {type(caption).__name__}")
    return list(_extract(caption))
