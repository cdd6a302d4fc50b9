"""The GPU check that fits in one call of a lent GPU: CUDA tests, the GPU speed sweep, 200 training steps.

    python -m benchmarks.speed.gpu_check [--budget 330] [--out benchmarks/results] [--dry-run]

On a machine with one CUDA GPU, in order, each part in its own process:

1. ``environment``: device, driver, CUDA, cuDNN, torch and the commit; every module the later
   parts import (a missing one ends the check here: every part would fail on it).
2. ``cuda_tests``: the tests that need CUDA (:data:`CUDA_TESTS`); one that skips there fails the part.
3. ``train`` and ``train_torchrun``: 200 steps of tgcnet-vit-b16 on the embedded sample under
   bf16 autocast, once as ``tgcnet train`` and once under ``torchrun --nproc_per_node=1``:
   wall time, and steps/s over the epochs after the first.
4. ``speed``: ``benchmarks.speed.run --plan cuda`` (both presets, batches 1, 8 and 64, float32
   and bf16 autocast, training and inference, beside the frozen-ViT floor and CLIPSeg, one
   process), given what is left of the budget; the GPU targets are read from it.
5. ``compile_tests``: the head compiled by inductor on the GPU keeps its numbers (opt-in test).

A part that fails is recorded (status, the last lines of its output) and the next one runs, so
one failure does not waste the lease. The budget (``--budget``, default 330 s) is checked
before each part: once spent, the parts left are recorded as skipped, and the speed sweep stops
starting comparisons inside it. Writes ``speed_cuda.json`` and ``speed_cuda.md`` to ``--out``
and prints one summary table.

``--dry-run`` checks on the CPU, in about a minute, that every part starts: the imports, the
pytest selection (collected, not run), both training launchers (2 steps of the tiny preset), and
the speed plan (tiny presets, tiny peers, batches 1 and 2). It writes to a new temporary folder,
never over the committed results.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable, Optional

from .. import REPO, RESULTS
from ..provenance import source_commit
from ..report_files import write_report
from .report import comparison_table, cuda_targets, target_lines, CUDA_TARGET_AT

#: the tests that need CUDA: those named for it in these files (the no-GPU error test skips on a GPU by design;
#: the inductor one is opt-in and runs last, in ``compile_tests``)
CUDA_TEST_FILES = ("tests/test_accel.py", "tests/test_model.py", "tests/engine/test_inference.py")
CUDA_TESTS = "cuda and not without_a_gpu and not inductor"
COMPILE_TESTS = "cuda_inductor"
#: modules the parts import: a missing one is named with what to carry (see docs/benchmarks.md)
REQUIRED_MODULES = ("torch", "torchvision", "open_clip", "timm", "peft", "transformers", "albumentations",
                    "safetensors", "huggingface_hub", "pandas", "tqdm", "pytest", "tgcnet.adapters", "tgcnet.cli")
TRAIN_PRESET, TRAIN_STEPS, TRAIN_BATCH = "tgcnet-vit-b16", 200, 8


class PartFailed(Exception):
    """A part ran and did not pass; ``detail`` goes into the report beside the status."""

    def __init__(self, message: str, detail: Optional[dict] = None) -> None:
        super().__init__(message)
        self.detail = detail or {}


@dataclasses.dataclass
class Check:
    """One run of the check: where it writes, when its budget ends, what the parts found."""

    dry_run: bool
    work: Path
    deadline: float
    budget_s: float
    parts: list[dict] = dataclasses.field(default_factory=list)
    found: dict[str, Any] = dataclasses.field(default_factory=dict)
    cap: Optional[float] = None      # when the running part must end (its own limit), if sooner than the budget

    def remaining(self) -> float:
        """Seconds the running part may still take: to the budget's end, or its own cap if sooner."""
        end = self.deadline if self.cap is None else min(self.deadline, self.cap)
        return end - time.monotonic()


# --------------------------------------------------------------------------- running a command

def run_command(cmd: list[str], timeout: float, log: Path, env: Optional[dict] = None) -> tuple[int, str]:
    """Run ``cmd`` in the repository root in its own process group; (exit code, last lines of output).

    Its whole output goes to ``log``. Past ``timeout`` the whole group is killed (torchrun's
    workers and DataLoader workers with it) and the code is 124.
    """
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1",
                **(env or {})}
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = 124
    return code, tail(log)


def tail(log: Path, lines: int = 25) -> str:
    text = log.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(text[-lines:])


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


# --------------------------------------------------------------------------- the parts

def environment(check: Check) -> dict[str, Any]:
    """Versions, the device, and every module the parts import."""
    import importlib

    import torch

    missing = []
    for name in REQUIRED_MODULES:
        try:
            importlib.import_module(name)
        except Exception as exc:  # any import failure means the parts cannot run
            missing.append(f"{name} ({type(exc).__name__}: {exc})"[:200])
    info = {"commit": source_commit(), "torch": torch.__version__, "python": platform.python_version(),
            "cuda_available": torch.cuda.is_available(), **device_info()}
    check.found["environment"] = info
    if missing:
        raise PartFailed("missing: " + "; ".join(missing) + ". Install the repository (pip install --no-deps "
                         "--no-index --no-build-isolation -e .) and the wheels of the missing modules", info)
    if not check.dry_run and not torch.cuda.is_available():
        raise PartFailed("torch sees no CUDA device", info)
    return info


def device_info() -> dict[str, Any]:
    import torch

    from .run import cuda_driver, device_name

    if not torch.cuda.is_available():
        return {"device": device_name("cpu")}
    return {"device": torch.cuda.get_device_name(0), "driver": cuda_driver(), "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)}


def junit_counts(xml: Path) -> dict[str, int]:
    """Tests, failures, errors and skips of a pytest JUnit XML report."""
    root = ET.parse(xml).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}


def pytest_part(check: Check, name: str, selection: str, env: Optional[dict] = None) -> dict[str, Any]:
    """The selected tests, run on the GPU, where a skip is a failure."""
    xml = check.work / f"{name}.xml"
    cmd = python("-m", "pytest", "-q", "-p", "no:cacheprovider", *CUDA_TEST_FILES, "-k", selection, "-rs",
                 f"--junitxml={xml}")
    code, out = run_command(cmd, check.remaining(), check.work / f"{name}.log", env)
    counts = junit_counts(xml) if xml.is_file() else {}
    detail = {"command": " ".join(cmd[1:]), **counts, "tail": out}
    if code != 0 or not counts.get("tests") or counts.get("skipped"):
        raise PartFailed(f"exit {code}, {counts or 'no report'}", detail)
    return detail


def collected(check: Check) -> list[str]:
    """Dry run: the node ids both pytest parts select from, collected once (not run)."""
    if "collected" not in check.found:
        cmd = python("-m", "pytest", "-q", "-p", "no:cacheprovider", *CUDA_TEST_FILES, "-k",
                     f"({CUDA_TESTS}) or {COMPILE_TESTS}", "--collect-only")
        code, _ = run_command(cmd, check.remaining(), check.work / "collect.log")
        ids = [line for line in (check.work / "collect.log").read_text().splitlines() if "::" in line]
        if code != 0:
            raise PartFailed(f"pytest could not collect (exit {code})", {"tail": tail(check.work / "collect.log")})
        check.found["collected"] = ids
    return check.found["collected"]


def dry_selection(check: Check, wanted: Callable[[str], bool]) -> dict[str, Any]:
    ids = [i for i in collected(check) if wanted(i)]
    if not ids:
        raise PartFailed("pytest selected no test")
    return {"collected": len(ids)}


def cuda_tests(check: Check) -> dict[str, Any]:
    if check.dry_run:
        return dry_selection(check, lambda i: "cuda" in i and "without_a_gpu" not in i and "inductor" not in i)
    return pytest_part(check, "cuda_tests", CUDA_TESTS)


def compile_tests(check: Check) -> dict[str, Any]:
    if check.dry_run:
        return dry_selection(check, lambda i: COMPILE_TESTS in i)
    return pytest_part(check, "compile_tests", COMPILE_TESTS, {"TGCNET_TEST_INDUCTOR": "1"})


def train_args(check: Check, out: Path) -> list[str]:
    """``tgcnet train`` options: 200 bf16 steps of ViT-B/16 on CUDA, or 2 of the tiny preset on the CPU."""
    from tgcnet.data import sample_root

    common = ["train", "--data", str(sample_root()), "--out", str(out), "--val-split", "none", "--epochs", "1000",
              "--batch-size", str(TRAIN_BATCH), "--amp", "bf16", "--no-progress", "--warmup-steps", "20"]
    if check.dry_run:
        return [*common, "--preset", "tgcnet-tiny", "--image-size", "64", "--max-steps", "2", "--device", "cpu",
                "--threads", "1"]
    return [*common, "--preset", TRAIN_PRESET, "--max-steps", str(TRAIN_STEPS), "--device", "cuda",
            "--workers", "4"]


def training_figures(run_dir: Path, wall_s: float) -> dict[str, Any]:
    """Steps and steps/s from the run's log: the epochs after the first (CUDA and cuDNN warm up in it)."""
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    steps = log[-1]["step"] if log else 0
    later = log[1:]
    later_steps = steps - log[0]["step"] if later else 0
    seconds = sum(e["epoch_time"] for e in later)
    rate = later_steps / seconds if seconds > 0 else None
    return {"wall_s": round(wall_s, 1), "steps": steps, "epochs": len(log),
            "steps_per_s": None if rate is None else round(rate, 2),
            "images_per_s": None if rate is None else round(rate * TRAIN_BATCH, 1),
            "final_loss": log[-1].get("train_loss") if log else None}


def train_part(check: Check, name: str, launcher: list[str]) -> dict[str, Any]:
    out = check.work / name
    cmd = [*launcher, *train_args(check, out)]
    start = time.monotonic()
    code, text = run_command(cmd, check.remaining(), check.work / f"{name}.log", {"OMP_NUM_THREADS": "1"}
                             if check.dry_run else None)
    wall = time.monotonic() - start
    detail = {"command": " ".join(cmd[1:]), "tail": text}
    if code != 0 or not (out / "log.jsonl").is_file():
        raise PartFailed(f"exit {code}", detail)
    figures = training_figures(out, wall)
    check.found.setdefault("training", {})[name] = figures
    expected = 2 if check.dry_run else TRAIN_STEPS
    if figures["steps"] != expected:
        raise PartFailed(f"{figures['steps']} steps, not {expected}", {**detail, **figures})
    return {"command": detail["command"], **figures}


def train(check: Check) -> dict[str, Any]:
    return train_part(check, "train", python("-m", "tgcnet.cli"))


def train_torchrun(check: Check) -> dict[str, Any]:
    return train_part(check, "train_torchrun", python("-m", "torch.distributed.run", "--standalone",
                                                      "--nproc_per_node=1", "-m", "tgcnet.cli"))


def speed_args(check: Check, out: Path, budget_s: float) -> list[str]:
    common = ["-m", "benchmarks.speed.run", "--plan", "cuda", "--amp", "none,bf16", "--out", str(out),
              "--time-budget", f"{budget_s:.0f}"]
    if check.dry_run:
        return [*common, "--device", "cpu", "--preset", "tgcnet-tiny", "--biomedclip-preset",
                "tgcnet-tiny-biomedclip", "--batches", "2", "--size", "64", "--tiny-peers", "--rounds", "1",
                "--min-run-time", "0", "--memory-steps", "1", "--threads", "1"]
    return [*common, "--device", "cuda", "--batches", "1,8,64"]


def speed(check: Check) -> dict[str, Any]:
    """The GPU sweep, given the budget less a margin to write its report; its targets read from it."""
    out = check.work / "speed"
    budget = max(10.0, check.remaining() - 45)
    cmd = python(*speed_args(check, out, budget))
    code, text = run_command(cmd, check.remaining(), check.work / "speed.log")
    detail = {"command": " ".join(cmd[1:]), "tail": text}
    if code != 0 or not (out / "speed.json").is_file():
        raise PartFailed(f"exit {code}", detail)
    result = json.loads((out / "speed.json").read_text())
    check.found["speed"] = result
    failed = [f"{c['name']}: {c['error']}" for c in result["comparisons"].values() if "error" in c]
    failed += [f"{c['name']} {m['key']}: {m['error']}" for c in result["comparisons"].values()
               for m in c.get("members", []) if "error" in m]
    skipped = [c["name"] for c in result["comparisons"].values() if "skipped" in c]
    summary = {"command": detail["command"], "comparisons": len(result["comparisons"]), "not_measured": skipped}
    if failed:
        raise PartFailed(f"{len(failed)} failed: " + "; ".join(failed)[:600], {**summary, "tail": text})
    return summary


#: (name, what it checks, the part, the most seconds it may take: None for what is left of the budget).
#: Caps keep a slow part from eating the sweep's minutes; the sweep itself stops inside the budget.
PARTS: list[tuple[str, str, Callable[[Check], dict], Optional[float]]] = [
    ("environment", "versions, device, imports", environment, 60.0),
    ("cuda_tests", "the tests that need CUDA", cuda_tests, 90.0),
    ("train", f"{TRAIN_STEPS} bf16 training steps, tgcnet train", train, 100.0),
    ("train_torchrun", f"{TRAIN_STEPS} bf16 training steps under torchrun --nproc_per_node=1", train_torchrun, 100.0),
    ("speed", "GPU speed sweep (benchmarks.speed.run --plan cuda)", speed, None),
    ("compile_tests", "inductor-compiled head on CUDA keeps its numbers", compile_tests, None),
]


def run_part(check: Check, name: str, what: str, part: Callable[[Check], dict], cap: Optional[float],
             blocked: Optional[str]) -> dict:
    """One part, recorded whatever happens; ``blocked``: why it is not started; ``cap``: its own limit."""
    row: dict[str, Any] = {"part": name, "what": what}
    check.cap = None
    if blocked or check.remaining() <= 0:
        reason = blocked or f"the budget of {check.budget_s:.0f} s was spent"
        return {**row, "status": "skipped", "seconds": 0.0, "message": reason}
    start = time.monotonic()
    check.cap = None if cap is None else start + cap
    try:
        row.update(status="passed", **part(check))
    except PartFailed as exc:
        row.update(status="failed", message=str(exc), **exc.detail)
    except Exception as exc:  # a bug in a part must not cost the parts after it
        import traceback

        row.update(status="failed", message=f"{type(exc).__name__}: {exc}", tail=traceback.format_exc()[-2000:])
    row["seconds"] = round(time.monotonic() - start, 1)
    message = f" - {row['message']}" if "message" in row else ""
    print(f"[gpu_check] {name}: {row['status']} ({row['seconds']} s){message}", flush=True)
    return row


def run_parts(check: Check, only: Optional[list[str]] = None) -> None:
    blocked = None
    for name, what, part, cap in PARTS:
        if only and name not in only and name != "environment":
            check.parts.append({"part": name, "what": what, "status": "skipped", "seconds": 0.0,
                                "message": "not selected (--parts)"})
            continue
        row = run_part(check, name, what, part, cap, blocked)
        check.parts.append(row)
        if name == "environment" and row["status"] == "failed":
            blocked = "the environment check failed"


# --------------------------------------------------------------------------- the report

def result_of(check: Check, started: str, elapsed: float) -> dict[str, Any]:
    speed_result = check.found.get("speed")
    preset = (speed_result or {}).get("meta", {}).get("preset", TRAIN_PRESET)
    targets = cuda_targets(speed_result["comparisons"], preset) if speed_result else None
    return {"meta": {"date": started, "dry_run": check.dry_run, "budget_s": check.budget_s,
                     "elapsed_s": round(elapsed, 1), **check.found.get("environment", {})},
            "parts": check.parts, "targets": targets, "training": check.found.get("training", {}),
            "speed": speed_result}


def summary_lines(result: dict) -> list[str]:
    lines = ["| part | status | s | detail |", "|---|---|---:|---|"]
    for p in result["parts"]:
        detail = p.get("message") or ", ".join(f"{k} {'n/a' if p[k] is None else p[k]}" for k in (
            "device", "collected", "tests", "steps", "steps_per_s", "comparisons") if k in p)
        lines.append(f"| {p['part']} | {p['status']} | {p['seconds']:.0f} | {str(detail).replace('|', '/')[:160]} |")
    return lines


def training_lines(result: dict) -> list[str]:
    runs = result["training"]
    if not runs:
        return ["Not measured."]
    lines = ["| launcher | wall s | steps | steps/s (after epoch 1) | images/s | final loss |",
             "|---|---:|---:|---:|---:|---:|"]
    na = lambda v, fmt="{}": "n/a" if v is None else fmt.format(v)
    for name, r in runs.items():
        lines.append(f"| {name} | {r['wall_s']} | {r['steps']} | {na(r['steps_per_s'])} | {na(r['images_per_s'])} | "
                     f"{na(r.get('final_loss'), '{:.4f}')} |")
    return lines


def to_markdown(result: dict) -> str:
    meta = result["meta"]
    amp, batch, size = CUDA_TARGET_AT
    device = (f"{meta.get('device')} (driver {meta.get('driver')}, CUDA {meta.get('cuda')}, cuDNN {meta.get('cudnn')})"
              if meta.get("cuda") else meta.get("device", "unknown"))
    lines = ["# GPU check" + (" (dry run on the CPU: checks that every part starts, measures nothing)"
                              if meta["dry_run"] else ""), "",
             f"Written by `python -m benchmarks.speed.gpu_check{' --dry-run' if meta['dry_run'] else ''}` at commit "
             f"{meta.get('commit', 'unknown')} on {meta['date']}: {device}, torch {meta.get('torch')}, Python "
             f"{meta.get('python')}. Budget {meta['budget_s']:.0f} s; took {meta['elapsed_s']:.0f} s.", "",
             "## Parts", "", *summary_lines(result), ""]
    if result["targets"] is not None:
        lines += [f"## Targets ({amp} autocast, {size} px, batch {batch}, one process)", "",
                  *target_lines(result["targets"]), ""]
    lines += [f"## Training: {TRAIN_STEPS} steps of {TRAIN_PRESET} on the embedded sample, bf16 autocast, "
              f"batch {TRAIN_BATCH}", "", *training_lines(result), ""]
    failed = [p for p in result["parts"] if p["status"] == "failed" and p.get("tail")]
    for p in failed:
        lines += [f"### {p['part']}: last lines", "", "```", p["tail"][-3000:], "```", ""]
    for c in (result.get("speed") or {}).get("comparisons", {}).values():
        lines += [f"## {c.get('title', c['name'])} (`{c['name']}`)", "", *comparison_table(c), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def keep_logs(work: Path, folder: Path) -> None:
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    for log in work.glob("*.log"):
        shutil.copy(log, folder / log.name)


def out_folder(args: argparse.Namespace) -> Path:
    """``--out``, else the committed results; a dry run never writes there."""
    if args.dry_run:
        out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="tgcnet-gpu-check-"))
        if out.resolve() == RESULTS.resolve():
            raise SystemExit("gpu_check --dry-run measures nothing: it does not write over benchmarks/results")
        return out
    return Path(args.out) if args.out else RESULTS


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=330.0, help="seconds after which no part is started (default 330)")
    p.add_argument("--out", default=None, help=f"folder for speed_cuda.json and .md (default {RESULTS}; "
                                               "a dry run: a new temporary folder)")
    p.add_argument("--dry-run", action="store_true", help="on the CPU: check that every part starts")
    p.add_argument("--parts", default=None, help="run only these parts (comma-separated; environment always runs)")
    p.add_argument("--logs", default=None, help="also copy each part's full output (NAME.log) into this folder")
    args = p.parse_args(argv)
    names = [n for n, _, _, _ in PARTS]
    unknown = [n for n in (args.parts or "").split(",") if n and n not in names]
    if unknown:
        p.error(f"--parts: unknown {', '.join(unknown)}; parts: {', '.join(names)}")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    out = out_folder(args)
    out.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tgcnet-gpu-work-") as work:
        check = Check(dry_run=args.dry_run, work=Path(work), deadline=t0 + args.budget, budget_s=args.budget)
        run_parts(check, [n for n in (args.parts or "").split(",") if n] or None)
        result = result_of(check, started, time.monotonic() - t0)
        if args.logs:
            keep_logs(check.work, Path(args.logs))
    write_report(out, "speed_cuda", result, to_markdown(result))
    print("\n".join(["", *summary_lines(result), "",
                     *(target_lines(result["targets"]) if result["targets"] else []),
                     f"wrote {out / 'speed_cuda.json'} and {out / 'speed_cuda.md'}"]), flush=True)
    return 0 if all(p["status"] == "passed" for p in result["parts"]) else 1


if __name__ == "__main__":
    sys.exit(main())
