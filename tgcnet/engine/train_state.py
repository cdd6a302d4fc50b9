"""What a resumable checkpoint holds: the model, optimizer, scheduler, scaler, counters and RNG states.

A checkpoint directory (``RUN_DIR/last/``) holds::

    config.json, model.safetensors   the model, as TGCNet.save_pretrained writes it
    trainer_state.json               counters, best metric, python/numpy RNG states
    optim.pt                         optimizer, scheduler, GradScaler, torch RNG states
    teacher.safetensors              the mean teacher's weights, when a run has one
                                     (tgcnet.engine.mean_teacher)

This module writes those files into a directory and reads them back; where the directory
lives and how it replaces the previous checkpoint atomically is tgcnet.engine.run_dir's
business. (Not to be confused with tgcnet.backbone's CLIP checkpoints: those are the
frozen towers' weights, these a training run's state.)

``optim.pt`` holds only tensors, numbers and containers, and is read back with
``torch.load(weights_only=True)``: no arbitrary pickle is ever loaded.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from tgcnet.io import load_safetensors, save_json_atomic, save_safetensors_atomic

from .files import OPTIM_STATE_NAME, TEACHER_NAME, TRAINER_STATE_NAME, WEIGHTS_NAME

__all__ = ["CheckpointError", "STATE_FILES", "seed_rng", "capture_rng", "restore_rng", "save_train_state",
           "load_train_state", "restore_optimizers", "load_weights", "load_teacher"]

STATE_VERSION = 1
#: the files without which a directory is no checkpoint
STATE_FILES = (TRAINER_STATE_NAME, OPTIM_STATE_NAME)
_STATE_KEYS = ("epoch", "global_step", "rng")
_OPTIM_KEYS = ("optimizer", "scheduler", "scaler", "torch_rng", "cuda_rng")


class CheckpointError(ValueError):
    """A checkpoint is there but unusable; the message names the file and the problem.

    RunDir adds which earlier state of the run survives. A ValueError, so the CLI reports
    it as one line with exit code 2: the fix (use an earlier state, or start afresh) is the
    user's to make.
    """


def seed_rng(seed: int) -> None:
    """Seed every generator :func:`capture_rng` records, so the two never disagree on which there are."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> dict[str, Any]:
    """RNG states of this process: python and numpy as JSON-able lists, torch as uint8 tensors."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, np_keys.tolist(), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict[str, Any]) -> None:
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def save_train_state(directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                     scaler: Optional[Any], state: dict[str, Any], rng_states: list[dict[str, Any]],
                     teacher: Optional[dict[str, torch.Tensor]] = None) -> None:
    """Write a checkpoint's files into ``directory`` (not atomic as a whole: see RunDir.save_checkpoint).

    ``state`` holds JSON-able counters (epoch, batches done, global step, best metric...).
    ``rng_states`` has one :func:`capture_rng` entry per rank, so a resumed multi-process
    run restores each rank's own generators. ``teacher``: the mean teacher's weights, if any.
    """
    model.save_pretrained(directory)
    if teacher is not None:
        save_safetensors_atomic(teacher, directory / TEACHER_NAME)
    torch.save({
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "torch_rng": [r["torch"] for r in rng_states],
        "cuda_rng": [r["cuda"] for r in rng_states],
    }, directory / OPTIM_STATE_NAME)
    with open(directory / OPTIM_STATE_NAME, "rb") as f:
        os.fsync(f.fileno())
    host_rng = [{"python": r["python"], "numpy": r["numpy"]} for r in rng_states]
    save_json_atomic({"version": STATE_VERSION, **state, "rng": host_rng}, directory / TRAINER_STATE_NAME)


def load_train_state(ckpt: Path, rank: int = 0, world_size: int = 1) -> tuple[dict[str, Any], dict[str, Any]]:
    """(trainer state with this rank's RNG under "rng", optimizer/scheduler/scaler states) of ``ckpt``.

    Each rank restores its own generators, so the checkpoint must come from as many
    processes as this run has.
    """
    state = _read_state(ckpt / TRAINER_STATE_NAME)
    optim = _read_optim(ckpt / OPTIM_STATE_NAME)
    host = state.pop("rng")
    world = len(host)
    if len(optim["torch_rng"]) != world or len(optim["cuda_rng"]) != world:
        raise CheckpointError(f"{ckpt / OPTIM_STATE_NAME} holds RNG states of {len(optim['torch_rng'])} "
                              f"process(es) where {TRAINER_STATE_NAME} has {world}")
    if world != world_size:
        raise ValueError(f"{ckpt} was written by {world} process(es) but this run has {world_size}; "
                         "resume with the same number of processes")
    state["rng"] = {**host[rank], "torch": optim["torch_rng"][rank], "cuda": optim["cuda_rng"][rank]}
    state.pop("version", None)
    return state, optim


def restore_optimizers(optim: dict[str, Any], optimizer: torch.optim.Optimizer, scheduler: Any,
                       scaler: Any) -> None:
    """Load what :func:`save_train_state` packed into ``optim.pt`` back into the live objects."""
    optimizer.load_state_dict(optim["optimizer"])
    scheduler.load_state_dict(optim["scheduler"])
    if optim["scaler"] is not None:
        scaler.load_state_dict(optim["scaler"])


def load_weights(ckpt: Path, name: str = WEIGHTS_NAME) -> dict[str, torch.Tensor]:
    """The trainable weights of checkpoint ``ckpt`` (file ``name``); a missing or cut file is a CheckpointError."""
    path = ckpt / name
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        return load_safetensors(path)
    except ValueError as exc:   # names the file and why
        raise CheckpointError(_first_line(exc)) from None


def load_teacher(ckpt: Path) -> dict[str, torch.Tensor]:
    """The mean teacher's weights in checkpoint ``ckpt``; a missing or cut file is a CheckpointError."""
    return load_weights(ckpt, TEACHER_NAME)


def _read_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON (cut short or overwritten: {exc.msg} at line "
                              f"{exc.lineno})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} cannot be read ({_first_line(exc)})") from None
    if not (isinstance(state, dict) and all(k in state for k in _STATE_KEYS) and isinstance(state["rng"], list)
            and state["rng"]):
        raise CheckpointError(f"{path} does not hold a trainer state (expected a JSON object with "
                              f"{', '.join(_STATE_KEYS)})")
    if state.get("version", 0) > STATE_VERSION:
        raise ValueError(f"{path} has version {state['version']}, newer than this tgcnet "
                         f"understands ({STATE_VERSION}); update tgcnet to resume it")
    return state


def _read_optim(path: Path) -> dict[str, Any]:
    try:
        optim = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable training state ({_first_line(exc)})") from None
    if not isinstance(optim, dict) or not all(k in optim for k in _OPTIM_KEYS):
        raise CheckpointError(f"{path} does not hold a training state (expected {', '.join(_OPTIM_KEYS)})")
    return optim


def _first_line(exc: BaseException, limit: int = 160) -> str:
    """Enough of a library's error to recognise it, on one line (torch's run to paragraphs)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
