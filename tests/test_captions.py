"""Captions as users have them (LViT's verbatim QaTa text) in the one canonical form."""
import pytest

from tgcnet.captions import normalize_caption, tidy_text
from tgcnet.prompts.locations import parse_location
from tgcnet.prompts.words import WHOLE_WORDS


@pytest.mark.parametrize("noisy, canonical", [
    ("Bilateral pulmonary infection, two infection areas,  upper midlle left lung and lower right lung",
     "bilateral pulmonary infection, two infected areas, upper middle left lung and lower right lung."),
    ("Unilateral pulmonary infection, one infected area, all left lung",
     "unilateral pulmonary infection, one infected area, upper middle lower left lung."),
    ("bilateral pulmonary infection , eight infected areas,upper lower rigth lung .",
     "bilateral pulmonary infection, eight infected areas, upper lower right lung."),
    ("Ground-glass opacity (GGO) in the lowerleft lung; no effusion",
     "ground-glass opacity (ggo) in the lower left lung; no effusion."),
    ("COVID-19 pneumonia, whole right lung", "covid-19 pneumonia, upper middle lower right lung."),
])
def test_noisy_caption_to_canonical(noisy, canonical):
    assert normalize_caption(noisy) == canonical


def test_canonical_captions_are_unchanged_and_it_is_idempotent():
    from helpers import CAPTIONS

    for caption in CAPTIONS:
        assert normalize_caption(caption) == caption
        assert normalize_caption(normalize_caption(caption.upper())) == caption


def test_real_words_near_a_location_word_are_kept():
    assert normalize_caption("eight infected areas, light opacity.") == "eight infected areas, light opacity."


def test_embedded_sample_captions_are_already_canonical():
    from tgcnet.data import read_split
    from tgcnet.data.sample import sample_root

    for split in ("train", "valid", "test"):
        for triple in read_split(sample_root(), split):
            assert normalize_caption(triple.caption) == triple.caption


def test_tidy_text_collapses_whitespace_and_keeps_words_and_case():
    assert tidy_text("  Upper  left\tlung. ") == "Upper left lung."
    assert tidy_text(float("nan")) == ""
    assert tidy_text(None) == ""


@pytest.mark.parametrize("word", WHOLE_WORDS)
def test_whole_lung_words_read_alike_by_the_caption_form_and_the_location_parser(word):
    caption = f"{word} left lung"
    assert normalize_caption(caption) == "upper middle lower left lung."
    assert parse_location(caption).parts == parse_location("upper middle lower left lung").parts
    assert parse_location(f"{word} infected areas").everywhere  # not a location when no lung follows
