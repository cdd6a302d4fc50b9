"""Caption words: the one tokenizer and typo fixer that every reader of caption text shares.

The location parser (:mod:`.locations`), the concept extraction (:mod:`.concepts`), the
canonical caption the model reads (``tgcnet.captions.normalize_caption``) and the left/right
swap of a flipped image (``tgcnet.laterality.swap_left_right``) must agree on what a word is
and on how a misspelt word is read, or "midlle left lung" would be a location for one of them
and noise for another. A word is a run of ASCII letters and digits; each reader takes the view
of the text it needs from here: :func:`caption_words` (the parsers), :func:`caption_tokens`
(the canonical caption), :func:`replace_words` (edits that keep everything else).

Data sets ship captions with capitals, double spaces, hyphens, glued words ("lowerleft") and
single-letter typos ("midlle", "rigth", "lef"); :func:`fix_word` corrects those towards a
closed vocabulary of words that carry a concept, and never "corrects" a real word that
happens to be one edit away ("eight" is not "right").
"""
from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Callable

__all__ = ["SIDES", "ZONES", "WHOLE_WORDS", "NUMBERS", "NUMBER_WORDS", "caption_words", "caption_tokens",
           "replace_words", "fix_word"]

SIDES: tuple[str, ...] = ("left", "right")
ZONES: tuple[str, ...] = ("upper", "middle", "lower")
# Words that name every zone of the lung they qualify: "all left lung" is "upper middle lower left lung".
WHOLE_WORDS: tuple[str, ...] = ("all", "whole", "entire")
NUMBERS: tuple[str, ...] = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
NUMBER_WORDS: tuple[str, ...] = NUMBERS + ("zero", "none", "single", "eleven", "twelve", "multiple", "several",
                                           "many", "numerous", "multifocal")

# Words typos are corrected towards (only words that carry a concept or structure a phrase).
_TARGETS = frozenset(
    SIDES + ZONES + NUMBER_WORDS + (
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
_WORD_CHARS = "a-z0-9"
_WORD = f"[{_WORD_CHARS}]+"
# Words in any case, for edits that must leave the rest of the text exactly as it was.
_CASED_WORD = re.compile(_WORD, re.ASCII | re.IGNORECASE)
# What the parsers read: words, and the marks that end a location phrase.
_PARSER_TOKEN = re.compile(rf"{_WORD}|[,.;:()]")
# What the canonical caption is rebuilt from: hyphen- or apostrophe-joined words whole, and every other mark.
_LAYOUT_TOKEN = re.compile(rf"{_WORD}(?:[-']{_WORD})*|[^\s{_WORD_CHARS}]")


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


def _folded(caption: str) -> str:
    """Compatibility form, lower case: "ＬＥＦＴ" and "Left" are the same word to every reader."""
    if not isinstance(caption, str):
        raise TypeError(f"caption must be a str, got {type(caption).__name__}")
    return unicodedata.normalize("NFKC", caption).lower()


@lru_cache(maxsize=8192)
def caption_words(caption: str) -> tuple[str, ...]:
    """The words and punctuation marks of ``caption``, lower case and typo-corrected.

    Hyphens, slashes, ``&`` and ``+`` separate words ("right-sided" -> "right", "sided");
    ``, . ; : ( )`` are kept as tokens because they end location phrases.
    """
    text = _SEPARATORS.sub(" ", _folded(caption))
    return tuple(w for token in _PARSER_TOKEN.findall(text) for w in fix_word(token).split())


def caption_tokens(caption: str) -> list[str]:
    """``caption`` lower case, split into words and single marks, nothing corrected or dropped but spaces.

    Unlike :func:`caption_words` this keeps the caption's own spelling to rebuild it from:
    "right-sided" and "patient's" stay one token (a text tower reads them so), and every
    non-space mark is a token of its own.
    """
    return _LAYOUT_TOKEN.findall(_folded(caption))


def replace_words(text: str, replace: Callable[[str], str]) -> str:
    """``text`` with each word (any case) replaced by ``replace(word)``, every other character kept.

    For edits of a caption the user wrote ("left" <-> "right" when an image is flipped), which
    must change the words the parsers read and nothing else.
    """
    return _CASED_WORD.sub(lambda match: replace(match.group(0)), text)
