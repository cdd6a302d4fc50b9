"""A split's captions as the model will read them: a training-time override applied, and captions
longer than the text context refused before the first batch.

Training, evaluation and the benchmarks that score a split apply these alike, so a caption that
would fail mid-epoch is named up front, and a text-ablated model reads the caption it was trained on.
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Optional

import torch

from tgcnet.data.readers import DataError, format_problems

__all__ = ["override_captions", "check_caption_lengths"]


def override_captions(triples: list, caption: Optional[str]) -> list:
    """The triples with every caption replaced by ``caption`` (None: unchanged)."""
    if caption is None:
        return triples
    if not caption.strip():
        raise ValueError("caption_override must be a non-empty string")
    return [dataclasses.replace(t, caption=caption) for t in triples]


def check_caption_lengths(model: torch.nn.Module, triples: list, where: str, skip_bad: bool = False) -> list:
    """The triples, after refusing (or, with ``skip_bad``, dropping) those whose caption is
    longer than the text context: one error naming every such file, before the first batch,
    rather than a failure mid-epoch."""
    overlong = model.overlong_captions([t.caption for t in triples])
    if not overlong:
        return triples
    problems = [(triples[i].image_path, f"caption has {n} tokens, more than the {model.max_caption_tokens} "
                 f"the text context holds") for i, n in overlong]
    message = f"{where}: {len(problems)} of {len(triples)} captions are too long\n{format_problems(problems)}"
    if not skip_bad:
        raise DataError(message + "\nShorten them, or pass skip_bad=True (--skip-bad) to drop them.", problems)
    warnings.warn(f"skipped {len(problems)} entries: {message}", stacklevel=2)
    bad = {i for i, _ in overlong}
    kept = [t for i, t in enumerate(triples) if i not in bad]
    if not kept:
        raise DataError(f"{where}: no usable triples left after skipping {len(problems)} with too long captions",
                        problems)
    return kept
