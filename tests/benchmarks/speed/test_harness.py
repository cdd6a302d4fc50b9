"""benchmarks.speed.harness: other processes' CPU use seen while timing, and peak memory in a fresh process."""
from __future__ import annotations

import subprocess
import sys

from benchmarks.speed.harness import DISTURBED_CORES, Comparison, LoadProbe, Member, Settings, disturbed, memory_of
from benchmarks.speed.members import build


def test_load_probe_sees_another_process():
    probe = LoadProbe()
    busy = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 0.6: pass"])
    busy.wait()
    assert probe.other_cores() > DISTURBED_CORES
    assert disturbed(0.5) and not disturbed(None)


def test_memory_is_measured_in_a_fresh_process():
    """The real memory path: each member rebuilt in a spawned process, its peak read there."""
    comparison = Comparison("check", "check", (Member("floor"),), 2, 32, memory=True)
    memory = memory_of(comparison, Settings(preset="tgcnet-tiny", memory_steps=1), build)
    assert memory["floor/infer"]["peak_mb"] > 0 and "peak" in memory["floor/infer"]["memory_kind"], memory
