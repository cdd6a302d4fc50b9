"""Speed and memory: TGCNet beside its floor, its lower bound, CLIPSeg and a U-Net.

    python -m benchmarks.speed.run [--quick] [--threads N] [--compile] [--device cpu|cuda] [--amp bf16]
                                   [--preset tgcnet-vit-b16] [--out benchmarks/results] [--only NAME[,NAME]]
                                   [--merge-into benchmarks/results/speed.json] [--report speed.json]
    python -m benchmarks.speed.run --plan cuda --device cuda [--batches 1,8,64] [--amp none,bf16]

A run is a list of comparisons (:func:`plan`); each comparison's members are built in one
process and timed interleaved (:mod:`.harness`), so every ratio inside one
comparison, and every target (all read from the ``targets`` comparison), is free of
process-to-process spread. Members with memory asked for are measured again, each in its
own fresh process. What each member is: :mod:`.members`. The report: :mod:`.report`.
Writes speed.json and speed.md to ``--out``; ``--report`` re-renders the markdown of a
speed.json; ``--merge-into`` replaces or adds this run's comparisons in an earlier
speed.json, its other comparisons kept as they were. Only the full default plan writes to
benchmarks/results by default: a quick run, an ``--only`` run without ``--merge-into`` and
the CUDA plan write to a new temporary folder unless ``--out`` names one, so a partial run
never replaces the committed report; the folder is printed.

``--plan cuda``: TGCNet beside its floor and CLIPSeg for both presets at every batch of
``--batches`` and autocast of ``--amp``, built once per process and reused across them, with
peak memory measured in process (CUDA's allocator counts each member's own tensors), and
TGCNet's GPU levers A/B at the largest batch (:func:`cuda_plan`).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Optional

from .. import RESULTS
from ..provenance import cpu_model, source_commit
from ..report_files import read_report, write_report
from .harness import Comparison, Member, Settings, disturbed, memory_of, time_comparison
from .members import CAPTIONS, build, default_linear, forget_models
from .report import cuda_targets, ratios, targets, to_markdown

M = Member


def has_feature_cache() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("tgcnet.engine.feature_cache") is not None
    except ModuleNotFoundError:
        return False


def plan(quick: bool = False, compile_: bool = False, feature_cache: bool = True,
         biomedclip_preset: Optional[str] = None) -> list[Comparison]:
    """What to measure, in order. Quick (a check of the script): batch 2, the target and
    BiomedCLIP-shaped comparisons only. Full: batch 8, every comparison, batch 1 and sizes 320/448."""
    big = 2 if quick else 8
    cached = (M("tgcnet", "train", "feature_cache"),) if feature_cache else ()
    targets_members = (M("floor"), M("tgcnet"), M("tgcnet", "train"), M("method_core", "train"), M("clipseg"),
                       M("clipseg", "train"), *cached)
    biomed = (M("floor"), M("text_floor"), M("tgcnet"), M("tgcnet", "train"))
    target = Comparison("targets", "TGCNet, its floor, its lower bound and CLIPSeg", targets_members, big,
                        memory=True, profile=True)
    floor_paths = Comparison("floor_paths", "Frozen image tower: open_clip's path and TGCNet's",
                             (M("floor_open_clip"), M("floor", variant="unfused"), M("floor", variant="torch_linear"),
                              M("floor", variant="onednn_linear"), M("floor")), big)
    biomedclip = Comparison("biomedclip", "BiomedCLIP-shaped CLIP beside its frozen towers", biomed, big,
                            preset=biomedclip_preset, memory=True)
    if quick:
        return [target, biomedclip]
    return [target, floor_paths, biomedclip, *_full_only(big, cached, biomed, compile_, biomedclip_preset)]


def _full_only(big: int, cached: tuple, biomed: tuple, compile_: bool,
               biomedclip_preset: Optional[str]) -> list[Comparison]:
    out = [
        Comparison("tgcnet_infer", "TGCNet inference: kernels and text work",
                   tuple(M("tgcnet", "infer", v) for v in ("default", "torch_linear", "onednn_linear", "channels_last",
                                                          "no_dedup", "no_caption_cache", "lora_knowledge",
                                                          "light_head", "bf16")), big),
        Comparison("lora_merged", "TGCNet inference with knowledge off: LoRA merged or not",
                   (M("tgcnet", "infer", "no_knowledge"), M("tgcnet", "infer", "no_knowledge+lora_merged")), big),
        Comparison("tgcnet_train_kernels", "TGCNet training step: kernels",
                   tuple(M("tgcnet", "train", v) for v in ("default", "torch_linear", "onednn_linear",
                                                          "channels_last", "channels_last_head", "fused_adamw",
                                                          "bf16")), big),
        Comparison("tgcnet_train_work", "TGCNet training step: text work, head width, cached features",
                   (*(M("tgcnet", "train", v) for v in ("default", "no_dedup", "no_knowledge", "lora_knowledge",
                                                        "light_head")), *cached), big),
        Comparison("peers", "CLIPSeg's kernels and precision, and a U-Net",
                   (M("clipseg"), M("clipseg", "infer", "onednn"), M("clipseg", "infer", "bf16"),
                    M("clipseg", "train"), M("clipseg", "train", "onednn"), M("clipseg", "train", "bf16"),
                    M("unet"), M("unet", "train")), big, memory=True),
        Comparison("batch1", "Batch 1", (M("floor_open_clip"), M("floor"), M("tgcnet"), M("tgcnet", "train"),
                                         M("clipseg"), M("clipseg", "train")), 1, memory=True),
        *(Comparison(f"scaling_{s}", f"Input size {s}", (M("floor"), M("tgcnet"), M("tgcnet", "train")), big, s,
                     memory=True) for s in (320, 448)),
        Comparison("biomedclip_batch1", "BiomedCLIP-shaped CLIP, batch 1", biomed, 1, preset=biomedclip_preset,
                   memory=True)]
    if compile_:
        out.append(Comparison("compile", "torch.compile (first calls include compiling)",
                              (M("tgcnet"), M("tgcnet", "infer", "compile"), M("tgcnet", "train"),
                               M("tgcnet", "train", "compile")), big))
    return out


def cuda_plan(batches: tuple[int, ...] = (1, 8, 64), amps: tuple[str, ...] = ("none", "bf16"),
              biomedclip_preset: Optional[str] = None, compile_: bool = False) -> list[Comparison]:
    """What a GPU is measured on: per autocast and batch, TGCNet (inference and training) beside
    its frozen image tower and CLIPSeg, for the preset and the BiomedCLIP-shaped one; and, at the
    largest batch under the last autocast, what each of TGCNet's GPU levers changes. Every
    comparison measures peak memory (in process on a GPU: see ``harness.step_peak_memory``).

    Ordered by what matters most, so a run cut short by ``--time-budget`` keeps it: the last
    autocast (the targets' bf16) first, largest batch first, the levers after its largest batch."""
    members = (M("floor"), M("tgcnet"), M("tgcnet", "train"), M("clipseg"), M("clipseg", "train"))
    levers = ("default", "fp32_frozen", "channels_last_head", *(("compile_head",) if compile_ else ()))
    lever_members = (*(M("tgcnet", "infer", v) for v in levers),
                     *(M("tgcnet", "train", v) for v in (*levers, "fused_adamw")))
    out = []
    for amp in reversed(amps):
        precision = "float32" if amp == "none" else f"{amp} autocast"
        for b in sorted(set(batches), reverse=True):
            out += [Comparison(f"cuda@{amp}@b{b}", f"TGCNet, its floor and CLIPSeg: batch {b}, {precision}",
                               members, b, amp=amp, memory=True),
                    Comparison(f"cuda_biomedclip@{amp}@b{b}",
                               f"BiomedCLIP-shaped TGCNet, its floor and CLIPSeg: batch {b}, {precision}",
                               members, b, preset=biomedclip_preset, amp=amp, memory=True)]
            if amp == amps[-1] and b == max(batches):
                out.append(Comparison("cuda_levers", f"TGCNet's GPU levers: batch {b}, {precision}",
                                      lever_members, b, amp=amp, memory=True))
    return out


def resized(comparison: Comparison, batch: Optional[int], size: Optional[int]) -> Comparison:
    """``comparison`` at another largest batch and base size (``--batch``/``--size``: small checks):
    batch-1 comparisons keep their batch, the scaling ones scale with the base size (multiples of 16)."""
    scaled = max(16, round(comparison.size * size / 224 / 16) * 16) if size else comparison.size
    return dataclasses.replace(comparison, batch=batch if batch and comparison.batch != 1 else comparison.batch,
                               size=scaled)


def select(comparisons: list[Comparison], only: Optional[str]) -> list[Comparison]:
    """The comparisons named in ``only`` (comma-separated; all if None)."""
    if not only:
        return comparisons
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    names = [c.name for c in comparisons]
    unknown = [w for w in wanted if w not in names]
    if unknown or not wanted:
        raise ValueError(f"--only {only!r}: no comparison named {', '.join(unknown) or repr(only)} in this plan; "
                         f"names: {', '.join(names)} (--quick runs targets and biomedclip; 'compile' needs --compile)")
    return [c for c in comparisons if c.name in wanted]


def measure(comparison: Comparison, settings: Settings) -> dict[str, Any]:
    """Time one comparison and, if asked, each member's peak memory."""
    try:
        result = time_comparison(comparison, settings, build)
        if comparison.memory and settings.isolate:
            memory = memory_of(comparison, settings, build)
            for row in result["members"]:
                row.update({k: v for k, v in memory.get(row["key"], {}).items() if k != "error"})
                if "error" in memory.get(row["key"], {}):
                    row["memory_error"] = memory[row["key"]]["error"]
    except Exception as exc:  # one comparison that cannot run must not lose the others
        result = {"name": comparison.name, "title": comparison.title, "error": f"{type(exc).__name__}: {exc}"[:500]}
    result["amp"] = comparison.amp or settings.amp or "none"
    result["measured"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    status = result.get("error") or ", ".join(f"{m['key']} {m['median_s']:.3f} s" for m in result["members"]
                                              if "median_s" in m)
    print(f"[{comparison.name}] {status}" + (" (DISTURBED)" if disturbed(result.get("other_cores")) else ""),
          flush=True)
    return result


def measure_all(comparisons: list[Comparison], settings: Settings, budget_s: Optional[float]) -> dict[str, dict]:
    """Each comparison measured in turn; once ``budget_s`` is spent, the rest are recorded as not
    measured (the first always runs: a run that measures nothing tells nothing)."""
    start, measured = time.monotonic(), {}
    for c in comparisons:
        if budget_s is not None and measured and time.monotonic() - start > budget_s:
            measured[c.name] = {"name": c.name, "title": c.title, "batch": c.batch, "size": c.size,
                                "skipped": f"not started: the time budget of {budget_s:.0f} s was spent"}
            print(f"[{c.name}] {measured[c.name]['skipped']}", flush=True)
            continue
        measured[c.name] = measure(c, settings)
    return measured


def finish(comparisons: dict[str, dict], meta: dict[str, Any]) -> dict[str, Any]:
    ratio = ratios(comparisons.get("targets"))
    out = {"meta": meta, "ratios": ratio, "targets": targets(ratio), "comparisons": comparisons}
    if meta.get("plan") == "cuda":
        out["cuda_targets"] = cuda_targets(comparisons, meta["preset"])
    return out


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}, driver {cuda_driver()})"
    return f"{cpu_model()}, {os.cpu_count()} logical CPUs"


def cuda_driver() -> str:
    """The NVIDIA driver's version (nvidia-smi, else NVML through torch), or "unknown"."""
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        import pynvml

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # no NVML: the version is only a label
        return "unknown"


def _meta(args: argparse.Namespace, settings: Settings, rows: list[dict], start: float, load: tuple) -> dict:
    import torch

    from tgcnet.accel import cpu_vendor

    kinds = [m["memory_kind"] for c in rows for m in c.get("members", []) if "memory_kind" in m]
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": source_commit(),
            "plan": args.plan, "preset": settings.preset,
            "biomedclip_preset": settings.biomedclip_preset, "quick": args.quick, "only": args.only,
            "device": settings.device, "device_name": device_name(settings.device), "torch": torch.__version__,
            "python": platform.python_version(), "threads": torch.get_num_threads(),
            "dtype": _precision(args), "warmup": settings.warmup,
            "rounds": settings.rounds, "min_run_time": settings.min_run_time, "memory_steps": settings.memory_steps,
            "memory_kind": kinds[0] if kinds else "n/a", "isolated_memory": settings.isolate,
            "tiny_peers": settings.tiny_peers, "feature_cache_available": has_feature_cache(), "captions": CAPTIONS,
            "note": args.note, "cpu_vendor": cpu_vendor() if settings.device == "cpu" else None,
            "cpu_linear_auto": default_linear() if settings.device == "cpu" else None,
            "loadavg_start": [round(x, 2) for x in load], "loadavg_end": [round(x, 2) for x in os.getloadavg()],
            "elapsed_s": time.time() - start, **_cuda_meta(settings.device)}


def _precision(args: argparse.Namespace) -> str:
    amps = [a for a in args.amp.split(",") if a != "none"] if args.amp else []
    if args.plan == "cuda":
        return "per comparison (" + ", ".join("float32" if a == "none" else f"autocast {a}"
                                             for a in args.amp.split(",")) + ")"
    return f"autocast {amps[0]}" if amps else "float32"


def _cuda_meta(device: str) -> dict[str, Any]:
    """What decides GPU numbers beside the code: driver, CUDA, cuDNN and whether float32 matmuls may use TF32."""
    import torch

    if not device.startswith("cuda"):
        return {}
    return {"cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "driver": cuda_driver(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32}


def merge_into(base: dict, comparisons: dict[str, dict], run: dict) -> dict:
    """An earlier result with ``comparisons`` replacing those of the same name (others appended);
    ``run`` goes into ``meta['merged_runs']``; targets are recomputed."""
    merged = {**base["comparisons"], **{name: {**c, "merged": run} for name, c in comparisons.items()}}
    meta = {**base["meta"], "merged_runs": [*base["meta"].get("merged_runs", []), run]}
    return finish(merged, meta)


def write_results(result: dict, out: Path) -> None:
    write_report(out, "speed", result, to_markdown(result))
    print(f"wrote {out / 'speed.json'} and {out / 'speed.md'}")


def read_result(source: Path, flag: str) -> dict:
    return read_report(source, flag, "comparisons")


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="batch 2, two comparisons, one thread, short rounds, memory "
                                                       "in this process: a check of the script (about 1.5 min)")
    p.add_argument("--plan", choices=["default", "cuda"], default="default",
                   help="what to measure: the CPU report's comparisons (default) or the GPU sweep (cuda_plan)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's; quick: 1, so that another job on a small shared "
                        "machine cannot stall every OpenMP barrier of the check)")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--amp", default=None, help="autocast: none (float32), bf16 or fp16 (CUDA); --plan cuda takes "
                                             "a list, e.g. none,bf16 (its default)")
    p.add_argument("--batches", default=None, help="--plan cuda: batches, e.g. 1,8,64 (its default)")
    p.add_argument("--preset", default="tgcnet-vit-b16")
    p.add_argument("--biomedclip-preset", default="tgcnet-biomedclip")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per member before the rounds")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 4, quick and cuda 2)")
    p.add_argument("--min-run-time", type=float, default=None,
                   help="seconds per member per round (blocked_autorange; default 0.5, quick 0, cuda 0.2)")
    p.add_argument("--batch", type=int, default=None, help="batch of the comparisons not at batch 1 (small checks)")
    p.add_argument("--size", type=int, default=None,
                   help="base input size instead of 224, the scaling comparisons in proportion (small checks)")
    p.add_argument("--memory-steps", type=int, default=None,
                   help="steps timed for peak memory after the warm-up (default 2, quick 1)")
    p.add_argument("--in-process-memory", action="store_true",
                   help="measure peak memory in this process instead of a fresh one per member (quick checks: "
                        "peaks then include what earlier members left)")
    p.add_argument("--tiny-peers", action="store_true", help="CLIPSeg and U-Net at test scale (script checks)")
    p.add_argument("--only", default=None, help="run only these comparisons (comma-separated names; see plan())")
    p.add_argument("--note", default=None, help="a line for the report")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="start no comparison after this many seconds (the first always runs); those left are "
                        "recorded as not measured")
    p.add_argument("--report", default=None, metavar="SPEED_JSON", help="measure nothing: re-render its markdown")
    p.add_argument("--merge-into", default=None, metavar="SPEED_JSON",
                   help="replace or add this run's comparisons in an earlier speed.json; write to --out")
    p.add_argument("--out", default=None, help=f"folder for speed.json and speed.md (default: {RESULTS} for the full "
                                               "default plan and --report, else a new temporary folder)")
    args = p.parse_args(argv)
    if args.warmup < 1 or (args.rounds is not None and args.rounds < 1):
        p.error("--warmup and --rounds must be at least 1")
    try:
        amps, batches = parse_list(args.amp, str, AMPS), parse_list(args.batches, int)
    except ValueError as exc:
        p.error(str(exc))
    if args.plan != "cuda" and (len(amps) > 1 or batches):
        p.error("--batches and a list of --amp values sweep the GPU plan: add --plan cuda")
    if args.plan == "cuda" and (args.quick or args.merge_into):
        p.error("--plan cuda takes neither --quick nor --merge-into")
    return args


#: autocast spellings of --amp
AMPS = ("none", "bf16", "fp16")


def parse_list(text: Optional[str], kind: type, allowed: Optional[tuple] = None) -> list:
    """``"1,8,64"`` -> [1, 8, 64]; a value of the wrong kind or outside ``allowed`` is a ValueError naming it."""
    if not text:
        return []
    values = []
    for part in (t.strip() for t in text.split(",") if t.strip()):
        try:
            value = kind(part)
        except ValueError:
            raise ValueError(f"{part!r} is not a {kind.__name__}") from None
        if allowed is not None and value not in allowed:
            raise ValueError(f"{part!r} is not one of {', '.join(allowed)}")
        if kind is int and value < 1:
            raise ValueError(f"batch {value} must be at least 1")
        values.append(value)
    return values


def out_folder(args: argparse.Namespace) -> Path:
    """Where this run writes: ``--out``, else the committed results for the full default plan (and
    ``--report``, ``--merge-into``), else a new temporary folder: a quick, partial or GPU run must
    not replace the committed report by default."""
    import tempfile

    if args.out:
        return Path(args.out)
    if args.report or args.merge_into or (args.plan == "default" and not args.quick and not args.only):
        return RESULTS
    return Path(tempfile.mkdtemp(prefix="tgcnet-speed-"))


def make_settings(args: argparse.Namespace) -> Settings:
    import torch

    amps = parse_list(args.amp, str, AMPS)
    cuda = args.plan == "cuda"
    return Settings(preset=args.preset, biomedclip_preset=args.biomedclip_preset,
                    device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
                    threads=args.threads or (1 if args.quick else None),
                    amp=None if cuda or not amps or amps[0] == "none" else amps[0],
                    warmup=args.warmup, rounds=args.rounds or (2 if args.quick or cuda else 4),
                    min_run_time=args.min_run_time if args.min_run_time is not None else
                    (0.0 if args.quick else 0.2 if cuda else 0.5),
                    isolate=not (args.in_process_memory or args.quick or cuda),
                    memory_steps=args.memory_steps or (1 if args.quick else 2),
                    tiny_peers=args.tiny_peers, reuse_models=cuda)


def comparisons_of(args: argparse.Namespace) -> list[Comparison]:
    """The run's comparisons: the plan, resized (default plan) and narrowed by ``--only``."""
    if args.plan == "cuda":
        comparisons = cuda_plan(tuple(parse_list(args.batches, int)) or (1, 8, 64),
                                tuple(parse_list(args.amp, str, AMPS)) or ("none", "bf16"),
                                args.biomedclip_preset, args.compile)
        comparisons = [resized(c, None, args.size) for c in comparisons]
    else:
        comparisons = plan(args.quick, args.compile, has_feature_cache(), args.biomedclip_preset)
        comparisons = [resized(c, args.batch, args.size) for c in comparisons]
    return select(comparisons, args.only)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    out = out_folder(args)
    if args.report:
        result = read_result(Path(args.report), "--report")
        if args.note is not None:
            result["meta"]["note"] = args.note
        write_results(result, out)
        return 0
    base = read_result(Path(args.merge_into), "--merge-into") if args.merge_into else None
    if base is not None and base["meta"]["preset"] != args.preset:
        raise SystemExit(f"--merge-into: that run measured preset {base['meta']['preset']!r}; give --preset "
                         f"{base['meta']['preset']} to add to it")
    settings = make_settings(args)
    try:
        comparisons = comparisons_of(args)
    except ValueError as exc:
        raise SystemExit(f"benchmarks.speed.run: error: {exc}") from exc
    start, load = time.time(), os.getloadavg()
    try:
        measured = measure_all(comparisons, settings, args.time_budget)
    finally:
        forget_models()
    meta = _meta(args, settings, list(measured.values()), start, load)
    if base is not None:
        run = {k: meta[k] for k in ("date", "commit", "only", "threads", "rounds", "min_run_time", "note",
                                    "loadavg_start", "loadavg_end", "elapsed_s")}
        write_results(merge_into(base, measured, {**run, "comparisons": list(measured)}), out)
    else:
        write_results(finish(measured, meta), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
