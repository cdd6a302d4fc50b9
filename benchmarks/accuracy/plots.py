"""Figures of the qata-mini benchmark, drawn from one or more ``qata_mini.json`` reports.

    python -m benchmarks.accuracy.plots benchmarks/results/qata_mini.json runs/lane2/qata_mini.json --out benchmarks/results

Writes two PNG files (matplotlib, Agg backend) to ``--out``, and a third when the reports hold
scarce-mask results:

- ``qata_mini_data_efficiency.png``: test Dice, per-image and pooled (two panels), against the number
  of training images (``--train-subset`` runs, and the whole split), one line per run kind
  (``--kinds``, default tgcnet, notext, unet, clipseg): the mean over seeds, with the sample
  standard deviation as error bars where there are several seeds. Kinds trained with different
  budgets are drawn as separate lines (the budget in the label); when some results were trained on a
  subset, only their budgets are drawn.
- ``qata_mini_val_curves.png``: validation per-image Dice against training time for the main rows
  trained on the whole split, one line per result, from the ``val_curve`` each result records (per validated epoch: training
  seconds so far, validation Dice; results written before it was recorded have none and are left out).
- ``qata_mini_scarce_masks.png`` (only with results of ``qata_runs.SCARCE_RUNS``): test Dice, per-image
  and pooled, against the fraction of the training masks kept (25%, 50%, 100%): (a) the labelled part
  alone and (b) with the unlabelled images through both losses as lines ending at (c), ``tgcnet`` with
  every mask at the same budget; the single-loss rows as points; sd over seeds as error bars.

A result found in several reports (the same key, test Dice and training time: a lane report and a
merged report holding it) counts once. When ``--out`` holds a ``qata_mini.json``, its ``qata_mini.md``
is rewritten from it so that it links the figures.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from .qata_report import (DATA_EFFICIENCY_PNG, SCARCE_LABELS, SCARCE_MASKS_PNG, VAL_CURVES_PNG, plots_in, seed_of,
                          to_markdown)
from .qata_runs import RUNS, SCARCE_BASELINE, SCARCE_RUNS, RunSpec
from .spread import mean_sd

KINDS = ("tgcnet", "notext", "unet", "clipseg")
COLORS = {"tgcnet": "tab:red", "notext": "tab:gray", "unet": "tab:blue", "clipseg": "tab:green"}
STYLES = ("-", "--", ":", "-.")   # one per budget when a kind was trained with several
METRICS = (("dice", "per-image Dice"), ("pooled_dice", "pooled Dice"))


def load_rows(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """One row per result of the reports: key, kind, group, training images, seed, budget, test Dice, curve."""
    rows, seen = [], set()
    for path in paths:
        report = json.loads(Path(path).read_text())
        for key, res in report["results"].items():
            ident = (key, res["test"]["dice"], res["train_seconds"])
            if ident in seen:
                continue
            seen.add(ident)
            subset = res.get("setup", {}).get("train_subset")
            n = res.get("train_images") or (subset["n"] if subset else report["n_train"])
            spec = RunSpec.from_key(key)
            rows.append({"key": key, "kind": spec.name, "group": spec.run.group, "train_images": int(n),
                         "subset": spec.train_subset is not None,
                         "seed": seed_of(key, res), "budget_minutes": res["budget_minutes"],
                         "dice": res["test"]["dice"], "pooled_dice": res["test"]["pooled_dice"],
                         "val_curve": res.get("val_curve"), "source": str(path)})
    return rows


def efficiency_points(rows: list[dict], kinds: Sequence[str] = KINDS) -> dict[tuple[str, float], list[dict]]:
    """(kind, budget) -> points sorted by training images: ``n``, ``seeds`` and per metric the mean and
    sd (sample standard deviation; None for one seed). When some results were trained on a subset, only
    the budgets of those results are drawn: a whole-split run at another budget is no point of a curve."""
    cells: dict[tuple[str, float, int], list[dict]] = {}
    curve_budgets = {r["budget_minutes"] for r in rows if r["subset"]}
    for r in rows:
        if r["kind"] in kinds and (not curve_budgets or r["budget_minutes"] in curve_budgets):
            cells.setdefault((r["kind"], r["budget_minutes"], r["train_images"]), []).append(r)
    out: dict[tuple[str, float], list[dict]] = {}
    for (kind, minutes, n), members in sorted(cells.items(), key=lambda c: (list(kinds).index(c[0][0]), c[0][1:])):
        point: dict[str, Any] = {"n": n, "seeds": sorted(m["seed"] for m in members)}
        for metric, _ in METRICS:
            values = [m[metric] for m in members]
            point[metric] = mean_sd(values)
        out.setdefault((kind, minutes), []).append(point)
    return out


def _figure(ncols: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(1, ncols, figsize=(5.5 * ncols, 4.2), squeeze=False)


def _empty(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} in the given reports", ha="center", va="center", transform=ax.transAxes)


def plot_data_efficiency(rows: list[dict], path: Path, kinds: Sequence[str] = KINDS) -> Path:
    """Test Dice against the number of training images, per run kind (see the module docstring)."""
    plt, fig, axes = _figure(2)
    series = efficiency_points(rows, kinds)
    budgets = {minutes for _, minutes in series}
    ns = sorted({p["n"] for points in series.values() for p in points})
    for ax, (metric, label) in zip(axes[0], METRICS):
        for (kind, minutes), points in series.items():
            name = kind if len(budgets) == 1 else f"{kind} ({minutes:g} min)"
            sds = [p[metric]["sd"] for p in points]
            ax.errorbar([p["n"] for p in points], [p[metric]["mean"] for p in points],
                        yerr=None if all(sd is None for sd in sds) else [sd or 0.0 for sd in sds],
                        marker="o", capsize=3, color=COLORS.get(kind), label=name,
                        linestyle=STYLES[sorted(budgets).index(minutes) % len(STYLES)])
        if not series:
            _empty(ax, "results of " + ", ".join(kinds))
        elif ns[-1] > 8 * ns[0]:
            ax.set_xscale("log")
        ax.set_xlabel("training images")
        ax.set_ylabel(f"test {label}")
        ax.grid(alpha=0.3)
        if series:
            ax.legend()
    budget = f" ({', '.join(f'{m:g}' for m in sorted(budgets))} min training)" if budgets else ""
    fig.suptitle(f"qata-mini: test Dice against training-set size{budget}; error bars: sd over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def val_curve_rows(rows: list[dict], kinds: Sequence[str] = KINDS) -> list[dict]:
    """The rows the validation-curve figure draws: the main models (``kinds``; tgcnet's levers have their
    own table) on the whole split, where they record a curve."""
    return [r for r in rows if r["kind"] in kinds and r["val_curve"] and not r["subset"]]


def plot_val_curves(rows: list[dict], path: Path) -> Path:
    """Validation per-image Dice against training time for :func:`val_curve_rows`."""
    plt, fig, axes = _figure(1)
    ax = axes[0][0]
    curves = val_curve_rows(rows)
    labelled: set[str] = set()
    for r in curves:
        seconds, dice = zip(*r["val_curve"])
        kind = r["kind"]
        ax.plot([s / 60 for s in seconds], dice, color=COLORS.get(kind), alpha=0.8, lw=1.2,
                label=None if kind in labelled else kind)
        labelled.add(kind)
    if curves:
        ax.legend()
    else:
        _empty(ax, "main results with a val_curve")
    ax.set_xlabel("training time (min)")
    ax.set_ylabel("validation per-image Dice")
    ax.grid(alpha=0.3)
    ax.set_title(f"qata-mini: validation Dice during training ({len(curves)} runs)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


#: how the scarce-mask figure draws each row: colour, marker, x offset (in fraction units, so error bars at one
#: fraction do not hide each other) and whether it is a line through the fractions, ending at (c)
SCARCE_STYLE = {"alone": ("tab:gray", "o", -0.012, True), "both": ("tab:red", "o", 0.012, True),
                "pseudo": ("tab:purple", "^", 0.032, False), "language": ("tab:green", "s", 0.050, False),
                "count": ("tab:olive", "v", 0.068, False),
                "full": ("black", "D", 0.0, False)}


def scarce_points(rows: list[dict]) -> dict[str, Any] | None:
    """What the scarce-mask figure draws (None: no scarce-mask result): the budget (the one with the most
    scarce-mask results on the whole split), and per row of :data:`~.qata_runs.SCARCE_VARIANTS` (and
    ``full``: :data:`~.qata_runs.SCARCE_BASELINE` on the whole split at that budget, every mask) its points
    sorted by labelled fraction: ``fraction``, ``seeds`` and per metric the mean and sd over seeds."""
    whole = [r for r in rows if not r["subset"]]
    scarce = [r for r in whole if r["kind"] in SCARCE_RUNS]
    if not scarce:
        return None
    budgets = [r["budget_minutes"] for r in scarce]
    budget = max(set(budgets), key=lambda m: (budgets.count(m), m))
    cells: dict[tuple[str, float], list[dict]] = {}
    for r in whole:
        if r["budget_minutes"] != budget:
            continue
        if r["kind"] in SCARCE_RUNS:
            fraction, variant = SCARCE_RUNS[r["kind"]]
            cells.setdefault((variant, fraction), []).append(r)
        elif r["kind"] == SCARCE_BASELINE:
            cells.setdefault(("full", 1.0), []).append(r)
    series: dict[str, list[dict]] = {}
    for (variant, fraction), members in sorted(cells.items(), key=lambda c: c[0][1]):
        point: dict[str, Any] = {"fraction": fraction, "seeds": sorted(m["seed"] for m in members)}
        for metric, _ in METRICS:
            point[metric] = mean_sd([m[metric] for m in members])
        series.setdefault(variant, []).append(point)
    return {"budget_minutes": budget, "series": {v: series[v] for v in SCARCE_STYLE if v in series}}


def plot_scarce_masks(rows: list[dict], path: Path) -> Path | None:
    """Test Dice against the fraction of training masks kept: (a) and (b) as lines through their fractions
    to (c) at 100% (every mask, where neither has an unlabelled image left), the single-loss rows as points,
    the sd over seeds as error bars. Nothing is written without scarce-mask results (returns None)."""
    points = scarce_points(rows)
    if points is None:
        return None
    plt, fig, axes = _figure(2)
    series = points["series"]
    full = series.get("full", [])
    for ax, (metric, label) in zip(axes[0], METRICS):
        for variant, members in series.items():
            color, marker, offset, line = SCARCE_STYLE[variant]
            drawn = members + (full if line else [])
            sds = [p[metric]["sd"] for p in drawn]
            counts = sorted({len(p["seeds"]) for p in members})
            seeds = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
            ax.errorbar([p["fraction"] + (offset if p in members else 0.0) for p in drawn],
                        [p[metric]["mean"] for p in drawn],
                        yerr=None if all(sd is None for sd in sds) else [sd or 0.0 for sd in sds],
                        marker=marker, capsize=3, color=color, linestyle="-" if line else "none",
                        label=f"{SCARCE_LABELS[variant]} ({seeds} seeds)")
        if full:
            ax.axhline(full[0][metric]["mean"], color="black", linestyle=":", lw=0.8)
        ax.set_xticks([0.25, 0.5, 0.75, 1.0], ["25%", "50%", "75%", "100%"])
        ax.set_xlim(0.15, 1.08)
        ax.set_xlabel("fraction of the training masks kept (the rest train without a mask)")
        ax.set_ylabel(f"test {label}")
        ax.grid(alpha=0.3)
    # one legend under both panels: inside either it covers the points at 25%
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(f"qata-mini, scarce masks ({points['budget_minutes']:g} min training); error bars: sd over seeds")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reports", type=Path, nargs="+", metavar="JSON", help="qata_mini.json files")
    p.add_argument("--out", type=Path, required=True, help="folder for the PNG files")
    p.add_argument("--kinds", default=",".join(KINDS), help="runs of the data-efficiency figure (default %(default)s)")
    args = p.parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(RUNS))
    if unknown:
        print(f"unknown run kind(s) {unknown}; choose from {', '.join(RUNS)}", file=sys.stderr)
        return 2
    rows = load_rows(args.reports)
    args.out.mkdir(parents=True, exist_ok=True)
    for path in (plot_data_efficiency(rows, args.out / DATA_EFFICIENCY_PNG, kinds),
                 plot_val_curves(rows, args.out / VAL_CURVES_PNG),
                 plot_scarce_masks(rows, args.out / SCARCE_MASKS_PNG)):
        if path is not None:
            print(f"wrote {path}")
    report = args.out / "qata_mini.json"
    if report.is_file():
        (args.out / "qata_mini.md").write_text(to_markdown(json.loads(report.read_text()), plots_in(args.out)))
        print(f"rewrote {args.out / 'qata_mini.md'} with links to the figures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
