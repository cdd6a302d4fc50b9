"""Caption words: the one tokenizer and typo fixer that every reader of caption text shares.

The location parser (:mod:`.locations`), the concept extraction (:mod:`.concepts`) and the
canonical caption the model reads (``tgcnet.captions.normalize_caption``) must agree on what
a word is and on how a misspelt word is read, or "midlle left lung" would be a location for
one of them and noise for another. Data sets ship captions with capitals, double spaces,
hyphens, glued words ("lowerleft") and single-letter typos ("midlle", "rigth", "lef");
:func:`fix_word` corrects those towards a closed vocabulary of words that carry a concept,
and never "corrects" a real word that happens to be one edit away ("eight" is not "right").
"""
from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

__all__ = ["SIDES", "LEVELS", "NUMBERS", "NUMBER_WORDS", "caption_words", "fix_word"]

SIDES: tuple[str, ...] = ("left", "right")
LEVELS: tuple[str, ...] = ("upper", "middle", "lower")
NUMBERS: tuple[str, ...] = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
NUMBER_WORDS: tuple[str, ...] = NUMBERS + ("zero", "none", "single", "eleven", "twelve", "multiple", "several",
                                           "many", "numerous", "multifocal")

# Words typos are corrected towards (only words that carry a concept or structure a phrase).
_TARGETS = frozenset(
    SIDES + LEVELS + NUMBER_WORDS + (
        "lung", "lungs", "lobe", "lobes", "zone", "zones", "field", "fields", "bilateral", "unilateral",
        "bilaterally", "unilaterally", "pulmonary", "infection", "infected", "infections", "area", "areas",
        "region", "regions", "lesion", "lesions", "consolidation", "opacity", "opacities", "ground",
        "glass", "pneumonia", "effusion", "pleural", "peripheral", "subpleural", "diffuse", "central",
        "crazy", "paving", "covid", "chest", "lingula", "reticular", "bronchogram", "normal", "entire",
        "whole", "both", "side", "sides", "radiograph", "opacification", "perihilar", "extensive",
    )
)
# Real words one edit away from a target: never "corrected".
_PROTECTED = frozenset((
    "and", "the", "of", "in", "with", "without", "at", "to", "on", "are", "is", "a", "an", "or",
    "light", "might", "night", "tight", "sight", "fight", "bight", "bright", "fright", "wright", "rights", "lover", "power", "tower", "mower",
    "loner", "lunge", "lunch", "long", "lungo", "loft", "lift", "lens", "lent", "aria", "area", "mild",
    "media", "medial", "lateral", "zones", "some", "done", "gone",
    "tone", "bone", "nine", "fine", "line", "lines", "wine", "mine", "nodule", "nodules", "mass",
    "lobar", "upon", "lesser", "tree", "free", "seen", "even", "teen", "also", "scan", "scans",
))
# Abbreviations and synonyms, read as the words the rest of the vocabulary uses.
_ALIASES = {
    "lef": "left", "lft": "left", "lt": "left", "rt": "right", "mid": "middle", "midzone": "middle zone",
    "midzones": "middle zones", "xray": "x ray", "xrays": "x rays", "lowe": "lower",
    "apex": "upper", "apices": "upper", "apical": "upper", "base": "lower", "bases": "lower",
    "basal": "lower", "basilar": "lower", "bibasal": "both lower zones", "bibasilar": "both lower zones",
    "biapical": "both upper zones",
}
_SEPARATORS = re.compile(r"[-_/&+]")
_WORD = re.compile(r"[a-z0-9]+|[,.;:()]")


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
def fix_word(word: str) -> str:
    """One lower-case word corrected: alias, glued pair ("lowerleft"), or a unique near target ("midlle").

    May return several space-separated words ("lowerleft" -> "lower left"); a word it does
    not recognise comes back unchanged.
    """
    if word in _ALIASES:
        return _ALIASES[word]
    if word in _TARGETS or word in _PROTECTED or len(word) < 4 or word.isdigit():
        return word
    for cut in range(3, len(word) - 2):
        head, tail = word[:cut], word[cut:]
        if head in _TARGETS and tail in _TARGETS:
            return f"{head} {tail}"
    limit = 1 if len(word) < 8 else 2
    near = [t for t in _TARGETS if abs(len(t) - len(word)) <= limit and _edit_distance(word, t) <= limit]
    return near[0] if len(near) == 1 else word


@lru_cache(maxsize=8192)
def caption_words(caption: str) -> tuple[str, ...]:
    """The words and punctuation marks of ``caption``, lower case and typo-corrected.

    Hyphens, slashes, ``&`` and ``+`` separate words ("right-sided" -> "right", "sided");
    ``, . ; : ( )`` are kept as tokens because they end location phrases.
    """
    if not isinstance(caption, str):
        raise TypeError(f"caption must be a str, got {type(caption).__name__}")
    text = _SEPARATORS.sub(" ", unicodedata.normalize("NFKC", caption).lower())
    return tuple(w for token in _WORD.findall(text) for w in fix_word(token).split())
