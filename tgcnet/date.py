"""DATE, the Domain-Augmented Text Encoder.

CLIP's text tower never saw "ground-glass opacity" in a radiology sense. DATE keeps it
frozen, tunes it with LoRA, and enriches each caption with short medical descriptions of
the concepts it names (from a knowledge bank): the descriptions are encoded by the same
tower and fused into the caption's tokens by a gated cross-attention.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Protocol, Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from tgcnet.adapters import apply_lora, lora_disabled
from tgcnet.config import DATEConfig
from tgcnet.layers import GatedCrossAttention
from tgcnet.text_towers import FrozenTextTower, pool_tokens
from tgcnet.tokenizer import CaptionTokenizer, TokenizerSource

logger = logging.getLogger(__name__)

#: values of ``DATEConfig.knowledge_encoder`` (see its docstring)
KNOWLEDGE_ENCODERS = ("lora", "frozen")


class KnowledgeSource(Protocol):
    """Anything that maps a caption to medical descriptions (e.g. ``tgcnet.prompts.KnowledgeBank``)."""

    def descriptions_for(self, caption: str) -> list[str]: ...


@dataclass
class TextFeatures:
    tokens: torch.Tensor   # (B, L, D) token features in the joint space
    mask: torch.Tensor     # (B, L) bool, True for the tokens that carry the text
    pooled: torch.Tensor   # (B, D) sentence embedding, pooled as the text tower pools
    pool_weights: torch.Tensor  # (B, L) how to pool changed tokens again (one-hot or mean)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens`` (B, L, D) pooled the way ``pooled`` was."""
        return pool_tokens(tokens, self.pool_weights)


class EncodingCache:
    """Encodings of single texts, valid while the weights they were made with are unchanged.

    ``capacity`` bounds it (least recently used go first; None: unbounded, 0: keeps nothing).
    Entries hold clones: a view would keep a whole batch's tensors alive.
    """

    def __init__(self, capacity: Optional[int]) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, tuple[torch.Tensor, ...]] = OrderedDict()
        self._key: tuple = ()

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def items(self):
        return self._entries.items()

    def clear(self) -> None:
        self._entries.clear()

    def get(self, texts: Sequence[str], key: tuple,
            encode: Callable[[str], tuple[torch.Tensor, ...]]) -> list[tuple[torch.Tensor, ...]]:
        """The encodings of ``texts``, calling ``encode(text)`` for those not kept under ``key``."""
        if key != self._key:
            self._entries.clear()
            self._key = key
        rows = [self._entries.get(t) or tuple(x.clone() for x in encode(t)) for t in texts]
        if self.capacity != 0:
            for text, row in zip(texts, rows):
                self._entries[text] = row
                self._entries.move_to_end(text)
            while self.capacity is not None and len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return rows


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(training)


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
    def __init__(self, text_tower: FrozenTextTower, tokenizer: TokenizerSource, cfg: DATEConfig,
                 knowledge: Optional[KnowledgeSource] = None) -> None:
        super().__init__()
        if cfg.knowledge_encoder not in KNOWLEDGE_ENCODERS:
            raise ValueError(f"date.knowledge_encoder must be one of {', '.join(KNOWLEDGE_ENCODERS)}, "
                             f"got {cfg.knowledge_encoder!r}")
        self.cfg = cfg
        self.text_tower = apply_lora(text_tower, cfg.lora)
        self.tokenize = CaptionTokenizer(tokenizer, pad_to_context=text_tower.pads_to_context)
        dim = text_tower.output_dim
        self.knowledge_fusion = (KnowledgeFusion(dim, cfg.knowledge_dim, cfg.knowledge_heads, cfg.gate_init)
                                 if cfg.use_knowledge else None)
        self.knowledge = knowledge
        self._caption_cache = EncodingCache(cfg.caption_cache)
        self._description_cache = EncodingCache(None)

    def train(self, mode: bool = True) -> "DATE":
        # cached encodings stay valid (they are keyed on the weights); dropping the captions'
        # keeps a long training run from holding on to memory it no longer reads
        self._caption_cache.clear()
        return super().train(mode)

    def clear_caches(self) -> None:
        """Drop every kept encoding. The caches notice a changed weight by themselves, but not the
        same weights run through another kernel (:func:`tgcnet.accel.optimize_for_cpu`), which
        rounds differently: whoever switches calls this, or a result would depend on what ran
        before it, down to the last bit."""
        self._caption_cache.clear()
        self._description_cache.clear()

    @property
    def frozen_knowledge(self) -> bool:
        return self.cfg.knowledge_encoder == "frozen"

    def encode(self, texts: Sequence[str], what: str = "caption", positions: Optional[Sequence[int]] = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids (B, L), token features (B, L, D) and pooled (B, D) of already-unique texts
        (``positions``: see :class:`CaptionTokenizer`)."""
        ids = self.tokenize(texts, what, positions).to(self.text_tower.device)
        tokens, pooled = self.text_tower(ids)
        return ids, tokens, pooled

    def forward(self, captions: Sequence[str]) -> TextFeatures:
        first: dict[str, int] = {}  # each distinct caption is encoded once; errors name its first position
        for i, caption in enumerate(captions):
            if not isinstance(caption, str):
                raise ValueError(f"caption {i} must be a str, got {type(caption).__name__}")
            first.setdefault(caption, i)
        unique = list(first)
        if self.training or torch.is_grad_enabled():
            ids, tokens, pooled = self.encode(unique, positions=list(first.values()))
        else:
            ids, tokens, pooled = self._encode_each(unique, list(first.values()))
        slot = {caption: k for k, caption in enumerate(unique)}
        where = torch.tensor([slot[c] for c in captions], device=tokens.device)
        ids, tokens, pooled = ids[where], tokens[where], pooled[where]
        features = TextFeatures(tokens=tokens, mask=self.text_tower.token_mask(ids), pooled=pooled,
                                pool_weights=self.text_tower.pool_weights(ids))
        if self.knowledge_fusion is not None and self.knowledge is not None:
            features.tokens = self._fuse_knowledge(captions, tokens)
            features.pooled = features.pool(features.tokens)
        return features

    def _weights_key(self, lora: bool = True) -> tuple:
        """Changes whenever a text-tower weight does (``lora=False``: a base weight): in-place
        updates (optimizer steps, load_state_dict) bump ``_version``, ``.to()`` moves the storage;
        and with the autocast state, under which the same weights give other numbers."""
        device = self.text_tower.device.type
        autocast = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        return (autocast, *((p.data_ptr(), p._version, p.dtype) for n, p in self.text_tower.named_parameters()
                            if lora or "lora_" not in n))

    def _encode_alone(self, text: str, what: str, position: Optional[int] = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One text as a batch of one, at its own length: the result depends on nothing else."""
        ids, tokens, pooled = self.encode([text], what, None if position is None else [position])
        return ids[0], tokens[0], pooled[0]

    def _encode_each(self, texts: Sequence[str], positions: Sequence[int]
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Evaluation (no gradient): each caption encoded alone, from the caption cache where it
        is. A caption's features are then a pure function of its text and the weights, whatever
        it is batched with and whatever ran before, so the cache cannot change a result.
        Rows are padded with the tokenizer's pad id and zero features; padded positions never
        reach the output (text masks exclude them as keys, pooling weights are zero there)."""
        position = dict(zip(texts, positions))
        rows = self._caption_cache.get(texts, self._weights_key(),
                                       lambda text: self._encode_alone(text, "caption", position[text]))
        pad = self.tokenize.source.pad_id
        return (pad_sequence([r[0] for r in rows], batch_first=True, padding_value=pad),
                pad_sequence([r[1] for r in rows], batch_first=True), torch.stack([r[2] for r in rows]))

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
        """Pooled embeddings of unique descriptions. Trained through (``"lora"`` encoder in
        training): the batch, with gradients. Otherwise each alone, in eval mode and without
        gradients, kept in the description cache: a pure function of its text and the weights
        it used (the base tower's only, for the frozen encoder)."""
        if self.training and not self.frozen_knowledge:
            return self.encode(strings, "description")[2]
        key = self._weights_key(lora=not self.frozen_knowledge)
        with torch.no_grad(), (lora_disabled(self.text_tower) if self.frozen_knowledge else nullcontext()), \
                _eval_mode(self.text_tower):   # a kept embedding must not hold one draw of dropout
            rows = self._description_cache.get(strings, key, lambda text: self._encode_alone(text, "description"))
        return torch.stack([r[2] for r in rows])
