"""Small shared builders for the tests (tiny models only, so the suite runs on a CPU)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

CAPTIONS = [
    "bilateral pulmonary infection, two infected areas, upper left lung and lower right lung.",
    "unilateral pulmonary infection, one infected area, lower left lung.",
    "bilateral pulmonary infection, six infected areas, upper middle lower left lung and upper middle lower right lung.",
]


class StaticKnowledge:
    """A knowledge source with fixed answers and a record of what it was asked."""

    def __init__(self, table: dict[str, list[str]] | None = None) -> None:
        self.table = table if table is not None else {
            "left": ["Ground-glass opacity is a hazy increase in lung attenuation.",
                     "Consolidation replaces alveolar air with fluid or cells."],
            "bilateral": ["Bilateral involvement affects both lungs.",
                          "Ground-glass opacity is a hazy increase in lung attenuation."],
        }
        self.asked: list[str] = []

    def descriptions_for(self, caption: str) -> list[str]:
        self.asked.append(caption)
        return [d for key, ds in self.table.items() if key in caption for d in ds]


def tiny(**overrides):
    from tgcnet import create_model

    overrides.setdefault("knowledge", StaticKnowledge())
    return create_model("tgcnet-tiny", **overrides)


def images(batch: int = 2, size: int = 224, channels: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


def wake_lora(model: torch.nn.Module, seed: int = 0) -> None:
    """LoRA's B starts at zero, so A gets no gradient on step one; give B values for tests."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def write_bert_tokenizer(folder) -> str:
    """A BERT WordPiece tokenizer folder (vocab.txt + tokenizer_config.json) covering the test
    captions and the knowledge descriptions letter by letter: what a user downloads for
    BiomedCLIP, at test size (ids stay below the tiny presets' 512-entry vocabulary)."""
    import json
    import string
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    words = sorted({w for c in CAPTIONS for w in c.replace(",", " , ").replace(".", " . ").split()})
    letters = list(string.ascii_lowercase + string.digits)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *("##" + c for c in letters),
             *",.-()/:;'", *words]
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True}), encoding="utf-8")
    return str(folder)


def _onednn_available() -> bool:
    from tgcnet.accel import onednn_linear_available

    return onednn_linear_available()


#: tests of the oneDNN linear path, which some PyTorch builds lack
needs_onednn = pytest.mark.skipif(not _onednn_available(), reason="this PyTorch build has no oneDNN linear")


#: ``tgcnet train`` options for a run of seconds on the embedded sample
TINY_TRAIN_ARGS = ["--image-size", "64", "--batch-size", "8", "--knowledge", "none", "--device", "cpu",
                   "--no-progress", "--warmup-steps", "1"]


def make_run_dir(run: Path) -> Path:
    """``run`` made a run directory as the trainer leaves it (best/ + train_config.json, image size 64),
    holding a tiny model whose decoder is nudged so its masks are not empty (contours, Dice)."""
    from tgcnet import create_model
    from tgcnet.io import save_json_atomic

    torch.manual_seed(0)
    model = create_model("tgcnet-tiny", knowledge=None)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and name.endswith("bias") and "decoder" in name:
                p.add_(0.3)
    model.save_pretrained(run / "best")
    save_json_atomic({"train": {"image_size": 64, "knowledge": "none", "threshold": 0.5}}, run / "train_config.json")
    return run


def dicom_xray(pixels, bits_stored: int | None = None):
    """A pydicom Dataset of a computed radiograph holding ``pixels`` (HxW uint8/uint16, or a stack
    of frames): the patient, study, series and instance attributes a real CR image carries, with
    no Frame of Reference or Pixel Spacing, as chest X-rays come from a PACS."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Doe^Jane", "P0001", "19700101", "F"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240102", "101500", "1", "A1"
    ds.ReferringPhysicianName = ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CR", 1, 1
    pixels = np.asarray(pixels)
    ds.set_pixel_data(pixels, "MONOCHROME2", bits_stored or 8 * pixels.dtype.itemsize)  # new SOP Instance UID
    return ds


def free_port() -> int:
    """A loopback port nobody listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_gloo_ranks(tmp_path: Path, launched: str, train_args: list[str]):
    """Run ``launched`` (a script that records into ``argv[1]`` and then calls ``tgcnet.cli.main(argv[2:])``)
    under torchrun as two CPU ranks with ``tgcnet train`` options ``train_args``; returns (record dir, result)."""
    import os
    import subprocess
    import sys

    record = tmp_path / "record"
    record.mkdir()
    script = tmp_path / "launched.py"
    script.write_text(launched)
    env = dict(os.environ, HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
                             "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script), str(record),
                             *train_args], env=env, capture_output=True, text=True, timeout=300)
    return record, result
