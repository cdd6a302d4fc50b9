"""A stand-in WordPiece tokenizer for presets whose Hugging Face tokenizer files are not on disk.

Why: BiomedCLIP's tokenizer cannot be downloaded here, but its text tower's cost depends on
how many word pieces a caption becomes. A vocabulary that keeps the benchmark's words whole
tokenises them to about as many pieces as PubMedBERT's 30,522-entry vocabulary does, so
the timed text tower does the same amount of work.
"""
from __future__ import annotations

import contextlib
import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Iterator, Optional, Sequence

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def write_wordpiece_vocab(folder: Path, texts: Sequence[str], size: int) -> str:
    """A BERT WordPiece tokenizer folder (vocab.txt, tokenizer_config.json) for ``texts``.

    BERT's special tokens, every character of ``texts`` alone and as a ``##`` continuation
    (so no word becomes [UNK]), then whole words, most frequent first, up to ``size`` entries
    (the text tower's vocabulary size). A word left out splits into characters.
    """
    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer

    normalize, split = BertNormalizer(lowercase=True).normalize_str, BertPreTokenizer().pre_tokenize_str
    words = Counter(w for t in texts for w, _ in split(normalize(t)))
    chars = sorted({c for w in words for c in w})
    vocab = list(dict.fromkeys([*SPECIAL_TOKENS, *chars, *("##" + c for c in chars),
                                *(w for w, _ in words.most_common())]))
    if len(vocab) > size and size < len(SPECIAL_TOKENS) + 2 * len(chars):
        raise ValueError(f"a vocabulary of {size} entries cannot hold the {len(chars)} characters of the texts; "
                         f"give at least {len(SPECIAL_TOKENS) + 2 * len(chars)}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab[:size]) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True}), encoding="utf-8")
    return str(folder)


def vocab_texts(captions: Sequence[str]) -> list[str]:
    """Texts whose words the stand-in keeps whole: ``captions``, the embedded sample's
    captions and every description of the shipped knowledge bank."""
    from tgcnet import prompts
    from tgcnet.data import read_split
    from tgcnet.data.sample import sample_root

    sample = []
    for split in ("train", "val", "test"):
        try:
            sample += [s.caption for s in read_split(sample_root(), split)]
        except (FileNotFoundError, KeyError, ValueError):
            pass
    bank = prompts.load_default_bank()
    return [*captions, *sample, *(d for concept in bank.keys() for d in bank[concept])]


@contextlib.contextmanager
def tokenizer_folder(preset: str, captions: Sequence[str]) -> Iterator[Optional[str]]:
    """A temporary stand-in tokenizer folder for ``preset`` if its text tower takes a Hugging
    Face tokenizer and the preset names no local folder (``clip.tokenizer``), else None.
    Load the tokenizer (tokenise once) before the block ends: the folder goes with it."""
    from tgcnet.config import get_preset

    clip = get_preset(preset).clip
    text_cfg = (clip.model_cfg or {}).get("text_cfg", {})
    if clip.tokenizer is not None or not text_cfg.get("hf_tokenizer_name"):
        yield None
        return
    size = int(text_cfg.get("hf_model_config", {}).get("vocab_size", 30522))
    with tempfile.TemporaryDirectory(prefix="speed-wordpiece-") as tmp:
        yield write_wordpiece_vocab(Path(tmp), vocab_texts(captions), size)
