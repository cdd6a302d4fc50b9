"""The number of infected areas a caption states."""
from __future__ import annotations

import pytest

from tgcnet.caption_counts import stated_area_count, stated_count_word


@pytest.mark.parametrize("caption, word, count", [
    ("Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung.", "two", 2),
    ("unilateral pulmonary infection, one infected area, lower left lung.", "one", 1),
    ("No infected areas, normal lung.", "no", 0),
    ("3 lesions in the right lung.", "three", 3),
    ("a single focus, left lower lobe; two patches on the right.", "two", 2),  # the largest statement bounds
    ("multiple infected areas, both lungs.", "multiple", None),
    ("several opacities and one area of consolidation.", "multiple", None),
    ("twelve infected areas.", "multiple", None),
    ("bilateral pulmonary infection, lower left lung.", None, None),
])
def test_counts_are_read_like_the_concept_extraction(caption, word, count):
    assert stated_count_word(caption) == word
    assert stated_area_count(caption) == count
