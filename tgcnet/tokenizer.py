"""Tokenisers of the CLIP text towers, offline, and the caption checks DATE relies on.

open_clip's own BPE tokenizer ships with it. A Hugging Face tokenizer (BiomedCLIP's
PubMedBERT, SigLIP's) is read from a local folder (``clip.tokenizer``) or the Hugging Face
cache, and only when first needed: a model builds and counts its parameters without
tokenizer files, and its first forward says which folder to pass and what it must hold.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch
from open_clip.tokenizer import SimpleTokenizer, get_clean_fn
from torch.nn.utils.rnn import pad_sequence

#: files a Hugging Face tokenizer folder holds (any one of these vocabularies will do)
HF_VOCAB_FILES = ("tokenizer.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model", "vocab.json")


class TokenizerSource:
    """Turns texts into token ids with the tower's special tokens, without padding or truncation."""

    context_length: int
    pad_id: int
    specials: int   # start/end tokens added to every text

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        raise NotImplementedError

    def truncate(self, ids: list[int]) -> list[int]:
        """``ids`` cut to the context, keeping the end token."""
        return ids[: self.context_length - 1] + ids[-1:]


class OpenClipTokenizer(TokenizerSource):
    """open_clip's ``SimpleTokenizer`` (BPE, start and end tokens, pads with 0)."""

    specials = 2
    pad_id = 0

    def __init__(self, context_length: int, **kwargs) -> None:
        self.tokenizer = SimpleTokenizer(context_length=context_length, **kwargs)
        self.context_length = context_length

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        tok = self.tokenizer
        return [[tok.sot_token_id, *tok.encode(t), tok.eot_token_id] for t in texts]   # encode cleans


class HFTokenizer(TokenizerSource):
    """A transformers tokenizer used as open_clip's ``HFTokenizer`` uses it (same cleaning,
    same special tokens), loaded on first use from ``folder`` or the cache entry ``name``."""

    def __init__(self, name: str, context_length: int, folder: Optional[str], what: str,
                 clean: str = "whitespace", strip_sep_token: bool = False, **kwargs) -> None:
        self.name, self.folder, self.what = name, folder, what
        self.context_length = context_length
        self.clean_fn = get_clean_fn(clean)
        self.strip_sep_token = strip_sep_token
        self.kwargs = kwargs
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = self._load()
        return self._tokenizer

    def _load(self):
        from transformers import AutoTokenizer

        hold = (f"a folder holding tokenizer_config.json and its vocabulary ({' or '.join(HF_VOCAB_FILES)}), "
                f"e.g. a snapshot of the hub repo {self.name!r}")
        if self.folder is not None:
            folder = Path(self.folder)
            if not folder.is_dir() or not any((folder / f).is_file() for f in HF_VOCAB_FILES):
                raise FileNotFoundError(f"clip.tokenizer={self.folder!r} for {self.what}: not {hold}")
            source = str(folder)
        else:
            source = self.name
        try:
            return AutoTokenizer.from_pretrained(source, **self.kwargs)
        except Exception as exc:
            if self.folder is not None:
                raise ValueError(f"could not read the tokenizer in {self.folder} for {self.what}: {exc}") from exc
            raise ValueError(
                f"the tokenizer {self.name!r} of {self.what} is not available: not in the local Hugging Face cache "
                f"({type(exc).__name__}); pass clip__tokenizer='/path/to/folder' ({hold}), or download it once "
                f"with: hf download {self.name}") from exc

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad) if pad is not None else 0

    @property
    def specials(self) -> int:
        return int(self.tokenizer.num_special_tokens_to_add(pair=False))

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        ids = self.tokenizer([self.clean_fn(t) for t in texts], add_special_tokens=True)["input_ids"]
        if self.strip_sep_token:   # as open_clip does: the separator becomes id 0
            sep = self.tokenizer.sep_token_id
            ids = [[0 if i == sep else i for i in row] for row in ids]
        return [list(row) for row in ids]


def tokenizer_source(text_cfg: dict, context_length: int, folder: Optional[str], what: str) -> TokenizerSource:
    """The tokenizer an open_clip ``text_cfg`` asks for (``hf_tokenizer_name`` or open_clip's BPE)."""
    kwargs = dict(text_cfg.get("tokenizer_kwargs") or {})
    name = text_cfg.get("hf_tokenizer_name")
    if name or folder is not None:
        return HFTokenizer(name or str(folder), context_length, folder, what, **kwargs)
    return OpenClipTokenizer(context_length, **kwargs)


class CaptionTokenizer:
    """Tokenise captions, refusing empty ones and ones longer than the text context.

    A caption is the only text a user gives per image: cutting it would drop words (often
    the location ones at the end) and segment from what is left, so an over-long caption is
    an error naming it. Knowledge descriptions come from a bank or an LLM cache and only
    add context; they are truncated with one warning per call.

    Rows are padded to the longest text of the call, or to the full context where the
    tower was trained on full-length input (``pad_to_context``).
    """

    def __init__(self, source: TokenizerSource, pad_to_context: bool = False) -> None:
        self.source = source
        self.pad_to_context = pad_to_context

    @property
    def tokenizer(self) -> TokenizerSource:
        return self.source

    @property
    def context_length(self) -> int:
        return self.source.context_length

    @property
    def room(self) -> int:
        """Tokens a text may have besides the start and end tokens."""
        return self.context_length - self.source.specials

    def length(self, text: str) -> int:
        """Tokens of ``text`` without start/end tokens."""
        return len(self.source.encode([text])[0]) - self.source.specials

    def overlong(self, texts: Sequence[str]) -> list[tuple[int, int]]:
        """``(index, tokens)`` of each text longer than the context."""
        lengths = {t: self.length(t) for t in dict.fromkeys(texts)}
        return [(i, lengths[t]) for i, t in enumerate(texts) if lengths[t] > self.room]

    def __call__(self, texts: Sequence[str], what: str = "caption",
                 positions: Optional[Sequence[int]] = None) -> torch.Tensor:
        """``positions``: where each text sits in the caller's batch, for the error messages
        (DATE tokenises the batch's distinct captions only); default ``0..n-1``."""
        names = [f"{what} {i}" for i in (range(len(texts)) if positions is None else positions)]
        for name, text in zip(names, texts):
            if not isinstance(text, str):
                raise ValueError(f"{name} must be a str, got {type(text).__name__}")
            if not text.strip():
                raise ValueError(f"{name} is empty; every image needs a non-empty caption")
        encoded = self.source.encode(texts)
        specials = self.source.specials
        too_long = [(i, len(ids) - specials) for i, ids in enumerate(encoded) if len(ids) > self.context_length]
        if too_long:
            detail = ", ".join(f"{names[i]} has {n} tokens" for i, n in too_long[:5])
            if what == "caption":
                raise ValueError(f"{len(too_long)} {what}(s) longer than the text context of {self.room} tokens "
                                 f"({detail}); shorten them")
            warnings.warn(f"{len(too_long)} {what}(s) longer than the {self.room}-token context were truncated "
                          f"({detail})", stacklevel=3)
            encoded = [self.source.truncate(ids) if len(ids) > self.context_length else ids for ids in encoded]
        rows = [torch.tensor(ids, dtype=torch.long) for ids in encoded]
        if self.pad_to_context:
            rows.append(torch.zeros(self.context_length, dtype=torch.long))   # sets the padded length
        ids = pad_sequence(rows, batch_first=True, padding_value=self.source.pad_id)
        return ids[: len(encoded)]
