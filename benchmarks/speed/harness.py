"""Timing and memory harness: members of a comparison interleaved in one process, memory per process.

Why interleaved: the same configuration measured in two fresh processes differed by up to
~15% on the shared 2-core machine, more than most effects worth measuring. Members of one
comparison are therefore built side by side in one process and timed round by round
(``torch.utils.benchmark.Timer.blocked_autorange``, all rounds merged per member), so drift
and process-to-process spread hit every member alike and stay out of their ratios.

Why memory apart: peak memory of one member is only meaningful in a process that holds
nothing else, so each member whose memory is asked for is built again in a fresh spawned
process (``Settings.isolate``), warmed up and stepped, and its peak read there.
"""
from __future__ import annotations

import gc
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch.utils.benchmark import Measurement, Timer

#: other CPU use (in cores) during a comparison's timed rounds above which the report flags it
DISTURBED_CORES = 0.25


@dataclass(frozen=True)
class Member:
    """One thing timed: a model (or a tower of one) under a variant, in inference or training."""

    model: str
    mode: str = "infer"          # infer | train
    variant: str = "default"     # variants combine with '+', e.g. "no_knowledge+lora_merged"

    @property
    def key(self) -> str:
        name = self.model if self.variant == "default" else f"{self.model}:{self.variant}"
        return f"{name}/{self.mode}"


@dataclass(frozen=True)
class Comparison:
    """Members timed against each other in one process, at one batch and input size."""

    name: str
    title: str
    members: tuple[Member, ...]
    batch: int
    size: int = 224
    preset: Optional[str] = None     # None: Settings.preset
    amp: Optional[str] = None        # None: Settings.amp; "none": float32; "bf16": bfloat16 autocast
    memory: bool = False             # also each member's peak memory, each in its own process
    profile: bool = False            # also one step of each TGCNet member timed per part (forward hooks)


@dataclass(frozen=True)
class Settings:
    """How every comparison of a run is measured."""

    preset: str = "tgcnet-vit-b16"
    biomedclip_preset: str = "tgcnet-biomedclip"
    device: str = "cpu"
    threads: Optional[int] = None    # None: torch's default
    amp: Optional[str] = None        # None | "bf16"
    warmup: int = 1                  # untimed calls of each member before the rounds
    rounds: int = 4                  # interleaved rounds; each member's blocked_autorange once per round
    min_run_time: float = 0.5        # seconds each blocked_autorange runs at least
    memory_steps: int = 2            # steps after the warm-up in a memory process
    isolate: bool = True             # memory in fresh processes (False: in this one, for quick checks)
    tiny_peers: bool = False         # CLIPSeg and U-Net at test scale (checks of the script)
    reuse_models: bool = False       # a member's model built once per process, reused by later comparisons


@dataclass
class Step:
    """A built member: ``call()`` runs one inference or training step."""

    call: Callable[[], None]
    trainable: int
    extra: dict[str, Any] = field(default_factory=dict)
    model: Optional[torch.nn.Module] = None    # a TGCNet, for the per-part profile
    warmup: int = 1
    owned: tuple = ()                # modules, optimizers and tensors the step keeps between calls


def resident_bytes(owned: tuple, device: torch.device) -> int:
    """Bytes of ``device`` memory held by ``owned`` (parameters, their gradients, buffers,
    optimizer state, tensors), each storage counted once."""
    seen: set[int] = set()

    def size(t: Any) -> int:
        if not isinstance(t, torch.Tensor) or t.device != device:
            return 0
        storage = t.untyped_storage()
        if storage.data_ptr() in seen:
            return 0
        seen.add(storage.data_ptr())
        return storage.nbytes()

    total = 0
    for obj in owned:
        if isinstance(obj, torch.nn.Module):
            total += sum(size(p) + size(p.grad) for p in obj.parameters()) + sum(size(b) for b in obj.buffers())
        elif isinstance(obj, torch.optim.Optimizer):
            total += sum(size(v) for state in obj.state.values() for v in state.values())
        else:
            total += size(obj)
    return total


Builder = Callable[[Member, Comparison, Settings, torch.device], Step]


class LoadProbe:
    """CPU that others used while we timed: all busy time in /proc/stat minus this process's own.

    Why: on a shared machine another job's burst slows 2-thread steps several-fold (an OpenMP
    thread that waits for a core stalls the other at every barrier); the report flags a
    comparison that saw it. Hypervisor steal counts as busy: it slows us the same way.
    """

    def __init__(self) -> None:
        self.wall, self.own, self.busy = time.perf_counter(), time.process_time(), self._busy()

    @staticmethod
    def _busy() -> Optional[float]:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        except (OSError, ValueError):
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")

    def other_cores(self) -> Optional[float]:
        """Average cores busy with something else since construction (None: unknown, or under
        0.5 s, too short for /proc/stat's 10 ms ticks)."""
        busy, wall = self._busy(), time.perf_counter() - self.wall
        if busy is None or self.busy is None or wall < 0.5:
            return None
        return max(0.0, (busy - self.busy) - (time.process_time() - self.own)) / wall


def disturbed(other_cores: Optional[float]) -> bool:
    return (other_cores or 0.0) > DISTURBED_CORES


class PeakMemory:
    """Peak memory from construction on: CUDA's max_memory_allocated, or on CPU the resident
    set's high-water mark (VmHWM, reset to the current RSS through /proc/self/clear_refs), or
    where that cannot be reset, ru_maxrss (which then includes everything before)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            self.kind = "CUDA max_memory_allocated"
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.kind = "peak RSS (VmHWM, reset after construction)"
        except OSError:
            self.kind = "peak RSS (ru_maxrss, including construction)"

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.kind.startswith("peak RSS (VmHWM"):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_call(call: Callable[[], None], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    call()
    _sync(device)
    return time.perf_counter() - t0


def setup_process(settings: Settings) -> torch.device:
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(0)
    return torch.device(settings.device)


def time_comparison(comparison: Comparison, settings: Settings, build: Builder) -> dict[str, Any]:
    """Build every member, warm each up, then time them interleaved round by round.

    Each round calls ``blocked_autorange`` once per member: its block-size estimate runs the
    step once untimed, which also re-warms caches the other members just used.
    """
    device = setup_process(settings)
    rows: dict[str, dict[str, Any]] = {}
    steps: dict[str, Step] = {}
    for member in comparison.members:
        try:
            t0 = time.perf_counter()
            step = build(member, comparison, settings, device)
            row = {**asdict(member), "key": member.key, "build_s": time.perf_counter() - t0}
            row["warmup_s"] = [_timed_call(step.call, device) for _ in range(max(settings.warmup, step.warmup))]
            rows[member.key], steps[member.key] = row, step
        except Exception as exc:  # one member that cannot run must not lose the others
            rows[member.key] = {**asdict(member), "key": member.key, "error": f"{type(exc).__name__}: {exc}"[:500]}
    timers = {key: Timer("step()", globals={"step": step.call}, label=comparison.name, description=key,
                         num_threads=torch.get_num_threads()) for key, step in steps.items()}
    measured: dict[str, list[Measurement]] = {key: [] for key in steps}
    probe = LoadProbe()
    for _ in range(settings.rounds):
        for key, timer in timers.items():
            measured[key].append(timer.blocked_autorange(min_run_time=settings.min_run_time))
    other = probe.other_cores()
    for key, step in steps.items():
        m = Measurement.merge(measured[key])[0]
        rows[key].update(median_s=m.median, iqr_s=m.iqr, times_s=list(m.times),
                         images_per_s=comparison.batch / m.median, trainable_params=step.trainable, **step.extra)
        if step.model is not None and comparison.profile:
            rows[key]["parts_s"] = profile_parts(step.model, step.call, device)
        if comparison.memory and not settings.isolate:   # quick checks: the built member, in this process
            rows[key].update(step_peak_memory(step, settings, device))
    return {"name": comparison.name, "title": comparison.title, "batch": comparison.batch,
            "size": comparison.size, "preset": comparison.preset or settings.preset,
            "threads": torch.get_num_threads(), "other_cores": other, "members": list(rows.values())}


#: TGCNet's parts, each timed by forward hooks in :func:`profile_parts`
PARTS = ("sse.clip_visual", "sse.cnn", "sse.fusion", "date", "vlcm", "decoder")


def profile_parts(model: torch.nn.Module, call: Callable[[], None], device: torch.device) -> dict[str, float]:
    """Forward seconds per part of one extra step, by forward hooks (removed afterwards), and
    the whole step; the rest of a training step is the loss, backward and optimizer step."""
    spent: dict[str, float] = {}
    started: dict[str, float] = {}
    handles = []

    def hooks(name: str) -> tuple[Callable, Callable]:
        def pre(*_: Any) -> None:
            _sync(device)
            started[name] = time.perf_counter()

        def post(*_: Any) -> None:
            _sync(device)
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - started[name]
        return pre, post

    for name in PARTS:
        module = model.get_submodule(name)
        pre, post = hooks(name)
        # a ModuleList is never called itself: time each of its members under the list's name
        for m in (module if isinstance(module, torch.nn.ModuleList) else [module]):
            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        total = _timed_call(call, device)
    finally:
        for handle in handles:
            handle.remove()
    return {**spent, "step": total}


def step_peak_memory(step: Step, settings: Settings, device: torch.device, warm: bool = True) -> dict[str, Any]:
    """Peak memory over ``memory_steps`` calls of a built member (and its warm-up unless ``warm``).

    On CUDA in a process that holds other members too (``warm``: the in-process path), the
    peak is the member's own: what it keeps between calls (:func:`resident_bytes` of
    ``step.owned``) plus how far its calls pushed ``max_memory_allocated`` above what was
    allocated before them. Other members' tensors sit in both, so they cancel.
    """
    meter = PeakMemory(device)
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    for _ in range((0 if warm else max(settings.warmup, step.warmup)) + settings.memory_steps):
        step.call()
    _sync(device)
    if device.type == "cuda" and warm and step.owned:
        own = resident_bytes(step.owned, device)
        return {"peak_mb": (meter.peak_mb() * 2**20 - before + own) / 2**20,
                "memory_kind": "CUDA max_memory_allocated, in process: the member's own tensors plus its steps' "
                               "peak above what was allocated before them"}
    return {"peak_mb": meter.peak_mb(), "memory_kind": meter.kind}


def peak_memory(member: Member, comparison: Comparison, settings: Settings, build: Builder) -> dict[str, Any]:
    """Build ``member`` (meant for a fresh process), then its peak over the warm-up and ``memory_steps`` steps."""
    device = setup_process(settings)
    return step_peak_memory(build(member, comparison, settings, device), settings, device, warm=False)


def memory_of(comparison: Comparison, settings: Settings, build: Builder) -> dict[str, dict[str, Any]]:
    """Peak memory of each member, each in a fresh spawned process."""
    out: dict[str, dict[str, Any]] = {}
    with ProcessPoolExecutor(max_workers=1, mp_context=_spawn(), max_tasks_per_child=1) as pool:
        for member in comparison.members:
            try:
                out[member.key] = pool.submit(peak_memory, member, comparison, settings, build).result()
            except Exception as exc:  # one member's failure must not lose the others'
                out[member.key] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    return out


def _spawn():
    import multiprocessing

    return multiprocessing.get_context("spawn")

