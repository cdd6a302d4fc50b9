"""Flip test-time augmentation as an accuracy lever, measured on trained qata-mini runs.

    python benchmarks/tta_lever.py RUN_DIR [RUN_DIR ...] [--data ../shared/data/qata-mini]
                                   [--out benchmarks/results] [--merge]

Each run directory (a TGCNet trained by ``benchmarks/qata_mini.py`` or ``tgcnet train``, one per
seed) is evaluated on ``valid`` and ``test`` twice: plainly and with ``tta="flip"`` (the mirrored
image read with "left" and "right" swapped in its caption, logits averaged: :mod:`tgcnet.tta`).
Runs are grouped by their directory name less its seed mark (``tgcnet_deepsup@s1`` belongs to
``tgcnet_deepsup``, as in ``qata_mini.py``'s result keys), and each group is decided on its own, on
``valid`` only: flip TTA counts as a gain when its mean per-image Dice gain over the group's runs
exceeds both the spread of that gain (sd over runs) and the seed-to-seed sd of the plain validation
Dice. Test is reported beside it, and was not used to decide.

Writes ``tta_lever.json`` and ``tta_lever.md`` to ``--out``; with ``--merge`` the runs are added to
the report already there (a run of the same name is replaced), each run keeping the commit, date
and machine it was scored with.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
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
#: a run directory's seed mark, as ``qata_mini.py`` names its runs (``@s<seed>``, absent for seed 0)
_SEED_MARK = re.compile(r"@s\d+(?=@|$)")


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


def group_name(run: str) -> str:
    """The run's name without its seed mark: the runs that differ only in their seed share it."""
    return _SEED_MARK.sub("", run)


def decide(runs: dict[str, dict]) -> dict[str, Any]:
    """The per-image Dice gain of flip TTA on valid over the runs, and whether it beats the spread."""
    plain = [r["valid"]["none"]["dice"] for r in runs.values()]
    gains = [r["valid"]["flip"]["dice"] - r["valid"]["none"]["dice"] for r in runs.values()]
    gain, spread = mean_sd(gains), mean_sd(plain)
    beats = (len(gains) > 1 and gain["mean"] > 0 and gain["mean"] > gain["sd"] and gain["mean"] > spread["sd"])
    test_gains = {m: mean_sd([r["test"]["flip"][m] - r["test"]["none"][m] for r in runs.values()])
                  for m in METRICS}
    return {"runs": list(runs), "valid_gain": gain, "valid_plain": spread, "beats_spread": beats,
            "test_gain": test_gains}


def decide_groups(runs: dict[str, dict]) -> dict[str, dict[str, Any]]:
    """:func:`decide` for each group of runs (:func:`group_name`), in the order the groups first appear."""
    groups: dict[str, dict[str, dict]] = {}
    for name, scores in runs.items():
        groups.setdefault(group_name(name), {})[name] = scores
    return {group: decide(members) for group, members in groups.items()}


def _verdict(group: str, d: dict[str, Any]) -> str:
    g, p = d["valid_gain"], d["valid_plain"]
    sd = (lambda x: "n/a" if x is None else f"{100 * x:.2f}")
    verdict = ("the gain exceeds both spreads: a measured improvement" if d["beats_spread"] else
               "the gain does not exceed the spread: within noise")
    return (f"- `{group}` ({len(d['runs'])} runs): valid per-image Dice gain {100 * g['mean']:+.2f} points (sd over "
            f"runs {sd(g['sd'])}; seed-to-seed sd of the plain valid Dice {sd(p['sd'])}); test gain per-image "
            f"{100 * d['test_gain']['dice']['mean']:+.2f}, pooled {100 * d['test_gain']['pooled_dice']['mean']:+.2f} "
            f"points. Verdict: {verdict}.")


def to_markdown(report: dict) -> str:
    runs = report["runs"]
    lines = ["# Flip test-time augmentation on qata-mini", "",
             "Written by `benchmarks/tta_lever.py`. Each row is one trained `tgcnet-cpu` run (one seed), evaluated "
             "plainly and with `--tta flip` (the mirrored image with 'left' and 'right' swapped in its caption, "
             "logits averaged), on the commit, date and machine it names. Runs that differ only in their seed form "
             f"a group, decided on its own. The decision uses valid only; test is shown, not used. Data: "
             f"{report['data']}.", "",
             "| run | valid Dice | valid Dice, flip TTA | gain | test Dice | test Dice, flip TTA | "
             "test pooled | test pooled, flip TTA | scored |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in runs.items():
        v, t = r["valid"], r["test"]
        lines.append(f"| {name} | {v['none']['dice']:.4f} | {v['flip']['dice']:.4f} | "
                     f"{100 * (v['flip']['dice'] - v['none']['dice']):+.2f} | {t['none']['dice']:.4f} | "
                     f"{t['flip']['dice']:.4f} | {t['none']['pooled_dice']:.4f} | {t['flip']['pooled_dice']:.4f} | "
                     f"{r['commit']}, {r['date']}, {r['machine']} |")
    lines += ["", "## Verdicts", ""] + [_verdict(group, d) for group, d in report["decisions"].items()]
    lines += ["", "Flip TTA stays opt-in (`--tta flip`) whatever the verdict: it doubles inference time."]
    return "\n".join(lines) + "\n"


def _previous_runs(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    return json.loads(path.read_text())["runs"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", type=Path, nargs="+", help="TGCNet run directories (one per seed)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--merge", action="store_true",
                   help="add the runs to the tta_lever.json already in --out instead of starting a new report")
    args = p.parse_args(argv)
    missing = [str(r) for r in args.runs if not (r / "train_config.json").is_file()]
    if missing:
        print(f"not run directories (no train_config.json): {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    stamp = {"commit": source_commit(REPO), "date": time.strftime("%Y-%m-%d %H:%M"),
             "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} thread(s), "
                        f"torch {torch.__version__}"}
    runs = _previous_runs(args.out / "tta_lever.json") if args.merge else {}
    runs.update({run.name: {**score_run(run, args.data), **stamp} for run in args.runs})
    report = {"data": str(args.data), "runs": runs, "decisions": decide_groups(runs)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tta_lever.json").write_text(json.dumps(report, indent=2) + "\n")
    md = to_markdown(report)
    (args.out / "tta_lever.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
