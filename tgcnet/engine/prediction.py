"""Prediction on new images: ``<name>_mask.png`` (0/255) and ``<name>_overlay.png`` per image.

``tgcnet predict --checkpoint RUN --image X.png --text "..." --out DIR [--mask GT.png]`` or,
for a folder, ``--images DIR --captions CSV`` (columns Image, Description). Inputs are
checked before the model runs, and every error names the file at fault.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from tgcnet.data import build_transforms
from tgcnet.data.dataset import load_image, load_mask
from tgcnet.captions import tidy_text
from tgcnet.data.readers import DataError, format_problems
from tgcnet.io import read_table
from tgcnet.laterality import DEFAULT_LATERALITY
from tgcnet.prompts.locations import parse_location
from tgcnet.segmentation import Segmentation
from tgcnet.tta import check_tta, tta_logits

from .files import PREDICTIONS_NAME
from .inference import autocast_context
from .loading import DEFAULT_IMAGE_SIZE, load_inference_model
from .metrics import dice_iou, write_per_image_csv
from .overlay import draw_contours, render_overlay

__all__ = ["OUTPUT_FORMATS", "Predictor", "PredictItem", "predict", "predict_items", "read_captions"]


@dataclass
class PredictItem:
    """One image to segment: where it is, what to look for, and optionally its ground truth."""

    name: str
    image: Path
    caption: str
    mask: Optional[Path] = None


def _read_image(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        return load_image(path)
    except DataError:   # already names the file and what is wrong with it
        raise
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc


def _read_mask(path: Path, shape: tuple[int, int], image: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"ground-truth mask not found: {path}")
    try:
        mask, _ = load_mask(path)
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ValueError(f"cannot read ground-truth mask {path}: {exc}") from exc
    if mask.shape != shape:
        raise ValueError(f"ground-truth mask {path} is {mask.shape[1]}x{mask.shape[0]} but image {image} is "
                         f"{shape[1]}x{shape[0]}")
    return mask


class Predictor:
    """A trained model ready for single images; loads once, predicts many.

    ``predictor(image, caption)`` takes an HxW or HxWx3 array (uint8, or float32 in [0, 1])
    and returns the foreground probability (float32 HxW) at the image's own resolution: the
    model sees the image resized to its training size, as in evaluation, and the logits are
    resized back bilinearly. ``tta="flip"`` averages in the mirrored image with its caption's
    sides swapped (:mod:`tgcnet.tta`). :meth:`segment` adds the mask, overlay and the location
    the caption was read as (:class:`tgcnet.Segmentation`).
    """

    def __init__(self, checkpoint: str | Path, device: str = "auto", image_size: Optional[int] = None,
                 threshold: Optional[float] = None, knowledge: Optional[str] = None,
                 pretrained: Optional[str] = None, amp: str = "none", tta: str = "none") -> None:
        model, info = load_inference_model(checkpoint, device=device, knowledge=knowledge, pretrained=pretrained)
        self._setup(model, info, image_size, threshold, amp, tta)

    @classmethod
    def from_model(cls, model: torch.nn.Module, image_size: Optional[int] = None, threshold: Optional[float] = None,
                   amp: str = "none", tta: str = "none") -> "Predictor":
        """A predictor over a model already in memory (used as it is: its device, its kernels);
        ``image_size`` defaults to 224, ``threshold`` to 0.5."""
        predictor = cls.__new__(cls)
        predictor._setup(model, {}, image_size, threshold, amp, tta)
        return predictor

    def _setup(self, model: torch.nn.Module, info: dict[str, Any], image_size: Optional[int],
               threshold: Optional[float], amp: str, tta: str) -> None:
        self.tta = check_tta(tta)
        self.model = model
        self.device = next(self.model.parameters()).device
        self.image_size = int(image_size or info.get("image_size") or DEFAULT_IMAGE_SIZE)
        self.threshold = float(threshold if threshold is not None else info.get("threshold", 0.5))
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        self.amp = amp
        self.transform = build_transforms(False, self.image_size)

    @property
    def laterality(self) -> str:
        """Which image half the caption word "left" denotes for this model (tgcnet.laterality)."""
        config = getattr(self.model, "config", None)
        return getattr(config, "laterality", DEFAULT_LATERALITY)

    def _check_caption(self, caption: str, what: str) -> str:
        """The caption tidied, or a ValueError when it is empty or longer than the text context."""
        caption = tidy_text(caption)
        if not caption:
            raise ValueError(f"{what} is empty; describe what to segment, e.g. "
                             "'bilateral pulmonary infection, lower left lung and lower right lung.'")
        overlong = self.model.overlong_captions([caption])
        if overlong:
            raise ValueError(f"{what} has {overlong[0][1]} tokens, more than the {self.model.max_caption_tokens} "
                             "the text context holds; shorten it")
        return caption

    def __call__(self, image: np.ndarray, caption: str) -> np.ndarray:
        return self._probability(image, self._check_caption(caption, "the text prompt"))

    @torch.no_grad()
    def _probability(self, image: np.ndarray, caption: str) -> np.ndarray:
        """The foreground probability of a checked, tidied caption (see the class docstring)."""
        h, w = image.shape[:2]
        resized, _, _ = self.transform(image, np.zeros((h, w), np.uint8), caption)
        x = torch.from_numpy(np.ascontiguousarray(resized)).float()
        if image.dtype == np.uint8:
            x = x.div_(255.0)
        x = x.unsqueeze(0).repeat(3, 1, 1) if x.ndim == 2 else x.permute(2, 0, 1)
        was_training = self.model.training
        self.model.eval()   # a model handed in while training must not segment with dropout on
        try:
            with autocast_context(self.device, self.amp):
                logits = tta_logits(self.model, x.unsqueeze(0).to(self.device), [caption], self.tta)
        finally:
            self.model.train(was_training)
        logits = torch.nn.functional.interpolate(logits.float(), size=(h, w), mode="bilinear", align_corners=False)
        return torch.sigmoid(logits)[0, 0].cpu().numpy()

    def segment(self, image: np.ndarray, caption: str, source: Optional[Path] = None,
                what: str = "the text prompt", threshold: Optional[float] = None) -> Segmentation:
        """The :class:`~tgcnet.Segmentation` of one image array (uint8, or float32 in [0, 1]) and its
        caption; ``threshold`` defaults to the predictor's. ``what`` names the caption in errors."""
        threshold = self.threshold if threshold is None else float(threshold)
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        caption = self._check_caption(caption, what)
        probability = self._probability(image, caption)
        mask = probability > threshold
        display = image if image.dtype == np.uint8 else np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
        return Segmentation(mask=mask, probability=probability, overlay=draw_contours(display, mask),
                            caption=caption, location=parse_location(caption), threshold=threshold,
                            laterality=self.laterality, source=source)

    def predict_item(self, item: PredictItem, out: Path, output_format: str = "png") -> dict[str, Any]:
        """Write the mask (PNG, or a DICOM SEG referencing a DICOM source) and overlay of one item;
        returns a summary row."""
        image = _read_image(item.image)
        gt = _read_mask(item.mask, image.shape[:2], item.image) if item.mask is not None else None
        result = self.segment(image, item.caption, source=item.image, what=f"the caption of image {item.image}")
        out.mkdir(parents=True, exist_ok=True)
        overlay_path = out / f"{item.name}_overlay.png"
        if output_format == "dicom-seg":
            mask_path = result.to_dicom_seg(item.image, out / f"{item.name}_seg.dcm")
        else:
            mask_path = out / f"{item.name}_mask.png"
            Image.fromarray(result.mask.astype(np.uint8) * 255).save(mask_path)
        row: dict[str, Any] = {"name": item.name, "caption": result.caption, "mask": str(mask_path),
                               "overlay": str(overlay_path), "foreground": result.foreground,
                               "location": "; ".join(result.location.phrases)}
        if gt is not None:
            d, i = dice_iou(torch.from_numpy(result.mask)[None], torch.from_numpy(gt > 0)[None])
            row.update(dice=float(d[0]), iou=float(i[0]))
        render_overlay(image, result.mask, result.caption, gt=gt, dice=row.get("dice")).save(overlay_path)
        return row


def read_captions(images: str | Path, captions: str | Path, masks: str | Path | None = None) -> list[PredictItem]:
    """Items of a folder of images and a CSV (columns Image, Description), masks optional.

    A ground-truth mask is looked up as ``masks/mask_<image>`` (the QaTa naming) or
    ``masks/<image>``. All problems are listed at once.
    """
    images, captions = Path(images), Path(captions)
    if not images.is_dir():
        raise FileNotFoundError(f"image folder not found: {images}")
    if not captions.is_file():
        raise FileNotFoundError(f"captions file not found: {captions}")
    rows = read_table(captions, expected="columns Image and Description").columns("Image", "Description")
    items, problems = [], []
    for row, (name, text) in enumerate(rows, start=2):
        name, text = name.strip(), tidy_text(text)
        path = images / name
        mask = None
        if masks is not None:
            mask = next((p for p in (Path(masks) / f"mask_{name}", Path(masks) / name) if p.is_file()),
                        Path(masks) / f"mask_{name}")
        if not path.is_file():
            problems.append(f"{captions} line {row}: image {path} not found")
        elif not text:
            problems.append(f"{captions} line {row}: empty caption for {name}")
        elif mask is not None and not mask.is_file():
            problems.append(f"{captions} line {row}: no ground-truth mask for {name} (looked for {mask})")
        items.append(PredictItem(Path(name).stem, path, text, mask))
    if problems:
        raise ValueError(f"{len(problems)} bad row(s):\n" + "\n".join(problems))
    if not items:
        raise ValueError(f"{captions} has no rows")
    return items


#: what ``predict`` writes per image: a mask PNG, or a DICOM Segmentation of a DICOM source
OUTPUT_FORMATS: tuple[str, ...] = ("png", "dicom-seg")


def _check_output_format(output_format: str, items: Sequence[PredictItem]) -> None:
    """A DICOM SEG references its source image, so every input must be DICOM: say which are not, at once."""
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output format must be one of {', '.join(OUTPUT_FORMATS)}; got {output_format!r}")
    if output_format != "dicom-seg":
        return
    from tgcnet.data.dicom import is_dicom

    others = [item.image for item in items if not is_dicom(item.image)]
    if others:
        listed = format_problems([(path, "not a DICOM file") for path in others])
        raise ValueError(f"--format dicom-seg writes a DICOM Segmentation that references its source image, so it "
                         f"needs DICOM inputs; {len(others)} input(s) are not DICOM (use --format png for them):\n"
                         f"{listed}")


def predict(checkpoint: str | Path, out: str | Path, *, image: str | Path | None = None, text: Optional[str] = None,
            mask: str | Path | None = None, images: str | Path | None = None, captions: str | Path | None = None,
            masks: str | Path | None = None, device: str = "auto", image_size: Optional[int] = None,
            threshold: Optional[float] = None, knowledge: Optional[str] = None, pretrained: Optional[str] = None,
            amp: str = "none", tta: str = "none", output_format: str = "png") -> list[dict[str, Any]]:
    """Segment one image (``image`` + ``text`` [+ ``mask``]) or a folder (``images`` + ``captions`` CSV
    [+ ``masks`` folder]); writes masks (``output_format``: PNG, or DICOM SEG for DICOM inputs) and
    overlays under ``out`` and returns one row per image.
    """
    single, folder = image is not None, images is not None
    if single == folder:
        raise ValueError("give either image (with text) or images (with captions), not both or neither")
    if single:
        if text is None or not tidy_text(text):
            raise ValueError(f"an empty text prompt was given for {image}; describe what to segment")
        items = [PredictItem(Path(image).stem, Path(image), text, Path(mask) if mask else None)]
        _read_image(items[0].image)  # fail on a bad input before the model loads
    else:
        if captions is None:
            raise ValueError("--images needs --captions CSV (columns Image, Description)")
        items = list(read_captions(images, captions, masks))
    _check_output_format(output_format, items)
    predictor = Predictor(checkpoint, device=device, image_size=image_size, threshold=threshold,
                          knowledge=knowledge, pretrained=pretrained, amp=amp, tta=tta)
    return predict_items(predictor, items, Path(out), output_format)


def predict_items(predictor: Predictor, items: Sequence[PredictItem], out: Path,
                  output_format: str = "png") -> list[dict[str, Any]]:
    """Masks and overlays of ``items`` under ``out`` (plus ``predictions.csv`` for several), one row each."""
    _check_output_format(output_format, items)
    overlong = predictor.model.overlong_captions([tidy_text(item.caption) for item in items])
    if overlong:  # all of them named at once, before any output is written
        listed = format_problems([(items[i].image, f"caption has {n} tokens") for i, n in overlong])
        raise ValueError(f"{len(overlong)} caption(s) longer than the {predictor.model.max_caption_tokens} "
                         f"tokens the text context holds; shorten them:\n{listed}")
    rows = [predictor.predict_item(item, out, output_format) for item in items]
    if len(rows) > 1:
        columns = ("name", "caption", "location", "foreground", "dice", "iou", "mask", "overlay")
        write_per_image_csv([{k: r.get(k) for k in columns} for r in rows], out / PREDICTIONS_NAME)
    return rows
