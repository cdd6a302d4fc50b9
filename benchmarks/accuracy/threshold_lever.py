"""The mask threshold, chosen on validation, as an accuracy lever measured on trained qata-mini runs.

    python -m benchmarks.accuracy.threshold_lever RUN_DIR [RUN_DIR ...] [--data ../shared/data/qata-mini]
                                                  [--out benchmarks/results] [--merge]
    python -m benchmarks.accuracy.threshold_lever --report benchmarks/results/threshold_lever.json

A model trained with Dice + BCE is thresholded at 0.5 by default, but per-image Dice can gain from
a lower cut, which keeps the faint small lesions a 0.5 cut drops. For each run directory and each
test-time augmentation (none, flip), the probabilities of ``valid`` are cut at every threshold of
:data:`THRESHOLDS` and the one with the best mean per-image Dice is chosen; ``test`` is then scored
at 0.5 and at the chosen threshold.

Choosing on valid and reporting valid's gain would flatter the lever, so its valid gain is
cross-validated: the valid images, in file order, are dealt alternately into two halves, each scored at
the threshold chosen on the other half, and the gain is the mean per-image Dice over both halves
less that at 0.5. Runs are grouped by their name less its seed mark (:mod:`.inference_levers`) and a
group is decided by the accuracy benchmarks' one rule (:func:`~benchmarks.accuracy.spread.verdict`):
the chosen threshold is "better" where the range of the cross-validated valid Dice over the group's
runs lies wholly above the range of the valid Dice at 0.5. Test is reported beside it, and was not
used to decide.

The logits are evaluate's own: the batches :func:`tgcnet.engine.evaluation.evaluation_loader` gives
and :func:`tgcnet.engine.inference.batch_logits` computes, cut at every threshold at once.

Writes ``threshold_lever.json`` and ``threshold_lever.md`` to ``--out``; ``--merge`` adds to the
report already there, each run keeping the commit, date and machine it was scored with.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from .inference_levers import decision, group_runs, lever_main, verdict_line
from .spread import RULE

#: the thresholds tried on valid (0.5 among them, so the choice can keep the default)
THRESHOLDS: tuple[float, ...] = tuple(round(0.2 + 0.05 * i, 2) for i in range(11))
DEFAULT_THRESHOLD = 0.5
TTAS = ("none", "flip")


def split_counts(model: torch.nn.Module, info: dict[str, Any], data: Path, split: str,
                 tta: str) -> dict[float, torch.Tensor]:
    """{threshold: (N, 3) int64 per-image TP, FP, FN} over ``split``: the logits ``evaluate`` scores,
    computed once per batch and cut at every threshold."""
    from tgcnet.engine.evaluation import evaluation_loader
    from tgcnet.engine.inference import batch_logits
    from tgcnet.engine.metrics import confusion_counts

    counts: dict[float, list[torch.Tensor]] = {t: [] for t in THRESHOLDS}
    device = next(model.parameters()).device
    for batch in batch_logits(model, evaluation_loader(model, info, data, split), device, tta=tta):
        for t in THRESHOLDS:
            counts[t].append(torch.stack(confusion_counts(batch.logits, batch.masks, t), dim=1).cpu())
    return {t: torch.cat(rows) for t, rows in counts.items()}


def scores(counts: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Per-image Dice (N,) and pooled Dice of (N, 3) TP, FP, FN counts."""
    from tgcnet.engine.metrics import dice_iou_from_counts

    per_image = dice_iou_from_counts(counts[:, 0], counts[:, 1], counts[:, 2])[0]
    pooled = dice_iou_from_counts(*counts.sum(0))[0]
    return per_image, float(pooled)


def _summary(counts: torch.Tensor) -> dict[str, float]:
    per_image, pooled = scores(counts)
    return {"dice": float(per_image.mean()), "pooled_dice": pooled}


def best_threshold(dice: dict[float, torch.Tensor], images: torch.Tensor) -> float:
    """The threshold with the best mean per-image Dice over ``images`` (indices); the lowest on a tie."""
    return max(THRESHOLDS, key=lambda t: (float(dice[t][images].mean()), -t))


def cross_validated_gain(dice: dict[float, torch.Tensor]) -> float:
    """Mean per-image Dice gain over 0.5 when each half of the images is cut at the other half's choice."""
    n = len(dice[DEFAULT_THRESHOLD])
    halves = (torch.arange(0, n, 2), torch.arange(1, n, 2))
    chosen = torch.empty(n, dtype=torch.float64)
    for scored, chooser in (halves, halves[::-1]):
        chosen[scored] = dice[best_threshold(dice, chooser)][scored]
    return float(chosen.mean() - dice[DEFAULT_THRESHOLD].mean())


def score_run(run_dir: Path, data: Path) -> dict[str, Any]:
    """{tta: {valid: {...}, test: {...}}}: the choice, its cross-validated valid gain, and test at both cuts."""
    from tgcnet.engine.loading import load_inference_model

    model, info = load_inference_model(run_dir, device="cpu")
    out: dict[str, Any] = {}
    for tta in TTAS:
        valid = {t: scores(c)[0] for t, c in split_counts(model, info, data, "valid", tta).items()}
        chosen = best_threshold(valid, torch.arange(len(valid[DEFAULT_THRESHOLD])))
        test = split_counts(model, info, data, "test", tta)
        out[tta] = {"valid": {"threshold": chosen, "dice": float(valid[DEFAULT_THRESHOLD].mean()),
                              "dice_at_threshold": float(valid[chosen].mean()),
                              "cv_gain": cross_validated_gain(valid)},
                    "test": {cut: _summary(test[t]) for cut, t in (("default", DEFAULT_THRESHOLD), ("chosen", chosen))}}
    return out


def decide(runs: dict[str, dict], tta: str) -> dict[str, Any]:
    """The cross-validated valid Dice of the chosen threshold against the valid Dice at 0.5 over the runs,
    and the test gains beside it."""
    plain = [r[tta]["valid"]["dice"] for r in runs.values()]
    chosen = [r[tta]["valid"]["dice"] + r[tta]["valid"]["cv_gain"] for r in runs.values()]
    return decision(list(runs), plain, chosen,
                    {m: [r[tta]["test"]["chosen"][m] - r[tta]["test"]["default"][m] for r in runs.values()]
                     for m in ("dice", "pooled_dice")})


def decide_groups(runs: dict[str, dict]) -> dict[str, dict[str, Any]]:
    """{group: {tta: :func:`decide`}} for each group of runs that differ only in their seed."""
    return {group: {tta: decide(members, tta) for tta in TTAS} for group, members in group_runs(runs).items()}


def to_markdown(report: dict) -> str:
    grid = ", ".join(f"{t:g}" for t in THRESHOLDS)
    lines = ["# The mask threshold chosen on validation, on qata-mini", "",
             "Written by `python -m benchmarks.accuracy.threshold_lever`. Each trained `tgcnet-cpu` run (one seed) "
             "is thresholded "
             f"at each of {grid} on valid, plainly and with `--tta flip`; the threshold with the best mean per-image "
             "Dice is chosen and test is scored at 0.5 and at that threshold. The valid gain is cross-validated "
             "(each half of valid scored at the other half's choice). Runs that differ only in their seed form a "
             f"group, decided on valid alone: {RULE}, the rows being the runs' valid Dice at 0.5 and their "
             f"cross-validated valid Dice at the choice. Test is shown, not used. Data: {report['data']}.", "",
             "| run | TTA | chosen threshold | valid Dice at 0.5 | valid Dice at choice | cross-validated gain | "
             "test Dice at 0.5 | test Dice at choice | test pooled at 0.5 | test pooled at choice | scored |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in report["runs"].items():
        for tta in TTAS:
            v, t = r[tta]["valid"], r[tta]["test"]
            lines.append(f"| {name} | {tta} | {v['threshold']:g} | {v['dice']:.4f} | {v['dice_at_threshold']:.4f} | "
                         f"{100 * v['cv_gain']:+.2f} | {t['default']['dice']:.4f} | {t['chosen']['dice']:.4f} | "
                         f"{t['default']['pooled_dice']:.4f} | {t['chosen']['pooled_dice']:.4f} | "
                         f"{r['commit']}, {r['date']}, {r['machine']} |")
    lines += ["", "## Verdicts", ""] + [verdict_line(f"`{group}`, TTA {tta}", d[tta], "cross-validated valid gain",
                                                     "at the cross-validated choice")
                                        for group, d in decide_groups(report["runs"]).items() for tta in TTAS]
    lines += ["", "A model's threshold is set with `--threshold` at training (selection) or at evaluation and "
              "prediction; 0.5 stays the default."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return lever_main(argv, doc=__doc__, name="threshold_lever", score_run=score_run, to_markdown=to_markdown,
                      extra={"thresholds": list(THRESHOLDS)})


if __name__ == "__main__":
    sys.exit(main())
