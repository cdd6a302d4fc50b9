"""Flip test-time augmentation as an accuracy lever, measured on trained qata-mini runs.

    python -m benchmarks.accuracy.tta_lever RUN_DIR [RUN_DIR ...] [--data ../shared/data/qata-mini]
                                            [--out benchmarks/results] [--merge]
    python -m benchmarks.accuracy.tta_lever --report benchmarks/results/tta_lever.json

Each run directory (a TGCNet trained by ``benchmarks.accuracy.qata_mini`` or ``tgcnet train``, one
per seed) is evaluated on ``valid`` and ``test`` twice: plainly and with ``tta="flip"`` (the
mirrored image read with "left" and "right" swapped in its caption, logits averaged:
:mod:`tgcnet.tta`). Runs that differ only in their seed form a group (:mod:`.inference_levers`),
decided on ``valid`` only by the accuracy benchmarks' one rule: flip TTA is "better" where the
range of its validation Dice over the group's runs lies wholly above the range of the plain
validation Dice (:func:`~benchmarks.accuracy.spread.verdict`). Test is reported beside it, and
was not used to decide.

Writes ``tta_lever.json`` and ``tta_lever.md`` to ``--out`` (``--merge``: added to the report there).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .inference_levers import decision, group_runs, lever_main, verdict_line
from .spread import RULE

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
    """Flip TTA's valid per-image Dice against the plain one over the runs, and the test gains beside it."""
    return decision(list(runs), [r["valid"]["none"]["dice"] for r in runs.values()],
                    [r["valid"]["flip"]["dice"] for r in runs.values()],
                    {m: [r["test"]["flip"][m] - r["test"]["none"][m] for r in runs.values()] for m in METRICS})


def decide_groups(runs: dict[str, dict]) -> dict[str, dict[str, Any]]:
    """:func:`decide` for each group of runs that differ only in their seed."""
    return {group: decide(members) for group, members in group_runs(runs).items()}


def to_markdown(report: dict) -> str:
    lines = ["# Flip test-time augmentation on qata-mini", "",
             "Written by `python -m benchmarks.accuracy.tta_lever`. Each row is one trained `tgcnet-cpu` run (one "
             "seed), evaluated plainly and with `--tta flip` (the mirrored image with 'left' and 'right' swapped in "
             "its caption, logits averaged), on the commit, date and machine it names. Runs that differ only in "
             f"their seed form a group, decided on its own: {RULE}, the rows being the runs' valid Dice plain and "
             f"with flip TTA. The decision uses valid only; test is shown, not used. Data: {report['data']}.", "",
             "| run | valid Dice | valid Dice, flip TTA | gain | test Dice | test Dice, flip TTA | "
             "test pooled | test pooled, flip TTA | scored |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in report["runs"].items():
        v, t = r["valid"], r["test"]
        lines.append(f"| {name} | {v['none']['dice']:.4f} | {v['flip']['dice']:.4f} | "
                     f"{100 * (v['flip']['dice'] - v['none']['dice']):+.2f} | {t['none']['dice']:.4f} | "
                     f"{t['flip']['dice']:.4f} | {t['none']['pooled_dice']:.4f} | {t['flip']['pooled_dice']:.4f} | "
                     f"{r['commit']}, {r['date']}, {r['machine']} |")
    lines += ["", "## Verdicts", ""] + [verdict_line(f"`{group}`", d, "valid per-image Dice gain", "with flip TTA")
                                        for group, d in decide_groups(report["runs"]).items()]
    lines += ["", "Flip TTA stays opt-in (`--tta flip`) whatever the verdict: it doubles inference time."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return lever_main(argv, doc=__doc__, name="tta_lever", score_run=score_run, to_markdown=to_markdown)


if __name__ == "__main__":
    sys.exit(main())
