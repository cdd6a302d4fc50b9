"""The noisy-caption benchmark's rewrites, and that the canonical form undoes each of them."""
import importlib.util
import random
import sys
from pathlib import Path

from tgcnet.captions import normalize_caption
from tgcnet.data import read_split
from tgcnet.data.sample import sample_root

REPO = Path(__file__).resolve().parents[1]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("noisy_captions", REPO / "benchmarks" / "noisy_captions.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["noisy_captions"] = module
    spec.loader.exec_module(module)
    return module


def test_noise_is_lvit_like_and_the_canonical_form_undoes_it():
    bench = load_benchmark()
    rng = random.Random(0)
    captions = sorted({t.caption for split in ("train", "valid", "test") for t in read_split(sample_root(), split)})
    noisy = [bench.make_noisy(c, rng) for c in captions]
    assert all(n != c and n[0].isupper() and not n.endswith(".") for n, c in zip(noisy, captions))
    assert any("all left lung" in n or "all right lung" in n for n in noisy)
    assert [normalize_caption(n) for n in noisy] == captions


def test_noisy_copy_of_the_real_test_split(qata_mini_root, tmp_path):
    bench = load_benchmark()
    bench.noisy_copy(qata_mini_root, "test", tmp_path)
    clean, noisy = read_split(qata_mini_root, "test"), read_split(tmp_path, "test")
    assert [t.name for t in clean] == [t.name for t in noisy]
    assert sum(c.caption != n.caption for c, n in zip(clean, noisy)) == len(clean)
    assert [normalize_caption(n.caption) for n in noisy] == [c.caption for c in clean]
