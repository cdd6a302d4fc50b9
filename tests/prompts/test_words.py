"""The shared caption tokenizer and typo fixer."""
from __future__ import annotations

import pytest

from tgcnet.prompts.words import caption_tokens, caption_words, fix_word, replace_words


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


def test_caption_tokens_keep_joined_words_and_every_mark():
    assert caption_tokens("Ground-glass opacity (GGO), patient's  LEFT lung.") == [
        "ground-glass", "opacity", "(", "ggo", ")", ",", "patient's", "left", "lung", "."]


def test_replace_words_changes_words_only_and_reads_them_as_the_parsers_do():
    text = "Left-sided,  l3ft\tlung (RUL)!"
    assert replace_words(text, str.upper) == "LEFT-SIDED,  L3FT\tLUNG (RUL)!"
    seen: list[str] = []
    replace_words(text, lambda w: seen.append(w.lower()) or w)
    assert [fix_word(w) for w in seen] == [w for w in caption_words(text) if w.isalnum()]
