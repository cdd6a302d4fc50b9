"""The two forms of caption text: a tidied data-file cell, and the canonical caption the model reads.

* :func:`tidy_text` is what a data reader does to a cell of an annotation table: strip and
  collapse whitespace, keep words and case (rewriting words while reading a data set would
  be guessing; a NaN or empty cell is ``""`` so it is reported as missing).
* :func:`normalize_caption` is the one form a caption takes before the text tower and the
  location-word parser read it (the model applies it itself, see below).

Users train and test with the captions their data set ships. LViT's QaTa-COV19 text (which
GuideDecoder-layout copies carry verbatim) is noisier than the cleaned captions most models
are trained on: capitalised, double spaces, "midlle", "infection areas", "all left lung" for
"upper middle lower left lung", no final period. Each of these gives the text tower tokens it
never saw and the guidance parser location words in another form, so the caption is put in
one canonical form first, for both:

- Unicode compatibility form, lower case, single spaces, no space before ``, . ; :`` and one after
  (the words are :func:`tgcnet.prompts.words.caption_tokens`, the tokenizer every caption reader shares);
- typos of the location, count and finding vocabulary corrected word by word (the word
  fixer that the location parser and the knowledge-concept extraction also use,
  :func:`tgcnet.prompts.words.fix_word`: "midlle" -> "middle", "rigth" -> "right",
  "lowerleft" -> "lower left"; real words one edit from a target, such as "eight", are kept);
- "all / whole / entire <side> lung" -> "upper middle lower <side> lung" (what the cleaned
  captions say, and how the location parser reads those words:
  :data:`tgcnet.prompts.words.WHOLE_WORDS`), "infection area(s)" -> "infected area(s)";
- a final period.

A caption already in that form (all cleaned QaTa captions) is returned unchanged.
"""
from __future__ import annotations

import re

from tgcnet.prompts.words import SIDES, WHOLE_WORDS, ZONES, caption_tokens, fix_word

__all__ = ["normalize_caption", "tidy_text"]

_PHRASES = (
    (re.compile(rf"\b(?:{'|'.join(WHOLE_WORDS)}) ({'|'.join(SIDES)}) lung\b"), rf"{' '.join(ZONES)} \1 lung"),
    (re.compile(r"\binfection (areas?)\b"), r"infected \1"),
)
_NO_SPACE_BEFORE = frozenset(",.;:)")


def normalize_caption(caption: str) -> str:
    """``caption`` in the canonical form described in the module docstring."""
    words = [fix_word(t) if t.isalpha() else t for t in caption_tokens(caption)]
    text = ""
    for word in words:
        if text and word not in _NO_SPACE_BEFORE and not text.endswith("("):
            text += " "
        text += word
    for pattern, replacement in _PHRASES:
        text = pattern.sub(replacement, text)
    text = text.rstrip(" ,;:")
    return text if not text or text.endswith((".", "!", "?")) else text + "."


def tidy_text(cell: object) -> str:
    """A data-file cell as text: stripped, whitespace collapsed, words and case kept; None/NaN -> ""."""
    if cell is None or (isinstance(cell, float) and cell != cell):  # NaN from pandas
        return ""
    return " ".join(str(cell).split())
