"""The speed benchmark's targets and its markdown: tables and short factual notes.

Every target ratio is read from the one ``targets`` comparison, whose members (TGCNet in
inference and training, its floor, its lower bound, CLIPSeg) were timed interleaved in one
process; peak memory comes from each member's own process.
"""
from __future__ import annotations

from typing import Any, Optional

from .harness import DISTURBED_CORES, PARTS, disturbed
from .members import Member, member_label

CACHED = ("training throughput / CLIPSeg's, TGCNet on cached frozen-ViT features (`--cache-image-features`, "
          "`--augment flip` or `none`)")

#: (what, key, op, bound)
TARGETS = [("inference time / frozen image tower (floor)", "infer_over_floor", "<=", 1.35),
           ("training step / inference time", "train_over_infer", "<=", 1.6),
           ("training peak memory / inference peak memory", "train_mem_over_infer_mem", "<=", 1.5),
           ("inference throughput / CLIPSeg's", "infer_throughput_over_clipseg", ">=", 1.0),
           ("training step / the method's lower bound (method_core)", "train_over_method_core", "<=", 1.15),
           (CACHED, "cached_train_throughput_over_clipseg", ">=", 1.0)]

#: ratios shown beside the targets, with no bound
INFORMATION = [("training throughput / CLIPSeg's (uncached)", "train_throughput_over_clipseg"),
               ("lower bound's training throughput / CLIPSeg's", "method_core_throughput_over_clipseg")]


#: GPU targets at bfloat16 autocast, 224 px, batch 64: (what, key, op, bound)
CUDA_TARGETS = [("inference throughput, images/s", "infer_images_per_s", ">=", 2000.0),
                ("training step / inference step", "train_over_infer", "<=", 1.5),
                ("inference peak memory / CLIPSeg's", "infer_mem_over_clipseg", "<=", 1.3),
                ("training peak memory / CLIPSeg's", "train_mem_over_clipseg", "<=", 1.3)]
#: where the GPU targets are read: (amp, batch, size)
CUDA_TARGET_AT = ("bf16", 64, 224)


def _div(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None or b == 0 else a / b


def member_row(comparison: dict, key: str) -> Optional[dict]:
    return next((m for m in comparison.get("members", []) if m["key"] == key and "error" not in m), None)


def ratios(comparison: Optional[dict]) -> dict[str, Optional[float]]:
    """The target ratios from the ``targets`` comparison (None where a member is missing)."""
    comparison = comparison or {}

    def get(key: str, what: str = "median_s") -> Optional[float]:
        row = member_row(comparison, key)
        return None if row is None else row.get(what)
    infer, train = get("tgcnet/infer"), get("tgcnet/train")
    clipseg_train = get("clipseg/train")
    return {"infer_over_floor": _div(infer, get("floor/infer")),
            "train_over_infer": _div(train, infer),
            "train_mem_over_infer_mem": _div(get("tgcnet/train", "peak_mb"), get("tgcnet/infer", "peak_mb")),
            "infer_throughput_over_clipseg": _div(get("clipseg/infer"), infer),
            "train_over_method_core": _div(train, get("method_core/train")),
            "cached_train_throughput_over_clipseg": _div(clipseg_train, get("tgcnet:feature_cache/train")),
            "train_throughput_over_clipseg": _div(clipseg_train, train),
            "method_core_throughput_over_clipseg": _div(clipseg_train, get("method_core/train"))}


def cuda_target_comparison(comparisons: dict[str, dict], preset: str) -> Optional[dict]:
    """The comparison the GPU targets are read from: ``preset`` at :data:`CUDA_TARGET_AT` with TGCNet and CLIPSeg."""
    amp, batch, size = CUDA_TARGET_AT
    return next((c for c in comparisons.values() if "members" in c and c.get("amp") == amp
                 and c.get("batch") == batch and c.get("size") == size and c.get("preset") == preset
                 and member_row(c, "tgcnet/infer") and member_row(c, "clipseg/infer")), None)


def cuda_targets(comparisons: dict[str, dict], preset: str) -> list[dict[str, Any]]:
    """The GPU targets (:data:`CUDA_TARGETS`), each with its value or None where not measured."""
    c = cuda_target_comparison(comparisons, preset) or {}
    get = lambda key, what="median_s": (member_row(c, key) or {}).get(what)
    values = {"infer_images_per_s": get("tgcnet/infer", "images_per_s"),
              "train_over_infer": _div(get("tgcnet/train"), get("tgcnet/infer")),
              "infer_mem_over_clipseg": _div(get("tgcnet/infer", "peak_mb"), get("clipseg/infer", "peak_mb")),
              "train_mem_over_clipseg": _div(get("tgcnet/train", "peak_mb"), get("clipseg/train", "peak_mb"))}
    return targets(values, CUDA_TARGETS)


def targets(ratio: dict[str, Optional[float]], table: Optional[list] = None) -> list[dict[str, Any]]:
    out = []
    for what, key, op, bound in (TARGETS if table is None else table):
        value = ratio.get(key)
        met = None if value is None else (value <= bound if op == "<=" else value >= bound)
        out.append({"target": what, "key": key, "bound": f"{op} {bound}", "value": value, "met": met})
    return out


def _fmt(x: Optional[float], digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _mb(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:,.0f}"


def _label(row: dict) -> str:
    return member_label(Member(row["model"], row["mode"], row["variant"]))


#: (member key contains, note under the table of a comparison that has such a member)
MEMBER_NOTES = [("lora_merged", "The LoRA-merged row runs with knowledge off (a merged LoRA cannot be bypassed to "
                                "encode descriptions through the frozen tower); compare it with the knowledge-off row."),
                ("floor:unfused", "The unfused floor is the same frozen tower built with its own switch "
                                  "`FrozenViT(fused_attention=False)`; a TGCNet always runs attention fused.")]


def comparison_table(comparison: dict) -> list[str]:
    if "error" in comparison:
        return [f"Failed: {comparison['error']}"]
    if "skipped" in comparison:
        return [f"Not measured: {comparison['skipped']}."]
    flag = " †" if disturbed(comparison.get("other_cores")) else ""
    amp = comparison.get("amp")
    precision = "" if amp is None else ", float32" if amp == "none" else f", {amp} autocast"
    lines = [f"Batch {comparison['batch']}, {comparison['size']} px, preset `{comparison['preset']}`{precision}, "
             f"torch threads: {comparison['threads']}{flag}.", "",
             "| member | mode | s/step (median) | IQR s | / first | images/s | peak MB | trainable params |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    first = next((m for m in comparison["members"] if "error" not in m), None)
    for m in comparison["members"]:
        if "error" in m:
            lines.append(f"| {_label(m)} | {m['mode']} | failed: {m['error']} | | | | | |")
            continue
        lines.append(f"| {_label(m)} | {m['mode']} | {m['median_s']:.3f} | {m['iqr_s']:.3f} | "
                     f"{m['median_s'] / first['median_s']:.3f} | {m['images_per_s']:.2f} | {_mb(m.get('peak_mb'))} | "
                     f"{m['trainable_params']:,} |")
    keys = [m["key"] for m in comparison["members"]]
    notes = [note for part, note in MEMBER_NOTES if any(part in k for k in keys)]
    return [*lines, *(["", *notes] if notes else [])]


def parts_table(comparison: Optional[dict]) -> list[str]:
    infer = (member_row(comparison or {}, "tgcnet/infer") or {}).get("parts_s", {})
    train = (member_row(comparison or {}, "tgcnet/train") or {}).get("parts_s", {})
    if not infer or not train:
        return []
    lines = ["## Where TGCNet's time goes", "",
             f"One extra step of each (batch {comparison['batch']}, {comparison['size']} px), parts timed by forward "
             "hooks; the rest of a training step is the loss, backward and optimizer step.", "",
             "| part | inference s | training s |", "|---|---:|---:|"]
    lines += [f"| {name} | {_fmt(infer.get(name), 3)} | {_fmt(train.get(name), 3)} |" for name in PARTS]
    rest = lambda p: p["step"] - sum(p.get(name, 0.0) for name in PARTS)
    lines += [f"| whole step | {infer['step']:.3f} | {train['step']:.3f} |",
              f"| outside the parts | {rest(infer):.3f} | {rest(train):.3f} |", ""]
    return lines


def target_lines(rows: list[dict]) -> list[str]:
    lines = ["| target | bound | measured | status |", "|---|---|---:|---|"]
    for c in rows:
        status = "n/a" if c["met"] is None else ("**met**" if c["met"] else "**missed**")
        lines.append(f"| {c['target']} | {c['bound']} | {_fmt(c['value'])} | {status} |")
    return lines


def cuda_targets_section(result: dict) -> list[str]:
    amp, batch, size = CUDA_TARGET_AT
    if "cuda_targets" not in result:
        return []
    return [f"## GPU targets ({amp} autocast, batch {batch}, {size} px, preset `{result['meta']['preset']}`, "
            "one process)", "", *target_lines(result["cuda_targets"]), "",
            "Peak memory on the GPU is measured in the timing process: each member's own tensors plus how far its "
            "steps pushed CUDA's `max_memory_allocated` above what was allocated before them.", ""]


def _targets_section(result: dict) -> list[str]:
    if result["meta"].get("plan") == "cuda":
        return cuda_targets_section(result)
    comparison = result["comparisons"].get("targets")
    if comparison is None:
        return ["## Targets", "", "Not measured in this run (`--only` left out the `targets` comparison).", ""]
    lines = [f"## Targets (batch {comparison.get('batch')}, {comparison.get('size')} px, one process)", "",
             *target_lines(result["targets"])]
    ratio = result["ratios"]
    lines += ["", *(f"- {what}: {_fmt(ratio.get(key))} (no target)." for what, key in INFORMATION), ""]
    return lines


def _notes(result: dict) -> list[str]:
    meta = result["meta"]
    notes = []
    if meta.get("cpu_linear_auto"):
        notes.append(f"- `optimize_for_cpu(linear='auto')` picked {meta['cpu_linear_auto']} linears on this "
                     f"{meta.get('cpu_vendor', '?')} CPU; TGCNet members run it on a CPU, as the engine does.")
    if not meta.get("feature_cache_available", True):
        notes.append("- tgcnet.engine.feature_cache is not installed: the cached-features members were not run.")
    if meta.get("tiny_peers"):
        notes.append("- CLIPSeg and the U-Net ran at test scale (`--tiny-peers`): their rows check the script only.")
    if meta.get("plan") == "cuda":
        notes.append(f"- {meta.get('device_name')}; cuDNN {meta.get('cudnn')}; TF32 for float32 matmuls "
                     f"{'on' if meta.get('tf32_matmul') else 'off'}, for cuDNN convolutions "
                     f"{'on' if meta.get('tf32_cudnn') else 'off'} (torch's defaults).")
        notes.append("- Under autocast the frozen towers of TGCNet and CLIPSeg alike are held in the autocast dtype "
                     "(`tgcnet.accel.optimize_for_cuda`, as the engine prepares a model); the `fp32_frozen` rows "
                     "keep them in float32. Models are built once per process and reused across batches.")
    return ["## Notes", "", *notes, ""] if notes else []


def to_markdown(result: dict) -> str:
    meta = result["meta"]
    if meta.get("isolated_memory", True):
        where = "each member in its own fresh process,"
    elif str(meta.get("memory_kind", "")).startswith("CUDA"):
        where = "each member in the timing process (its own tensors plus its steps' peak above what was allocated),"
    else:
        where = ("each member in the timing process (a check of the script: the peaks include the other "
                 "members),")
    flags = (" --quick" if meta.get("quick") else "") + (" --plan cuda" if meta.get("plan") == "cuda" else "")
    commit = f" at commit {meta['commit']}" if meta.get("commit") else ""
    lines = [f"# Speed and memory ({meta['preset']})", "",
             f"Written by `python -m benchmarks.speed.run{flags}`{commit} on {meta['date']}: "
             f"{meta['device_name']}, torch {meta['torch']}, torch threads: {meta['threads']}, {meta['dtype']}. "
             f"Random-init weights. Each comparison's members are built in one process and timed interleaved: "
             f"{meta['warmup']} untimed warm-up call each, then {meta['rounds']} rounds of "
             f"`torch.utils.benchmark.Timer.blocked_autorange(min_run_time={meta['min_run_time']})` per member "
             f"(its first call, untimed, re-warms after the other members); median and interquartile range over "
             f"all timed calls. Peak memory ({meta['memory_kind']}): "
             f"{where} over the warm-up and {meta['memory_steps']} steps. Load average at start / end: {meta['loadavg_start']} / "
             f"{meta['loadavg_end']}; {meta['elapsed_s']:.0f} s. † marks a comparison during whose rounds other "
             f"processes used more than {DISTURBED_CORES} of a core."]
    if meta.get("note"):
        lines += ["", f"Note: {meta['note']}"]
    lines += ["", *_targets_section(result), *parts_table(result["comparisons"].get("targets")), *_notes(result)]
    for comparison in result["comparisons"].values():
        lines += [f"## {comparison.get('title', comparison['name'])} (`{comparison['name']}`)", ""]
        run = comparison.get("merged")
        if run:
            lines += [f"Measured on {run['date']} by `--only {run['only']}` and merged into this file "
                      f"(`--merge-into`): {run['threads']} threads, {run['rounds']} rounds, load average at start / "
                      f"end {run['loadavg_start']} / {run['loadavg_end']}."
                      + (f" Note: {run['note']}" if run.get("note") else ""), ""]
        lines += [*comparison_table(comparison), ""]
    return "\n".join(lines).rstrip("\n") + "\n"
