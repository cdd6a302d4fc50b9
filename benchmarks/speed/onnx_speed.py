"""CPU inference: the exported ONNX file under onnxruntime beside the PyTorch model it came from.

    python -m benchmarks.speed.onnx_speed [--preset tgcnet-cpu] [--image-size 224] [--batches 1,8] [--repeats 30]
                                          [--threads 1] [--warmup 3] [--out benchmarks/results]
    python -m benchmarks.speed.onnx_speed --report benchmarks/results/onnx_speed.json

One process builds a model (random init, knowledge off: ``create_model(preset, knowledge=None)``),
saves it as a run directory and exports it with ``tgcnet.onnx_export.export_onnx`` (the
embedded sample's test captions). PyTorch runs ``model(images, captions)`` under
``torch.inference_mode`` as ``load_inference_model`` prepares it on a CPU (with the linear
kernels ``optimize_for_cpu`` picks for this processor); onnxruntime runs the file with the
CPU execution provider. Both get the same intra-op thread count.

Why interleaved rounds: the same configuration measured minutes apart on the shared 2-core
machine drifts by more than most effects worth measuring (:mod:`.harness`). Each round
times every (batch, engine) pair once, the engines' order alternating round by round, so
drift hits both engines alike. A round's number is the mean of enough consecutive calls to
last about ``--min-time`` seconds. Reported: median over rounds, min/max and interquartile
range. A difference "exceeds the run-to-run spread" when the two engines' interquartile
ranges do not overlap. Writes onnx_speed.json and onnx_speed.md to ``--out``.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

from .. import RESULTS
from ..provenance import cpu_model, source_commit
from ..report_files import rerender, write_report
from .harness import LoadProbe, disturbed

ENGINES = ("pytorch", "onnxruntime")


def spread(samples: list[float]) -> dict[str, float]:
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return {"median_s": statistics.median(samples), "q1_s": q1, "q3_s": q3, "min_s": min(samples),
            "max_s": max(samples), "rounds": len(samples)}


def build(preset: str, image_size: int, workdir: Path) -> tuple[Path, Any]:
    """A saved run of a random-init ``preset`` and its ONNX export."""
    import torch

    from tgcnet import create_model
    from tgcnet.data import sample_root
    from tgcnet.io import save_json_atomic
    from tgcnet.onnx_export import export_onnx

    torch.manual_seed(0)
    run = workdir / "run"
    create_model(preset, knowledge=None).save_pretrained(run / "best")
    save_json_atomic({"train": {"image_size": image_size, "knowledge": "none", "threshold": 0.5}},
                     run / "train_config.json")
    return run, export_onnx(run, workdir / "model.onnx", captions_file=sample_root() / "test" / "prompts.csv")


def engines(run: Path, onnx_path: Path, threads: int) -> tuple[Any, Any, list[str]]:
    """The PyTorch model as ``load_inference_model`` prepares it, an onnxruntime session, the captions."""
    import onnxruntime as ort

    from tgcnet.engine.loading import load_inference_model
    from tgcnet.onnx_export import read_onnx_captions

    model, _ = load_inference_model(run, device="cpu")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    return model, session, read_onnx_captions(onnx_path)


def calls(model: Any, session: Any, captions: list[str], batch: int, image_size: int
          ) -> tuple[dict[str, Callable[[], Any]], float]:
    """One inference call per engine on the same images and captions, and their largest |logit difference|."""
    import numpy as np
    import torch

    index = np.arange(batch, dtype=np.int64) % len(captions)
    images = torch.rand(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(batch))
    texts = [captions[i] for i in index]
    feed = {"images": images.numpy(), "caption_index": index}

    def pytorch():
        with torch.inference_mode():
            return model(images, texts)

    def onnxruntime():
        return session.run(None, feed)[0]

    return {"pytorch": pytorch, "onnxruntime": onnxruntime}, float(np.abs(pytorch().numpy() - onnxruntime()).max())


def calls_per_round(call: Callable[[], Any], min_time: float) -> int:
    start = time.perf_counter()
    call()
    return max(1, round(min_time / max(time.perf_counter() - start, 1e-6)))


def measure(fns: dict[tuple[int, str], Callable[[], Any]], repeats: int, warmup: int, min_time: float
            ) -> dict[tuple[int, str], list[float]]:
    """Seconds per call of each (batch, engine), one sample per round, rounds interleaved."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    counts = {key: calls_per_round(fn, min_time) for key, fn in fns.items()}
    samples: dict[tuple[int, str], list[float]] = {key: [] for key in fns}
    keys = list(fns)
    for r in range(repeats):
        order = keys if r % 2 == 0 else keys[::-1]
        for key in order:
            start = time.perf_counter()
            for _ in range(counts[key]):
                fns[key]()
            samples[key].append((time.perf_counter() - start) / counts[key])
    return samples


def verdict(torch_row: dict[str, float], onnx_row: dict[str, float]) -> str:
    """Whether the engines' difference exceeds the run-to-run spread: interquartile ranges apart
    (and whether even the min-max ranges are)."""
    def apart(lo: str, hi: str) -> Optional[str]:
        if onnx_row[hi] < torch_row[lo]:
            return "onnxruntime"
        if torch_row[hi] < onnx_row[lo]:
            return "PyTorch"
        return None

    faster = apart("q1_s", "q3_s")
    if faster is None:
        return "within the run-to-run spread (the interquartile ranges overlap)"
    extremes = "apart as well" if apart("min_s", "max_s") else "overlapping"
    return f"{faster} faster, beyond the run-to-run spread (interquartile ranges apart; min-max ranges {extremes})"


def to_markdown(result: dict[str, Any]) -> str:
    meta, machine = result["meta"], result["machine"]
    lines = [
        f"# ONNX export: onnxruntime beside PyTorch on the CPU ({meta['preset']})", "",
        f"Written by `python -m benchmarks.speed.onnx_speed` on {meta['date']} at tgcnet commit `{meta['commit']}`. "
        "Machine: "
        f"{machine['cpu']}, {machine['logical_cpus']} logical CPUs, {machine['platform']}; Python "
        f"{machine['python']}, torch {machine['torch']}, onnxruntime {machine['onnxruntime']}, onnx "
        f"{machine['onnx']}.", "",
        f"Random-init `{meta['preset']}` (knowledge off), {meta['image_size']} px, float32, "
        f"{meta['threads']} intra-op thread(s) for both (torch.set_num_threads; onnxruntime "
        f"intra_op_num_threads, inter_op 1). PyTorch: `model(images, captions)` under torch.inference_mode as "
        f"load_inference_model prepares it (frozen linears through {meta['pytorch_cpu_linear']}; DATE's caption "
        f"cache serves the repeated captions' text encodings, so both engines skip the text tower). onnxruntime: "
        f"the exported file (opset {meta['opset']}, {meta['onnx_mb']:.1f} MB, {meta['n_captions']} captions "
        f"precomputed), CPUExecutionProvider, default graph optimisations. {meta['warmup']} warm-up calls each, "
        f"then {meta['repeats']} interleaved rounds; a round's sample is the mean of consecutive calls lasting about "
        f"{meta['min_time']} s. Largest |logit difference| between the engines: "
        f"{max(r['max_abs_logit_diff'] for r in result['batches']):.1e}.", "",
        "| batch | engine | s/batch median | IQR (q1-q3) s | min-max s | images/s | median / PyTorch's |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in result["batches"]:
        base = row["pytorch"]["median_s"]
        for engine in ENGINES:
            r = row[engine]
            lines.append(f"| {row['batch']} | {engine} | {r['median_s']:.4f} | {r['q1_s']:.4f}-{r['q3_s']:.4f} | "
                         f"{r['min_s']:.4f}-{r['max_s']:.4f} | {row['batch'] / r['median_s']:.1f} | "
                         f"{r['median_s'] / base:.2f}x time |")
    lines += ["", "## Verdict", "",
              "Unpaired: the engines' medians and interquartile ranges over all rounds. Paired: onnxruntime's time "
              "over PyTorch's within each round (the two ran seconds apart, so a disturbance hits both), median and "
              "interquartile range over the rounds.", ""]
    for row in result["batches"]:
        speedup = row["pytorch"]["median_s"] / row["onnxruntime"]["median_s"]
        pr = row["paired_ratio"]
        paired = ("below 1 in at least three rounds of four" if pr["q3"] < 1
                  else "above 1 in at least three rounds of four" if pr["q1"] > 1
                  else "straddling 1")
        lines.append(f"- Batch {row['batch']}: onnxruntime takes {1 / speedup:.2f}x PyTorch's median time "
                     f"({speedup:.2f}x its throughput): {row['verdict']}. Paired per round: {pr['median']:.2f}x "
                     f"(IQR {pr['q1']:.2f}-{pr['q3']:.2f}, min-max {pr['min']:.2f}-{pr['max']:.2f}), {paired}.")
    lines += ["", "PyTorch's time includes its per-call Python work (input checks that read the pixel values, "
              "caption normalisation, caption-cache lookups); the graph has none of it, its captions being indices "
              "into precomputed features."]
    other = meta.get("other_cores")
    lines += ["", f"Other processes used {'an unknown share of' if other is None else f'{other:.2f}'} core(s) on "
              "average while the rounds ran" + ("; over 0.25 of a core, so the rounds were disturbed: read the "
                                                 "numbers with care." if disturbed(other) else "."),
              f"Load average at start / end: {meta['loadavg_start']} / {meta['loadavg_end']}; "
              f"{meta['elapsed_s']:.0f} s in all.", ""]
    return "\n".join(lines)


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tgcnet-cpu")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--repeats", type=int, default=30, help="interleaved rounds")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls of each engine and batch first")
    p.add_argument("--min-time", type=float, default=0.3, help="seconds of consecutive calls per round sample")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--report", default=None, metavar="ONNX_SPEED_JSON", help="measure nothing: re-render its markdown")
    args = p.parse_args(argv)
    try:
        args.batches = [int(b) for b in args.batches.split(",") if b.strip()]
    except ValueError:
        p.error(f"--batches {args.batches!r}: give comma-separated integers, e.g. 1,8")
    if not args.batches or min(args.batches) < 1 or args.repeats < 4 or args.threads < 1 or args.warmup < 0:
        p.error("--batches must be >= 1, --repeats >= 4 (for quartiles), --threads >= 1, --warmup >= 0")
    return args


def batch_row(batch: int, samples: dict[tuple[int, str], list[float]], max_diff: float) -> dict[str, Any]:
    """One batch size's report row: each engine's spread, their ratio, paired and unpaired, and the verdict."""
    row = {"batch": batch, **{e: spread(samples[(batch, e)]) for e in ENGINES}, "max_abs_logit_diff": max_diff}
    for e in ENGINES:
        row[e]["images_per_s"] = batch / row[e]["median_s"]
    row["onnx_time_ratio"] = row["onnxruntime"]["median_s"] / row["pytorch"]["median_s"]
    paired = [o / t for o, t in zip(samples[(batch, "onnxruntime")], samples[(batch, "pytorch")])]
    q1, _, q3 = statistics.quantiles(paired, n=4, method="inclusive")
    row["paired_ratio"] = {"median": statistics.median(paired), "q1": q1, "q3": q3, "min": min(paired),
                           "max": max(paired)}
    row["verdict"] = verdict(row["pytorch"], row["onnxruntime"])
    return row


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.report:
        print(rerender(Path(args.report), Path(args.out), "onnx_speed", "batches", to_markdown))
        return 0
    import onnx
    import onnxruntime
    import torch

    from tgcnet.accel import has_onednn_linears

    torch.set_num_threads(args.threads)
    start, load = time.time(), os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        run, exported = build(args.preset, args.image_size, Path(tmp))
        print(exported.summary().splitlines()[0], flush=True)
        model, session, captions = engines(run, exported.path, args.threads)
        rows, fns, diffs = [], {}, {}
        for batch in args.batches:
            pair, diffs[batch] = calls(model, session, captions, batch, args.image_size)
            fns.update({(batch, engine): fn for engine, fn in pair.items()})
        probe = LoadProbe()
        samples = measure(fns, args.repeats, args.warmup, args.min_time)
        other = probe.other_cores()
    for batch in args.batches:
        row = batch_row(batch, samples, diffs[batch])
        rows.append(row)
        print(f"batch {batch}: pytorch {row['pytorch']['median_s']:.4f} s, onnxruntime "
              f"{row['onnxruntime']['median_s']:.4f} s ({row['verdict']})", flush=True)
    result = {
        "meta": {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": source_commit(),
                 "preset": args.preset, "image_size": args.image_size, "threads": args.threads,
                 "repeats": args.repeats, "warmup": args.warmup, "min_time": args.min_time,
                 "opset": exported.opset, "onnx_mb": exported.size_bytes / 1e6, "n_captions": exported.n_captions,
                 "pytorch_cpu_linear": "onednn" if has_onednn_linears(model) else "torch", "other_cores": other,
                 "loadavg_start": [round(x, 2) for x in load], "loadavg_end": [round(x, 2) for x in os.getloadavg()],
                 "elapsed_s": time.time() - start},
        "machine": {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__},
        "batches": rows,
    }
    out = Path(args.out)
    write_report(out, "onnx_speed", result, to_markdown(result))
    print(f"wrote {out / 'onnx_speed.json'} and {out / 'onnx_speed.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
