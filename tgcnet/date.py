"""DATE, the Domain-Augmented Text Encoder.

CLIP's text tower never saw "ground-glass opacity" in a radiology sense. DATE keeps it
frozen, tunes it with LoRA, and enriches each caption with short medical descriptions of
the concepts it names (from a knowledge bank): the descriptions are encoded by the same
tower and fused into the caption's tokens by a gated cross-attention.
"""
from __future__ import annotations

import logging
import warnings
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Optional, Protocol, Sequence

import torch
from open_clip.tokenizer import SimpleTokenizer
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from tgcnet.adapters import apply_lora, lora_disabled, project_attention
from tgcnet.backbone import TextTower
from tgcnet.config import DATEConfig
from tgcnet.kernels import use_onednn_linears
from tgcnet.layers import GatedCrossAttention

logger = logging.getLogger(__name__)

#: values of ``DATEConfig.knowledge_encoder`` (see its docstring)
KNOWLEDGE_ENCODERS = ("lora", "frozen")


class KnowledgeSource(Protocol):
    """Anything that maps a caption to medical descriptions (e.g. ``tgcnet.prompts.KnowledgeBank``)."""

    def descriptions_for(self, caption: str) -> list[str]: ...


@dataclass
class TextFeatures:
    tokens: torch.Tensor   # (B, L, D) token features in the joint space
    mask: torch.Tensor     # (B, L) bool, True for real tokens (SOT..EOT)
    pooled: torch.Tensor   # (B, D) sentence embedding (the EOT token's feature)
    pool_index: torch.Tensor  # (B,) index of the pooled token


class CaptionTokenizer:
    """Tokenise captions, refusing empty ones and ones longer than the text context.

    A caption is the only text a user gives per image: cutting it would drop words (often
    the location ones at the end) and segment from what is left, so an over-long caption is
    an error naming it. Knowledge descriptions come from a bank or an LLM cache and only
    add context; they are truncated with one warning per call.
    """

    def __init__(self, tokenizer: Any, context_length: int) -> None:
        self.tokenizer = tokenizer
        self.context_length = context_length

    @property
    def room(self) -> int:
        """Tokens a text may have besides the start and end tokens."""
        return self.context_length - 2

    def length(self, text: str) -> Optional[int]:
        """Tokens of ``text`` without start/end tokens; None where the tokenizer cannot tell."""
        if isinstance(self.tokenizer, SimpleTokenizer):
            return len(self.tokenizer.encode(text))
        inner = getattr(self.tokenizer, "tokenizer", None)  # open_clip's HFTokenizer wraps a transformers one
        if callable(inner):
            return len(inner(text, add_special_tokens=False)["input_ids"])
        return None

    def overlong(self, texts: Sequence[str]) -> list[tuple[int, int]]:
        """``(index, tokens)`` of each text longer than the context."""
        lengths = {t: self.length(t) for t in dict.fromkeys(texts)}
        return [(i, lengths[t]) for i, t in enumerate(texts) if (lengths[t] or 0) > self.room]

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
        if isinstance(self.tokenizer, SimpleTokenizer):
            return self._simple(texts, what, names)
        if what == "caption":
            self._refuse_overlong(self.overlong(texts), what, names)
        return self.tokenizer(list(texts))

    def _refuse_overlong(self, too_long: list[tuple[int, int]], what: str, names: list[str]) -> None:
        if too_long:
            detail = ", ".join(f"{names[i]} has {n} tokens" for i, n in too_long[:5])
            raise ValueError(f"{len(too_long)} {what}(s) longer than the text context of {self.room} tokens "
                             f"({detail}); shorten them")

    def _simple(self, texts: Sequence[str], what: str, names: list[str]) -> torch.Tensor:
        tok = self.tokenizer
        sot, eot = tok.sot_token_id, tok.eot_token_id
        encoded = [tok.encode(text) for text in texts]
        too_long = [(i, len(ids)) for i, ids in enumerate(encoded) if len(ids) > self.room]
        if too_long:
            if what == "caption":
                self._refuse_overlong(too_long, what, names)
            detail = ", ".join(f"{names[i]} has {n} tokens" for i, n in too_long[:5])
            warnings.warn(f"{len(too_long)} {what}(s) longer than the {self.room}-token context were truncated "
                          f"({detail})", stacklevel=3)
        rows = [torch.tensor([sot, *ids[: self.room], eot], dtype=torch.long) for ids in encoded]
        return pad_sequence(rows, batch_first=True)


class KnowledgeFusion(nn.Module):
    """Caption tokens attend to their descriptions' embeddings (gated residual).

    A learned "no knowledge" key is always present so a caption with no descriptions
    attends to it instead of to nothing (an all-masked softmax is NaN).
    """

    def __init__(self, dim: int, inner_dim: int, heads: int, gate_init: float) -> None:
        super().__init__()
        self.null = nn.Parameter(torch.zeros(1, 1, dim))
        self.attn = GatedCrossAttention(dim, dim, inner_dim, heads, gate_init)

    def forward(self, tokens: torch.Tensor, knowledge: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b = tokens.shape[0]
        context = torch.cat([self.null.to(knowledge.dtype).expand(b, 1, -1), knowledge], dim=1)
        keep = torch.cat([mask.new_ones(b, 1), mask], dim=1)
        return self.attn(tokens, context, keep)


class DATE(nn.Module):
    def __init__(self, text_tower: TextTower, tokenizer: Any, cfg: DATEConfig,
                 knowledge: Optional[KnowledgeSource] = None, onednn_linear: bool = True) -> None:
        """``onednn_linear``: the tower's frozen linear layers (LoRA's base layers included) run
        through oneDNN on a CPU in float32 (:mod:`tgcnet.kernels`); LoRA itself is unaffected."""
        super().__init__()
        if cfg.knowledge_encoder not in KNOWLEDGE_ENCODERS:
            raise ValueError(f"date.knowledge_encoder must be one of {', '.join(KNOWLEDGE_ENCODERS)}, "
                             f"got {cfg.knowledge_encoder!r}")
        self.cfg = cfg
        if onednn_linear:
            # after the attention swap (its projections are new nn.Linear layers), before
            # LoRA wraps them: peft then wraps the oneDNN layers as their base layers
            project_attention(text_tower)
            use_onednn_linears(text_tower.transformer)
        self.text_tower = apply_lora(text_tower, cfg.lora)
        self.tokenize = CaptionTokenizer(tokenizer, text_tower.context_length)
        dim = text_tower.output_dim
        self.knowledge_fusion = (KnowledgeFusion(dim, cfg.knowledge_dim, cfg.knowledge_heads, cfg.gate_init)
                                 if cfg.use_knowledge else None)
        self.knowledge = knowledge
        self._description_cache: dict[str, torch.Tensor] = {}
        self._caption_cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = OrderedDict()
        self._caption_cache_key: tuple = ()

    def train(self, mode: bool = True) -> "DATE":
        # LoRA weights may change while training: embeddings they made go stale. The frozen
        # encoder's do not depend on anything trainable, so they are kept.
        if not self.frozen_knowledge:
            self._description_cache.clear()
        self._caption_cache.clear()
        return super().train(mode)

    @property
    def frozen_knowledge(self) -> bool:
        return self.cfg.knowledge_encoder == "frozen"

    def encode(self, texts: Sequence[str], what: str = "caption", positions: Optional[Sequence[int]] = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids (B, L), token features (B, L, D) and pooled (B, D) of already-unique texts
        (``positions``: see :class:`CaptionTokenizer`)."""
        device = self.text_tower.positional_embedding.device
        ids = self.tokenize(texts, what, positions).to(device)
        tokens, pooled = self.text_tower(ids)
        return ids, tokens, pooled

    def forward(self, captions: Sequence[str]) -> TextFeatures:
        first: dict[str, int] = {}  # each distinct caption is encoded once; errors name its first position
        for i, caption in enumerate(captions):
            if not isinstance(caption, str):
                raise ValueError(f"caption {i} must be a str, got {type(caption).__name__}")
            first.setdefault(caption, i)
        unique = list(first)
        encode = self._encode_cached if self._caching_captions() else self.encode
        ids, tokens, pooled = encode(unique, positions=list(first.values()))
        slot = {caption: k for k, caption in enumerate(unique)}
        where = torch.tensor([slot[c] for c in captions], device=tokens.device)
        ids, tokens, pooled = ids[where], tokens[where], pooled[where]
        index = self.text_tower.pool_index(ids)
        positions = torch.arange(ids.shape[1], device=ids.device)
        mask = positions[None, :] <= index[:, None]
        if self.knowledge_fusion is not None and self.knowledge is not None:
            tokens = self._fuse_knowledge(captions, tokens)
            pooled = tokens[torch.arange(tokens.shape[0], device=tokens.device), index]
        return TextFeatures(tokens=tokens, mask=mask, pooled=pooled, pool_index=index)

    def _caching_captions(self) -> bool:
        # gradients asked for means someone trains (perhaps in eval mode): never serve cached features
        return (not self.training and not torch.is_grad_enabled() and self.cfg.caption_cache > 0
                and isinstance(self.tokenize.tokenizer, SimpleTokenizer))

    def _weights_key(self) -> tuple:
        """Changes whenever a text-tower weight does: in-place updates (optimizer steps,
        load_state_dict) bump ``_version``, ``.to()`` moves the storage."""
        return tuple((p.data_ptr(), p._version, p.dtype) for p in self.text_tower.parameters())

    def _encode_cached(self, texts: Sequence[str], what: str = "caption", positions: Optional[Sequence[int]] = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`encode` of distinct captions, from the eval caption cache where it can.

        Each caption keeps its tokens up to its EOT; a batch is padded with the tokenizer's
        pad id and zero features. Padded positions never reach the output (text masks exclude
        them as keys, and only the EOT token is pooled), so the logits equal the uncached
        ones to float rounding.
        """
        key = self._weights_key()
        if key != self._caption_cache_key:
            self._caption_cache.clear()
            self._caption_cache_key = key
        cache = self._caption_cache
        rows = {t: cache[t] for t in texts if t in cache}
        missing = [(k, t) for k, t in enumerate(texts) if t not in rows]
        if missing:
            where = None if positions is None else [positions[k] for k, _ in missing]
            ids, tokens, pooled = self.encode([t for _, t in missing], what, where)
            ends = self.text_tower.pool_index(ids) + 1
            for row, (_, text) in enumerate(missing):
                n = int(ends[row])
                # clones: a view would keep the whole batch's tensors alive in the cache
                rows[text] = (ids[row, :n].clone(), tokens[row, :n].clone(), pooled[row].clone())
        for text in texts:
            cache[text] = rows[text]
            cache.move_to_end(text)
        while len(cache) > self.cfg.caption_cache:
            cache.popitem(last=False)
        ordered = [rows[t] for t in texts]
        return (pad_sequence([r[0] for r in ordered], batch_first=True),
                pad_sequence([r[1] for r in ordered], batch_first=True), torch.stack([r[2] for r in ordered]))

    def _fuse_knowledge(self, captions: Sequence[str], tokens: torch.Tensor) -> torch.Tensor:
        per_caption = [list(dict.fromkeys(self.knowledge.descriptions_for(c))) for c in captions]
        strings = list(dict.fromkeys(d for ds in per_caption for d in ds))
        dim = tokens.shape[-1]
        if strings:
            table = self._description_embeddings(strings).to(tokens.dtype)
        else:
            table = tokens.new_zeros(0, dim)
        width = max(1, max(len(ds) for ds in per_caption))
        index = torch.zeros(len(captions), width, dtype=torch.long, device=tokens.device)
        mask = torch.zeros(len(captions), width, dtype=torch.bool, device=tokens.device)
        position = {s: i for i, s in enumerate(strings)}
        for row, ds in enumerate(per_caption):
            for col, d in enumerate(ds):
                index[row, col] = position[d]
                mask[row, col] = True
        knowledge = table[index] if strings else tokens.new_zeros(len(captions), width, dim)
        return self.knowledge_fusion(tokens, knowledge, mask)

    def _description_embeddings(self, strings: list[str]) -> torch.Tensor:
        """Pooled embeddings of unique descriptions; cached in eval mode, and always with the
        frozen knowledge encoder (no gradient reaches them there)."""
        if self.training and not self.frozen_knowledge:
            return self.encode(strings, "description")[2]
        missing = [s for s in strings if s not in self._description_cache]
        if missing:
            with torch.no_grad(), (lora_disabled(self.text_tower) if self.frozen_knowledge else nullcontext()):
                pooled = self.encode(missing, "description")[2]
            for s, e in zip(missing, pooled):
                self._description_cache[s] = e
        return torch.stack([self._description_cache[s] for s in strings])
