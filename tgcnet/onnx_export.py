"""A trained TGCNet as one ONNX file: images and a caption index in, mask logits out.

    tgcnet export --checkpoint RUN_DIR --out model.onnx --captions prompts.csv [--caption TEXT ...]

    session = onnxruntime.InferenceSession("model.onnx")
    logits, = session.run(None, {"images": x, "caption_index": idx})   # sigmoid > threshold = mask

Why the captions are fixed at export: the text side runs Python before any tensor exists
(the tokenizer, caption normalisation, and the knowledge bank that looks up LLM-written
descriptions of each caption's concepts, which DATE fuses into the caption's tokens).
Token ids as a graph input would drop the knowledge fusion or need a second program to
reproduce it. Clinical captions in these data sets come from a small set of templates, so
a deployment knows its captions in advance: their text features (what DATE gives in eval
mode, each caption encoded alone) are computed here, stored in the graph as constants, and
picked by ``caption_index``. So are the SSA guidance masks (``ssa.guidance`` with a prior),
which a Python parser reads from the caption's location words.

The graph (ONNX opset 20, :data:`DEFAULT_OPSET`, unless asked otherwise; written by
``torch.onnx.export(..., dynamo=True)`` with ``dynamic_shapes``: the batch dimension of all
three tensors is dynamic, everything else fixed; the TorchScript exporter is not used):

* ``images``: float32 (B, 3, H, W) in [0, 1], H = W = the export's image size; not normalised
  (the graph applies CLIP's mean/std, as ``TGCNet.clip_input`` does). Grayscale images are
  repeated to 3 channels by the caller. Values are not checked inside the graph.
* ``caption_index``: int64 (B,), the caption of each image as an index into the stored set.
  Negative indices count from the end (as in numpy and ONNX's gathers); an index outside
  [-N, N) makes onnxruntime's ``run`` raise (InvalidArgument, "invalid index found"): it
  never reads another caption's features.
* ``logits``: float32 (B, 1, H, W); ``sigmoid(logits) > threshold`` is the mask, as in PyTorch.

The file's ``metadata_props`` say how to use it without tgcnet: ``tgcnet.captions`` (JSON
list in index order, the exact text the features were computed from: tidied and, when the
model normalises captions, in canonical form), ``tgcnet.caption_lookup`` (JSON object: every
caption as given at export and its stored form -> its index), ``tgcnet.image_size``,
``tgcnet.threshold``, ``tgcnet.laterality``, ``tgcnet.normalize_captions``, ``tgcnet.opset``, ``tgcnet.version``,
``tgcnet.model``. :func:`read_onnx_captions` and :func:`read_onnx_metadata` read them back.

Before the file is renamed into place it passes ``onnx.checker`` and onnxruntime reproduces
the PyTorch module's logits on an example batch; a file that fails either is never written.
onnx and onnxruntime are the ``export`` extra: ``pip install "tgcnet[export]"``.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import torch

from tgcnet.caption_set import CaptionSetSegmenter, prepare_captions, refuse_empty
from tgcnet.captions import tidy_text
from tgcnet.io import EXCEL_SUFFIXES, atomic_write, read_table

if TYPE_CHECKING:
    from tgcnet.model import TGCNet

__all__ = ["DEFAULT_OPSET", "OPSET_RANGE", "INPUT_NAMES", "OUTPUT_NAME", "ExportResult", "export_onnx", "export_model",
           "collect_captions", "read_onnx_captions", "read_onnx_metadata"]

#: torch 2.14's exporter default; its op library is written for opset 18 and up
DEFAULT_OPSET = 20
#: opsets the exporter writes without a version converter (below 18 it converts, and may fail)
OPSET_RANGE = (18, 23)
INPUT_NAMES = ("images", "caption_index")
OUTPUT_NAME = "logits"
#: metadata key prefix; every value is a string (JSON for lists and objects)
META_PREFIX = "tgcnet."
#: how far onnxruntime's logits may stray from PyTorch's, relative to the largest logit (at least 1)
VERIFY_TOLERANCE = 1e-3
_INSTALL = 'pip install "tgcnet[export]"'
_TABLE_SUFFIXES = (".csv", *EXCEL_SUFFIXES)


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote, and how far onnxruntime's logits were from PyTorch's."""

    path: Path
    opset: int
    n_captions: int
    image_size: int
    size_bytes: int
    max_abs_diff: float
    threshold: float = 0.5

    def summary(self) -> str:
        """Two lines: what was written, then how to run it."""
        return (f"wrote {self.path} ({self.size_bytes / 1e6:.1f} MB, ONNX opset {self.opset}): {self.n_captions} "
                f"caption(s), {self.image_size}x{self.image_size} images; onnxruntime matches PyTorch "
                f"(max |logit difference| {self.max_abs_diff:.1e})\n"
                f"run it: onnxruntime.InferenceSession({str(self.path)!r}).run(None, {{'images': x, "
                f"'caption_index': idx}}) with x float32 (B, 3, {self.image_size}, {self.image_size}) in [0, 1] and "
                f"idx int64 (B,) into the metadata's tgcnet.captions; mask = sigmoid(logits) > {self.threshold:g}")


# --------------------------------------------------------------------------- optional imports

def _require_onnx() -> tuple[Any, Any]:
    """(onnx, onnxruntime), or an ImportError naming the extra that installs them."""
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  (torch's exporter needs it; failing here names the fix)
    except ImportError as exc:
        raise ImportError(f"ONNX export needs onnx, onnxscript and onnxruntime ({exc.name} is missing): "
                          f"{_INSTALL}") from exc
    return onnx, onnxruntime


# --------------------------------------------------------------------------- captions

def collect_captions(captions_file: str | Path | None = None,
                     captions: Optional[Sequence[str]] = None) -> list[tuple[str, str]]:
    """``(where, text)`` of every caption given: the file's, then ``captions``.

    ``captions_file`` is a text file (one caption per line, blank lines ignored) or, by its
    suffix, a CSV/Excel table with a Description column (the data sets' prompts.csv).
    ``where`` names the line or option, so a refused caption can be found.
    """
    found: list[tuple[str, str]] = []
    if captions_file is not None:
        path = Path(captions_file)
        if not path.is_file():
            raise FileNotFoundError(f"captions file not found: {path}")
        if path.suffix.lower() in _TABLE_SUFFIXES:
            cells = read_table(path, expected="a Description column").first_column(["Description"], "Description")
            found += [(f"{path} line {row}", tidy_text(cell)) for row, cell in enumerate(cells, start=2)]
        else:
            try:
                lines = path.read_text(encoding="utf-8-sig").splitlines()
            except UnicodeDecodeError as exc:
                raise ValueError(f"captions file {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); give a "
                                 "text file with one caption per line, or a .csv/.xlsx table with a Description "
                                 "column") from exc
            found += [(f"{path} line {n}", tidy_text(line)) for n, line in enumerate(lines, start=1) if line.strip()]
    if isinstance(captions, str):
        raise ValueError("captions must be a list of strings, got a single str")
    found += [(f"--caption {n} ({text!r})", tidy_text(text)) for n, text in enumerate(captions or (), start=1)]
    if not found:
        raise ValueError("no captions to store: pass --captions FILE (a text file, one caption per line, or a "
                         "table with a Description column such as the run's data set prompts.csv) or --caption TEXT")
    refuse_empty(found)   # before the model loads
    return found


# --------------------------------------------------------------------------- export

def _check_opset(opset: Optional[int]) -> int:
    opset = DEFAULT_OPSET if opset is None else int(opset)
    lo, hi = OPSET_RANGE
    if not lo <= opset <= hi:
        raise ValueError(f"--opset {opset} is not supported: torch's exporter writes opsets {lo} to {hi} "
                         f"(default {DEFAULT_OPSET}); lower ones need a version converter that may fail")
    return opset


def _check_image_size(image_size: int, patch: int) -> int:
    if image_size < patch or image_size % patch:
        near = max(patch, image_size // patch * patch)
        raise ValueError(f"--image-size {image_size} is not a positive multiple of the ViT patch size {patch}; "
                         f"use e.g. {near}")
    return image_size


def _check_out(out: Path) -> Path:
    """Fail before the model loads if ``out`` cannot be written (no folder is created yet)."""
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give the file to write, e.g. {out / 'model.onnx'}")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"cannot create the folder of --out {out}: {parent} is a file, not a folder; choose "
                         "another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write --out {out}: no write permission in {parent}; choose another path")
    return out


def _example_inputs(n_captions: int, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of 2 (a batch of 1 would let the exporter specialise the batch dimension to 1)."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, image_size, image_size, generator=g)
    return images, torch.tensor([0, n_captions - 1], dtype=torch.long)


@contextlib.contextmanager
def _quiet_exporter():
    """torch's exporter narrates its steps on stdout and logs at INFO/WARNING; a CLI prints one summary."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _metadata(module: CaptionSetSegmenter, lookup: dict[str, int], opset: int, threshold: float) -> dict[str, str]:
    import tgcnet

    config = module.model.config
    values = {
        "captions": json.dumps(module.captions, ensure_ascii=False),
        "caption_lookup": json.dumps(lookup, ensure_ascii=False),
        "image_size": str(module.image_size),
        "threshold": repr(float(threshold)),
        "laterality": config.laterality,
        "normalize_captions": json.dumps(bool(config.normalize_captions)),
        "opset": str(opset),
        "version": tgcnet.__version__,
        "model": str(config.name),
    }
    return {META_PREFIX + k: v for k, v in values.items()}


_DOC = ("TGC-Net text-guided segmentation (tgcnet export). Inputs: images float32 (B, 3, {size}, {size}) in [0, 1], "
        "not normalised; caption_index int64 (B,) into the JSON list in metadata tgcnet.captions. Output: logits "
        "float32 (B, 1, {size}, {size}); mask = sigmoid(logits) > tgcnet.threshold.")


def _verify(path: str, module: CaptionSetSegmenter, example: tuple[torch.Tensor, torch.Tensor]) -> float:
    """onnx.checker on the file, then onnxruntime against PyTorch on ``example``: the max |difference|."""
    onnx, ort = _require_onnx()
    try:
        onnx.checker.check_model(path)
    except onnx.checker.ValidationError as exc:
        raise ValueError(f"the exported graph fails onnx.checker: {exc}") from exc
    with torch.no_grad():
        expected = module(*example).numpy()
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()   # torch's thread budget, not every core
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    got = session.run(None, {INPUT_NAMES[0]: example[0].numpy(), INPUT_NAMES[1]: example[1].numpy()})[0]
    diff = float(abs(got - expected).max())
    if not diff <= VERIFY_TOLERANCE * max(1.0, float(abs(expected).max())):
        raise ValueError(f"onnxruntime's logits differ from PyTorch's by up to {diff:.3g} on an example batch; "
                         "the file was not written. Report this with your torch and onnxruntime versions")
    return diff


def export_model(model: "TGCNet", out: str | Path, captions: Sequence[str], *, image_size: int,
                 opset: Optional[int] = None, threshold: float = 0.5,
                 lookup: Optional[dict[str, int]] = None) -> ExportResult:
    """Export an in-memory TGCNet with the caption set ``captions``.

    ``captions`` must already be in the form the model reads (:func:`prepare_captions`);
    ``lookup`` maps other spellings to indices for the metadata (default: the captions).
    The model is put in eval mode, on the CPU, in float32, and its frozen linears back on
    ``F.linear``: the oneDNN calls :func:`tgcnet.accel.optimize_for_cpu` picks on AMD CPUs
    are custom ops no exporter knows. It stays so afterwards.
    """
    from tgcnet.accel import optimize_for_cpu

    _require_onnx()
    out = _check_out(Path(out))
    opset = _check_opset(opset)
    image_size = _check_image_size(int(image_size), model.patch_size)
    model = optimize_for_cpu(model.to("cpu").float().eval(), linear="torch")
    with torch.no_grad():   # the positional embedding for this grid is cached before tracing, not during
        model.frozen_vit_features(torch.zeros(1, 3, image_size, image_size))
    module = CaptionSetSegmenter(model, captions, image_size).eval()
    example = _example_inputs(len(module.captions), image_size)
    batch = torch.export.Dim("batch", min=1)
    with _quiet_exporter():
        program = torch.onnx.export(module, example, dynamo=True, opset_version=opset, verbose=False,
                                    input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                                    dynamic_shapes={"images": {0: batch}, "caption_index": {0: batch}})
    program.model.doc_string = _DOC.format(size=image_size)
    meta = _metadata(module, lookup or {c: i for i, c in enumerate(module.captions)}, opset, threshold)
    program.model.metadata_props.update(meta)
    diffs: list[float] = []

    def write(tmp: str) -> None:
        program.save(tmp, external_data=False)
        diffs.append(_verify(tmp, module, example))

    atomic_write(out, write)
    return ExportResult(path=out, opset=opset, n_captions=len(module.captions), image_size=image_size,
                        size_bytes=out.stat().st_size, max_abs_diff=diffs[0], threshold=threshold)


def export_onnx(checkpoint: str | Path, out: str | Path, *, captions_file: str | Path | None = None,
                captions: Optional[Sequence[str]] = None, image_size: Optional[int] = None,
                opset: Optional[int] = None, knowledge: Optional[str] = None,
                pretrained: Optional[str] = None) -> ExportResult:
    """Write the trained model at ``checkpoint`` (a run or saved-model directory) as the ONNX
    file ``out``, answering the captions of ``captions_file`` and ``captions``.

    ``image_size``: the graph's input size (default: the run's, else 224). ``knowledge`` and
    ``pretrained`` as in :func:`tgcnet.engine.loading.load_inference_model`. Every input
    problem is raised before the slow part (tracing) starts.
    """
    from tgcnet.engine.loading import DEFAULT_IMAGE_SIZE, load_inference_model

    _require_onnx()
    out = _check_out(Path(out))
    opset = _check_opset(opset)
    if image_size is not None and image_size < 1:
        raise ValueError(f"--image-size must be >= 1, got {image_size}")
    given = collect_captions(captions_file, captions)
    model, info = load_inference_model(checkpoint, device="cpu", knowledge=knowledge, pretrained=pretrained)
    size = int(image_size or info.get("image_size") or DEFAULT_IMAGE_SIZE)
    stored, lookup = prepare_captions(model, given)
    return export_model(model, out, stored, image_size=size, opset=opset,
                        threshold=float(info.get("threshold", 0.5)), lookup=lookup)


# --------------------------------------------------------------------------- reading back

def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The ``tgcnet.*`` metadata of an exported file, keys without the prefix (values are strings)."""
    onnx, _ = _require_onnx()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {path}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends name neither the file nor the fix
        raise ValueError(f"{path} is not a readable ONNX file ({type(exc).__name__}: {exc})") from exc
    meta = {p.key[len(META_PREFIX):]: p.value for p in proto.metadata_props if p.key.startswith(META_PREFIX)}
    if "captions" not in meta:
        raise ValueError(f"{path} has no {META_PREFIX}captions metadata: it was not written by tgcnet export")
    return meta


def read_onnx_captions(path: str | Path) -> list[str]:
    """The caption set of an exported file, in ``caption_index`` order."""
    meta = read_onnx_metadata(path)
    try:
        captions = json.loads(meta["captions"])
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: metadata {META_PREFIX}captions is not JSON ({exc})") from exc
    if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
        raise ValueError(f"{path}: metadata {META_PREFIX}captions must be a JSON list of strings")
    return captions
