"""CLIP weights from the checkpoint files people have, loaded strictly into an open_clip model.

Read: open_clip's hub files (``open_clip_model.safetensors``, ``open_clip_pytorch_model.bin``),
a plain or DDP state dict, a training checkpoint holding ``state_dict``, and OpenAI's original
TorchScript ``.pt`` (whose extra tensors say it is OpenAI's: :attr:`ClipCheckpoint.openai`).
A file is recognised by its first bytes, so an empty file or an HTML error page saved under
a weights name is named as such, and tensors only are ever unpickled. Loading converts keys
and shapes as open_clip does, then fails on the first tensor that does not fit, naming it.
"""
from __future__ import annotations

import logging
import os
import zipfile
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from open_clip.factory import convert_state_dict, convert_to_custom_text_state_dict
from open_clip.model import resize_pos_embed, resize_text_pos_embed
from torch import nn

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
#: keys OpenAI's TorchScript checkpoints hold besides the weights
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
#: the checkpoint formats read_checkpoint knows, as error messages name them
_FORMATS = "safetensors, a PyTorch state dict or OpenAI's TorchScript file"


@dataclass
class ClipCheckpoint:
    """A checkpoint's CLIP state dict, and whether the file is OpenAI's own TorchScript CLIP:
    OpenAI trained every CLIP with QuickGELU, which no tensor records, so the file is the only
    witness of the activation to build."""

    state: dict[str, torch.Tensor]
    openai: bool


def read_checkpoint(path: PathLike) -> dict[str, torch.Tensor]:
    """The state dict in a checkpoint file of any format open_clip users have (see the module)."""
    return read_clip_checkpoint(path).state


def read_clip_checkpoint(path: PathLike) -> ClipCheckpoint:
    """The state dict, and whether the file is OpenAI's original TorchScript CLIP: its extra
    ``input_resolution`` / ``context_length`` / ``vocab_size`` tensors say so (and are dropped)."""
    path = os.fspath(path)
    state, kind = _load_file(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path} is not a CLIP checkpoint: expected a state dict of tensors, got "
                         f"{type(state).__name__}" + (" (empty)" if isinstance(state, dict) else ""))
    odd = next((k for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
    if odd is not None:
        raise ValueError(f"{path} is not a CLIP checkpoint: expected a state dict of tensors (or a dict holding one "
                         f"as 'state_dict'), but its entry {odd!r} is a {type(state[odd]).__name__}")
    if all(k.startswith("module.") for k in state):   # saved from DistributedDataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    openai = kind == "torchscript" and any(k in state for k in _OPENAI_EXTRA_KEYS)
    for key in _OPENAI_EXTRA_KEYS:
        state.pop(key, None)
    return ClipCheckpoint(state=state, openai=openai)


def _load_file(path: str) -> tuple[Any, str]:
    """What a checkpoint file holds, and its format; one error naming the file when it is none."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CLIP checkpoint not found: {path}")
    kind = _file_format(path)
    if kind is None:
        with open(path, "rb") as f:
            head = f.read(8)
        what = f"it starts with {head!r}" if head else "the file is empty"
        raise ValueError(f"{path} is not a readable CLIP checkpoint ({_FORMATS}): {what}, which is none of these")
    try:
        if kind == "safetensors":
            from safetensors.torch import load_file

            return load_file(path), kind
        if kind == "torchscript":
            return dict(torch.jit.load(path, map_location="cpu").state_dict()), kind
        return torch.load(path, map_location="cpu", weights_only=True), kind
    except Exception as exc:
        raise ValueError(f"{path} is not a readable CLIP checkpoint ({_FORMATS}): it looks like a {kind} file but "
                         f"cannot be read: {_read_error(exc)}") from exc


def _file_format(path: str) -> Optional[str]:
    """The format by the file's first bytes ("safetensors", "torchscript", "pytorch"), None for
    anything else: an empty file or an HTML error page is then named as such, not by the error
    an unpickler happens to hit in it (``pop from empty list``)."""
    size = os.path.getsize(path)
    if size == 0:
        return None
    with open(path, "rb") as f:   # safetensors: 8-byte header length, then a JSON header
        head = f.read(9)
    if path.endswith(".safetensors") or (
            len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= size - 8):
        return "safetensors"
    if zipfile.is_zipfile(path):   # torch.save since PyTorch 1.6, and TorchScript
        return "torchscript" if _is_torchscript(path) else "pytorch"
    return "pytorch" if head[:1] == b"\x80" else None   # a pickle: torch.save before 1.6


def _read_error(exc: Exception) -> str:
    """The line of a read error that says what is wrong (torch's weights-only refusal is a page)."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = " ".join(text.split("WeightsUnpickler error:", 1)[1].split()).split(". ")[0]
        if "Unsupported global" in text:   # a pickle of Python objects besides tensors
            text += ("; tgcnet reads tensors only (torch.load(weights_only=True)): save the state dict alone, "
                     "e.g. torch.save(checkpoint['state_dict'], path)")
        return f"weights-only unpickling: {text}"
    return f"{type(exc).__name__}: {' '.join(text.split())[:300]}"


def _is_torchscript(path: str) -> bool:
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in archive.namelist())


def load_checkpoint(model: nn.Module, path: PathLike) -> None:
    """Load a CLIP checkpoint strictly, after open_clip's own key and shape conversions.

    A checkpoint of another architecture is one error naming the file and the first
    tensor that does not fit, rather than a list of hundreds of keys.
    """
    load_clip_state(model, read_checkpoint(path), path)


def load_clip_state(model: nn.Module, state: dict[str, torch.Tensor], path: PathLike) -> None:
    """:func:`load_checkpoint` of a state already read from ``path`` (named in the errors)."""
    state = convert_state_dict(model, state)
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    expected = model.state_dict()
    for key in ("logit_scale", "logit_bias"):
        if key in state and key in expected and state[key].ndim != expected[key].ndim:
            state[key] = state[key].reshape(expected[key].shape)
    if "logit_bias" not in state and "logit_bias" in expected:
        state["logit_bias"] = torch.zeros_like(expected["logit_bias"])
    derived = {name for name, _ in model.named_buffers()} - set(expected)
    for key in [k for k in state if k in derived or (k.endswith("embeddings.position_ids") and k not in expected)]:
        # buffers the model makes itself: TorchScript saves non-persistent ones too (open_clip's
        # attn_mask), older transformers saved position_ids, which newer ones no longer have
        del state[key]
    try:
        resize_pos_embed(state, model)
        resize_text_pos_embed(state, model)
    except Exception as exc:   # malformed shapes: reported below by name
        logger.debug("positional embedding resize skipped: %s", exc)
    problem = _first_mismatch(state, expected)
    if problem:
        raise ValueError(f"CLIP checkpoint {path} does not match this architecture: {problem}")
    model.load_state_dict(state, strict=True)


def _first_mismatch(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> str:
    for key, tensor in expected.items():
        if key not in state:
            return f"tensor {key!r} {tuple(tensor.shape)} is missing from the file ({len(set(expected) - set(state))} missing)"
        if state[key].shape != tensor.shape:
            return f"tensor {key!r} has shape {tuple(state[key].shape)} in the file, {tuple(tensor.shape)} in the model"
    extra = sorted(set(state) - set(expected))
    if extra:
        return f"the file has tensor {extra[0]!r} that the model lacks ({len(extra)} unexpected)"
    return ""
