"""One process writes into a run directory at a time; its lock dies with it, even by SIGKILL.

The holders are other processes, as users meet them: flock locks belong to an open file,
so a second lock in the test's own process would be refused too, and prove less.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from tgcnet.data import sample_root
from tgcnet.engine.run_dir import RunDir, RunDirInUse

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the lock is not enforced without fcntl")

HOLD = textwrap.dedent('''
    import os, sys, time
    from tgcnet.engine.run_dir import RunDir

    RunDir(sys.argv[1]).lock()
    child = 0
    if sys.argv[2] == "fork":  # like a DataLoader worker, which inherits the lock's file
        ready, started = os.pipe()
        child = os.fork()
        if child == 0:
            os.write(started, b"1")  # os.fork() has returned here: the fork hooks have run
            time.sleep(60)
            os._exit(0)
        os.read(ready, 1)
    print("locked", child, flush=True)
    time.sleep(60)
''')
QUICK = ["--image-size", "32", "--batch-size", "8", "--knowledge", "none", "--device", "cpu", "--no-progress",
         "--warmup-steps", "1", "--val-split", "none"]


@contextmanager
def holder(run: Path, fork: bool = False) -> Iterator[tuple[subprocess.Popen, int]]:
    """Another process holding ``run``'s lock: (the process, the pid of its forked child or 0)."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]) + os.pathsep
               + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run), "fork" if fork else "-"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    child = 0
    try:
        line = proc.stdout.readline()
        assert line.startswith("locked"), proc.stderr.read() if proc.poll() is not None else line
        child = int(line.split()[1])
        yield proc, child
    finally:
        proc.kill()
        proc.wait(timeout=30)
        if child:
            _kill(child)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _sigkill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def test_a_second_process_is_refused_with_the_holder_named(tmp_path):
    run = tmp_path / "run"
    with holder(run) as (proc, _):
        for attempt in (RunDir(run).lock, RunDir(run).check_free):
            with pytest.raises(RunDirInUse) as err:
                attempt()
            message = str(err.value)
            assert message.startswith(f"{run} is in use by process {proc.pid} on host {socket.gethostname()} since ")
            assert f"its lock file {run / '.lock'}" in message and "wait for it to finish or stop it" in message


def test_the_lock_dies_with_its_holder_not_with_its_forked_worker(tmp_path):
    run = tmp_path / "run"
    with holder(run, fork=True) as (proc, worker):
        _sigkill(proc)
        os.kill(worker, 0)  # the worker lives on, with its copy of the lock's file closed
        mine = RunDir(run)
        mine.check_free()
        mine.lock()
        assert json.loads((run / ".lock").read_text())["pid"] == os.getpid()
        mine.unlock()
    assert not (run / ".lock").exists()


def test_a_new_run_rechecks_the_directory_under_the_lock(tmp_path):
    """Between the first look and the lock, another process may have trained here: a new run stops."""
    run = RunDir(tmp_path / "run")
    run.claim(new_run=True)
    run.unlock()
    run.last.mkdir()
    with pytest.raises(ValueError, match="already holds a training run"):
        run.claim(new_run=True)
    assert not run.lock_file.exists()  # and the refused claim let go


def _error(argv: list[str], capsys) -> str:
    from tgcnet.cli import main

    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_held_run_is_refused_then_resumes_once_its_holder_is_killed(tmp_path, capsys):
    from tgcnet.cli import main

    run = tmp_path / "run"
    assert main(["train", "--data", str(sample_root()), "--out", str(run), "--max-steps", "1", *QUICK]) == 0
    with holder(run) as (proc, _):
        for argv in (["train", "--resume", str(run), "--max-steps", "2"],
                     ["train", "--data", str(sample_root()), "--out", str(run), *QUICK]):
            err = _error(argv, capsys)
            assert f"{run} is in use by process {proc.pid} on host" in err, err
        _sigkill(proc)
        assert main(["train", "--resume", str(run), "--max-steps", "2"]) == 0
    assert json.loads((run / "last" / "trainer_state.json").read_text())["global_step"] == 2
    # the lock went with the run: the directory holds the run's outputs only
    assert sorted(p.name for p in run.iterdir()) == ["best", "last", "log.jsonl", "train_config.json"]


def test_a_training_run_holds_its_directory(tmp_path):
    import torch

    from tgcnet.engine import TrainConfig
    from tgcnet.engine.distributed import DistInfo
    from tgcnet.engine.trainer import Trainer

    class Probe(Trainer):
        def _train_epoch(self, epoch: int) -> None:
            with pytest.raises(RunDirInUse, match=f"process {os.getpid()} "):
                RunDir(self.run_dir).check_free()
            self.probed = True
            super()._train_epoch(epoch)

    cfg = TrainConfig(data=str(sample_root()), out=str(tmp_path / "run"), image_size=32, max_steps=1,
                      knowledge="none", warmup_steps=1, val_split=None, progress=False, device="cpu")
    trainer = Probe(cfg, torch.device("cpu"), DistInfo())
    trainer.run()
    assert trainer.probed and not (tmp_path / "run" / ".lock").exists()


def test_best_is_replaced_whole_or_not_at_all(tmp_path):
    """A save of best/ that fails halfway leaves the previous best model as it was, and no debris."""
    from tgcnet import create_model
    from tgcnet.engine import TrainConfig

    run = RunDir(tmp_path / "run")
    config = TrainConfig(data=str(tmp_path), preset="tgcnet-tiny", out=str(run.path), knowledge="none")
    model = create_model("tgcnet-tiny", knowledge=None)
    run.save_best(model, config, epoch=1)
    def files() -> dict[str, bytes]:
        return {str(p.relative_to(run.best)): p.read_bytes() for p in sorted(run.best.rglob("*")) if p.is_file()}

    before = files()
    assert "config.json" in before

    class Failing:
        config = model.config

        def save_pretrained(self, directory):
            (directory / "config.json").write_text("{half")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        run.save_best(Failing(), config, epoch=2)
    assert files() == before
    assert sorted(p.name for p in run.path.iterdir()) == ["best"]
