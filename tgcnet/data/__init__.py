"""Data: readers for the layouts users have on disk, a Dataset, joint transforms, the embedded sample."""
from .dataset import SegmentationDataset, collate
from .readers import LAYOUTS, DataError, Triple, detect_layout, read_split
from .sample import sample_root
from .transforms import build_transforms

__all__ = [
    "Triple", "DataError", "LAYOUTS", "detect_layout", "read_split",
    "SegmentationDataset", "collate", "build_transforms", "sample_root",
]
