"""DICOM SEG out: a predicted mask as a DICOM Segmentation that references the image it was drawn on.

A PACS or viewer shows a SEG over its source image only if the SEG names that image
(same Study Instance UID, the source's series and SOP Instance UID in its references),
so the SEG is built with highdicom from the source's own header. Choices:

* one BINARY segment; its Segment Label (LO, at most 64 characters) holds the caption cut
  to fit, its Segment Description (ST, up to 1024) the whole caption, since the caption
  is what the mask answers;
* segmented property: category SCT 49755003 "Morphologically Abnormal Structure", type
  SCT 52988006 "Lesion": the captions describe findings of no fixed kind (infection,
  opacity, tumour), so the general code for an abnormal finding is the honest one, and
  the caption says the rest;
* algorithm AUTOMATIC, identified as tgcnet with its version, family DCM 123110
  "Artificial Intelligence"; manufacturer and model "tgcnet", software version
  tgcnet's, device serial number "0" (there is no device, and highdicom requires one);
* the source must be one single-frame image; 2D radiographs without Frame of Reference,
  Pixel Spacing or Image Orientation are fine (highdicom then writes a SEG without
  spatial information, tied to the source by reference only). Patient and study
  attributes the standard requires but allows empty (Type 2: patient name and ID,
  birth date, sex, study date and time, study ID, accession number, referring
  physician) are copied from the source, and written empty where an anonymiser
  removed them; a source lacking an identifying attribute (Type 1: study, series and
  SOP instance UIDs, SOP class, modality, rows, columns) is refused, naming the attribute.

pydicom and highdicom are an optional extra (``pip install "tgcnet[dicom]"``), imported
by the functions here, so importing this module needs neither.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tgcnet.io import DataError, atomic_write

if TYPE_CHECKING:
    import highdicom
    from pydicom import Dataset

__all__ = ["dicom_seg", "save_dicom_seg"]

EXTRA = 'pip install "tgcnet[dicom]"'
LABEL_CHARS = 64  # Segment Label is LO
DESCRIPTION_CHARS = 1024  # Segment Description is ST
#: Attributes highdicom reads from the source that identify it: without one there is nothing to reference.
REQUIRED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Modality", "Rows",
            "Columns")
#: Patient and study attributes highdicom copies; the standard lets them be empty, so missing ones are emptied.
MAY_BE_EMPTY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID",
                "AccessionNumber", "ReferringPhysicianName")


def dicom_seg(mask: np.ndarray, source: "str | Path | Dataset", description: str, *,
              series_description: str = "tgcnet segmentation") -> "highdicom.seg.Segmentation":
    """A DICOM SEG of ``mask`` (HxW; bool, or integers where nonzero is foreground) over ``source``.

    ``source`` is the path of the single-frame DICOM image the mask was predicted on, or
    its pydicom Dataset; ``description`` is the caption. Float masks are refused: they
    are probabilities or logits, and where to threshold them is the caller's choice.
    """
    hd = _highdicom()
    from pydicom.sr.codedict import codes

    from tgcnet import __version__

    src, where = _source(source)
    binary = _binary_mask(mask, src, where)
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=_label(description),
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="tgcnet", version=__version__, family=codes.DCM.ArtificialIntelligence),
    )
    segment.SegmentDescription = description
    extra = {} if (description + series_description).isascii() else {"specific_character_set": "ISO_IR 192"}
    seg = hd.seg.Segmentation(
        source_images=[src], pixel_array=binary, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment], series_instance_uid=hd.UID(), series_number=1,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="tgcnet", manufacturer_model_name="tgcnet",
        software_versions=__version__, device_serial_number="0", series_description=series_description,
        omit_empty_frames=False,  # an empty mask (nothing found) is still an answer
        **extra,
    )
    return seg


def save_dicom_seg(mask: np.ndarray, source: "str | Path | Dataset", description: str, path: str | Path, *,
                   series_description: str = "tgcnet segmentation") -> Path:
    """Write :func:`dicom_seg` to ``path`` all or nothing, so a viewer never loads half a SEG; the path written."""
    seg = dicom_seg(mask, source, description, series_description=series_description)
    return atomic_write(path, lambda tmp: seg.save_as(tmp))


def _highdicom() -> Any:
    try:
        import highdicom
        import pydicom  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"writing DICOM SEG needs pydicom and highdicom: {EXTRA}") from exc
    return highdicom


def _source(source: "str | Path | Dataset") -> tuple["Dataset", str]:
    """The source's header, ready for highdicom, and how to name it in messages."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    if isinstance(source, pydicom.Dataset):
        ds, where = source, f"source image {source.get('SOPInstanceUID', '(no SOP Instance UID)')}"
    else:
        path = Path(source)
        where = f"source image {path}"
        if not path.is_file():
            raise FileNotFoundError(f"{where} not found")
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)  # highdicom needs the header only
        except InvalidDicomError as exc:
            raise DataError(f"{where} is not a DICOM file; pass the DICOM image the mask was predicted on",
                            [(path, "not a DICOM file")]) from exc
    missing = [k for k in REQUIRED if not ds.get(k)]
    if missing:
        raise DataError(f"{where} lacks {', '.join(missing)}, which a DICOM SEG needs to reference it; "
                        "pass the image as the PACS stores it", _problem(source, f"lacks {', '.join(missing)}"))
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise DataError(f"{where} holds {frames} frames; a tgcnet SEG segments one single-frame image",
                        _problem(source, f"{frames} frames"))
    empty = [k for k in MAY_BE_EMPTY if k not in ds]
    if empty:
        ds = copy.deepcopy(ds)  # the caller's dataset stays as it was
        for keyword in empty:
            setattr(ds, keyword, "")
    return ds, where


def _problem(source: Any, reason: str) -> list[tuple[Path, str]]:
    return [(Path(source), reason)] if isinstance(source, (str, Path)) else []


def _binary_mask(mask: np.ndarray, src: "Dataset", where: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype != bool and not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"mask has dtype {mask.dtype}; pass a boolean mask (threshold probabilities first)")
    rows, columns = int(src.Rows), int(src.Columns)
    if mask.shape != (rows, columns):
        shape = "x".join(str(n) for n in mask.shape[::-1])
        raise ValueError(f"mask is {shape} (width x height) but {where} is {columns}x{rows}; predict on the "
                         "image at its own size, or resize the mask to it")
    return mask != 0


def _label(caption: str) -> str:
    """The caption as a Segment Label: one line, no backslash (LO's value separator), at most 64 characters."""
    text = " ".join(caption.replace("\\", "/").split())
    if not text:
        raise ValueError("description is empty; pass the caption the mask was predicted for")
    if len(caption) > DESCRIPTION_CHARS:
        raise ValueError(f"description has {len(caption)} characters; DICOM's Segment Description holds at most "
                         f"{DESCRIPTION_CHARS}: shorten it")
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 3].rstrip() + "..."
