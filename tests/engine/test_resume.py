"""A training subprocess killed with SIGKILL and resumed ends with the weights of an uninterrupted run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tgcnet.io import load_safetensors
from tgcnet.data import sample_root
from tgcnet.engine.run_dir import RunDir

# 32 train images / batch 8 = 4 steps per epoch; 2 epochs; a checkpoint after every step.
RUN_ARGS = ["--image-size", "64", "--batch-size", "8", "--epochs", "2", "--checkpoint-every", "1",
            "--warmup-steps", "2", "--lr", "3e-3", "--device", "cpu", "--no-progress"]
TRAIN_ARGS = [*RUN_ARGS, "--knowledge", "none", "--deterministic"]
# What a user gets without asking: the knowledge bank on and no --deterministic.
DEFAULT_ARGS = RUN_ARGS
# Half the masks hidden: the split, the mean teacher and the unlabelled losses must resume too.
SEMI_ARGS = [*TRAIN_ARGS, "--labelled-fraction", "0.5", "--rampup-fraction", "0.25", "--pseudo-label-weight", "1",
             "--count-loss-weight", "0.5"]


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2]) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tgcnet.cli", "train", *args]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_safetensors(run / "last" / "model.safetensors")


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("args", [DEFAULT_ARGS, TRAIN_ARGS, SEMI_ARGS],
                         ids=["defaults", "no-knowledge-deterministic", "semi-supervised"])
def test_sigkill_then_resume_matches_uninterrupted(tmp_path, args):
    data = str(sample_root())
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(_cmd("--data", data, "--out", str(full), *args), env=_env(), check=True,
                   capture_output=True, timeout=300)

    proc = subprocess.Popen(_cmd("--data", data, "--out", str(killed), *args), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while RunDir(killed).find_checkpoint() is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"training ended before it could be killed: {err.decode()[-2000:]}"
    at_kill = json.loads((RunDir(killed).find_checkpoint() / "trainer_state.json").read_text())
    assert at_kill["global_step"] < 8, "the kill must interrupt the run"

    subprocess.run(_cmd("--resume", str(killed)), env=_env(), check=True, capture_output=True, timeout=300)
    a, b = _weights(full), _weights(killed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    # same validation history, each epoch logged once
    keys = ("epoch", "step", "val_dice", "val_pooled_dice")
    assert [[e[k] for k in keys] for e in _log(full)] == [[e[k] for k in keys] for e in _log(killed)]
    assert json.loads((killed / "last" / "trainer_state.json").read_text())["global_step"] == 8
    if args is SEMI_ARGS:  # the same split, the same teacher, the same unlabelled losses
        assert (full / "labelled.json").read_text() == (killed / "labelled.json").read_text()
        ta, tb = (load_safetensors(run / "last" / "teacher.safetensors") for run in (full, killed))
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
        semi = ("train_loss", "train_pseudo_label_loss", "train_language_loss", "train_count_loss")
        assert [[e[k] for k in semi] for e in _log(full)] == [[e[k] for k in semi] for e in _log(killed)]
        assert all(e["train_pseudo_label_loss"] is not None for e in _log(full))


def test_resume_refuses_a_changed_data_order(tmp_path):
    run = tmp_path / "run"
    subprocess.run(_cmd("--data", str(sample_root()), "--out", str(run), *TRAIN_ARGS, "--max-steps", "1"),
                   env=_env(), check=True, capture_output=True, timeout=300)
    res = subprocess.run(_cmd("--resume", str(run), "--batch-size", "4"), env=_env(), capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 2
    assert "batch_size: saved 8, now 4" in res.stderr and "Traceback" not in res.stderr


def test_checkpoint_interrupted_mid_swap_is_found(tmp_path):
    """A crash between the two renames of a checkpoint swap leaves last.old/, which still resumes."""
    from tgcnet.engine.train_state import capture_rng

    model = torch.nn.Linear(2, 2)
    model.save_pretrained = lambda d: torch.save({}, Path(d) / "dummy.pt")  # checkpoint wants save_pretrained
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    RunDir(tmp_path).save_checkpoint(model, opt, sched, None, {"epoch": 1, "global_step": 5}, [capture_rng()])
    assert not any(p.name.startswith(".last.tmp") for p in tmp_path.iterdir())
    os.replace(tmp_path / "last", tmp_path / "last.old")
    path, state, optim = RunDir(tmp_path).load_checkpoint()
    assert path.name == "last.old" and state["global_step"] == 5 and "optimizer" in optim
    with pytest.raises(FileNotFoundError, match="no resumable checkpoint"):
        RunDir(tmp_path / "nowhere").load_checkpoint()


# --------------------------------------------------------------------------- damaged checkpoints
# In-process (tgcnet.cli.main) and without --deterministic, which would leak into other tests.
QUICK_ARGS = ["--image-size", "64", "--batch-size", "8", "--epochs", "2", "--knowledge", "none", "--max-steps", "1",
              "--warmup-steps", "1", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def one_step_run(tmp_path_factory) -> Path:
    """A run stopped after one step: last/ (step 1) and best/ (its validated model)."""
    from tgcnet.cli import main

    run = tmp_path_factory.mktemp("one_step") / "run"
    assert main(["train", "--data", str(sample_root()), "--out", str(run), *QUICK_ARGS]) == 0
    assert (run / "last" / "trainer_state.json").is_file() and (run / "best" / "model.safetensors").is_file()
    return run


@pytest.fixture
def run_copy(one_step_run, tmp_path) -> Path:
    import shutil

    return Path(shutil.copytree(one_step_run, tmp_path / "run"))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGES = {
    "state truncated": ("trainer_state.json", _truncate),
    "state not a dict": ("trainer_state.json", lambda p: p.write_text("[]")),
    "state missing": ("trainer_state.json", Path.unlink),
    "weights truncated": ("model.safetensors", _truncate),
    "weights missing": ("model.safetensors", Path.unlink),
    "optimizer truncated": ("optim.pt", _truncate),
}


def _resume_error(run: Path, capsys) -> str:
    from tgcnet.cli import main

    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("tgcnet train: error:"), err
    return err


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_checkpoint_names_the_file_and_points_to_best(run_copy, damage, capsys):
    name, spoil = DAMAGES[damage]
    spoil(run_copy / "last" / name)
    err = _resume_error(run_copy, capsys)
    assert str(run_copy / "last" / name) in err and "damaged" in err
    # the best model is the earlier state that survives: start a new run from it
    assert f"--init-from {run_copy / 'best'}" in err and "--out" in err
    assert (run_copy / "last" / "optim.pt").exists() or name == "optim.pt"  # nothing was deleted


def test_damaged_checkpoint_without_best_says_start_afresh(run_copy, capsys):
    import shutil

    shutil.rmtree(run_copy / "best")
    _truncate(run_copy / "last" / "trainer_state.json")
    err = _resume_error(run_copy, capsys)
    assert "no earlier state" in err and "start afresh" in err and "--out" in err and "--init-from" not in err


def test_damaged_checkpoint_points_to_an_intact_previous_one(run_copy, capsys):
    """A swap cut short can leave last.old/ beside last/: when last/ is damaged, say to use it."""
    import shutil

    shutil.copytree(run_copy / "last", run_copy / "last.old")
    _truncate(run_copy / "last" / "trainer_state.json")
    err = _resume_error(run_copy, capsys)
    assert f"{run_copy / 'last.old'} is intact (step 1" in err and "move" in err
    shutil.move(run_copy / "last", run_copy / "last.damaged")  # what the message says to do
    from tgcnet.cli import main

    assert main(["train", "--resume", str(run_copy)]) == 0


def test_damaged_train_config_is_named(run_copy, capsys):
    _truncate(run_copy / "train_config.json")
    err = _resume_error(run_copy, capsys)
    assert str(run_copy / "train_config.json") in err and "damaged" in err and "--out" in err


def test_resume_of_a_run_without_checkpoint_says_to_start_afresh(tmp_path, capsys):
    """A run that stopped before its first checkpoint has nothing to resume: say so before building anything."""
    from tgcnet.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "train_config.json").write_text(json.dumps({"train": {"data": str(sample_root()), "out": str(run)}}))
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "holds no checkpoint" in err and "without --resume" in err and "Traceback" not in err


# --------------------------------------------------------------------------- semi-supervised runs

@pytest.fixture(scope="module")
def one_step_semi_run(tmp_path_factory) -> Path:
    from tgcnet.cli import main

    run = tmp_path_factory.mktemp("one_step_semi") / "run"
    assert main(["train", "--data", str(sample_root()), "--out", str(run), *QUICK_ARGS, "--val-split", "none",
                 "--labelled-fraction", "0.5", "--pseudo-label-weight", "1"]) == 0   # with a teacher
    return run


def test_resume_uses_the_recorded_split(one_step_semi_run, tmp_path):
    """labelled.json, not a new draw, says which images train without their masks after a resume."""
    import shutil

    from tgcnet.engine import TrainConfig
    from tgcnet.engine.distributed import DistInfo
    from tgcnet.engine.train_config import read_saved_config
    from tgcnet.engine.trainer import Trainer

    run = Path(shutil.copytree(one_step_semi_run, tmp_path / "run"))
    recorded = json.loads((run / "labelled.json").read_text())
    moved = recorded["labelled"].pop()
    recorded["unlabelled"].append(moved)
    (run / "labelled.json").write_text(json.dumps(recorded))
    cfg = TrainConfig.from_dict({**read_saved_config(run), "resume": str(run), "out": str(run)})
    trainer = Trainer(cfg, torch.device("cpu"), DistInfo())
    hidden = {t.name for t in trainer.train_set.triples if t.mask_path is None}
    assert hidden == set(recorded["unlabelled"]) and moved in hidden


def test_resume_without_the_split_or_the_teacher_names_the_file(one_step_semi_run, tmp_path, capsys):
    import shutil

    run = Path(shutil.copytree(one_step_semi_run, tmp_path / "run"))
    (run / "last" / "teacher.safetensors").unlink()
    err = _resume_error(run, capsys)
    assert str(run / "last" / "teacher.safetensors") in err and "damaged" in err
    (run / "labelled.json").unlink()
    err = _resume_error(run, capsys)
    assert str(run / "labelled.json") in err and "cannot resume a semi-supervised run without" in err
