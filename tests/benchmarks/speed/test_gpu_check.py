"""benchmarks.speed.gpu_check: the dry run starts every part on the CPU and writes nowhere near the committed
results; a spent budget skips parts and says so; the report's figures come from what the parts left."""
from __future__ import annotations

import json

import pytest

from benchmarks import RESULTS
from benchmarks.speed import gpu_check
from benchmarks.speed.report import CUDA_TARGETS


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One dry run (about a minute on 2 cores): every part starts, nothing is measured."""
    out = tmp_path_factory.mktemp("gpu_check")
    before = {p.name: p.stat().st_mtime_ns for p in RESULTS.glob("speed_cuda.*")}
    code = gpu_check.main(["--dry-run", "--out", str(out), "--logs", str(out / "logs")])
    after = {p.name: p.stat().st_mtime_ns for p in RESULTS.glob("speed_cuda.*")}
    return code, out, before, after


def test_dry_run_starts_every_part(dry_run):
    code, out, _, _ = dry_run
    result = json.loads((out / "speed_cuda.json").read_text())
    parts = {p["part"]: p for p in result["parts"]}
    assert list(parts) == [name for name, _, _, _ in gpu_check.PARTS]
    assert all(p["status"] == "passed" for p in parts.values()), parts
    assert code == 0 and result["meta"]["dry_run"] and result["meta"]["commit"]
    assert parts["cuda_tests"]["collected"] >= 5 and parts["compile_tests"]["collected"] >= 1
    for launcher in ("train", "train_torchrun"):
        assert parts[launcher]["steps"] == 2 and result["training"][launcher]["final_loss"] is not None
    assert "torch.distributed.run" in parts["train_torchrun"]["command"]
    speed = result["speed"]
    assert speed["meta"]["plan"] == "cuda" and not parts["speed"]["not_measured"]
    assert {c["amp"] for c in speed["comparisons"].values()} == {"none", "bf16"}
    assert all(m["peak_mb"] > 0 for c in speed["comparisons"].values() for m in c["members"])
    assert [t["key"] for t in result["targets"]] == [key for _, key, _, _ in CUDA_TARGETS]
    md = (out / "speed_cuda.md").read_text()
    assert md.startswith("# GPU check (dry run on the CPU") and "| train_torchrun | passed |" in md
    assert sorted(p.name for p in (out / "logs").glob("*.log")) == ["collect.log", "speed.log", "train.log",
                                                                    "train_torchrun.log"]


def test_dry_run_leaves_the_committed_results_alone(dry_run):
    _, _, before, after = dry_run
    assert before == after
    with pytest.raises(SystemExit, match="does not write over benchmarks/results"):
        gpu_check.main(["--dry-run", "--out", str(RESULTS)])


def test_a_spent_budget_skips_the_parts_and_names_why(tmp_path):
    assert gpu_check.main(["--dry-run", "--budget", "0", "--out", str(tmp_path)]) == 1
    parts = json.loads((tmp_path / "speed_cuda.json").read_text())["parts"]
    assert {p["status"] for p in parts} == {"skipped"}
    assert all("budget of 0 s was spent" in p["message"] for p in parts)
    assert "| speed | skipped | 0 | the budget of 0 s was spent |" in (tmp_path / "speed_cuda.md").read_text()


def test_a_failed_part_is_recorded_and_the_next_runs(tmp_path, monkeypatch):
    """One failure must not cost the GPU minutes of the parts after it."""
    def broken(check):
        raise gpu_check.PartFailed("exit 1", {"tail": "Traceback ...\nRuntimeError: CUDA error"})

    monkeypatch.setattr(gpu_check, "PARTS", [("environment", "env", lambda check: {}, None),
                                             ("cuda_tests", "tests", broken, 10.0),
                                             ("speed", "speed", lambda check: {"comparisons": 3}, None)])
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path)]) == 1
    result = json.loads((tmp_path / "speed_cuda.json").read_text())
    assert [(p["part"], p["status"]) for p in result["parts"]] == [
        ("environment", "passed"), ("cuda_tests", "failed"), ("speed", "passed")]
    md = (tmp_path / "speed_cuda.md").read_text()
    assert "### cuda_tests: last lines" in md and "RuntimeError: CUDA error" in md


def test_a_failed_environment_blocks_the_rest(tmp_path, monkeypatch):
    def missing(check):
        raise gpu_check.PartFailed("missing: open_clip (ModuleNotFoundError)")

    monkeypatch.setattr(gpu_check, "PARTS", [("environment", "env", missing, None),
                                             ("speed", "speed", lambda c: {}, None)])
    gpu_check.main(["--dry-run", "--out", str(tmp_path)])
    parts = json.loads((tmp_path / "speed_cuda.json").read_text())["parts"]
    assert parts[1]["status"] == "skipped" and parts[1]["message"] == "the environment check failed"


def test_junit_counts_and_training_figures(tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text('<testsuites><testsuite name="pytest" errors="0" failures="1" skipped="2" tests="7">'
                   '</testsuite></testsuites>')
    assert gpu_check.junit_counts(xml) == {"tests": 7, "failures": 1, "errors": 0, "skipped": 2}
    run = tmp_path / "run"
    run.mkdir()
    log = [{"epoch": e, "step": 4 * (e + 1), "epoch_time": 9.0 if e == 0 else 0.5, "train_loss": 1.0 / (e + 1)}
           for e in range(50)]
    (run / "log.jsonl").write_text("\n".join(json.dumps(e) for e in log) + "\n")
    figures = gpu_check.training_figures(run, 40.0)
    assert figures["steps"] == 200 and figures["epochs"] == 50
    assert figures["steps_per_s"] == pytest.approx(196 / 24.5, abs=0.01)      # the first epoch left out
    assert figures["images_per_s"] == pytest.approx(8 * 196 / 24.5, abs=0.1) and figures["final_loss"] == 0.02


def test_unknown_parts_are_refused():
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--parts", "speed,warp"])


def test_a_cuda_test_that_skips_fails_the_part(tmp_path):
    """On the GPU a skip means the test did not run where it must: the part fails and says so (here, on a
    CPU, the pinned-loader test skips)."""
    import time

    check = gpu_check.Check(dry_run=False, work=tmp_path, deadline=time.monotonic() + 120, budget_s=120)
    with pytest.raises(gpu_check.PartFailed, match="'skipped': 1") as failed:
        gpu_check.pytest_part(check, "pinned", "cuda_pinned")
    assert failed.value.detail["tests"] == 1 and "needs a CUDA device" in failed.value.detail["tail"]


def test_a_part_cannot_outlast_its_cap(tmp_path, monkeypatch):
    """A part's own limit ends its command (the whole process group) and the next part still runs."""
    import sys

    def slow(check):
        code, _ = gpu_check.run_command([sys.executable, "-c", "import time; time.sleep(30)"], check.remaining(),
                                        check.work / "slow.log")
        raise gpu_check.PartFailed(f"exit {code}")

    monkeypatch.setattr(gpu_check, "PARTS", [("environment", "env", lambda c: {}, None), ("train", "t", slow, 1.0),
                                             ("speed", "s", lambda c: {"comparisons": 1}, None)])
    gpu_check.main(["--dry-run", "--out", str(tmp_path)])
    parts = json.loads((tmp_path / "speed_cuda.json").read_text())["parts"]
    assert parts[1]["message"] == "exit 124" and parts[1]["seconds"] < 10 and parts[2]["status"] == "passed"
