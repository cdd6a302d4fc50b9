"""Speed and memory: TGCNet beside its floor, its lower bound, CLIPSeg and a U-Net.

    python -m benchmarks.speed.run [--quick] [--threads N] [--compile] [--device cpu|cuda] [--amp bf16]
                                   [--preset tgcnet-vit-b16] [--out benchmarks/results] [--only NAME[,NAME]]
                                   [--merge-into benchmarks/results/speed.json] [--report speed.json]

A run is a list of comparisons (:func:`plan`); each comparison's members are built in one
process and timed interleaved (:mod:`.harness`), so every ratio inside one
comparison, and every target (all read from the ``targets`` comparison), is free of
process-to-process spread. Members with memory asked for are measured again, each in its
own fresh process. What each member is: :mod:`.members`. The report: :mod:`.report`.
Writes speed.json and speed.md to ``--out``; ``--report`` re-renders the markdown of a
speed.json; ``--merge-into`` replaces or adds this run's comparisons in an earlier
speed.json, its other comparisons kept as they were.
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
from ..provenance import cpu_model
from ..report_files import read_report, write_report
from .harness import Comparison, Member, Settings, disturbed, memory_of, time_comparison
from .members import CAPTIONS, build, default_linear
from .report import ratios, targets, to_markdown

M = Member


def has_feature_cache() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("tgcnet.engine.feature_cache") is not None
    except ModuleNotFoundError:
        return False


def plan(quick: bool = False, compile_: bool = False, feature_cache: bool = True,
         biomedclip_preset: Optional[str] = None) -> list[Comparison]:
    """What to measure, in order. Quick (a check of the script): batch 2, the target, frozen-tower
    and BiomedCLIP-shaped comparisons only. Full: batch 8, every comparison, batch 1 and sizes 320/448."""
    big = 2 if quick else 8
    cached = (M("tgcnet", "train", "feature_cache"),) if feature_cache else ()
    targets_members = (M("floor"), M("tgcnet"), M("tgcnet", "train"), M("method_core", "train"), M("clipseg"),
                       M("clipseg", "train"), *cached)
    biomed = (M("floor"), M("text_floor"), M("tgcnet"), M("tgcnet", "train"))
    out = [Comparison("targets", "TGCNet, its floor, its lower bound and CLIPSeg", targets_members, big,
                      memory=True, profile=True),
           Comparison("floor_paths", "Frozen image tower: open_clip's path and TGCNet's",
                      (M("floor_open_clip"), M("floor", variant="unfused"), M("floor", variant="torch_linear"),
                       M("floor", variant="onednn_linear"), M("floor")), big),
           Comparison("biomedclip", "BiomedCLIP-shaped CLIP beside its frozen towers", biomed, big,
                      preset=biomedclip_preset, memory=True)]
    if quick:
        return out
    out += [
        Comparison("tgcnet_infer", "TGCNet inference: kernels and text work",
                   tuple(M("tgcnet", "infer", v) for v in ("default", "torch_linear", "onednn_linear", "channels_last",
                                                          "no_dedup", "no_caption_cache", "lora_knowledge",
                                                          "light_head", "bf16")), big),
        Comparison("lora_merged", "TGCNet inference with knowledge off: LoRA merged or not",
                   (M("tgcnet", "infer", "no_knowledge"), M("tgcnet", "infer", "no_knowledge+lora_merged")), big),
        Comparison("tgcnet_train_kernels", "TGCNet training step: kernels",
                   tuple(M("tgcnet", "train", v) for v in ("default", "torch_linear", "onednn_linear",
                                                          "channels_last", "bf16")), big),
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
                         f"names: {', '.join(names)} (--quick runs the first three; 'compile' needs --compile)")
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
    result["measured"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    status = result.get("error") or ", ".join(f"{m['key']} {m['median_s']:.3f} s" for m in result["members"]
                                              if "median_s" in m)
    print(f"[{comparison.name}] {status}" + (" (DISTURBED)" if disturbed(result.get("other_cores")) else ""),
          flush=True)
    return result


def finish(comparisons: dict[str, dict], meta: dict[str, Any]) -> dict[str, Any]:
    ratio = ratios(comparisons.get("targets"))
    return {"meta": meta, "ratios": ratio, "targets": targets(ratio), "comparisons": comparisons}


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    return f"{cpu_model()}, {os.cpu_count()} logical CPUs"


def _meta(args: argparse.Namespace, settings: Settings, rows: list[dict], start: float, load: tuple) -> dict:
    import torch

    from tgcnet.accel import cpu_vendor

    kinds = [m["memory_kind"] for c in rows for m in c.get("members", []) if "memory_kind" in m]
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "preset": settings.preset,
            "biomedclip_preset": settings.biomedclip_preset, "quick": args.quick, "only": args.only,
            "device": settings.device, "device_name": device_name(settings.device), "torch": torch.__version__,
            "python": platform.python_version(), "threads": torch.get_num_threads(),
            "dtype": f"autocast {settings.amp}" if settings.amp else "float32", "warmup": settings.warmup,
            "rounds": settings.rounds, "min_run_time": settings.min_run_time, "memory_steps": settings.memory_steps,
            "memory_kind": kinds[0] if kinds else "n/a", "isolated_memory": settings.isolate,
            "tiny_peers": settings.tiny_peers, "feature_cache_available": has_feature_cache(), "captions": CAPTIONS,
            "note": args.note, "cpu_vendor": cpu_vendor() if settings.device == "cpu" else None,
            "cpu_linear_auto": default_linear() if settings.device == "cpu" else None,
            "loadavg_start": [round(x, 2) for x in load], "loadavg_end": [round(x, 2) for x in os.getloadavg()],
            "elapsed_s": time.time() - start}


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
    p.add_argument("--quick", action="store_true", help="batch 2, three comparisons: a check of the script")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--amp", choices=["bf16"], default=None, help="autocast dtype (default: float32)")
    p.add_argument("--preset", default="tgcnet-vit-b16")
    p.add_argument("--biomedclip-preset", default="tgcnet-biomedclip")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per member before the rounds")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 4, quick 2)")
    p.add_argument("--min-run-time", type=float, default=None,
                   help="seconds per member per round (blocked_autorange; default 0.5, quick 0.1)")
    p.add_argument("--batch", type=int, default=None, help="batch of the comparisons not at batch 1 (small checks)")
    p.add_argument("--size", type=int, default=None,
                   help="base input size instead of 224, the scaling comparisons in proportion (small checks)")
    p.add_argument("--memory-steps", type=int, default=2, help="steps timed for peak memory after the warm-up")
    p.add_argument("--in-process-memory", action="store_true",
                   help="measure peak memory in this process instead of a fresh one per member (quick checks: "
                        "peaks then include what earlier members left)")
    p.add_argument("--tiny-peers", action="store_true", help="CLIPSeg and U-Net at test scale (script checks)")
    p.add_argument("--only", default=None, help="run only these comparisons (comma-separated names; see plan())")
    p.add_argument("--note", default=None, help="a line for the report")
    p.add_argument("--report", default=None, metavar="SPEED_JSON", help="measure nothing: re-render its markdown")
    p.add_argument("--merge-into", default=None, metavar="SPEED_JSON",
                   help="replace or add this run's comparisons in an earlier speed.json; write to --out")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    if args.warmup < 1 or (args.rounds is not None and args.rounds < 1):
        p.error("--warmup and --rounds must be at least 1")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.report:
        result = read_result(Path(args.report), "--report")
        if args.note is not None:
            result["meta"]["note"] = args.note
        write_results(result, Path(args.out))
        return 0
    base = read_result(Path(args.merge_into), "--merge-into") if args.merge_into else None
    if base is not None and base["meta"]["preset"] != args.preset:
        raise SystemExit(f"--merge-into: that run measured preset {base['meta']['preset']!r}; give --preset "
                         f"{base['meta']['preset']} to add to it")
    import torch

    settings = Settings(preset=args.preset, biomedclip_preset=args.biomedclip_preset,
                        device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
                        threads=args.threads, amp=args.amp, warmup=args.warmup,
                        rounds=args.rounds or (2 if args.quick else 4),
                        min_run_time=args.min_run_time if args.min_run_time is not None else (0.1 if args.quick else 0.5),
                        isolate=not args.in_process_memory, memory_steps=args.memory_steps, tiny_peers=args.tiny_peers)
    comparisons = plan(args.quick, args.compile, has_feature_cache(), args.biomedclip_preset)
    comparisons = [resized(c, args.batch, args.size) for c in comparisons]
    try:
        comparisons = select(comparisons, args.only)
    except ValueError as exc:
        raise SystemExit(f"benchmarks.speed.run: error: {exc}") from exc
    start, load = time.time(), os.getloadavg()
    measured = {c.name: measure(c, settings) for c in comparisons}
    meta = _meta(args, settings, list(measured.values()), start, load)
    if base is not None:
        run = {k: meta[k] for k in ("date", "only", "threads", "rounds", "min_run_time", "note", "loadavg_start",
                                    "loadavg_end", "elapsed_s")}
        write_results(merge_into(base, measured, {**run, "comparisons": list(measured)}), Path(args.out))
    else:
        write_results(finish(measured, meta), Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
