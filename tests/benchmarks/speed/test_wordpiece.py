"""benchmarks.speed.wordpiece: a stand-in vocabulary that keeps the benchmark's words whole."""
from __future__ import annotations

import pytest

from benchmarks.speed.wordpiece import write_wordpiece_vocab


def test_wordpiece_vocab_fits_the_tower(tmp_path):
    """Whole words up to the tower's vocabulary size, every character kept: nothing tokenises to [UNK]."""
    transformers = pytest.importorskip("transformers")
    texts = ["Bilateral pulmonary infection, lower left lung.", "Ground-glass opacity (GGO) in COVID-19."]
    whole = write_wordpiece_vocab(tmp_path / "whole", texts, size=30522)
    vocab = (tmp_path / "whole" / "vocab.txt").read_text().split("\n")[:-1]
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] and "bilateral" in vocab
    ids = transformers.AutoTokenizer.from_pretrained(whole)(texts)["input_ids"]
    assert len(ids[0]) == 2 + 8      # [CLS] bilateral pulmonary infection , lower left lung . [SEP]
    small = write_wordpiece_vocab(tmp_path / "small", texts, size=len(vocab) - 5)
    assert len((tmp_path / "small" / "vocab.txt").read_text().split("\n")[:-1]) == len(vocab) - 5
    tok = transformers.AutoTokenizer.from_pretrained(small)
    cut = tok(texts)["input_ids"]
    assert all(tok.unk_token_id not in row for row in cut) and len(cut[1]) > len(ids[1])
    with pytest.raises(ValueError, match="cannot hold"):
        write_wordpiece_vocab(tmp_path / "tiny", texts, size=10)
