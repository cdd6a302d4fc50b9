"""The benchmarks package: run as modules from the repository root, no generic module name at the top of
sys.modules, and no entry in tgcnet's installed packages."""
from __future__ import annotations

import configparser
import subprocess
import sys

from benchmarks import REPO


def test_every_script_runs_as_a_module_and_leaks_no_top_level_name():
    code = ("import sys, runpy\n"
            "sys.argv = ['x', '--help']\n"
            "for name in ('benchmarks.params', 'benchmarks.speed.run', 'benchmarks.speed.onnx_speed', "
            "'benchmarks.accuracy.qata_mini', 'benchmarks.accuracy.plots', 'benchmarks.accuracy.tta_lever', "
            "'benchmarks.accuracy.threshold_lever', 'benchmarks.accuracy.noisy_captions'):\n"
            "    try:\n"
            "        runpy.run_module(name, run_name='__main__')\n"
            "    except SystemExit as exc:\n"
            "        assert exc.code == 0, (name, exc.code)\n"
            "leaked = {'params', 'plots', 'harness', 'qata_runs', 'qata_report', 'speed_members', 'wordpiece'} "
            "& set(sys.modules)\n"
            "assert not leaked, leaked\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_benchmarks_are_not_installed_with_tgcnet():
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    packages = config["options"]["packages"].split()
    assert packages and all(p == "tgcnet" or p.startswith("tgcnet.") for p in packages)
    assert not [p for p in (REPO / "benchmarks").rglob("*.py") if "sys.path" in p.read_text()]
