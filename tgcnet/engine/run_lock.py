"""One writer per run directory: an OS advisory lock that dies with its holder.

Two processes training into one directory would overwrite each other's checkpoints
unnoticed, so the writing process holds ``flock`` on ``RUN_DIR/.lock`` for the whole run and
records there its pid, host and start time, for the error the next one gets. The kernel
drops the lock when the holder dies, even by kill -9, so a crashed run stays resumable
without anyone deleting a stale file; a run that ends removes the file. Forked children
(DataLoader workers) close their copy, so the lock dies with the trainer and not with its
last worker. Where ``fcntl`` is missing (Windows) the lock is not enforced; on a file system
without locks, training goes on with a warning.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["RunLock", "RunDirInUse"]


class RunDirInUse(ValueError):
    """Another process is writing into the run directory; the message names it.

    A ValueError, so the CLI reports it as one line with exit code 2.
    """


class RunLock:
    """The lock file ``path`` of the run directory ``directory``, as one process holds it."""

    def __init__(self, path: Path, directory: Path) -> None:
        self.path, self.directory = Path(path), Path(directory)
        self._fd: Optional[int] = None

    def check_free(self) -> None:
        """RunDirInUse if another process holds the lock now (a shared look: two looks do not
        refuse each other)."""
        if fcntl is None:
            return
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:  # no lock file: nobody holds the directory
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise self._in_use() from None
        except OSError:
            return  # no locks on this file system: acquire() says so
        finally:
            os.close(fd)

    def acquire(self) -> None:
        """Hold the lock until :meth:`release` or this process's death; RunDirInUse if another holds it."""
        if fcntl is None or self._fd is not None:
            return
        for attempt in range(3):
            try:
                fd = _acquire(self.path)
                break
            except BlockingIOError:
                if attempt == 2:
                    raise self._in_use() from None
                time.sleep(0.05)  # another process's check_free holds it for microseconds
            except OSError as exc:
                if exc.errno not in _NO_LOCKS:
                    raise
                warnings.warn(f"cannot lock {self.path} ({exc.strerror}): its file system has no locks, so "
                              f"another process could train into {self.directory} unnoticed", stacklevel=3)
                return
        _write_holder(fd)
        _HELD.add(fd)
        self._fd = fd

    def release(self) -> None:
        """Give the lock back and remove its file."""
        fd, self._fd = self._fd, None
        if fd is None or fd not in _HELD:  # never held, or a forked child's copy (closed at the fork)
            return
        _HELD.discard(fd)
        self.path.unlink(missing_ok=True)  # still held: whoever locks this file next sees it gone, retries
        os.close(fd)

    def _in_use(self) -> "RunDirInUse":
        holder = _read_holder(self.path)
        who = "another process (it has not recorded itself yet)"
        if holder is not None:
            who = f"process {holder['pid']} on host {holder['host']} since {_local_time(holder['since'])}"
        return RunDirInUse(f"{self.directory} is in use by {who} (its lock file {self.path}); "
                           "wait for it to finish or stop it")


#: descriptors of the locks this process holds
_HELD: set[int] = set()
#: what flock says on a file system without locks (some network and FUSE mounts)
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}


def _close_in_child() -> None:
    """A forked child shares its parent's lock; closing its copy lets the lock die with the parent."""
    for fd in _HELD:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


def _acquire(path: Path) -> int:
    """A descriptor of ``path`` holding its exclusive lock; BlockingIOError while another process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            os.close(fd)
            raise
        if _is_file(fd, path):
            return fd
        os.close(fd)  # its holder removed the file as it finished: lock the one there now


def _is_file(fd: int, path: Path) -> bool:
    """Whether ``fd`` is still the file at ``path`` (not one a finishing holder removed)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _write_holder(fd: int) -> None:
    """Record who holds the lock, in place: a rename would leave the lock on a file nobody opens."""
    record = {"pid": os.getpid(), "host": socket.gethostname(),
              "since": datetime.now().astimezone().isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode("utf-8"), 0)


def _read_holder(path: Path) -> Optional[dict[str, Any]]:
    """The holder's record, or None while it has not written it (or someone edited the file)."""
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) and {"pid", "host", "since"} <= holder.keys() else None


def _local_time(iso: Any) -> str:
    """'2026-12-06 04:30' of the holder's ISO time stamp, in the holder's time zone."""
    try:
        return datetime.fromisoformat(str(iso)).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return str(iso)
