"""Resumable training checkpoints (``RUN_DIR/last/``), written atomically as a directory.

A checkpoint is several files (weights, optimizer, counters, RNG states) that must agree
with each other, so atomic files are not enough: everything is written into a fresh
temporary directory which then replaces ``last/`` by renames. A crash at any instant
leaves either the old or the new checkpoint complete (``last/``, or ``last.old/`` during
the swap; :func:`find_checkpoint` looks at both).

Layout of ``last/``::

    config.json, model.safetensors   the model, as TGCNet.save_pretrained writes it
    trainer_state.json               counters, best metric, python/numpy RNG states
    optim.pt                         optimizer, scheduler, GradScaler, torch RNG states

``optim.pt`` holds only tensors, numbers and containers, and is read back with
``torch.load(weights_only=True)``: no arbitrary pickle is ever loaded.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import uuid
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from tgcnet.adapters import save_json_atomic

__all__ = ["LAST", "TRAINER_STATE", "OPTIM_STATE", "capture_rng", "restore_rng", "save_checkpoint",
           "find_checkpoint", "load_checkpoint"]

LAST = "last"
TRAINER_STATE = "trainer_state.json"
OPTIM_STATE = "optim.pt"
STATE_VERSION = 1


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


def _swap_in(tmp: Path, final: Path) -> None:
    """Replace directory ``final`` by ``tmp`` so that one complete copy always exists."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(run_dir: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, scaler: Optional[Any], state: dict[str, Any],
                    rng_states: list[dict[str, Any]]) -> Path:
    """Write ``run_dir/last/`` atomically.

    ``state`` holds JSON-able counters (epoch, batches done, global step, best metric...).
    ``rng_states`` has one :func:`capture_rng` entry per rank, so a resumed multi-process
    run restores each rank's own generators.
    """
    run_dir = Path(run_dir)
    final = run_dir / LAST
    tmp = run_dir / f".{LAST}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        model.save_pretrained(tmp)
        torch.save({
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
            "torch_rng": [r["torch"] for r in rng_states],
            "cuda_rng": [r["cuda"] for r in rng_states],
        }, tmp / OPTIM_STATE)
        with open(tmp / OPTIM_STATE, "rb") as f:
            os.fsync(f.fileno())
        host_rng = [{"python": r["python"], "numpy": r["numpy"]} for r in rng_states]
        save_json_atomic({"version": STATE_VERSION, **state, "rng": host_rng}, tmp / TRAINER_STATE)
        _fsync_dir(tmp)
        _swap_in(tmp, final)
        _fsync_dir(run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def find_checkpoint(run_dir: str | Path) -> Optional[Path]:
    """The complete checkpoint of a run, or None (also finds one interrupted mid-swap)."""
    run_dir = Path(run_dir)
    for name in (LAST, LAST + ".old"):
        candidate = run_dir / name
        if (candidate / TRAINER_STATE).is_file() and (candidate / OPTIM_STATE).is_file():
            return candidate
    return None


def load_checkpoint(run_dir: str | Path, rank: int = 0) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """(checkpoint dir, trainer state with this rank's RNG, optimizer/scheduler/scaler states)."""
    ckpt = find_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"no resumable checkpoint in {run_dir}: expected {Path(run_dir) / LAST}/"
                                f"{TRAINER_STATE} and {OPTIM_STATE} (was it written by `tgcnet train`?)")
    with open(ckpt / TRAINER_STATE, encoding="utf-8") as f:
        state = json.load(f)
    if state.get("version", 0) > STATE_VERSION:
        raise ValueError(f"{ckpt / TRAINER_STATE} has version {state['version']}, newer than this tgcnet "
                         f"understands ({STATE_VERSION})")
    try:
        optim = torch.load(ckpt / OPTIM_STATE, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{ckpt / OPTIM_STATE} is not a readable training state: {exc}") from exc
    host = state.pop("rng")
    world = len(host)
    if rank >= world:
        raise ValueError(f"{ckpt} was written by {world} process(es); cannot resume rank {rank} from it "
                         "(resume with the same number of processes)")
    state["rng"] = {**host[rank], "torch": optim["torch_rng"][rank], "cuda": optim["cuda_rng"][rank]}
    state["rng_world_size"] = world
    return ckpt, state, optim
