"""Which image side the words "left" and "right" in a caption denote.

Measured on ../shared/data/qata-mini (captions naming one side only, 204 triples over
the three splits): the infected area lies on the *image's* left half when the caption
says "left" in 96% of cases (train 104/108, valid 34/37, test 57/59). QaTa-COV19's
text annotations therefore follow the image-side convention, not the radiological
patient-side one. Both are supported; the flip augmentation and the guidance masks
read the same setting so they can never disagree.
"""
from __future__ import annotations

from typing import Literal

from tgcnet.prompts.words import fix_word, replace_words

Laterality = Literal["image", "patient"]
LATERALITIES: tuple[str, ...] = ("image", "patient")
DEFAULT_LATERALITY: Laterality = "image"

_OTHER_SIDE = {"left": "right", "right": "left"}


def check_laterality(laterality: str) -> Laterality:
    """Return ``laterality`` if known, else raise a ValueError naming the choices."""
    if laterality not in LATERALITIES:
        raise ValueError(f"laterality must be one of {LATERALITIES}, got {laterality!r}")
    return laterality  # type: ignore[return-value]


def _cased_like(word: str, text: str) -> str:
    if word.isupper() and len(word) > 1:
        return text.upper()
    return text.capitalize() if word[0].isupper() else text


def swap_left_right(caption: str) -> str:
    """Swap the words left and right, keeping their case.

    A horizontal flip of the image moves the lesion to the other side, so the caption
    must move with it whichever convention is in use. A side word is whatever the location
    parser reads as one (:func:`tgcnet.prompts.words.fix_word` over the shared word
    tokenizer): a misspelt "rigth" or a glued "lowerleft" is swapped too (to "left", "lower
    right"), or the parser would read the flipped caption's side on the wrong half. Other
    words and everything between words are kept exactly.
    """
    return replace_words(caption, _swapped)


def _swapped(word: str) -> str:
    """``word`` with the side it names swapped, in its own case; any other word unchanged."""
    if word.lower() in _OTHER_SIDE:
        return _cased_like(word, _OTHER_SIDE[word.lower()])
    parts = fix_word(word.lower()).split()
    if not any(p in _OTHER_SIDE for p in parts):
        return word
    return _cased_like(word, " ".join(_OTHER_SIDE.get(p, p) for p in parts))


def image_half(side: Literal["left", "right"], laterality: Laterality = DEFAULT_LATERALITY) -> Literal["left", "right"]:
    """The half of the image (as displayed) that the caption word ``side`` denotes."""
    check_laterality(laterality)
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    if laterality == "image":
        return side
    return "right" if side == "left" else "left"
