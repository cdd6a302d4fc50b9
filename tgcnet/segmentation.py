"""One call from a raw image and free text to a mask: :func:`segment` and its :class:`Segmentation`.

    import tgcnet
    result = tgcnet.segment("runs/demo/run", "chest.dcm", "bilateral infection, lower left lung.")
    result.mask            # bool (H, W), at the image's own size
    result.probability     # float32 (H, W)
    result.overlay         # uint8 (H, W, 3): the image with the mask's contour in red
    result.location.phrases  # ('lower left lung',): how the caption's location words were read

``model(images, captions)`` is the tensor interface for training and batches a caller has
prepared; ``segment`` is for everyone else: a benchmark harness, a notebook, a web page. It
takes a file (PNG, JPEG, TIFF, BMP, 8- or 16-bit, or DICOM), a PIL image or a numpy array of
any size, resizes it as evaluation does, and returns the mask at the input's size. The model
may be a loaded TGCNet, a run directory, a saved model directory or a Hub id; a path or id is
loaded once and kept for later calls (the last few are kept, keyed by the weights file's
identity, so a retrained model is reloaded).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import numpy as np

from tgcnet.prompts.locations import LocationSpec

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from tgcnet.engine.prediction import Predictor

__all__ = ["Segmentation", "segment", "as_image_array", "clear_loaded_models", "MAX_IMAGE_PIXELS"]

#: Largest image accepted, in pixels (8192 x 8192). The model sees every image at its input
#: size (224 px by default), so a larger one only costs memory and time: downsample it first.
MAX_IMAGE_PIXELS = 8192 * 8192
_KEPT_MODELS = 4   # loaded models kept for later calls (least recently used go first)

ImageInput = Union[str, Path, np.ndarray, "Image.Image"]


@dataclass(frozen=True, eq=False)
class Segmentation:
    """What :func:`segment` returns for one image: numpy arrays at the input image's size.

    ``caption`` is the text as the model read it (whitespace tidied); ``location`` is the parse
    of its location words (``location.phrases``: e.g. ``('upper left lung', 'lower right lung')``,
    empty when it names no place), and ``laterality`` says which image half "left" means for this
    model ("image": the viewer's left, as QaTa-COV19's captions use it; "patient": the
    radiological convention). ``source`` is the image file, when the input was one.
    """

    mask: np.ndarray          # bool (H, W)
    probability: np.ndarray   # float32 (H, W), sigmoid of the logits resized to (H, W)
    overlay: np.ndarray       # uint8 (H, W, 3)
    caption: str
    location: LocationSpec
    threshold: float
    laterality: str = "image"
    source: Optional[Path] = field(default=None)

    @property
    def foreground(self) -> float:
        """Share of the image's pixels in the mask, in [0, 1]."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def describe_location(self) -> str:
        """The location words as read, with the image half each side maps to, in one line."""
        from tgcnet.laterality import image_half

        if not self.location.phrases:
            return "no location words: the whole image is searched"
        sides = sorted(self.location.sides)
        halves = ", ".join(f"{side} = image {image_half(side, self.laterality)} half" for side in sides)  # type: ignore[arg-type]
        return "; ".join(self.location.phrases) + (f" ({halves})" if halves else "")

    def to_dicom_seg(self, source: str | Path | Any = None, path: str | Path | None = None) -> Any:
        """A DICOM Segmentation (highdicom) of this mask referencing ``source``, the DICOM image it was
        made from (default: :attr:`source`); with ``path``, written there (atomically) and the path
        returned. The caption is the segment's description. Needs ``pip install "tgcnet[dicom]"``."""
        from tgcnet.dicom_seg import dicom_seg, save_dicom_seg

        source = self.source if source is None else source
        if source is None:
            raise ValueError("to_dicom_seg needs the source DICOM image (a path or a pydicom Dataset): this "
                             "segmentation was made from an array, so pass source=")
        if path is None:
            return dicom_seg(self.mask, source, self.caption)
        return save_dicom_seg(self.mask, source, self.caption, path)


# --------------------------------------------------------------------------- images

def _check_pixels(height: int, width: int, what: str) -> None:
    if height < 1 or width < 1:
        raise ValueError(f"{what} is empty ({width}x{height} pixels)")
    if height * width > MAX_IMAGE_PIXELS:
        raise ValueError(f"{what} is {width}x{height} pixels ({height * width / 1e6:.1f} megapixels); at most "
                         f"{MAX_IMAGE_PIXELS / 1e6:.1f} megapixels (8192x8192) are accepted: downsample it first "
                         "(the model sees it at its input size, 224 px by default)")


def _file_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file's header, before any pixel is decoded."""
    from PIL import Image

    from tgcnet.data.dicom import dicom_size, is_dicom

    if is_dicom(path):
        width, height = dicom_size(path)
        return height, width
    try:
        with Image.open(path) as im:
            width, height = im.size
    except Image.DecompressionBombError:   # Pillow refuses > 179 megapixels before we can say more
        raise ValueError(f"image {path} is larger than {MAX_IMAGE_PIXELS / 1e6:.1f} megapixels (8192x8192), the "
                         "most accepted: downsample it first") from None
    except Exception:   # not an image: load_image below says so, naming the file
        return 0, 0
    return height, width


def _read_file(path: Path) -> np.ndarray:
    from tgcnet.engine.prediction import _read_image

    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    height, width = _file_size(path)
    if height and width:
        _check_pixels(height, width, f"image {path}")
    return _read_image(path)


def _from_pil(image: "Image.Image") -> np.ndarray:
    from tgcnet.data.dataset import _image_pixels

    return _image_pixels(image, Path(getattr(image, "filename", "") or "PIL image"))


def _from_array(image: np.ndarray) -> np.ndarray:
    """uint8 as it is, uint16 scaled by its bit depth as 16-bit files are, float32 in [0, 1] as it is."""
    from tgcnet.data.dataset import full_scale

    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] != 3):
        raise ValueError(f"image array must be H x W (grayscale) or H x W x 3 (RGB), got shape {image.shape}")
    _check_pixels(image.shape[0], image.shape[1], "image array")
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        top = full_scale(int(image.max()))
        return np.round(image * (255.0 / top)).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        image = image.astype(np.float32)
        if not np.isfinite(image).all():
            raise ValueError("image array holds NaN or infinite values")
        low, high = float(image.min()), float(image.max())
        if low < 0 or high > 1:
            raise ValueError(f"a float image array must have values in [0, 1], got {low:.4g}..{high:.4g}; divide "
                             "raw pixel values by their maximum (e.g. / 255), or pass uint8 / uint16 arrays")
        return image
    raise ValueError(f"image array dtype must be uint8, uint16 or float in [0, 1]; got {image.dtype}")


def as_image_array(image: ImageInput) -> tuple[np.ndarray, Optional[Path]]:
    """(pixels, source file or None) of any image :func:`segment` takes: uint8 HxW / HxWx3, or
    float32 in [0, 1] for float input; every refusal names the input and what to do."""
    from PIL import Image

    if isinstance(image, (str, Path)):
        path = Path(image)
        return _read_file(path), path
    if isinstance(image, Image.Image):
        _check_pixels(image.height, image.width, "PIL image")
        return _from_pil(image), None
    if isinstance(image, np.ndarray):
        return _from_array(image), None
    raise ValueError(f"image must be a file path, a PIL image or a numpy array; got {type(image).__name__}")


# --------------------------------------------------------------------------- models

_LOADED: "OrderedDict[tuple, Predictor]" = OrderedDict()


def clear_loaded_models() -> None:
    """Forget the models :func:`segment` loaded from paths or Hub ids (frees their memory)."""
    _LOADED.clear()


def _local_key(path: Path, settings: tuple) -> tuple:
    """A path's model, identified by where its weights are and their size and time: a model saved
    again into the same directory is loaded again rather than served stale."""
    from tgcnet.engine.files import WEIGHTS_NAME
    from tgcnet.engine.loading import resolve_checkpoint

    model_dir, _ = resolve_checkpoint(path)
    weights = model_dir / WEIGHTS_NAME
    stat = weights.stat() if weights.is_file() else None
    return (str(model_dir.resolve()), stat and stat.st_mtime_ns, stat and stat.st_size, *settings)


def _load(model: str | Path, device: str, image_size: Optional[int], tta: str) -> "Predictor":
    from tgcnet.engine.prediction import Predictor
    from tgcnet.hub import is_hub_repo_id

    settings = (device, image_size, tta)
    path = Path(model)
    if path.exists():
        key = _local_key(path, settings)
        make = lambda: Predictor(path, device=device, image_size=image_size, tta=tta)  # noqa: E731
    elif isinstance(model, str) and is_hub_repo_id(model):
        key = ("hub", model, *settings)
        make = lambda: Predictor.from_model(_hub_model(model, device), image_size=image_size, tta=tta)  # noqa: E731
    else:
        raise FileNotFoundError(f"model {model} not found: give a loaded TGCNet, a run directory, a saved model "
                                "directory or a Hugging Face Hub id (owner/name)")
    if key not in _LOADED:
        _LOADED[key] = make()
        while len(_LOADED) > _KEPT_MODELS:
            _LOADED.popitem(last=False)
    _LOADED.move_to_end(key)
    return _LOADED[key]


def _hub_model(repo_id: str, device: str) -> "torch.nn.Module":
    from tgcnet.engine.distributed import resolve_device
    from tgcnet.engine.loading import prepare_for_device
    from tgcnet.model import TGCNet

    dev = resolve_device(device)
    return prepare_for_device(TGCNet.from_pretrained(repo_id, map_location=dev), dev).eval()


def _predictor(model: Any, device: str, image_size: Optional[int], tta: str) -> "Predictor":
    import torch

    from tgcnet.engine.prediction import Predictor

    if isinstance(model, torch.nn.Module):
        return Predictor.from_model(model, image_size=image_size, tta=tta)
    if isinstance(model, (str, Path)):
        return _load(model, device, image_size, tta)
    raise ValueError(f"model must be a TGCNet, a run directory, a saved model directory or a Hub id; "
                     f"got {type(model).__name__}")


# --------------------------------------------------------------------------- the call

def segment(model: Any, image: ImageInput | Sequence[ImageInput], text: str | Sequence[str], *,
            threshold: Optional[float] = None, tta: Optional[str] = None, image_size: Optional[int] = None,
            device: str = "auto") -> Segmentation | list[Segmentation]:
    """Segment what ``text`` describes in ``image``; lists of both give a list of results.

    Args:
        model: a loaded TGCNet (used as it is), a run directory (its ``best/``), a saved model
            directory or a Hub id; paths and ids are loaded once and kept for later calls.
        image: a file path (PNG, JPEG, TIFF, BMP, 8- or 16-bit, or DICOM), a PIL image, or a numpy
            array H x W or H x W x 3 (uint8, uint16, or float in [0, 1]) of any size up to
            :data:`MAX_IMAGE_PIXELS`; a list of them for several.
        text: the caption, e.g. "bilateral pulmonary infection, lower left lung and upper right
            lung."; a list of the same length as ``image`` for several.
        threshold: probability above which a pixel is in the mask; default the run's recorded
            threshold, 0.5 when it has none.
        tta: None (one pass) or "flip" (the mirrored image with left and right swapped in its
            caption, averaged in).
        image_size: the model's input size; default the run's, 224 for a model passed in memory.
        device: where a model loaded from a path runs ("auto": CUDA when available).

    Each image is segmented alone, so a list's results equal the single calls' exactly.
    """
    batch = isinstance(image, (list, tuple))
    if batch != isinstance(text, (list, tuple)):
        raise ValueError("give one image and one caption (str), or a list of images and a list of captions")
    images, texts = (list(image), list(text)) if batch else ([image], [text])
    if len(images) != len(texts):
        raise ValueError(f"got {len(images)} images and {len(texts)} captions; need one caption per image")
    for i, caption in enumerate(texts):
        if not isinstance(caption, str):
            raise ValueError(f"caption {i} must be a str, got {type(caption).__name__}")
    if threshold is not None and not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    predictor = _predictor(model, device, image_size, tta or "none")
    results = []
    for i, (one_image, caption) in enumerate(zip(images, texts)):
        pixels, source = as_image_array(one_image)
        what = f"the caption of {source}" if source else (f"caption {i}" if batch else "the caption")
        results.append(predictor.segment(pixels, caption, source=source, what=what, threshold=threshold))
    return results if batch else results[0]

