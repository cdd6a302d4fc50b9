"""Flip test-time augmentation as an accuracy lever, measured on trained qata-mini runs.

    python benchmarks/tta_lever.py RUN_DIR [RUN_DIR ...] [--data ../shared/data/qata-mini]
                                   [--out benchmarks/results] [--merge]

Each run directory (a TGCNet trained by ``benchmarks/qata_mini.py`` or ``tgcnet train``, one per
seed) is evaluated on ``valid`` and ``test`` twice: plainly and with ``tta="flip"`` (the mirrored
image read with "left" and "right" swapped in its caption, logits averaged: :mod:`tgcnet.tta`).
Runs that differ only in their seed form a group (:mod:`inference_levers`), decided on ``valid``
only: flip TTA counts as a gain when its mean per-image Dice gain over the group's runs exceeds both
the spread of that gain (sd over runs) and the seed-to-seed sd of the plain validation Dice. Test is
reported beside it, and was not used to decide.

Writes ``tta_lever.json`` and ``tta_lever.md`` to ``--out`` (``--merge``: added to the report there).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference_levers import beats_spread, group_runs, lever_main, verdict_line  # noqa: E402
from qata_report import mean_sd  # noqa: E402

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
    plain = mean_sd([r["valid"]["none"]["dice"] for r in runs.values()])
    gain = mean_sd([r["valid"]["flip"]["dice"] - r["valid"]["none"]["dice"] for r in runs.values()])
    test_gains = {m: mean_sd([r["test"]["flip"][m] - r["test"]["none"][m] for r in runs.values()])
                  for m in METRICS}
    return {"runs": list(runs), "valid_gain": gain, "valid_plain": plain, "beats_spread": beats_spread(gain, plain),
            "test_gain": test_gains}


def decide_groups(runs: dict[str, dict]) -> dict[str, dict[str, Any]]:
    """:func:`decide` for each group of runs that differ only in their seed."""
    return {group: decide(members) for group, members in group_runs(runs).items()}


def to_markdown(report: dict) -> str:
    lines = ["# Flip test-time augmentation on qata-mini", "",
             "Written by `benchmarks/tta_lever.py`. Each row is one trained `tgcnet-cpu` run (one seed), evaluated "
             "plainly and with `--tta flip` (the mirrored image with 'left' and 'right' swapped in its caption, "
             "logits averaged), on the commit, date and machine it names. Runs that differ only in their seed form "
             f"a group, decided on its own. The decision uses valid only; test is shown, not used. Data: "
             f"{report['data']}.", "",
             "| run | valid Dice | valid Dice, flip TTA | gain | test Dice | test Dice, flip TTA | "
             "test pooled | test pooled, flip TTA | scored |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in report["runs"].items():
        v, t = r["valid"], r["test"]
        lines.append(f"| {name} | {v['none']['dice']:.4f} | {v['flip']['dice']:.4f} | "
                     f"{100 * (v['flip']['dice'] - v['none']['dice']):+.2f} | {t['none']['dice']:.4f} | "
                     f"{t['flip']['dice']:.4f} | {t['none']['pooled_dice']:.4f} | {t['flip']['pooled_dice']:.4f} | "
                     f"{r['commit']}, {r['date']}, {r['machine']} |")
    lines += ["", "## Verdicts", ""] + [verdict_line(f"`{group}`", d, "valid per-image Dice gain")
                                        for group, d in report["decisions"].items()]
    lines += ["", "Flip TTA stays opt-in (`--tta flip`) whatever the verdict: it doubles inference time."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return lever_main(argv, doc=__doc__, name="tta_lever", score_run=score_run, decide_groups=decide_groups,
                      to_markdown=to_markdown)


if __name__ == "__main__":
    sys.exit(main())
