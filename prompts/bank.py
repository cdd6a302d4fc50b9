"""KnowledgeBank: caption -> the medical descriptions of the concepts it names.

This is the object the model (DATE) holds. It is read-only after construction and cheap to
query repeatedly: captions repeat across a data set, so lookups are memoised per caption.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

from .cache import KnowledgeCache, cache_from_dict, load_cache
from .concepts import concept_kind, extract_concepts

__all__ = ["KnowledgeBank", "load_default_bank", "DEFAULT_BANK_FILE"]

DEFAULT_BANK_FILE = "default_bank.json"
_MEMO_LIMIT = 65536


class KnowledgeBank:
    """Concept key -> descriptions, queried by caption.

    `max_per_concept` keeps at most that many descriptions per concept (the first ones), to
    bound how many strings the text tower encodes per caption. `extra_concepts` are added to
    every caption's concepts, e.g. ``("modality:chest x-ray",)`` for a data set whose
    captions never name the modality.
    """

    def __init__(self, descriptions: Mapping[str, Sequence[str]], *, max_per_concept: int | None = None,
                 extra_concepts: Iterable[str] = (), source: str | None = None) -> None:
        if max_per_concept is not None and max_per_concept < 1:
            raise ValueError(f"max_per_concept must be >= 1 or None, got {max_per_concept}")
        self._descriptions: dict[str, tuple[str, ...]] = {}
        for key, descs in descriptions.items():
            concept_kind(key)
            if isinstance(descs, str) or not all(isinstance(d, str) for d in descs):
                raise TypeError(f"descriptions of {key!r} must be a sequence of strings")
            self._descriptions[key] = tuple(descs)[:max_per_concept]
        self.extra_concepts: tuple[str, ...] = tuple(extra_concepts)
        for key in self.extra_concepts:
            concept_kind(key)
        self.max_per_concept = max_per_concept
        self.source = source
        self._memo: dict[str, tuple[str, ...]] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_cache(cls, path: str | Path, **kwargs) -> "KnowledgeBank":
        """Bank from a cache file written by `generate_cache` (validated; CacheError names the file)."""
        return cls.from_knowledge_cache(load_cache(path), source=str(path), **kwargs)

    @classmethod
    def from_knowledge_cache(cls, cache: KnowledgeCache, **kwargs) -> "KnowledgeBank":
        """Bank from an in-memory cache."""
        return cls({key: cache[key].descriptions for key in cache}, **kwargs)

    # ------------------------------------------------------------------ queries
    def concepts_for(self, caption: str) -> list[str]:
        """Concepts of `caption` (plus `extra_concepts`) that this bank has descriptions for."""
        keys = list(self.extra_concepts) + [k for k in extract_concepts(caption) if k not in self.extra_concepts]
        return [k for k in keys if k in self._descriptions]

    def descriptions_for(self, caption: str) -> list[str]:
        """Descriptions of the concepts `caption` names, deduplicated, in a deterministic order.

        Order: concepts in `extract_concepts` order (extra concepts first), each concept's
        descriptions in bank order; a string already emitted is skipped. Concepts missing
        from the bank contribute nothing, so the list may be empty. A new list is returned
        each call, so callers may mutate it.
        """
        hit = self._memo.get(caption)
        if hit is None:
            seen: set[str] = set()
            out: list[str] = []
            for key in self.concepts_for(caption):
                for d in self._descriptions[key]:
                    if d not in seen:
                        seen.add(d)
                        out.append(d)
            if len(self._memo) >= _MEMO_LIMIT:  # free-text captions at predict time must not grow it forever
                self._memo.clear()
            hit = self._memo[caption] = tuple(out)
        return list(hit)

    def __getitem__(self, key: str) -> tuple[str, ...]:
        return self._descriptions[key]

    def __contains__(self, key: object) -> bool:
        return key in self._descriptions

    def __iter__(self) -> Iterator[str]:
        return iter(self._descriptions)

    def __len__(self) -> int:
        """Number of concepts (not descriptions)."""
        return len(self._descriptions)

    def keys(self) -> list[str]:
        return list(self._descriptions)

    def __repr__(self) -> str:
        n = sum(len(d) for d in self._descriptions.values())
        src = f", source={self.source!r}" if self.source else ""
        return f"KnowledgeBank({len(self)} concepts, {n} descriptions{src})"


def load_default_bank(**kwargs) -> KnowledgeBank:
    """The bank shipped in the package (hand-written by the maintainers; see its provenance).

    Keyword arguments go to `KnowledgeBank` (max_per_concept, extra_concepts).
    """
    import json

    ref = resources.files(__package__) / DEFAULT_BANK_FILE
    data = json.loads(ref.read_text(encoding="utf-8"))
    cache = cache_from_dict(data, f"<package>/{DEFAULT_BANK_FILE}")
    return KnowledgeBank.from_knowledge_cache(cache, source=f"tgcnet.prompts/{DEFAULT_BANK_FILE}", **kwargs)
