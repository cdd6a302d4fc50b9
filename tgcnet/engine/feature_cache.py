"""A cache of frozen-ViT features, for training runs whose images repeat from epoch to epoch.

Why: the frozen open_clip ViT is the bulk of a TGCNet step (ViT-B/16 has 86M of the
model's ~150M parameters) yet, being frozen, it maps one image to the same features in
every epoch. When augmentation does not change the pixels (``augment="none"``, or
``"flip"``: two versions per image), those features are computed once and reused; the
CNN branch, fusion, text tower, VLCM and decoder still run every step, so training
computes the same loss and gradients as without the cache.

Why keyed by content: an entry is found by a digest of the exact image tensor the model
receives (bytes, shape, dtype), not by the data-set index. A flipped, resized or
augmented image is therefore a miss, never a stale hit, and a flip needs no bookkeeping:
it is just a second entry. Hashing costs about a millisecond per 224 px image, against
tens (GPU) to hundreds (CPU) of milliseconds of ViT-B/16 forward.

Memory: per image, one map of ``width x grid x grid`` per distinct ``sse.vit_indices``
block plus the dense ``embed_dim x grid x grid`` map. tgcnet-vit-b16 at 224 px: 4 x 768
x 14 x 14 + 512 x 14 x 14 = 702,464 values, 2.8 MB in float32 (1.4 MB in float16) per
image and version. Entries live on the CPU (GPU memory is for training), are rebuilt
lazily (nothing is checkpointed: a resumed run starts empty), and under DDP each rank
caches what it sees; its shard changes every epoch, so each rank ends up holding the
whole training set. ``max_bytes`` caps the size: images beyond it are computed every time.
"""
from __future__ import annotations

import hashlib
import warnings
from typing import Any, Callable, Optional, Sequence

import torch

from tgcnet.model import ViTFeatures

__all__ = ["FeatureCache", "bytes_per_image", "describe_cache_size", "CACHE_DTYPES"]

CACHE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_STORAGE = torch.device("cpu")


def bytes_per_image(model: torch.nn.Module, image_size: int, dtype: torch.dtype) -> int:
    """Bytes one cached image takes (see the module docstring), from the model's frozen ViT."""
    vit = model.sse.clip_visual
    grid = (image_size // vit.patch_size) ** 2
    values = (len(set(vit.indices)) * vit.width + vit.output_dim) * grid
    return values * torch.empty((), dtype=dtype).element_size()


def _size(nbytes: float) -> str:
    """1536 -> '1.5 KiB': sizes from bytes to terabytes readable in one log line."""
    if nbytes < 1024:
        return f"{int(nbytes)} B"
    for unit in ("KiB", "MiB", "GiB"):
        nbytes /= 1024
        if nbytes < 1024:
            return f"{nbytes:.1f} {unit}"
    return f"{nbytes / 1024:.1f} TiB"


def describe_cache_size(model: torch.nn.Module, image_size: int, dtype_name: str, n_images: int, versions: int,
                        max_gb: Optional[float]) -> str:
    """The cache's expected size in one line, so a run that will not fit says so before the
    first epoch, not in swap."""
    per_image = bytes_per_image(model, image_size, CACHE_DTYPES[dtype_name])
    total = per_image * versions * n_images
    cap = "no limit" if max_gb is None else f"limit {max_gb:g} GiB"
    return (f"feature cache: {_size(per_image)} per image ({dtype_name}) x {n_images} training images x {versions} "
            f"version(s) = up to {_size(total)} of CPU memory per process ({cap})")


class FeatureCache:
    """``get(images, compute)`` -> the ViT features of ``images``, computing only those not seen before.

    ``compute(sub_batch)`` must return ``model.frozen_vit_features(sub_batch)``. Stored
    entries are copies in ``dtype`` on the CPU; a batch is assembled from stored copies
    only (also right after a miss), so every epoch sees bit-identical features, and they
    come back in the dtype ``compute`` produced. Repeated ViT blocks (``vit_indices`` such
    as ``[0, 0, 1, 1]``) are stored once.
    """

    def __init__(self, dtype: torch.dtype = torch.float32, max_bytes: Optional[int] = None) -> None:
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive or None, got {max_bytes}")
        self.dtype, self.max_bytes = dtype, max_bytes
        self._entries: dict[bytes, tuple[torch.Tensor, ...]] = {}
        self._layout: Optional[list[int]] = None   # map position -> index of its stored tensor
        self._out_dtypes: list[torch.dtype] = []   # per stored tensor, what compute gave (autocast may mix)
        self.nbytes = 0
        self.hits = self.misses = self.overflow = 0

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key(image: torch.Tensor) -> bytes:
        """Digest of the exact tensor (shape, dtype, bytes): different pixels, different key."""
        t = image.detach().to(_STORAGE).contiguous()
        h = hashlib.blake2b(digest_size=20)
        h.update(repr((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
        return h.digest()

    def get(self, images: torch.Tensor, compute: Callable[[torch.Tensor], ViTFeatures],
            device: torch.device | str = _STORAGE) -> ViTFeatures:
        """Features of ``images`` (B, C, H, W) on ``device``; ``compute`` sees only the misses."""
        keys = [self.key(im) for im in images]
        missing = [i for i, k in enumerate(keys) if k not in self._entries]
        extra: dict[int, tuple[torch.Tensor, ...]] = {}   # computed but over max_bytes
        if missing:
            extra = self._add(images, keys, missing, compute)
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        rows = [extra[i] if i in extra else self._entries[k] for i, k in enumerate(keys)]
        return self._assemble(rows, torch.device(device))

    def _add(self, images: torch.Tensor, keys: Sequence[bytes], missing: list[int],
             compute: Callable[[torch.Tensor], ViTFeatures]) -> dict[int, tuple[torch.Tensor, ...]]:
        maps, dense = compute(images[missing])
        if self._layout is None:
            self._layout = [next(j for j in range(len(maps)) if maps[j] is m) for m in maps]
        unique = sorted(set(self._layout))
        if not self._out_dtypes:
            self._out_dtypes = [maps[u].dtype for u in unique] + [dense.dtype]
        extra: dict[int, tuple[torch.Tensor, ...]] = {}
        for row, i in enumerate(missing):
            if keys[i] in self._entries:          # the same image twice in one batch
                continue
            entry = tuple(self._copy(t[row]) for t in (*(maps[u] for u in unique), dense))
            if not self._store(keys[i], entry):
                extra[i] = entry
        return extra

    def _copy(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(device=_STORAGE, dtype=self.dtype, copy=True, memory_format=torch.contiguous_format)

    def _store(self, key: bytes, entry: tuple[torch.Tensor, ...]) -> bool:
        size = sum(t.numel() * t.element_size() for t in entry)
        if self.max_bytes is not None and self.nbytes + size > self.max_bytes:
            if not self.overflow:
                warnings.warn(f"feature cache full ({self.nbytes / 2**30:.2f} GiB, {len(self)} images): "
                              "further images run the frozen ViT every time (raise cache_max_gb to cache them)",
                              stacklevel=4)
            self.overflow += 1
            return False
        self._entries[key] = entry
        self.nbytes += size
        return True

    def _assemble(self, rows: list[tuple[torch.Tensor, ...]], device: torch.device) -> ViTFeatures:
        assert self._layout is not None
        stacked = [torch.stack([r[j] for r in rows]).to(device=device, dtype=dtype, non_blocking=True)
                   for j, dtype in enumerate(self._out_dtypes)]
        unique = sorted(set(self._layout))
        by_block = dict(zip(unique, stacked[:-1]))
        return [by_block[j] for j in self._layout], stacked[-1]

    def reset_counts(self) -> tuple[int, int]:
        """(hits, misses) since the last call; the entries stay."""
        counts = (self.hits, self.misses)
        self.hits = self.misses = 0
        return counts

    def epoch_stats(self) -> dict[str, Any]:
        """This rank's hit rate since the last call and the cache's size, for log.jsonl."""
        hits, misses = self.reset_counts()
        return {"cache_hit_rate": hits / (hits + misses) if hits + misses else None,
                "cache_images": len(self), "cache_gib": round(self.nbytes / 2**30, 4)}
