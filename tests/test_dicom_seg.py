"""DICOM SEG out: the mask, its references to the source image, the caption and the algorithm survive a round trip."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from helpers import dicom_xray

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")
from pydicom.dataset import Dataset  # noqa: E402

import tgcnet  # noqa: E402
from tgcnet.dicom_seg import dicom_seg, save_dicom_seg  # noqa: E402
from tgcnet.io import DataError  # noqa: E402

H, W = 32, 48
CAPTION = ("Bilateral pulmonary infection, two infected areas, upper middle left lung and upper lower right lung, "
           "with a small nodule near the hilum.")


def chest_xray(frames: int = 1, **drop) -> Dataset:
    """A 12-bit CR image as a PACS sends it, less the attributes named in ``drop``."""
    ds = dicom_xray(np.zeros((frames, H, W) if frames > 1 else (H, W), np.uint16), bits_stored=12)
    for keyword in drop:
        delattr(ds, keyword)
    return ds


def write(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def lesion() -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[4:12, 5:30] = True
    mask[20, 40] = True
    return mask


def test_seg_round_trip_keeps_mask_references_caption_and_algorithm(tmp_path):
    source = chest_xray()
    src_path = write(source, tmp_path / "cr.dcm")
    out = save_dicom_seg(lesion(), src_path, CAPTION, tmp_path / "out" / "cr.seg.dcm")
    assert out == tmp_path / "out" / "cr.seg.dcm" and not list(out.parent.glob(".*.tmp"))
    seg = hd.seg.segread(out)

    pixels = seg.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1])
    assert pixels.shape == (1, H, W, 1) and np.array_equal(pixels[0, ..., 0].astype(bool), lesion())

    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.SeriesInstanceUID not in (source.SeriesInstanceUID,) and seg.SOPInstanceUID != source.SOPInstanceUID
    assert seg.Modality == "SEG" and seg.PatientID == "P0001" and seg.SeriesDescription == "tgcnet segmentation"
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == source.SeriesInstanceUID
    assert referenced.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert seg.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID

    segment = seg.SegmentSequence[0]
    assert segment.SegmentDescription == CAPTION
    assert len(CAPTION) > 64 and len(segment.SegmentLabel) == 64 and segment.SegmentLabel.endswith("...")
    assert CAPTION.startswith(segment.SegmentLabel[:-3])
    assert (segment.SegmentedPropertyTypeCodeSequence[0].CodeValue,
            segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue) == ("52988006", "49755003")
    assert segment.SegmentAlgorithmType == "AUTOMATIC" and segment.SegmentAlgorithmName == "tgcnet"
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("tgcnet", tgcnet.__version__)
    assert (seg.Manufacturer, seg.SoftwareVersions) == ("tgcnet", tgcnet.__version__)


def test_dataset_source_empty_mask_and_anonymised_source(tmp_path):
    source = chest_xray(PatientBirthDate=None, PatientSex=None, AccessionNumber=None)
    seg = dicom_seg(np.zeros((H, W), np.uint8), source, "no finding")
    assert "PatientBirthDate" not in source  # the caller's dataset is left alone
    assert seg.PatientBirthDate == "" and seg.StudyInstanceUID == source.StudyInstanceUID
    path = tmp_path / "empty.seg.dcm"
    seg.save_as(path)
    pixels = hd.seg.segread(path).get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1])
    assert pixels.shape == (1, H, W, 1) and pixels.sum() == 0
    assert seg.SegmentSequence[0].SegmentLabel == "no finding"


def test_wrong_size_mask_names_both_sizes(tmp_path):
    src_path = write(chest_xray(), tmp_path / "cr.dcm")
    with pytest.raises(ValueError, match=rf"mask is 32x48 \(width x height\) but source image "
                                         rf"{re.escape(str(src_path))} is 48x32"):
        dicom_seg(np.zeros((W, H), bool), src_path, CAPTION)
    with pytest.raises(ValueError, match="dtype float32; pass a boolean mask"):
        dicom_seg(np.zeros((H, W), np.float32), src_path, CAPTION)


def test_sources_that_cannot_be_referenced_are_refused_by_name(tmp_path):
    cine = write(chest_xray(frames=3), tmp_path / "cine.dcm")
    with pytest.raises(DataError, match=rf"source image {re.escape(str(cine))} holds 3 frames"):
        dicom_seg(np.zeros((H, W), bool), cine, CAPTION)
    bare = write(chest_xray(StudyInstanceUID=None, Modality=None), tmp_path / "bare.dcm")
    with pytest.raises(DataError, match=rf"source image {re.escape(str(bare))} lacks StudyInstanceUID, Modality"):
        dicom_seg(np.zeros((H, W), bool), bare, CAPTION)
    text = tmp_path / "x.dcm"
    text.write_text("not dicom")
    with pytest.raises(DataError, match=rf"source image {re.escape(str(text))} is not a DICOM file"):
        dicom_seg(np.zeros((H, W), bool), text, CAPTION)
