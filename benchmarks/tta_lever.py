"""Flip test-time augmentation as an accuracy lever, measured on trained qata-mini runs.

    python benchmarks/tta_lever.py RUN_DIR [RUN_DIR ...] [--data ../shared/data/qata-mini] [--out benchmarks/results]

Each run directory (a TGCNet trained by ``benchmarks/qata_mini.py`` or ``tgcnet train``, one per
seed) is evaluated on ``valid`` and ``test`` twice: plainly and with ``tta="flip"`` (the mirrored
image read with "left" and "right" swapped in its caption, logits averaged: :mod:`tgcnet.tta`).
The decision is taken on ``valid`` only: flip TTA counts as a gain when its mean per-image Dice
gain over the runs exceeds both the spread of that gain (sd over runs) and the seed-to-seed sd of
the plain validation Dice. Test is reported beside it, and was not used to decide.

Writes ``tta_lever.json`` and ``tta_lever.md`` to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from qata_report import mean_sd, source_commit  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "qata-mini"
SPLITS = ("valid", "test")
METRICS = ("dice", "pooled_dice")


def score_run(run_dir: Path, data: Path) -> dict[str, Any]:
    """{split: {tta: {dice, pooled_dice}}} for one run directory."""
    from tgcnet.engine import evaluate

    out: dict[str, Any] = {}
    for split in SPLITS:
        out[split] = {}
        for tta in ("none", "flip"):
            m = evaluate(run_dir, data, split, device="cpu", progress=False, tta=tta)
            out[split][tta] = {k: m[k] for k in METRICS}
    return out


def decide(runs: dict[str, dict]) -> dict[str, Any]:
    """The per-image Dice gain of flip TTA on valid over the runs, and whether it beats the spread."""
    plain = [r["valid"]["none"]["dice"] for r in runs.values()]
    gains = [r["valid"]["flip"]["dice"] - r["valid"]["none"]["dice"] for r in runs.values()]
    gain, spread = mean_sd(gains), mean_sd(plain)
    beats = (len(gains) > 1 and gain["mean"] > 0 and gain["mean"] > gain["sd"] and gain["mean"] > spread["sd"])
    test_gains = {m: mean_sd([r["test"]["flip"][m] - r["test"]["none"][m] for r in runs.values()])
                  for m in METRICS}
    return {"valid_gain": gain, "valid_plain": spread, "beats_spread": beats, "test_gain": test_gains}


def to_markdown(report: dict) -> str:
    runs, d = report["runs"], report["decision"]
    lines = ["# Flip test-time augmentation on qata-mini", "",
             f"Written by `benchmarks/tta_lever.py` on {report['date']} ({report['machine']}, commit "
             f"{report['commit']}). Each row is one trained `tgcnet-cpu` run (one seed), evaluated plainly and "
             "with `--tta flip` (the mirrored image with 'left' and 'right' swapped in its caption, logits "
             "averaged). The decision uses valid only; test is shown, not used.", "",
             "| run | valid Dice | valid Dice, flip TTA | gain | test Dice | test Dice, flip TTA | "
             "test pooled | test pooled, flip TTA |", "|---|---|---|---|---|---|---|---|"]
    for name, r in runs.items():
        v, t = r["valid"], r["test"]
        lines.append(f"| {name} | {v['none']['dice']:.4f} | {v['flip']['dice']:.4f} | "
                     f"{100 * (v['flip']['dice'] - v['none']['dice']):+.2f} | {t['none']['dice']:.4f} | "
                     f"{t['flip']['dice']:.4f} | {t['none']['pooled_dice']:.4f} | {t['flip']['pooled_dice']:.4f} |")
    g, p = d["valid_gain"], d["valid_plain"]
    sd = (lambda x: "n/a" if x is None else f"{100 * x:.2f}")
    lines += ["", f"Valid per-image Dice gain: {100 * g['mean']:+.2f} points (sd over runs {sd(g['sd'])}); "
              f"seed-to-seed sd of the plain valid Dice: {sd(p['sd'])} points. "
              f"Test gain: per-image {100 * d['test_gain']['dice']['mean']:+.2f}, pooled "
              f"{100 * d['test_gain']['pooled_dice']['mean']:+.2f} points.", "",
              ("Verdict: the gain exceeds both spreads, so flip TTA is a measured improvement; it stays opt-in "
               "(`--tta flip`) because it doubles inference time." if d["beats_spread"] else
               "Verdict: the gain does not exceed the spread (within noise), so flip TTA is not a measured "
               "improvement here; it stays opt-in (`--tta flip`).")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", type=Path, nargs="+", help="TGCNet run directories (one per seed)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    missing = [str(r) for r in args.runs if not (r / "train_config.json").is_file()]
    if missing:
        print(f"not run directories (no train_config.json): {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = {run.name: score_run(run, args.data) for run in args.runs}
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "commit": source_commit(REPO), "data": str(args.data),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} thread(s), "
                         f"torch {torch.__version__}",
              "runs": runs, "decision": decide(runs)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tta_lever.json").write_text(json.dumps(report, indent=2) + "\n")
    md = to_markdown(report)
    (args.out / "tta_lever.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
