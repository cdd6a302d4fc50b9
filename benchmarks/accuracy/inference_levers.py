"""What the inference-side lever benchmarks share (``tta_lever``, ``threshold_lever``).

Each scores trained qata-mini run directories, one per seed, groups them by their name less its
seed mark (``tgcnet_deepsup@s1`` belongs to ``tgcnet_deepsup``, as :class:`RunSpec` keys say),
decides each group on ``valid`` alone by the one rule of the accuracy benchmarks
(:func:`~benchmarks.accuracy.spread.verdict`: the ranges over the group's runs of the plain score
and of the score with the lever), and writes a JSON report and its markdown. The JSON holds the
scores only; the decisions are derived from them whenever the markdown is rendered. ``--merge``
adds runs to the report already there, each run keeping the commit, date and machine it was
scored with; ``--report`` renders a report's markdown again.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .. import QATA_MINI, RESULTS
from ..provenance import source_commit
from ..report_files import rerender, write_report
from .qata_runs import RunSpec
from .spread import mean_sd, verdict


def group_name(run: str) -> str:
    """The run's name without its seed mark: the runs that differ only in their seed share it. A name
    that is no result key (any ``tgcnet train`` run directory may be scored) is a group of its own."""
    try:
        return RunSpec.from_key(run, known=False).seed_group
    except ValueError:
        return run


def group_runs(runs: dict[str, dict]) -> dict[str, dict[str, dict]]:
    """{group: {run: scores}}, the groups (:func:`group_name`) in the order they first appear."""
    groups: dict[str, dict[str, dict]] = {}
    for name, scores in runs.items():
        groups.setdefault(group_name(name), {})[name] = scores
    return groups


def decision(runs: Sequence[str], plain: Sequence[float], lever: Sequence[float],
             test_gains: dict[str, Sequence[float]]) -> dict[str, Any]:
    """One group's decision from its runs' valid per-image Dice, plain and with the lever (in run
    order), and their test gains per metric: each as ``mean_sd``, and the :func:`verdict`."""
    return {"runs": list(runs), "valid_plain": mean_sd(plain), "valid_lever": mean_sd(lever),
            "valid_gain": mean_sd([b - a for a, b in zip(plain, lever)]),
            "test_gain": {metric: mean_sd(gains) for metric, gains in test_gains.items()},
            "verdict": verdict(lever, plain)}


def _range(stats: dict[str, Any]) -> str:
    return f"{min(stats['values']):.4f}-{max(stats['values']):.4f}"


def verdict_line(label: str, decided: dict[str, Any], gain_name: str, lever_name: str) -> str:
    """One group's verdict for the markdown: the valid gain (``gain_name``), the two ranges the verdict
    compares (plain, and ``lever_name``), and test beside them."""
    gain, test = decided["valid_gain"], decided["test_gain"]
    sd = "n/a" if gain["sd"] is None else f"{100 * gain['sd']:.2f}"
    return (f"- {label} ({len(decided['runs'])} runs): {gain_name} {100 * gain['mean']:+.2f} points (sd over runs "
            f"{sd}); valid Dice over the runs {_range(decided['valid_plain'])} plain, "
            f"{_range(decided['valid_lever'])} {lever_name}; test gain per-image "
            f"{100 * test['dice']['mean']:+.2f}, pooled {100 * test['pooled_dice']['mean']:+.2f} points. "
            f"Verdict: {decided['verdict']}.")


def run_stamp() -> dict[str, str]:
    """Where and when a run was scored: commit, date and machine."""
    return {"commit": source_commit(), "date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} thread(s), "
                       f"torch {torch.__version__}"}


def _parse(argv: list[str] | None, doc: str, name: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("runs", type=Path, nargs="*", help="TGCNet run directories (one per seed)")
    p.add_argument("--data", type=Path, default=QATA_MINI)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--merge", action="store_true",
                   help=f"add the runs to the {name}.json already in --out instead of starting a new report")
    p.add_argument("--report", type=Path, metavar="JSON",
                   help=f"score nothing: render this {name}.json's markdown again, into --out")
    args = p.parse_args(argv)
    if not args.runs and not args.report:
        p.error("give run directories to score, or --report JSON")
    return args


def lever_main(argv: list[str] | None, *, doc: str, name: str, score_run: Callable[[Path, Path], dict],
               to_markdown: Callable[[dict], str], extra: dict[str, Any] | None = None) -> int:
    """The command line of a lever benchmark: score the run directories, write ``name``.json/.md."""
    args = _parse(argv, doc, name)
    if args.report:
        print(rerender(args.report, args.out, name, "runs", to_markdown))
        return 0
    missing = [str(r) for r in args.runs if not (r / "train_config.json").is_file()]
    if missing:
        print(f"not run directories (no train_config.json): {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    stamp, report_path = run_stamp(), args.out / f"{name}.json"
    runs = json.loads(report_path.read_text())["runs"] if args.merge and report_path.is_file() else {}
    runs.update({run.name: {**score_run(run, args.data), **stamp} for run in args.runs})
    report = {"data": str(args.data), **(extra or {}), "runs": runs}
    md = to_markdown(report)
    write_report(args.out, name, report, md)
    print(md)
    return 0
