"""How many infected areas a caption states.

Two readers need it: the language-guided loss, which bounds the number of regions predicted
on an image without a mask by the caption's count, and the labelled split, which stratifies
on it so a labelled subset keeps the data set's mix of one-area and many-area images.

The count is read by the concept extraction's count pattern (kind ``count`` of
:func:`tgcnet.prompts.concepts.extract_concepts`), so "two infected areas", "2 lesions",
"a single focus" and "no infected areas" are read exactly as the knowledge bank reads them.
On QaTa-COV19 the count is of lung zones involved ("six infected areas" = three zones on each
side), so one connected lesion spanning two zones counts as two areas: the count is an upper
bound on the connected regions, never a lower one.
"""
from __future__ import annotations

from typing import Optional

from tgcnet.prompts.concepts import extract_concepts
from tgcnet.prompts.words import NUMBERS

__all__ = ["MULTIPLE", "stated_count_word", "stated_area_count"]

#: the count word of "multiple / several / many areas": no finite bound
MULTIPLE = "multiple"
_PREFIX = "count:"


def stated_count_word(caption: str) -> Optional[str]:
    """``"no"``, ``"one"`` ... ``"ten"`` or ``"multiple"``: the largest count the caption states; None if it
    states none. A caption stating several counts is bounded by the largest, so no statement is contradicted."""
    words = [key[len(_PREFIX):].rsplit(" ", 1)[0] for key in extract_concepts(caption) if key.startswith(_PREFIX)]
    if not words:
        return None
    if MULTIPLE in words:
        return MULTIPLE
    return max(words, key=NUMBERS.index)


def stated_area_count(caption: str) -> Optional[int]:
    """The number of infected areas the caption states (0 for "no infected areas"); None when it states
    none or only "multiple", which bound nothing."""
    word = stated_count_word(caption)
    return None if word in (None, MULTIPLE) else NUMBERS.index(word)
