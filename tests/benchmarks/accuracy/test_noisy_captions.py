"""benchmarks.accuracy.noisy_captions: LViT-like rewrites, and the canonical caption form undoing each of them."""
from __future__ import annotations

import random

from benchmarks.accuracy.noisy_captions import make_noisy, noisy_copy
from tgcnet.captions import normalize_caption
from tgcnet.data import read_split
from tgcnet.data.sample import sample_root


def test_noise_is_lvit_like_and_the_canonical_form_undoes_it():
    rng = random.Random(0)
    captions = sorted({t.caption for split in ("train", "valid", "test") for t in read_split(sample_root(), split)})
    noisy = [make_noisy(c, rng) for c in captions]
    assert all(n != c and n[0].isupper() and not n.endswith(".") for n, c in zip(noisy, captions))
    assert any("all left lung" in n or "all right lung" in n for n in noisy)
    assert [normalize_caption(n) for n in noisy] == captions


def test_noisy_copy_of_the_real_test_split(qata_mini_root, tmp_path):
    noisy_copy(qata_mini_root, "test", tmp_path)
    clean, noisy = read_split(qata_mini_root, "test"), read_split(tmp_path, "test")
    assert [t.name for t in clean] == [t.name for t in noisy]
    assert sum(c.caption != n.caption for c, n in zip(clean, noisy)) == len(clean)
    assert [normalize_caption(n.caption) for n in noisy] == [c.caption for c in clean]
