"""The shared caption tokenizer and typo fixer."""
from __future__ import annotations

import pytest

from tgcnet.prompts.words import caption_words, fix_word


def test_typo_correction_does_not_invent_words():
    assert " ".join(caption_words("eight light night")) == "eight light night"
    assert " ".join(caption_words("Upper  Midlle  LEF lung")) == "upper middle left lung"


@pytest.mark.parametrize("typo, word", [
    ("lefft", "left"), ("leftt", "left"), ("lef", "left"), ("rigth", "right"), ("rihgt", "right"),
    ("righ", "right"), ("rght", "right"), ("uppper", "upper"), ("uper", "upper"), ("midlle", "middle"),
    ("midle", "middle"), ("middel", "middle"), ("midldle", "middle"), ("lowwer", "lower"), ("lowe", "lower"),
    ("loweer", "lower"), ("lowerleft", "lower left"), ("bibasal", "both lower zones"),
])
def test_fix_word_reads_the_typos_data_sets_ship(typo, word):
    assert fix_word(typo) == word


def test_hyphens_split_words_and_phrase_marks_stay_tokens():
    assert caption_words("Right-sided effusion (RUL); LOWERLEFT lung.") == (
        "right", "sided", "effusion", "(", "rul", ")", ";", "lower", "left", "lung", ".")


def test_non_string_is_a_type_error():
    with pytest.raises(TypeError, match="caption must be a str"):
        caption_words(None)  # type: ignore[arg-type]
