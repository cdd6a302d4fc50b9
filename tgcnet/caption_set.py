"""A TGCNet with its caption set fixed: the tensor module an ONNX graph is made from.

The text side of TGCNet runs Python (tokenizer, caption normalisation, knowledge lookup), so
an exported graph takes a caption *index*: each caption's text features, and its guidance
mask when the model has a guidance prior, are computed once here and held as buffers.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import torch
from torch import nn

from tgcnet.captions import normalize_caption
from tgcnet.date import TextFeatures

if TYPE_CHECKING:
    from tgcnet.model import TGCNet

__all__ = ["CaptionSetSegmenter", "prepare_captions", "refuse_empty"]


def refuse_empty(given: Sequence[tuple[str, str]]) -> None:
    empty = [where for where, text in given if not text]
    if empty:
        raise ValueError(f"{len(empty)} empty caption(s): {'; '.join(empty[:5])}; remove them or write what to "
                         "segment, e.g. 'unilateral pulmonary infection, one infected area, lower left lung.'")


def prepare_captions(model: "TGCNet", given: Sequence[tuple[str, str]]) -> tuple[list[str], dict[str, int]]:
    """The caption set as the model reads it, and a lookup of every given form -> index.

    Each caption is tidied and, when the model normalises captions, put in canonical form
    (what ``TGCNet.check_inputs`` does); empty and overlong ones are refused, all named at
    once; duplicates (after normalisation) are dropped, the first order kept.
    """
    refuse_empty(given)
    norm = model.config.normalize_captions
    stored = [normalize_caption(text) if norm else text for _, text in given]
    empty = [where for (where, _), text in zip(given, stored) if not text]
    if empty:
        raise ValueError(f"{len(empty)} caption(s) hold no words: {'; '.join(empty[:5])}")
    overlong = model.overlong_captions(stored)
    if overlong:
        listed = "; ".join(f"{given[i][0]}: {n} tokens" for i, n in overlong[:5])
        raise ValueError(f"{len(overlong)} caption(s) longer than the {model.max_caption_tokens} tokens the text "
                         f"context holds ({listed}); shorten them")
    unique = list(dict.fromkeys(stored))
    index = {text: i for i, text in enumerate(unique)}
    lookup = dict(index)
    for (_, text), canonical in zip(given, stored):
        lookup.setdefault(text, index[canonical])
    return unique, lookup


def _pad(rows: list[torch.Tensor], length: int) -> torch.Tensor:
    """Rows (L, ...) zero-padded (False for bool) along L to ``length`` and stacked."""
    out = []
    for row in rows:
        pad = row.new_zeros((length - row.shape[0], *row.shape[1:]))
        out.append(torch.cat([row, pad]))
    return torch.stack(out)


class CaptionSetSegmenter(nn.Module):
    """A TGCNet's tensor path with a fixed caption set: ``forward(images, caption_index) -> logits``.

    The text features of each caption (and its guidance mask, when the model uses one) are
    buffers; ``caption_index`` gathers them. Captions of different lengths are zero-padded to
    the longest: the padding never reaches the output, since the text mask excludes it as
    attention keys and the pooling weights are zero there (as in DATE's own padded batches).
    The model's modules are reused as they are; TGCNet.forward's input checks are left out
    (they read tensor values, which a traced graph cannot).
    """

    def __init__(self, model: "TGCNet", captions: Sequence[str], image_size: int) -> None:
        super().__init__()
        if not captions:
            raise ValueError("the caption set is empty; give at least one caption")
        self.model = model.eval()
        self.captions = list(captions)
        self.image_size = image_size
        with torch.no_grad():
            feats = [model.date([c]) for c in self.captions]   # each alone, as eval mode encodes them
        length = max(f.tokens.shape[1] for f in feats)
        self.register_buffer("tokens", _pad([f.tokens[0] for f in feats], length))
        self.register_buffer("token_mask", _pad([f.mask[0] for f in feats], length))
        self.register_buffer("pooled", torch.stack([f.pooled[0] for f in feats]))
        self.register_buffer("pool_weights", _pad([f.pool_weights[0] for f in feats], length))
        self.guidance: Optional[torch.Tensor]
        self.register_buffer("guidance", self._guidance(model, image_size))

    def _guidance(self, model: "TGCNet", image_size: int) -> Optional[torch.Tensor]:
        """(N, 1, h, w) guidance masks at the feature grid, where the model's VLCM reads them: only
        a guidance prior changes the logits (a guidance loss acts in training alone)."""
        if model.vlcm.guidance_strength is None:
            return None
        grid = image_size // model.patch_size
        return model.guidance(self.captions, (grid, grid))

    def forward(self, images: torch.Tensor, caption_index: torch.Tensor) -> torch.Tensor:
        m = self.model
        text = TextFeatures(tokens=self.tokens[caption_index], mask=self.token_mask[caption_index],
                            pooled=self.pooled[caption_index], pool_weights=self.pool_weights[caption_index])
        guidance = None if self.guidance is None else self.guidance[caption_index]
        visual = m.sse(m.clip_input(images))
        calibrated = m.vlcm(visual.dense, text, guidance)
        return m.decoder(visual.pyramid, calibrated, size=images.shape[-2:])
