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
zone           ``{upper,middle,lower} {left,right} lung`` (thirds of each lung field)
lobe           ``{left,right} {upper,lower} lobe``, ``right middle lobe``, ``lingula``
=============  ===========================================================================

Within a kind, keys come in the vocabulary order above (not caption order), so captions
naming the same concepts yield identical lists. "left"/"right" are the words of the
caption; which image half they denote depends on the data set (QaTa-COV19 uses the image
side, see tgcnet.laterality), so nothing here maps them to image sides.

Noise handled (LViT / GuideDecoder captions): any case, double spaces, hyphens, glued
words ("lowerleft"), single-letter typos ("midlle", "rigth", "lef"), "all left lung"
(= upper, middle and lower left lung), "upper lower right lung" (= upper and lower),
apex/apical (upper), base/basal (lower), bibasal/biapical (both sides).
Negation is handled only for "no infected areas" / "normal lung"; "no left lung infection"
is read as naming the left lung.
"""
from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

__all__ = [
    "KINDS",
    "LOCATION_KINDS",
    "all_concepts",
    "concept_kind",
    "concept_label",
    "extract_concepts",
    "normalize_caption",
]

KINDS: tuple[str, ...] = ("modality", "finding", "laterality", "count", "distribution", "zone", "lobe")
LOCATION_KINDS: frozenset[str] = frozenset({"laterality", "distribution", "zone", "lobe"})

SIDES = ("left", "right")
LEVELS = ("upper", "middle", "lower")
NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")

_MODALITIES = ("chest x-ray", "chest ct")
_FINDINGS = (
    "pulmonary infection", "covid-19", "pneumonia", "ground-glass opacity", "consolidation",
    "crazy paving", "opacity", "reticulation", "air bronchogram", "pleural effusion", "normal lung",
)
_LATERALITIES = ("bilateral", "unilateral", "left", "right")
_COUNTS = tuple(f"{n} area" if n == "one" else f"{n} areas" for n in NUMBERS) + ("multiple areas",)
_DISTRIBUTIONS = ("peripheral", "central", "diffuse")
_ZONES = tuple(f"{lv} {side} lung" for side in SIDES for lv in LEVELS)
_LOBES = ("left upper lobe", "lingula", "left lower lobe", "right upper lobe", "right middle lobe",
          "right lower lobe")

_VOCAB: dict[str, tuple[str, ...]] = {
    "modality": _MODALITIES, "finding": _FINDINGS, "laterality": _LATERALITIES, "count": _COUNTS,
    "distribution": _DISTRIBUTIONS, "zone": _ZONES, "lobe": _LOBES,
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


# --------------------------------------------------------------------------- normalisation

_NUMBER_WORDS = NUMBERS + ("zero", "none", "single", "eleven", "twelve", "multiple", "several", "many",
                           "numerous", "multifocal")
# Words typos are corrected towards (only words that carry a concept or structure a phrase).
_TARGETS = frozenset(
    SIDES + LEVELS + _NUMBER_WORDS + (
        "lung", "lungs", "lobe", "lobes", "zone", "zones", "field", "fields", "bilateral", "unilateral",
        "bilaterally", "unilaterally", "pulmonary", "infection", "infected", "infections", "area", "areas",
        "region", "regions", "lesion", "lesions", "consolidation", "opacity", "opacities", "ground",
        "glass", "pneumonia", "effusion", "pleural", "peripheral", "subpleural", "diffuse", "central",
        "crazy", "paving", "covid", "chest", "lingula", "reticular", "bronchogram", "normal", "entire",
        "whole", "both", "side", "sides", "radiograph", "opacification", "perihilar", "extensive",
    )
)
# Real words one edit away from a target: never "corrected" ("eight" is not "right").
_PROTECTED = frozenset((
    "and", "the", "of", "in", "with", "without", "at", "to", "on", "are", "is", "a", "an", "or",
    "light", "might", "night", "tight", "sight", "fight", "bight", "lover", "power", "tower", "mower",
    "loner", "lunge", "lunch", "long", "lungo", "loft", "lift", "lens", "lent", "aria", "area", "mild",
    "media", "medial", "lateral", "zones", "some", "done", "gone",
    "tone", "bone", "nine", "fine", "line", "lines", "wine", "mine", "nodule", "nodules", "mass",
    "lobar", "upon", "lesser", "tree", "free", "seen", "even", "teen", "area", "also", "scan", "scans",
))
_ALIASES = {
    "lef": "left", "lft": "left", "lt": "left", "rt": "right", "mid": "middle", "midzone": "middle zone",
    "midzones": "middle zones", "xray": "x ray", "xrays": "x rays", "lowe": "lower",
    "apex": "upper", "apices": "upper", "apical": "upper", "base": "lower", "bases": "lower",
    "basal": "lower", "basilar": "lower", "bibasal": "both lower zones", "bibasilar": "both lower zones",
    "biapical": "both upper zones",
}


def _edit_distance(a: str, b: str) -> int:
    """Damerau-Levenshtein (optimal string alignment): a swapped pair ("rigth") is one typo."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[-1]


@lru_cache(maxsize=4096)
def fix_word(tok: str) -> str:
    """Correct one word: alias, glued pair ("lowerleft"), or a unique near target ("midlle")."""
    if tok in _ALIASES:
        return _ALIASES[tok]
    if tok in _TARGETS or tok in _PROTECTED or len(tok) < 4 or tok.isdigit():
        return tok
    for cut in range(3, len(tok) - 2):
        head, tail = tok[:cut], tok[cut:]
        if head in _TARGETS and tail in _TARGETS:
            return f"{head} {tail}"
    limit = 1 if len(tok) < 8 else 2
    near = [t for t in _TARGETS if abs(len(t) - len(tok)) <= limit and _edit_distance(tok, t) <= limit]
    return near[0] if len(near) == 1 else tok


_TOKEN = re.compile(r"[a-z0-9]+|[,.;:()]")


def normalize_caption(caption: str) -> str:
    """Lower-case, single-spaced, typo-corrected text that the concept patterns match against."""
    text = unicodedata.normalize("NFKC", caption).lower()
    text = re.sub(r"[-_/&+]", " ", text)
    return " ".join(fix_word(t) for t in _TOKEN.findall(text))


# --------------------------------------------------------------------------- patterns

_LV = r"(?:upper|middle|lower|all|whole|entire)"
_LVS = rf"((?:{_LV} (?:(?:and|,) )?)*{_LV})"
_SIDE = r"(left|right)"
_LUNGWORD = r"(?:lung field|lung zone|lungs?|hemithorax|fields?|zones?|sides?|regions?)"

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
_LATERALITY_PATTERNS = (
    ("bilateral", r"\bbilateral(?:ly)?\b|\bboth (?:lungs|sides|lung fields|hemithoraces)\b"),
    ("unilateral", r"\bunilateral(?:ly)?\b"),
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

_LEVELS_RE = r"((?:(?:upper|middle|lower) (?:and )?)*(?:upper|middle|lower))"
_LOBE_SIDE_FIRST = re.compile(rf"\b{_SIDE} {_LEVELS_RE} lobes?\b")
_LOBE_OF_SIDE = re.compile(rf"\b{_LEVELS_RE} lobes? of (?:the )?{_SIDE} lung\b")
_LOBE_LEVEL_FIRST = re.compile(rf"\b(upper|middle|lower) {_SIDE} lobes?\b")
_LOBE_PLURAL = re.compile(r"\b(?:both |bilateral )?(upper|middle|lower) lobes\b")
_LOBE_ABBREV = re.compile(r"\b(rul|rml|rll|lul|lll)\b")
_LINGULA = re.compile(r"\blingul(?:a|ar)\w*")
_ZONE_LEVEL_FIRST = re.compile(
    rf"\b{_LVS} (?:(?:zones?|parts?|portions?|regions?|fields?|thirds?) of (?:the )?)?{_SIDE}(?: {_LUNGWORD})?\b")
_ZONE_SIDE_FIRST = re.compile(rf"\b{_SIDE} {_LVS}(?: (?:lung zones?|lung fields?|lungs?|zones?|fields?|regions?))?\b")
_ZONE_BOTH = re.compile(rf"\b(?:both |bilateral )?{_LVS} (?:lung zones|lung fields|lungs|zones|fields)\b")
_SIDE_ONLY = re.compile(rf"\b{_SIDE}(?: sided| {_LUNGWORD})\b")


def _levels(words: str) -> list[str]:
    """"upper and lower" -> [upper, lower]; "all"/"whole"/"entire" -> every level."""
    found = set(words.replace(",", " ").split())
    if found & {"all", "whole", "entire"}:
        return list(LEVELS)
    return [lv for lv in LEVELS if lv in found]


def _lobe(side: str, level: str) -> str:
    """Anatomical lobe for a side and level; the left lung has a lingula, not a middle lobe."""
    return "lingula" if (side, level) == ("left", "middle") else f"{side} {level} lobe"


class _Scan:
    """Matches patterns on the text, blanking what location patterns consumed."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.keys: set[str] = set()

    def consume(self, pattern: re.Pattern[str], emit) -> None:
        """Replace each match by a barrier so later, looser patterns cannot reuse its words."""
        def _sub(m: re.Match[str]) -> str:
            for key in emit(m):
                self.keys.add(key)
            return " | "
        self.text = pattern.sub(_sub, self.text)

    def search(self, kind: str, table) -> None:
        """Add kind:value for each (value, regex) that occurs anywhere in the text."""
        for value, regex in table:
            if re.search(regex, self.text):
                self.keys.add(f"{kind}:{value}")


def _scan_lobes(scan: _Scan) -> None:
    abbrev = {"rul": ("right", "upper"), "rml": ("right", "middle"), "rll": ("right", "lower"),
              "lul": ("left", "upper"), "lll": ("left", "lower")}
    scan.consume(_LOBE_SIDE_FIRST, lambda m: [f"lobe:{_lobe(m[1], lv)}" for lv in _levels(m[2])])
    scan.consume(_LOBE_OF_SIDE, lambda m: [f"lobe:{_lobe(m[2], lv)}" for lv in _levels(m[1])])
    scan.consume(_LOBE_LEVEL_FIRST, lambda m: [f"lobe:{_lobe(m[2], m[1])}"])
    scan.consume(_LOBE_ABBREV, lambda m: [f"lobe:{_lobe(*abbrev[m[1]])}"])
    scan.consume(_LINGULA, lambda m: ["lobe:lingula"])
    scan.consume(_LOBE_PLURAL, lambda m: [f"lobe:{_lobe(s, m[1])}" for s in SIDES
                                          if (s, m[1]) != ("left", "middle")])


def _scan_zones(scan: _Scan) -> None:
    scan.consume(_ZONE_LEVEL_FIRST, lambda m: [f"zone:{lv} {m[2]} lung" for lv in _levels(m[1])])
    scan.consume(_ZONE_SIDE_FIRST, lambda m: [f"zone:{lv} {m[1]} lung" for lv in _levels(m[2])])
    scan.consume(_ZONE_BOTH, lambda m: [f"zone:{lv} {s} lung" for s in SIDES for lv in _levels(m[1])])
    scan.consume(_SIDE_ONLY, lambda m: [f"laterality:{m[1]}"])


def _scan_count(scan: _Scan) -> None:
    for m in _COUNT_RE.finditer(scan.text):
        word = m[1]
        if word.isdigit():
            n = int(word)
            word = NUMBERS[n] if n < len(NUMBERS) else "multiple"
        word = _COUNT_WORDS.get(word, word)
        if word in ("eleven", "twelve"):
            word = "multiple"
        scan.keys.add(f"count:{word} area" if word == "one" else f"count:{word} areas")


@lru_cache(maxsize=8192)
def _extract(caption: str) -> tuple[str, ...]:
    text = normalize_caption(caption)
    scan = _Scan(text)
    scan.search("modality", _MODALITY_PATTERNS)
    _scan_findings(scan)
    scan.search("laterality", _LATERALITY_PATTERNS)
    scan.search("distribution", _DISTRIBUTION_PATTERNS)
    _scan_count(scan)
    _scan_lobes(scan)
    _scan_zones(scan)
    return tuple(sorted(scan.keys, key=_RANK.__getitem__))


def _scan_findings(scan: _Scan) -> None:
    """Findings in priority order; each match is blanked so "covid 19 infection" is one finding."""
    text = scan.text
    for value, regex in _FINDING_PATTERNS:
        text, n = re.subn(regex, " | ", text)
        if n:
            scan.keys.add(f"finding:{value}")


def extract_concepts(caption: str) -> list[str]:
    """Canonical concept keys named by `caption`, in the stable order of the module docstring.

    Deterministic and cached: captions repeat thousands of times in a data set.
    """
    if not isinstance(caption, str):
        raise TypeError(f"caption must be a str, got {type(caption).__name__}")
    return list(_extract(caption))
