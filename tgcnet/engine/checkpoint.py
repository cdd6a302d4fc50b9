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

A checkpoint that is there but cannot be read (a file cut short by a full disk, edited,
or deleted) raises :class:`CheckpointError`, which names the file and says which earlier
state of the run survives (:func:`recovery_hint`): an intact ``last.old/``, the model in
``best/``, or nothing, in which case the run must start afresh.
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

from tgcnet.io import save_json_atomic

from .files import BEST_DIR, INFERENCE_NAME, LAST_DIR, OPTIM_STATE_NAME, TRAINER_STATE_NAME, WEIGHTS_NAME

__all__ = ["CheckpointError", "capture_rng", "restore_rng", "save_checkpoint", "find_checkpoint", "load_checkpoint",
           "load_weights", "recovery_hint", "has_run"]

STATE_VERSION = 1
_STATE_KEYS = ("epoch", "global_step", "rng")
_OPTIM_KEYS = ("optimizer", "scheduler", "scaler", "torch_rng", "cuda_rng")


class CheckpointError(ValueError):
    """A checkpoint is there but unusable; the message names the file and what survives.

    A ValueError, so the CLI reports it as one line with exit code 2: the fix (use an
    earlier state, or start afresh) is the user's to make.
    """


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
    final = run_dir / LAST_DIR
    tmp = run_dir / f".{LAST_DIR}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        model.save_pretrained(tmp)
        torch.save({
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
            "torch_rng": [r["torch"] for r in rng_states],
            "cuda_rng": [r["cuda"] for r in rng_states],
        }, tmp / OPTIM_STATE_NAME)
        with open(tmp / OPTIM_STATE_NAME, "rb") as f:
            os.fsync(f.fileno())
        host_rng = [{"python": r["python"], "numpy": r["numpy"]} for r in rng_states]
        save_json_atomic({"version": STATE_VERSION, **state, "rng": host_rng}, tmp / TRAINER_STATE_NAME)
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
    for name in (LAST_DIR, LAST_DIR + ".old"):
        candidate = run_dir / name
        if (candidate / TRAINER_STATE_NAME).is_file() and (candidate / OPTIM_STATE_NAME).is_file():
            return candidate
    return None


def has_run(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a checkpoint (complete, mid-swap or damaged): a run to resume, not to overwrite."""
    run_dir = Path(run_dir)
    return find_checkpoint(run_dir) is not None or any((run_dir / n).exists() for n in (LAST_DIR, LAST_DIR + ".old"))


def load_checkpoint(run_dir: str | Path, rank: int = 0) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """(checkpoint dir, trainer state with this rank's RNG, optimizer/scheduler/scaler states)."""
    run_dir = Path(run_dir)
    ckpt = find_checkpoint(run_dir)
    if ckpt is None:
        _raise_missing(run_dir)
    state = _read_state(ckpt, run_dir)
    optim = _read_optim(ckpt, run_dir)
    host = state.pop("rng")
    world = len(host)
    if len(optim["torch_rng"]) != world or len(optim["cuda_rng"]) != world:
        raise _damaged(run_dir, ckpt, ckpt / OPTIM_STATE_NAME, f"holds RNG states of {len(optim['torch_rng'])} "
                       f"process(es) where {TRAINER_STATE_NAME} has {world}")
    if rank >= world:
        raise ValueError(f"{ckpt} was written by {world} process(es); cannot resume rank {rank} from it "
                         "(resume with the same number of processes)")
    state["rng"] = {**host[rank], "torch": optim["torch_rng"][rank], "cuda": optim["cuda_rng"][rank]}
    state["rng_world_size"] = world
    return ckpt, state, optim


def load_weights(ckpt: str | Path, run_dir: str | Path) -> dict[str, torch.Tensor]:
    """The trainable weights of checkpoint ``ckpt``; a missing or cut file is a CheckpointError."""
    from safetensors.torch import load_file

    path = Path(ckpt) / WEIGHTS_NAME
    if not path.is_file():
        raise _damaged(run_dir, ckpt, path, "is missing")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise _damaged(run_dir, ckpt, path, f"is not a readable safetensors file ({_first_line(exc)})") from None


def _raise_missing(run_dir: Path) -> None:
    """No complete checkpoint: a damaged ``last/`` (a file gone) or none ever written."""
    last = run_dir / LAST_DIR
    if last.is_dir():
        gone = next(name for name in (TRAINER_STATE_NAME, OPTIM_STATE_NAME) if not (last / name).is_file())
        raise _damaged(run_dir, last, last / gone, "is missing")
    raise FileNotFoundError(f"no resumable checkpoint in {run_dir}: expected {last}/"
                            f"{TRAINER_STATE_NAME} and {OPTIM_STATE_NAME} (was it written by `tgcnet train`?)")


def _read_state(ckpt: Path, run_dir: Path) -> dict[str, Any]:
    path = ckpt / TRAINER_STATE_NAME
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise _damaged(run_dir, ckpt, path, f"is not valid JSON (cut short or overwritten: {exc.msg} at line "
                       f"{exc.lineno})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _damaged(run_dir, ckpt, path, f"cannot be read ({_first_line(exc)})") from None
    if not (isinstance(state, dict) and all(k in state for k in _STATE_KEYS) and isinstance(state["rng"], list)
            and state["rng"]):
        raise _damaged(run_dir, ckpt, path, f"does not hold a trainer state (expected a JSON object with "
                       f"{', '.join(_STATE_KEYS)})")
    if state.get("version", 0) > STATE_VERSION:
        raise ValueError(f"{path} has version {state['version']}, newer than this tgcnet "
                         f"understands ({STATE_VERSION}); update tgcnet to resume it")
    return state


def _read_optim(ckpt: Path, run_dir: Path) -> dict[str, Any]:
    path = ckpt / OPTIM_STATE_NAME
    try:
        optim = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise _damaged(run_dir, ckpt, path, f"is not a readable training state ({_first_line(exc)})") from None
    if not isinstance(optim, dict) or not all(k in optim for k in _OPTIM_KEYS):
        raise _damaged(run_dir, ckpt, path, f"does not hold a training state (expected {', '.join(_OPTIM_KEYS)})")
    return optim


def _first_line(exc: BaseException, limit: int = 160) -> str:
    """Enough of a library's error to recognise it, on one line (torch's run to paragraphs)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _damaged(run_dir: str | Path, ckpt: str | Path, path: Path, problem: str) -> CheckpointError:
    return CheckpointError(f"{path} {problem}: the checkpoint {ckpt} is damaged and cannot be resumed; "
                           f"{recovery_hint(run_dir, damaged=Path(ckpt))}")


def recovery_hint(run_dir: str | Path, damaged: Optional[Path] = None) -> str:
    """What earlier state of a run survives, as advice: another intact checkpoint, else the
    best model (a new run can start from it), else nothing (start afresh).

    ``damaged`` is the checkpoint that failed; None when the run's settings did, in which
    case no checkpoint of the run can be resumed and only best/ is offered.
    """
    run_dir = Path(run_dir)
    if damaged is not None:
        for other in (run_dir / LAST_DIR, run_dir / (LAST_DIR + ".old")):
            step = _intact_step(other) if other != damaged else None
            if step is not None:
                return (f"{other} is intact (step {step}): move {damaged} aside (e.g. to {damaged}.damaged) "
                        f"and rerun with --resume {run_dir} to continue from it")
    best = run_dir / BEST_DIR
    if (best / WEIGHTS_NAME).is_file():
        return (f"the best model so far is intact in {best}{_best_info(best)}: start a new run from it with "
                f"--init-from {best} --out NEW_DIR (a new schedule, not an exact continuation)")
    return f"no earlier state of this run is kept: start afresh with --out NEW_DIR (or delete {run_dir})"


def _intact_step(ckpt: Path) -> Optional[int]:
    """The global step of a checkpoint whose files are all there and whose state parses, else None."""
    if not all((ckpt / name).is_file() for name in (TRAINER_STATE_NAME, OPTIM_STATE_NAME, WEIGHTS_NAME)):
        return None
    try:
        state = json.loads((ckpt / TRAINER_STATE_NAME).read_text(encoding="utf-8"))
        return int(state["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _best_info(best: Path) -> str:
    """' (epoch 3, validation Dice 0.6123)' from best/inference.json, or '' when it says nothing."""
    try:
        info = json.loads((best / INFERENCE_NAME).read_text(encoding="utf-8"))
        dice = info.get("val_dice")
        score = "" if dice is None else f", validation Dice {float(dice):.4f}"
        return f" (epoch {int(info['epoch']) + 1}{score})"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return ""
