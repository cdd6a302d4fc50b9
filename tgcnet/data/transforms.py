"""Joint image + mask + caption transforms on albumentations.

The caption is part of the sample: a horizontal flip moves a lesion to the other side
of the image, so the words "left" and "right" must be swapped with it (whichever side
convention the data set uses, see :mod:`tgcnet.laterality`). The flip is therefore drawn
here, from the caller's random generator, rather than inside albumentations where we
could not see whether it happened. Everything random is drawn from one
``numpy.random.Generator`` per call, so a sample's augmentation is a pure function of
(seed, epoch, index) and a resumed run sees exactly the same data.
"""
from __future__ import annotations

import os

# albumentations checks PyPI for updates at import unless told not to: keep offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from ..laterality import swap_left_right  # noqa: E402

__all__ = ["JointTransform", "build_transforms", "AUGMENT_MODES"]

#: What each ``augment`` mode of :func:`build_transforms` turns off (probabilities set to 0).
#: "flip" and "none" give every image the same pixels in every epoch, up to a horizontal
#: flip; a cache of frozen-ViT features (tgcnet.engine.feature_cache) relies on that.
AUGMENT_MODES: dict[str, dict[str, float]] = {
    "full": {},
    "flip": {"affine_p": 0.0, "color_p": 0.0},
    "none": {"hflip_p": 0.0, "affine_p": 0.0, "color_p": 0.0},
}


def _as_generator(rng: int | np.random.Generator | None, fallback: np.random.Generator) -> np.random.Generator:
    if rng is None:
        return fallback
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


class JointTransform:
    """Callable ``(image, mask, caption, rng=None) -> (image, mask, caption)``.

    ``image`` is uint8 HxW or HxWx3, ``mask`` uint8 HxW (any two values: the mask is
    resampled with nearest-neighbour interpolation, so its values are preserved).
    The output image keeps the input's channel layout. ``rng`` (a Generator or an int
    seed) drives every random choice of the call; without it the transform's own
    generator, seeded by ``seed``, is used. A call reseeds the shared albumentations
    pipeline, so share one instance between processes (DataLoader workers), not threads.
    """

    def __init__(
        self,
        train: bool,
        image_size: int,
        hflip_p: float = 0.5,
        affine_p: float = 0.5,
        color_p: float = 0.5,
        max_rotate: float = 5.0,
        max_shift: float = 0.05,
        scale: tuple[float, float] = (0.9, 1.1),
        brightness: float = 0.15,
        contrast: float = 0.15,
        seed: int | None = None,
    ):
        if image_size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.train = train
        self.image_size = int(image_size)
        self.hflip_p = float(hflip_p) if train else 0.0
        steps: list[A.BasicTransform] = [
            A.Resize(self.image_size, self.image_size, interpolation=cv2.INTER_LINEAR,
                     mask_interpolation=cv2.INTER_NEAREST),
        ]
        if train:
            steps += [
                A.Affine(scale=scale, translate_percent=(-max_shift, max_shift), rotate=(-max_rotate, max_rotate),
                         interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
                         border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=affine_p),
                A.RandomBrightnessContrast(brightness_limit=brightness, contrast_limit=contrast, p=color_p),
            ]
        self.pipeline = A.Compose(steps, mask_interpolation=cv2.INTER_NEAREST)
        self._rng = np.random.default_rng(seed)

    def __call__(
        self,
        image: np.ndarray,
        mask: np.ndarray,
        caption: str,
        rng: int | np.random.Generator | None = None,
    ) -> tuple[np.ndarray, np.ndarray, str]:
        if image.shape[:2] != mask.shape[:2]:
            raise ValueError(f"image {image.shape[:2]} and mask {mask.shape[:2]} differ in size")
        gen = _as_generator(rng, self._rng)
        # Draw in a fixed order whatever happens, so one sample's choices never shift another's.
        flip = gen.random() < self.hflip_p
        seed = int(gen.integers(0, 2**31 - 1))
        if flip:
            image, mask, caption = image[:, ::-1], mask[:, ::-1], swap_left_right(caption)
        squeeze = image.ndim == 2
        if self.train:
            self.pipeline.set_random_seed(seed)
        out = self.pipeline(image=np.ascontiguousarray(image), mask=np.ascontiguousarray(mask))
        image_out, mask_out = out["image"], out["mask"]
        if squeeze and image_out.ndim == 3:
            image_out = image_out[..., 0]
        if mask_out.ndim == 3:
            mask_out = mask_out[..., 0]
        return image_out, mask_out, caption

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(train={self.train}, image_size={self.image_size}, "
                f"hflip_p={self.hflip_p}, pipeline={self.pipeline!r})")


def build_transforms(train: bool, image_size: int, seed: int | None = None, augment: str = "full",
                     **kwargs) -> JointTransform:
    """Training (flip with caption swap, small affine, brightness/contrast) or eval (resize) transform.

    ``augment`` (training only) keeps all of it (``"full"``), only the flip (``"flip"``) or
    nothing (``"none"``); see :data:`AUGMENT_MODES`. ``kwargs`` override the augmentation
    strengths of :class:`JointTransform`; what ``augment`` turns off stays off.
    """
    if augment not in AUGMENT_MODES:
        raise ValueError(f"augment must be one of {', '.join(AUGMENT_MODES)}; got {augment!r}")
    return JointTransform(train=train, image_size=image_size, seed=seed, **{**kwargs, **AUGMENT_MODES[augment]})
