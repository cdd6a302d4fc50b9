"""What a report says about where its numbers came from: the commit and the processor.

A result is only as good as the code and machine that produced it, so every report names both;
one implementation keeps the reports' spelling of them alike.
"""
from __future__ import annotations

import platform
import subprocess
from pathlib import Path

from . import REPO


def source_commit(repo: Path = REPO) -> str:
    """The short git commit of ``repo`` (with ``+changes`` when its tracked files differ), else "unknown"."""
    try:
        git = ["git", "-C", str(repo)]
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run([*git, "diff", "--quiet", "HEAD"], capture_output=True).returncode != 0
        return commit + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_model() -> str:
    """The processor's model name (/proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
