"""What the inference-side lever benchmarks share (``tta_lever.py``, ``threshold_lever.py``).

Each scores trained qata-mini run directories, one per seed, groups them by their name less its
seed mark (``tgcnet_deepsup@s1`` belongs to ``tgcnet_deepsup``, as in ``qata_mini.py``'s result
keys), decides each group on ``valid`` alone with one rule (:func:`beats_spread`) and writes a JSON
report and its markdown; ``--merge`` adds runs to the report already there, each run keeping the
commit, date and machine it was scored with.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from qata_report import source_commit
from qata_runs import seed_group

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "qata-mini"


def group_name(run: str) -> str:
    """The run's name without its seed mark (``@s<seed>``, as ``qata_mini.py`` names its run
    directories): the runs that differ only in their seed share it."""
    return seed_group(run)


def group_runs(runs: dict[str, dict]) -> dict[str, dict[str, dict]]:
    """{group: {run: scores}}, the groups (:func:`group_name`) in the order they first appear."""
    groups: dict[str, dict[str, dict]] = {}
    for name, scores in runs.items():
        groups.setdefault(group_name(name), {})[name] = scores
    return groups


def beats_spread(gain: dict[str, Any], plain: dict[str, Any]) -> bool:
    """Whether a lever's mean gain over runs (``qata_report.mean_sd`` of the gains) is positive and
    exceeds both its own sd and the seed-to-seed sd of the plain score; never for a single run."""
    return (gain["sd"] is not None and gain["mean"] > 0 and gain["mean"] > gain["sd"]
            and gain["mean"] > plain["sd"])


def verdict_line(label: str, decision: dict[str, Any], gain_name: str) -> str:
    """One group's verdict for the markdown: its valid gain (``gain_name``) against both spreads, and test.

    ``decision`` holds ``runs``, ``valid_gain`` and ``valid_plain`` (``mean_sd`` of the gains and of the
    plain valid Dice), ``test_gain`` (``mean_sd`` per ``dice``/``pooled_dice``) and ``beats_spread``."""
    g, p, test = decision["valid_gain"], decision["valid_plain"], decision["test_gain"]
    sd = (lambda x: "n/a" if x is None else f"{100 * x:.2f}")
    verdict = ("the gain exceeds both spreads: a measured improvement" if decision["beats_spread"] else
               "the gain does not exceed the spread: within noise")
    return (f"- {label} ({len(decision['runs'])} runs): {gain_name} {100 * g['mean']:+.2f} points (sd over runs "
            f"{sd(g['sd'])}; seed-to-seed sd of the plain valid Dice {sd(p['sd'])}); test gain per-image "
            f"{100 * test['dice']['mean']:+.2f}, pooled {100 * test['pooled_dice']['mean']:+.2f} points. "
            f"Verdict: {verdict}.")


def run_stamp() -> dict[str, str]:
    """Where and when a run was scored: commit, date and machine."""
    return {"commit": source_commit(REPO), "date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} thread(s), "
                       f"torch {torch.__version__}"}


def lever_main(argv: list[str] | None, *, doc: str, name: str, score_run: Callable[[Path, Path], dict],
               decide_groups: Callable[[dict], dict], to_markdown: Callable[[dict], str],
               extra: dict[str, Any] | None = None) -> int:
    """The command line of a lever benchmark: score the run directories, decide, write ``name``.json/.md."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("runs", type=Path, nargs="+", help="TGCNet run directories (one per seed)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--merge", action="store_true",
                   help=f"add the runs to the {name}.json already in --out instead of starting a new report")
    args = p.parse_args(argv)
    missing = [str(r) for r in args.runs if not (r / "train_config.json").is_file()]
    if missing:
        print(f"not run directories (no train_config.json): {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    stamp, report_path = run_stamp(), args.out / f"{name}.json"
    runs = json.loads(report_path.read_text())["runs"] if args.merge and report_path.is_file() else {}
    runs.update({run.name: {**score_run(run, args.data), **stamp} for run in args.runs})
    report = {"data": str(args.data), **(extra or {}), "runs": runs, "decisions": decide_groups(runs)}
    args.out.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    md = to_markdown(report)
    (args.out / f"{name}.md").write_text(md)
    print(md)
    return 0
