"""The qata-mini benchmark's targets and report: qata_mini.json and qata_mini.md, and ``--collect``.

Kept apart from the training code so a report can be rebuilt, or lanes merged, from JSON
alone (``python -m benchmarks.accuracy.qata_mini --collect A.json B.json``, or ``--report
qata_mini.json``), without the training code.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Sequence

from .. import report_files
from .qata_runs import (GUIDE, LEVER_BASELINE, LEVERS, NEUTRAL_CAPTION, OT, RUNS, SCARCE_BASELINE, SCARCE_RUNS,
                        SCARCE_TARGET_FRACTION, SCARCE_TARGET_SHARE, SCARCE_VARIANTS, TARGET_DICE, TARGET_MINUTES,
                        TARGET_NOISE_LOSS, TARGET_POOLED, TARGET_TEXT_GAIN, RunSpec)
from .spread import BETTER, RULE, mean_sd, verdict

#: the figures ``plots`` draws; a report links those present in its folder
DATA_EFFICIENCY_PNG = "qata_mini_data_efficiency.png"
VAL_CURVES_PNG = "qata_mini_val_curves.png"
SCARCE_MASKS_PNG = "qata_mini_scarce_masks.png"
PLOTS = {DATA_EFFICIENCY_PNG: "test Dice against the number of training images",
         VAL_CURVES_PNG: "validation Dice against training time, main rows",
         SCARCE_MASKS_PNG: "test Dice against the fraction of training masks kept, with and without the "
                           "unlabelled images"}


def run_name(key: str) -> str:
    """The run a result key belongs to (``tgcnet@s1`` -> ``tgcnet``)."""
    return RunSpec.from_key(key).name


def group_of(key: str) -> str:
    """The group (main, ablation, text_tower) of a result key."""
    return RunSpec.from_key(key).run.group


def targets(results: dict[str, dict]) -> list[dict[str, Any]]:
    out = []
    t, nt, un = (results.get(k, {}).get("test") for k in ("tgcnet", "notext", "unet"))
    if t and nt:
        gain = t["dice"] - nt["dice"]
        out.append({"target": f"(1) beats (2) by >= {100 * TARGET_TEXT_GAIN:.0f} Dice points",
                    "value": f"{100 * gain:+.1f} points", "met": gain >= TARGET_TEXT_GAIN})
    if t and un:
        out.append({"target": "(1) beats (3) (per-image Dice)", "value": f"{t['dice']:.4f} vs {un['dice']:.4f}",
                    "met": t["dice"] > un["dice"]})
    noise = results.get("tgcnet", {}).get("setup", {}).get("caption_noise")
    if noise:
        for key, label in (("dice", "per-image"), ("pooled_dice", "pooled")):
            loss = noise["clean"][key] - noise["noisy"][key]
            out.append({"target": f"(1) loses <= {100 * TARGET_NOISE_LOSS:.0f} {label} Dice point on noisy captions",
                        "value": f"{100 * loss:+.2f} points lost", "met": loss <= TARGET_NOISE_LOSS})
    if t:
        minutes = results["tgcnet"]["budget_minutes"]
        for key, goal, label in (("dice", TARGET_DICE, "per-image"), ("pooled_dice", TARGET_POOLED, "pooled")):
            out.append({"target": f"(1) {label} Dice >= {goal} within {TARGET_MINUTES:.0f} min",
                        "value": f"{t[key]:.4f} after {minutes:g} min", "met": t[key] >= goal,
                        "budget_ok": minutes >= TARGET_MINUTES})
    return out


def reasons(results: dict[str, dict], scored: list[dict], pretrained: str | None) -> list[str]:
    """What we know about why a target was missed; facts of this run, not guesses."""
    notes = []
    short = sorted({r["budget_minutes"] for k, r in results.items() if group_of(k) == "main"} - {TARGET_MINUTES})
    if any(m < TARGET_MINUTES for m in short):
        notes.append(f"Main runs with a {', '.join(f'{m:g}' for m in short)}-minute budget, not the "
                     f"{TARGET_MINUTES:.0f} minutes the targets state: those numbers check that the benchmark "
                     "works end to end, they do not measure the targets.")
    specs = [RunSpec.from_key(k) for k in results]
    if pretrained is None and any(s.run.knowledge != "none" or s.run.real_captions for s in specs
                                  if s.name not in ("unet", "clipseg") and s.run.group != "text_tower"):
        notes.append("The CLIP towers are randomly initialised: no CLIP weights can be downloaded here and none "
                     "were given (--pretrained). The frozen 'semantic' ViT features and the text tower are "
                     "therefore random projections; only the CNN branch, fusion, LoRA, VLCM and decoder learn. "
                     "The method's premise (a pretrained joint image-text space) is absent, which bounds both "
                     "the Dice and the value of the captions.")
    if any(run_name(k) == "clipseg" for k in results):
        notes.append("The `clipseg` row's CLIP towers are random init too (the preset's sizes, seeded as the "
                     "preset's towers are) and frozen, as CLIPSeg freezes its CLIP: only its decoder learns, from "
                     "random image and text features. It is CLIPSeg's design under the same handicap as the TGCNet "
                     "rows, not CLIPSeg as published (ViT-B/16 CLIP weights, 352 px).")
    if any(not t["met"] for t in scored) and "tgcnet" in results:
        t = results["tgcnet"]
        notes.append(f"TGCNet trained {t['steps']} steps ({t['epochs']} epochs) in {t['train_seconds'] / 60:.1f} min; "
                     f"best validation Dice {t['best_val_dice']:.4f} at epoch {t['best_epoch']}.")
    return notes


def _row(r: dict) -> str:
    t = r["test"]
    side = "n/a" if t.get("side_error") is None else f"{t['side_error']:.3f} (n={t['side_error_n']})"
    return (f"| {r['run']} | {t['dice']:.4f} | {t['iou']:.4f} | {t['pooled_dice']:.4f} | {t['pooled_iou']:.4f} | "
            f"{side} | {r['trainable_params']:,} | {r['total_params']:,} | {r['train_seconds'] / 60:.1f} min | "
            f"{r['epochs']} | {r['steps']} |")


HEADER = ["| run | per-image Dice | per-image IoU | pooled Dice | pooled IoU | side error | trainable | total | "
          "train time | epochs | steps |", "|---|---|---|---|---|---|---|---|---|---|---|"]
ABLATION_TEXT = {
    "base": "captions + knowledge bank, descriptions through the LoRA-tuned tower (as `tgcnet_lora`)",
    "noknow": "captions, knowledge bank off",
    "frozenknow": "descriptions encoded once by the frozen text tower (`date.knowledge_encoder='frozen'`; "
                  "the default now)",
    "ot": f"+ symmetric OT alignment loss and OT-weighted attention `{OT}`",
    "guide": f"+ guidance masks from location words, VLCM prior and loss `{GUIDE}`",
    "both": "+ OT and guidance"}


TEXT_TOWER_TEXT = {
    "minilm": "pretrained MiniLM text tower; real captions + knowledge bank (descriptions through the frozen "
              "tower, as shipped)",
    "minilm_noknow": "pretrained MiniLM text tower; real captions, knowledge bank off",
    "randbert": "the same MiniLM architecture at random init; real captions + knowledge bank",
    "randbert_noknow": "the same MiniLM architecture at random init; real captions, knowledge bank off"}
#: (run, reference, what the difference isolates)
TEXT_TOWER_PAIRS = (("minilm", "randbert", "pretraining, knowledge on"),
                    ("minilm_noknow", "randbert_noknow", "pretraining, knowledge off"),
                    ("minilm", "minilm_noknow", "knowledge, pretrained tower"),
                    ("randbert", "randbert_noknow", "knowledge, random-init tower"))


def _text_tower_section(results: dict[str, dict]) -> list[str]:
    runs = [r for k, r in results.items() if group_of(k) == "text_tower"]
    if not runs:
        return []
    minutes = sorted({r["budget_minutes"] for r in runs})
    lines = ["", f"## Pretrained text tower ({' / '.join(f'{m:g}' for m in minutes)} min training each)", "",
             "What a pretrained text tower, and the knowledge descriptions read through it, are worth. The text "
             "tower of `tgcnet-cpu` is replaced by the BERT encoder of sentence-transformers' all-MiniLM-L6-v2 "
             "(6 layers, hidden 384, uncased WordPiece tokenizer, mean pooling), pretrained or at random init; "
             "everything else is `tgcnet-cpu` and trains as this benchmark's other TGCNet runs do (same data, "
             "augmentation, loss, optimiser, schedule, checkpoint selection and wall-clock budget).", ""]
    lines += HEADER + [_row(r) for r in runs] + [""]
    lines += [f"- `{r['run']}`: {TEXT_TOWER_TEXT[run_name(r['run'])]}" for r in runs]
    pairs = [(run, ref, what) for run, ref, what in TEXT_TOWER_PAIRS if run in results and ref in results]
    lines += [""] if pairs else []
    for run, ref, what in pairs:
        a, b = results[run]["test"], results[ref]["test"]
        lines.append(f"- `{run}` vs `{ref}` ({what}): per-image Dice {100 * (a['dice'] - b['dice']):+.1f} "
                     f"points, pooled {100 * (a['pooled_dice'] - b['pooled_dice']):+.1f}")
    towers = [r["setup"]["text_tower"] for r in runs if "text_tower" in r["setup"]]
    notes = ["Single seed (seed 0) for each row. The seed-to-seed spread of these runs was not measured; "
             "differences smaller than that spread are not findings, and without it a gap of 1-2 Dice points "
             "between two rows here should be read as no measured difference.",
             "The image tower is the preset's random-init ViT (frozen) in all four rows: no pretrained image "
             "weights exist for this model here. Only the text tower changes between rows, so these rows measure "
             "the text side alone, not a pretrained CLIP's joint image-text space."]
    if towers:
        t = towers[0]
        notes.append(f"Parameters: the text tower has {t['params']:,} parameters; all are frozen except the "
                     f"LoRA adapters on its attention and MLP layers ({t['trainable']:,}), and both counts are in the "
                     "trainable and total columns. Between the tower and the joint space sits a linear projection "
                     "(hidden 384 to the preset's 64), newly initialised and frozen in all four rows: nothing "
                     "pretrained exists for it, so even the pretrained rows see MiniLM's sentence space through a "
                     "fixed random projection.")
    notes.append("Not directly comparable with the tables above: those use the preset's own 2-layer, width-64 "
                 "text transformer (random init). MiniLM (6 layers of width 384 against 2 of width 64) makes a step "
                 "slower, so the same wall-clock budget buys fewer steps (see the steps column).")
    where = sorted({r["setup"].get("finished", "") for r in runs} - {""})
    if where:
        notes.append("Finished " + "; ".join(where) + ".")
    return lines + ["", "Notes:", ""] + [f"- {n}" for n in notes]


CLIPSEG_TEXT = (" `clipseg` = transformers' CLIPSeg (rd64-refined decoder) on CLIP towers of tgcnet-cpu's sizes "
                "(random init, frozen), captions through the same open_clip tokenizer, only its decoder trained "
                "(benchmarks/accuracy/clipseg_model.py).")
SCARCE_TEXT = (" `semi25`, `semi50` and their `_alone`, `_pseudo`, `_language` and `_count` variants = `tgcnet` with 25% or "
               "50% of the training masks (see Training with scarce masks).")
MARKS_TEXT = (" `@n<N>`: trained on a fixed subset of N training images (the same images for every run at "
              "that N; its names are in the run's setup); `@m<M>`: trained for M minutes instead of its group's "
              "standard budget; `@s<seed>`: trained with that seed (no mark: seed 0).")


def result_order(key: str) -> tuple[int, float, float, int]:
    """Report order: the runs in :data:`RUNS` order, then by training subset (whole split first), then
    budget (the standard one first), then seed."""
    spec = RunSpec.from_key(key)
    return (list(RUNS).index(spec.name), -1 if spec.train_subset is None else spec.train_subset,
            spec.minutes or 0.0, spec.seed)


def seed_of(key: str, result: dict) -> int:
    return int(result.get("seed", RunSpec.from_key(key).seed))


def seed_groups(results: dict[str, dict]) -> list[dict[str, Any]]:
    """Results that differ only in their seed (same run, training subset and budget), in the order of ``results``.

    Each group: ``run`` (the key without seed), ``budget_minutes``, ``seeds`` and, per metric of
    :data:`SEED_METRICS`, ``values``, ``mean`` and ``sd`` (sample standard deviation; None for one seed).
    """
    groups: dict[tuple[str, float], list[str]] = {}
    for key in results:
        groups.setdefault((RunSpec.from_key(key).seed_group, results[key]["budget_minutes"]), []).append(key)
    out = []
    for (stem, minutes), keys in groups.items():
        g: dict[str, Any] = {"run": stem, "budget_minutes": minutes, "seeds": [seed_of(k, results[k]) for k in keys]}
        for metric, read in SEED_METRICS.items():
            g[metric] = mean_sd([read(results[k]) for k in keys])
        out.append(g)
    return out


#: what the seed table averages: the best validation per-image Dice (what selection and the levers
#: are judged on) and the test Dice, per image and pooled
SEED_METRICS: dict[str, Callable[[dict], float]] = {
    "val_dice": lambda r: r["best_val_dice"],
    "dice": lambda r: r["test"]["dice"],
    "pooled_dice": lambda r: r["test"]["pooled_dice"],
}


def _seeds_section(results: dict[str, dict]) -> list[str]:
    groups = [g for g in seed_groups(results) if len(set(g["seeds"])) > 1]
    if not groups:
        return []
    lines = ["", "## Mean ± sd over seeds", "",
             "Rows trained alike except for the seed (data order, augmentation and the trainable parts' init; "
             "the frozen CLIP init is fixed): mean ± sample standard deviation over the seeds, and the range.", "",
             "| run | budget | seeds | valid Dice | test Dice | test pooled Dice | test range | test pooled range |",
             "|---|---|---|---|---|---|---|---|"]
    for g in groups:
        d, p = g["dice"], g["pooled_dice"]
        lines.append(f"| {RunSpec.from_key(g['run']).without_budget} | {g['budget_minutes']:g} min | "
                     f"{', '.join(map(str, g['seeds']))} | "
                     f"{_pm(g['val_dice'])} | {_pm(d)} | {_pm(p)} | "
                     f"{min(d['values']):.4f}-{max(d['values']):.4f} | {min(p['values']):.4f}-{max(p['values']):.4f} |")
    lines += ["", "A difference between two rows is a finding only where their ranges over seeds do not "
              "overlap; single-seed rows elsewhere in this report carry no spread."]
    return lines


def _pm(stats: dict[str, Any]) -> str:
    return f"{stats['mean']:.4f} ± {stats['sd']:.4f}"


def lever_rows(results: dict[str, dict]) -> list[dict[str, Any]]:
    """Each lever of :data:`LEVERS` trained at several seeds, against :data:`LEVER_BASELINE` at the same
    training set and budget: per metric of :data:`SEED_METRICS` both rows' mean ± sd and the gain of the
    means, and the :func:`~benchmarks.accuracy.spread.verdict` of validation Dice alone (test is not
    looked at to choose)."""
    groups = {(g["run"], g["budget_minutes"]): g for g in seed_groups(results) if len(set(g["seeds"])) > 1}
    rows = []
    for (stem, minutes), lever in groups.items():
        name = run_name(stem)
        base = groups.get((dataclasses.replace(RunSpec.from_key(stem), name=LEVER_BASELINE).key, minutes))
        if name not in LEVERS or base is None:
            continue
        row: dict[str, Any] = {"run": stem, "baseline": base["run"], "budget_minutes": minutes,
                               "change": LEVERS[name], "seeds": lever["seeds"], "baseline_seeds": base["seeds"]}
        for metric in SEED_METRICS:
            row[metric] = {"lever": lever[metric], "baseline": base[metric],
                           "gain": lever[metric]["mean"] - base[metric]["mean"]}
        ours, theirs = lever["val_dice"]["values"], base["val_dice"]["values"]
        by_seed = dict(zip(base["seeds"], theirs))
        row["same_seed_val_gains"] = {seed: v - by_seed[seed] for seed, v in zip(lever["seeds"], ours) if seed in by_seed}
        row["verdict"] = verdict(ours, theirs)
        rows.append(row)
    return rows


def _levers_section(results: dict[str, dict]) -> list[str]:
    rows = lever_rows(results)
    if not rows:
        return []
    lines = ["", "## Accuracy levers", "",
             f"Each lever is `{LEVER_BASELINE}` with one change, trained alike over several seeds and compared with "
             f"`{LEVER_BASELINE}` at the same budget. The verdict reads validation Dice only: {RULE}. Gains are "
             "differences of the means, in Dice points; the same-seed gains pair each seed of the lever with the "
             "baseline's run at that seed (same data order and augmentation).", "",
             "| lever | change | budget | seeds | valid Dice | baseline valid Dice | valid gain | same-seed valid gains | "
             "test gain | test pooled gain | verdict |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        paired = ", ".join(f"{100 * g:+.2f}" for g in r["same_seed_val_gains"].values()) or "-"
        lines.append(f"| {RunSpec.from_key(r['run']).without_budget} | {r['change']} | {r['budget_minutes']:g} min | "
                     f"{', '.join(map(str, r['seeds']))} | {_pm(r['val_dice']['lever'])} | "
                     f"{_pm(r['val_dice']['baseline'])} | {100 * r['val_dice']['gain']:+.2f} | {paired} | "
                     f"{100 * r['dice']['gain']:+.2f} | {100 * r['pooled_dice']['gain']:+.2f} | {r['verdict']} |")
    return lines


def scarce_blocks(results: dict[str, dict]) -> list[dict[str, Any]]:
    """The scarce-mask runs (:data:`SCARCE_RUNS`, whole training split) by budget, with their row (c).

    One block per budget a scarce-mask run was trained for, in budget order: ``budget_minutes``,
    ``rows`` ((labelled fraction, variant) -> the :func:`seed_groups` group, fractions in order) and
    ``full``: :data:`SCARCE_BASELINE` on the whole split at the same budget (every mask; None when absent).
    """
    groups = [g for g in seed_groups(results) if RunSpec.from_key(g["run"]).train_subset is None]
    blocks = []
    for minutes in sorted({g["budget_minutes"] for g in groups if run_name(g["run"]) in SCARCE_RUNS}):
        at = [g for g in groups if g["budget_minutes"] == minutes]
        rows = {SCARCE_RUNS[run_name(g["run"])]: g for g in at if run_name(g["run"]) in SCARCE_RUNS}
        full = next((g for g in at if run_name(g["run"]) == SCARCE_BASELINE), None)
        order = sorted(rows, key=lambda k: (k[0], list(SCARCE_VARIANTS).index(k[1])))
        blocks.append({"budget_minutes": minutes, "full": full, "rows": {k: rows[k] for k in order}})
    return blocks


def _compare(ours: dict[str, Any], theirs: dict[str, Any], paired: bool) -> dict[str, Any]:
    """Two seed groups on validation Dice: the gain of the means, the same-seed gains (``paired``: both rows
    share the split and data order at a seed) and the :func:`~benchmarks.accuracy.spread.verdict`."""
    by_seed = dict(zip(theirs["seeds"], theirs["val_dice"]["values"]))
    same = ({seed: v - by_seed[seed] for seed, v in zip(ours["seeds"], ours["val_dice"]["values"]) if seed in by_seed}
            if paired else {})
    return {"gain": ours["val_dice"]["mean"] - theirs["val_dice"]["mean"], "same_seed": same,
            "verdict": verdict(ours["val_dice"]["values"], theirs["val_dice"]["values"])}


def scarce_comparisons(block: dict[str, Any]) -> list[dict[str, Any]]:
    """Validation comparisons of a :func:`scarce_blocks` block: at each fraction, every variant against (a),
    (c) against (a) (the gap to close) and (b) against (c); each with the share of the gap from (a) to (c)
    it closes (None where there is no gap)."""
    rows, full = block["rows"], block["full"]
    out = []
    for fraction in sorted({f for f, _ in rows}):
        alone, both = rows.get((fraction, "alone")), rows.get((fraction, "both"))
        gap = None if alone is None or full is None else full["val_dice"]["mean"] - alone["val_dice"]["mean"]
        pairs = [(v, "alone", rows[(fraction, v)], alone, True) for v in SCARCE_VARIANTS
                 if v != "alone" and (fraction, v) in rows and alone is not None]
        pairs += [("full", "alone", full, alone, False)] if full is not None and alone is not None else []
        pairs += [("both", "full", both, full, False)] if full is not None and both is not None else []
        for ours, theirs, a, b, paired in pairs:
            row = {"fraction": fraction, "ours": ours, "theirs": theirs, **_compare(a, b, paired)}
            row["gap_share"] = ((a["val_dice"]["mean"] - alone["val_dice"]["mean"]) / gap
                                if gap is not None and gap > 0 and theirs == "alone" and ours != "full" else None)
            out.append(row)
    return out


def scarce_target(block: dict[str, Any]) -> dict[str, Any] | None:
    """The scarce-mask target of a block, or None when (a), (b) or (c) at :data:`SCARCE_TARGET_FRACTION` is missing.

    At that fraction (b) "closes at least half the gap from (a) to (c) on validation, beyond the seed spread"
    when (1) its lowest seed's validation Dice is at or above the point :data:`SCARCE_TARGET_SHARE` of the way
    from (a)'s mean to (c)'s (the midpoint), and (2) its range over seeds lies above (a)'s
    (:func:`~benchmarks.accuracy.spread.verdict` "better"). With no gap ((a)'s mean at or above (c)'s) there
    is nothing to close: not met.
    """
    rows, full = block["rows"], block["full"]
    alone, both = rows.get((SCARCE_TARGET_FRACTION, "alone")), rows.get((SCARCE_TARGET_FRACTION, "both"))
    if alone is None or both is None or full is None:
        return None
    a, c = alone["val_dice"]["mean"], full["val_dice"]["mean"]
    low = min(both["val_dice"]["values"])
    out: dict[str, Any] = {"gap": c - a, "bar": a + SCARCE_TARGET_SHARE * (c - a), "lowest": low,
                           "verdict": verdict(both["val_dice"]["values"], alone["val_dice"]["values"]),
                           "share": None, "lowest_share": None}
    if c > a:
        out["share"], out["lowest_share"] = (both["val_dice"]["mean"] - a) / (c - a), (low - a) / (c - a)
    out["met"] = c > a and low >= out["bar"] and out["verdict"] == BETTER
    return out


#: how the scarce-mask section names a row: variant (or "full", row (c)) -> its label
SCARCE_LABELS = {**{v: variant.label for v, variant in SCARCE_VARIANTS.items()}, "full": "(c) all labelled"}


def _cell(stats: dict[str, Any] | None) -> str:
    """mean ± sd (n seeds); a single seed has no sd."""
    if stats is None:
        return "-"
    spread = f"{stats['mean']:.4f}" if stats["sd"] is None else _pm(stats)
    return f"{spread} (n={len(stats['values'])})"


def _percent(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def _scarce_section(results: dict[str, dict]) -> list[str]:
    blocks = scarce_blocks(results)
    if not blocks:
        return []
    budgets = " / ".join(f"{b['budget_minutes']:g}" for b in blocks)
    lines = ["", f"## Training with scarce masks ({budgets} min training each)", "",
             "What are the captions of unlabelled images worth? `tgcnet` trained with only a fraction of the training "
             "masks: `labelled_fraction` keeps the masks of a seeded, stratified fraction of the training images "
             "(a split per seed, shared by every row at that seed) and the rest train as images without a mask.", "",
             "- (a) `semiNN_alone`: the unlabelled images' losses switched off (`pseudo_label_weight=0`, "
             "`language_loss_weight=0`, `count_loss_weight=0`). The unlabelled images still pass through the model in the same batches, "
             "but their loss is zero and the model has no batch statistics (GroupNorm and LayerNorm only), so they "
             "change no gradient of the labelled images (checked: the same gradients, to float rounding, as the "
             "labelled rows of the batch alone). (a) is therefore the labelled images alone, trained in (b)'s data "
             "order and batches: each batch's mask loss averages over its labelled images (a fraction of the batch "
             "on average), and a batch without one still makes an optimizer step on a zero gradient (AdamW's "
             "momentum and weight decay move the weights a little). It is not a run on a smaller training set: an "
             "epoch has as many steps as with every mask.",
             f"- (b) `semiNN`: the unlabelled images through both losses, the mean teacher's pseudo-labels (weight "
             f"{SCARCE_VARIANTS['both'].pseudo_label_weight}, ramped in) and the caption-guided loss (weight "
             f"{SCARCE_VARIANTS['both'].language_loss_weight}: no lesion on the sides a caption does not name, "
             "some on those it names); `semiNN_pseudo` and `semiNN_language` keep one of the two. `semiNN_count` "
             f"adds the bound on the number of regions by the areas a caption counts (weight "
             f"{SCARCE_VARIANTS['count'].count_loss_weight}) to the language-guided loss alone.",
             f"- (c) `{SCARCE_BASELINE}` at the same budget: every mask (the lever baseline's seeds).",
             "- Every row trains for the same wall-clock budget; the teacher and the unlabelled losses cost time, so "
             "the rows with them make fewer steps (the steps column below).", ""]
    for block in blocks:
        rows, full = block["rows"], block["full"]
        if len(blocks) > 1:
            lines += [f"### {block['budget_minutes']:g} min", ""]
        lines += ["| fraction of train labelled | Dice | (a) labelled part alone | (b) + unlabelled through both "
                  "losses | (c) all labelled |", "|---|---|---|---|---|"]
        for fraction in sorted({f for f, _ in rows}):
            for metric, label in (("val_dice", "valid"), ("dice", "test per-image"), ("pooled_dice", "test pooled")):
                a, b = rows.get((fraction, "alone")), rows.get((fraction, "both"))
                lines.append(f"| {_percent(fraction)} | {label} | {_cell(a and a[metric])} | "
                             f"{_cell(b and b[metric])} | {_cell(full and full[metric])} |")
        lines += ["", "Every row, mean ± sd over seeds:", "",
                  "| run | labelled | row | seeds | valid Dice | test Dice | test pooled Dice | steps (mean) |",
                  "|---|---|---|---|---|---|---|---|"]
        listed = [(_percent(f), SCARCE_LABELS[v], g) for (f, v), g in rows.items()]
        listed += [("100%", SCARCE_LABELS["full"], full)] if full is not None else []
        for fraction, label, g in listed:
            steps = [r["steps"] for k, r in results.items() if RunSpec.from_key(k).seed_group == g["run"]
                     and r["budget_minutes"] == block["budget_minutes"]]
            lines.append(f"| {RunSpec.from_key(g['run']).without_budget} | {fraction} | {label} | "
                         f"{', '.join(map(str, g['seeds']))} | {_cell(g['val_dice'])} | {_cell(g['dice'])} | "
                         f"{_cell(g['pooled_dice'])} | {sum(steps) / len(steps):.0f} |")
        comparisons = scarce_comparisons(block)
        if comparisons:
            lines += ["", f"Validation gains (the decisions read validation Dice only; {RULE}; same-seed gains pair "
                      "rows that share the split and data order at a seed; gap closed: the gain as a share of (c)'s "
                      "mean less (a)'s):", "",
                      "| fraction | row | against | valid gain | same-seed valid gains | gap closed | verdict |",
                      "|---|---|---|---|---|---|---|"]
            for c in comparisons:
                paired = ", ".join(f"{100 * g:+.2f}" for g in c["same_seed"].values()) or "-"
                share = "-" if c["gap_share"] is None else f"{100 * c['gap_share']:.0f}%"
                lines.append(f"| {_percent(c['fraction'])} | {SCARCE_LABELS[c['ours']]} | {SCARCE_LABELS[c['theirs']]} "
                             f"| {100 * c['gain']:+.2f} | {paired} | {share} | {c['verdict']} |")
        target = scarce_target(block)
        lines += ["", f"Target: at {_percent(SCARCE_TARGET_FRACTION)} labelled, (b) closes at least "
                  f"{100 * SCARCE_TARGET_SHARE:.0f}% of the gap from (a) to (c) on validation, beyond the seed spread: "
                  f"(b)'s lowest seed at or above the point {100 * SCARCE_TARGET_SHARE:.0f}% of the way from (a)'s "
                  "mean validation Dice to (c)'s, and (b)'s range over seeds above (a)'s."]
        if target is None:
            lines.append(f"Not judged yet: (a), (b) and (c) at {_percent(SCARCE_TARGET_FRACTION)} are not all here.")
        elif target["gap"] <= 0:
            lines.append(f"**Missed: no gap to close.** (a)'s mean validation Dice is {100 * -target['gap']:.2f} "
                         "points at or above (c)'s.")
        else:
            lines.append(f"**{'Met' if target['met'] else 'Missed'}.** The gap from (a) to (c) is "
                         f"{100 * target['gap']:.2f} points; the bar is {target['bar']:.4f}; (b)'s lowest seed is "
                         f"{target['lowest']:.4f} ({100 * target['lowest_share']:.0f}% of the gap; the mean "
                         f"{100 * target['share']:.0f}%); (b) against (a): {target['verdict']}.")
    return lines


def _plots_section(plots: Sequence[str]) -> list[str]:
    if not plots:
        return []
    return ["", "## Plots", ""] + [f"- [{PLOTS[name]}]({name})" for name in plots] + \
        ["", "Drawn by `python -m benchmarks.accuracy.plots` from qata_mini.json reports (this one, and others "
              "when given)."]


def _caption_noise_section(results: dict[str, dict]) -> list[str]:
    scored = [k for k, r in results.items() if r.get("setup", {}).get("caption_noise")]
    if not scored:
        return []
    key = "tgcnet" if "tgcnet" in scored else scored[0]   # the standard-budget run when there is one
    noise = results[key]["setup"]["caption_noise"]
    lines = ["", "## Captions as users write them", "",
             f"The `{key}` model above, evaluated on the same test images with the captions rewritten as LViT's "
             f"verbatim QaTa text writes them ({noise['noise']}: capitalised, no final period, double spaces, "
             "'midlle', 'infection area(s)', 'all left lung'). It was trained on the cleaned captions only.", "",
             "| test captions | per-image Dice | pooled Dice | per-image change | pooled change |",
             "|---|---|---|---|---|"]
    clean = noise["clean"]
    for key, label in (("clean", "clean"), ("noisy", "noisy, normalised (the default)"),
                       ("noisy_unnormalized", "noisy, `normalize_captions=False`")):
        r = noise[key]
        lines.append(f"| {label} | {r['dice']:.4f} | {r['pooled_dice']:.4f} | "
                     f"{100 * (r['dice'] - clean['dice']):+.2f} | {100 * (r['pooled_dice'] - clean['pooled_dice']):+.2f} |")
    return lines


def to_markdown(report: dict, plots: Sequence[str] = ()) -> str:
    """The report in markdown; ``plots`` names the figures of :data:`PLOTS` that sit beside it (linked)."""
    results = report["results"]
    main_runs = [r for k, r in results.items() if group_of(k) == "main"]
    ablations = [r for k, r in results.items() if group_of(k) == "ablation"]
    budgets = sorted({r["budget_minutes"] for r in main_runs})
    lines = [f"# qata-mini accuracy ({' / '.join(f'{m:g}' for m in budgets) or '-'} min training per model)", "",
             f"Written by `python -m benchmarks.accuracy.qata_mini` on {report['date']}"
             + (f" at commit {report['commit']}" if report.get("commit") else "")
             + f" ({report['device']}, torch {report['torch']}, "
             f"{report['threads']} CPU thread(s) per run). Data: {report['data']} (train {report['n_train']}, "
             f"valid {report['n_valid']}, test {report['n_test']}); image size {report['image_size']}; "
             "best checkpoint by validation per-image Dice; threshold 0.5. Side error: for captions naming one "
             "side only, the fraction of predicted foreground on the other side (lower is better).", ""]
    if report.get("lanes", 1) > 1:
        lines += [f"The runs were made in {report['lanes']} processes side by side, one thread each, on the shared "
                  "machine; a run's training time is wall-clock, so contention costs it steps, not accuracy "
                  "directly (see the steps column).", ""]
    if main_runs:
        lines += HEADER + [_row(r) for r in main_runs]
        lines += ["", "Runs: `tgcnet` = captions + knowledge bank, as shipped (descriptions through the frozen "
                  "text tower); "
                  "`tgcnet_cached` = the same as `tgcnet` trained with `--augment flip "
                  "--cache-image-features` (flip only, frozen-ViT features cached); "

                  "`notext` = every caption replaced by "
                  f"{NEUTRAL_CAPTION!r}, knowledge off; `unet` = smp U-Net (resnet18, no pretrained weights)."
                  + "".join(f" `{name}` = `{LEVER_BASELINE}` with {change}." for name, change in LEVERS.items()
                            if any(run_name(k) == name for k in results))
                  + (CLIPSEG_TEXT if any(run_name(k) == "clipseg" for k in results) else "")
                  + (SCARCE_TEXT if any(run_name(k) in SCARCE_RUNS for k in results) else "")
                  + (MARKS_TEXT if any("@" in k for k in results) else ""), "",
                  "## Targets", "", "| target | value | met |", "|---|---|---|"]
        for t in report["targets"]:
            met = "met" if t["met"] else "missed"
            if t.get("budget_ok") is False:
                met += " (not at the stated budget)"
            lines.append(f"| {t['target']} | {t['value']} | {met} |")
    if ablations:
        minutes = sorted({r["budget_minutes"] for r in ablations})
        lines += ["", f"## Ablations ({' / '.join(f'{m:g}' for m in minutes)} min training each)", ""]
        lines += HEADER + [_row(r) for r in ablations] + [""]
        lines += [f"- `{r['run']}`: {ABLATION_TEXT[run_name(r['run'])]}" for r in ablations]
        base = results.get("base")
        if base:
            lines.append("")
            for r in ablations:
                if r is base:
                    continue
                d = 100 * (r["test"]["dice"] - base["test"]["dice"])
                pd = 100 * (r["test"]["pooled_dice"] - base["test"]["pooled_dice"])
                se = ("" if r["test"].get("side_error") is None or base["test"].get("side_error") is None else
                      f", side error {r['test']['side_error'] - base['test']['side_error']:+.3f}")
                lines.append(f"- `{r['run']}` vs `base`: per-image Dice {d:+.1f} points, pooled {pd:+.1f}{se}")
    lines += _caption_noise_section(results)
    lines += _text_tower_section(results)
    lines += _seeds_section(results)
    lines += _levers_section(results)
    lines += _scarce_section(results)
    lines += _plots_section(plots)
    if report["notes"]:
        lines += ["", "## Why / caveats", ""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def plots_in(folder: Path) -> list[str]:
    """The figures of :data:`PLOTS` present in ``folder``."""
    return [name for name in PLOTS if (Path(folder) / name).is_file()]


def write_report(report: dict, out: Path, quiet: bool = False) -> None:
    """``out/qata_mini.json`` and ``out/qata_mini.md``, the latter linking the plots present in ``out``."""
    md = to_markdown(report, plots_in(out))
    report_files.write_report(out, "qata_mini", report, md)
    if not quiet:
        print(md)


def _hand_notes(report: dict) -> list[str]:
    """A report's notes other than those :func:`reasons` writes (added with --note)."""
    auto = set(reasons(report["results"], targets(report["results"]), report.get("pretrained")))
    return [n for n in report.get("notes", []) if n not in auto]


def collect(paths: list[Path], out: Path, extra_notes: list[str], side_by_side: int | None = None) -> dict:
    """Merge the reports of lanes run side by side (same data and image size) into one.

    An input may itself be a merged report (it has ``lanes``), e.g. the committed
    ``qata_mini.json`` that new runs are added to: its results and hand-written notes are kept
    (a run in a later input replaces the same run of an earlier one), and the header keeps its
    lane count. The fresh lane reports among the inputs are taken to have run side by side:
    each of their runs records that, and when it finished and on what machine, in its setup.
    ``side_by_side`` says how many processes shared the machine when that is not the number of
    fresh reports (lanes that each ran several reports one after the other).
    """
    reports = [json.loads(Path(p).read_text()) for p in paths]
    first = reports[0]
    for p, r in zip(paths, reports):
        if (r["data"], r["image_size"]) != (first["data"], first["image_size"]):
            raise ValueError(f"{p}: data/image size differ from {paths[0]}; cannot merge")
    fresh = [r for r in reports if "lanes" not in r]
    earlier = [r["lanes"] for r in reports if "lanes" in r]
    merged = dict(first, results={}, lanes=max(earlier) if earlier else len(reports),
                  date=max(r["date"] for r in reports))
    for r in fresh:
        for res in r["results"].values():
            commit = f"commit {r['commit']}, " if r.get("commit") else ""
            res["setup"].setdefault("finished", f"{r['date']} ({commit}{r['device']}, torch {r['torch']}, "
                                           f"{r['threads']} thread(s), {side_by_side or len(fresh)} "
                                           "process(es) side by side)")
    for r in reports:
        merged["results"].update(r["results"])
    merged["results"] = {k: merged["results"][k] for k in sorted(merged["results"], key=result_order)}
    merged["targets"] = targets(merged["results"])
    notes = reasons(merged["results"], merged["targets"], first.get("pretrained"))
    for n in [n for r in reports for n in _hand_notes(r)] + extra_notes:
        if n not in notes:
            notes.append(n)
    merged["notes"] = notes
    write_report(merged, out)
    return merged

