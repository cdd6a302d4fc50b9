"""A training run's directory: where each file goes, how checkpoints replace each other, and who may write.

The files are named in tgcnet.engine.files; what a checkpoint holds is tgcnet.engine.train_state's.

**Checkpoints.** A checkpoint is several files that must agree with each other, so atomic
files are not enough: everything is written into a fresh temporary directory which then
replaces ``last/`` by renames. A crash at any instant leaves either the old or the new
checkpoint complete (``last/``, or ``last.old/`` during the swap; :meth:`RunDir.find_checkpoint`
looks at both). One that is there but cannot be read raises CheckpointError, which names
the file and says which earlier state of the run survives (:func:`recovery_hint`).

**New or resumed.** A directory with no checkpoint and no ``best/`` holds no run: a new run
replaces its train_config.json and log.jsonl (left by a start that failed before its first
checkpoint) instead of asking for --resume.

**The best model.** ``best/`` is replaced the same way (written aside, then renamed in), so
inference never reads a half-written model.

**One writer.** The writing process holds the directory's lock for the whole run
(:class:`tgcnet.engine.run_lock.RunLock`); under torchrun only rank 0 writes, so only rank 0 locks.

Importing this module loads no torch: the checks a run is refused for come before any model.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

from tgcnet.io import atomic_write_text, save_json_atomic

from .files import (BEST_DIR, INFERENCE_NAME, LABELLED_NAME, LAST_DIR, LOCK_NAME, LOG_NAME, OPTIM_STATE_NAME,
                    TRAIN_CONFIG_NAME, TRAINER_STATE_NAME, WEIGHTS_NAME)
from .run_lock import RunDirInUse, RunLock
from .train_config import RESUME_FIXED, TrainConfig, read_saved_config

if TYPE_CHECKING:
    import torch

__all__ = ["RunDir", "RunDirInUse", "recovery_hint"]


class RunDir:
    """One training run's directory, as the process that trains into it sees it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = RunLock(self.path / LOCK_NAME, self.path)

    # ------------------------------------------------------------------ layout
    @property
    def config_file(self) -> Path:
        return self.path / TRAIN_CONFIG_NAME

    @property
    def log_file(self) -> Path:
        return self.path / LOG_NAME

    @property
    def labelled_file(self) -> Path:
        """Which training images keep their masks (semi-supervised runs; tgcnet.engine.labelled_split)."""
        return self.path / LABELLED_NAME

    @property
    def best(self) -> Path:
        return self.path / BEST_DIR

    @property
    def last(self) -> Path:
        return self.path / LAST_DIR

    @property
    def last_old(self) -> Path:
        """The previous checkpoint, there only while a swap is under way (or was cut by a crash)."""
        return self.path / (LAST_DIR + ".old")

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK_NAME

    # ------------------------------------------------------------------ what the directory holds
    def find_checkpoint(self) -> Optional[Path]:
        """The complete checkpoint of the run, or None (also finds one interrupted mid-swap)."""
        for candidate in (self.last, self.last_old):
            if (candidate / TRAINER_STATE_NAME).is_file() and (candidate / OPTIM_STATE_NAME).is_file():
                return candidate
        return None

    def has_run(self) -> bool:
        """Whether it holds a checkpoint (complete, mid-swap or damaged): a run to resume, not to overwrite."""
        return self.find_checkpoint() is not None or self.last.exists() or self.last_old.exists()

    def check_start(self, config: TrainConfig) -> None:
        """Fail before anything is built or written when ``config`` cannot run here.

        A new run needs a directory holding no run; a resume needs a checkpoint and the
        saved settings that fix the data order and the model; both need it free.
        """
        self.check_free()
        if config.resume is None:
            self.check_new()
            return
        saved = read_saved_config(self.path)
        self.check_resumable()
        changed = [f"{k}: saved {saved.get(k)!r}, now {getattr(config, k)!r}"
                   for k in RESUME_FIXED if k in saved and saved[k] != getattr(config, k)]
        if changed:
            raise ValueError(f"cannot resume {self.path} with a different data order or model: " + "; ".join(changed))

    def check_new(self) -> None:
        """Refuse a directory holding a run's checkpoint or model; leftovers of a run that never
        saved one (train_config.json, log.jsonl of a failed start) are no run, and are replaced."""
        if self.has_run():
            raise ValueError(f"{self.path} already holds a training run; pass --resume {self.path} to continue it, "
                             "or choose another --out")
        if self.best.exists():
            raise ValueError(f"{self.path} already holds a training run: a model in {self.best}, but no checkpoint "
                             f"to resume; choose another --out (--init-from {self.best} starts from that model), "
                             f"or delete {self.path}")

    def check_resumable(self) -> None:
        """Fail before building anything when there is no checkpoint at all (a damaged one is
        reported, with what survives, by :meth:`load_checkpoint`)."""
        if self.find_checkpoint() is not None or self.last.exists():
            return
        if self.best.exists():
            raise FileNotFoundError(f"cannot resume {self.path}: it holds no checkpoint, only a model in {self.best}; "
                                    f"start a new run from it with --init-from {self.best} --out NEW_DIR")
        raise FileNotFoundError(f"cannot resume {self.path}: it holds no checkpoint (the run stopped before saving "
                                f"its first); start it afresh: the same command without --resume, with --out "
                                f"{self.path}")

    # ------------------------------------------------------------------ one writer
    def check_free(self) -> None:
        """Fail now, before a model is built, if another process holds the directory (only a look:
        :meth:`claim` decides, since the holder may change in between)."""
        self._lock.check_free()

    def claim(self, new_run: bool) -> None:
        """Lock the directory (creating it), before anything is written into it.

        A new run checks again, under the lock, that the directory holds no run: another
        process may have trained here since :meth:`check_start`.
        """
        self.lock()
        if new_run:
            try:
                self.check_new()
            except ValueError:
                self.unlock()
                raise

    def lock(self) -> None:
        """Hold the directory (creating it) until :meth:`unlock` or this process's death; RunDirInUse if
        another process holds it."""
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock.acquire()

    def unlock(self) -> None:
        """Give the directory back; the lock file goes, so a finished run holds only its outputs."""
        self._lock.release()

    # ------------------------------------------------------------------ writing
    def start(self, config: TrainConfig, model: "torch.nn.Module", world_size: int,
              labelled: Optional[dict[str, Any]] = None) -> None:
        """Begin a new run: replace what a start that never reached a checkpoint left, record its
        settings (a resume starts from them; inference falls back on them) and, for a
        semi-supervised run, its ``labelled`` split (a resume reads it back)."""
        stale = [p for p in (self.config_file, self.log_file, self.labelled_file) if p.exists()]
        if stale:
            print(f"note: {self.path} holds no checkpoint; replacing {', '.join(p.name for p in stale)} of an "
                  "earlier start", file=sys.stderr, flush=True)
            self.log_file.unlink(missing_ok=True)
            self.labelled_file.unlink(missing_ok=True)
        if labelled is not None:
            save_json_atomic(labelled, self.labelled_file)
        save_json_atomic({"train": config.to_dict(), "model": model.config.to_dict(), "world_size": world_size,
                          "trainable_params": sum(p.numel() for p in model.trainable_parameters()),
                          "total_params": sum(p.numel() for p in model.parameters())}, self.config_file)

    def append_log(self, entry: dict[str, Any]) -> None:
        with open(self.log_file, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    def trim_log(self, epoch: int, keep_epoch: bool) -> None:
        """Drop log lines of epochs a resumed run will redo (written after its checkpoint):
        those from ``epoch`` on, or after it when ``keep_epoch`` (that epoch was validated)."""
        if not self.log_file.is_file():
            return
        keep = []
        for line in self.log_file.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                logged = json.loads(line).get("epoch", -1)
            except json.JSONDecodeError:
                continue  # a line cut by the kill
            if logged < epoch or (logged == epoch and keep_epoch):
                keep.append(line)
        atomic_write_text(self.log_file, "".join(k + "\n" for k in keep))

    def save_best(self, model: "torch.nn.Module", config: TrainConfig, **progress: Any) -> Path:
        """The best model so far, with what inference needs that its config lacks (inference.json),
        and ``progress`` (epoch, global_step, val_dice) for whoever picks it up."""
        def write(tmp: Path) -> None:
            model.save_pretrained(tmp)
            save_json_atomic({"image_size": config.image_size, "knowledge": config.knowledge,
                              "caption_override": config.caption_override, "threshold": config.threshold,
                              "pretrained": config.pretrained, **progress}, tmp / INFERENCE_NAME)

        return self._write_dir(self.best, write)

    def save_checkpoint(self, model: "torch.nn.Module", optimizer: Any, scheduler: Any, scaler: Optional[Any],
                        state: dict[str, Any], rng_states: list[dict[str, Any]],
                        teacher: Optional[dict[str, "torch.Tensor"]] = None) -> Path:
        """Write ``last/`` atomically (the arguments as train_state.save_train_state takes them)."""
        from .train_state import save_train_state

        return self._write_dir(self.last, lambda tmp: save_train_state(tmp, model, optimizer, scheduler, scaler,
                                                                       state, rng_states, teacher))

    def _write_dir(self, target: Path, write: Callable[[Path], None]) -> Path:
        """``write`` a fresh temporary directory, then swap it in for ``target`` (the previous one
        kept as ``<target>.old`` during the swap), so a complete ``target`` always exists."""
        tmp = self.path / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
        old = target.with_name(target.name + ".old")
        tmp.mkdir(parents=True)
        try:
            write(tmp)
            _fsync_dir(tmp)
            if old.exists():
                shutil.rmtree(old)
            if target.exists():
                os.replace(target, old)
            os.replace(tmp, target)
            _fsync_dir(self.path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(old, ignore_errors=True)
        return target

    # ------------------------------------------------------------------ resuming
    def load_checkpoint(self, rank: int = 0, world_size: int = 1) -> tuple[Path, dict[str, Any], dict[str, Any]]:
        """(checkpoint dir, trainer state with this rank's RNG, optimizer/scheduler/scaler states)."""
        from .train_state import load_train_state

        ckpt = self.find_checkpoint()
        if ckpt is None:
            self._raise_missing()
        with self._damaged(ckpt):
            state, optim = load_train_state(ckpt, rank, world_size)
        return ckpt, state, optim

    def load_weights(self, ckpt: Path) -> dict[str, "torch.Tensor"]:
        """The trainable weights of checkpoint ``ckpt`` (one of this run's)."""
        from .train_state import load_weights

        with self._damaged(ckpt):
            return load_weights(ckpt)

    def load_teacher(self, ckpt: Path) -> dict[str, "torch.Tensor"]:
        """The mean teacher's weights in checkpoint ``ckpt`` (one of this run's)."""
        from .train_state import load_teacher

        with self._damaged(ckpt):
            return load_teacher(ckpt)

    def _raise_missing(self) -> None:
        """No complete checkpoint: a damaged ``last/`` (a file gone) or none ever written."""
        from .train_state import STATE_FILES, CheckpointError

        if self.last.is_dir():
            gone = next(name for name in STATE_FILES if not (self.last / name).is_file())
            with self._damaged(self.last):
                raise CheckpointError(f"{self.last / gone} is missing")
        raise FileNotFoundError(f"no resumable checkpoint in {self.path}: expected {self.last}/"
                                f"{' and '.join(STATE_FILES)} (was it written by `tgcnet train`?)")

    @contextmanager
    def _damaged(self, ckpt: Path) -> Iterator[None]:
        """A CheckpointError about a file of ``ckpt`` gains what of the run survives."""
        from .train_state import CheckpointError

        try:
            yield
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}: the checkpoint {ckpt} is damaged and cannot be resumed; "
                                  f"{recovery_hint(self.path, damaged=ckpt)}") from None


def recovery_hint(run_dir: str | Path, damaged: Optional[Path] = None) -> str:
    """What earlier state of a run survives, as advice: another intact checkpoint, else the
    best model (a new run can start from it), else nothing (start afresh).

    ``damaged`` is the checkpoint that failed; None when the run's settings did, in which
    case no checkpoint of the run can be resumed and only best/ is offered.
    """
    run = RunDir(run_dir)
    if damaged is not None:
        for other in (run.last, run.last_old):
            step = _intact_step(other) if other != damaged else None
            if step is not None:
                return (f"{other} is intact (step {step}): move {damaged} aside (e.g. to {damaged}.damaged) "
                        f"and rerun with --resume {run.path} to continue from it")
    if (run.best / WEIGHTS_NAME).is_file():
        return (f"the best model so far is intact in {run.best}{_best_info(run.best)}: start a new run from it with "
                f"--init-from {run.best} --out NEW_DIR (a new schedule, not an exact continuation)")
    return f"no earlier state of this run is kept: start afresh with --out NEW_DIR (or delete {run.path})"


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


def _fsync_dir(path: Path) -> None:
    """Make renames inside ``path`` durable (where the platform lets a directory be synced)."""
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
