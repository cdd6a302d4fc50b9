"""``TrainConfig``: every setting of a training run, with its default, its help and its flag.

Each field's ``metadata`` is what ``tgcnet train`` turns into a command-line option
(:mod:`tgcnet.cli.train`), so a default and its help text live in one place:

* ``help``: the option's help; ``{default}`` is replaced by the field's default.
* ``group``: the ``tgcnet train --help`` section it is listed in (one of :data:`GROUPS`).
* ``flag`` (optional): the option, when it is not ``--`` + the field name with dashes.
* ``choices``, ``metavar``, ``action`` (optional): passed to argparse as they are.

This module imports neither torch nor the data stack, so building the command line stays
fast; the choices of ``augment`` and ``cache_dtype`` are checked against the modules that
use them by the tests.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from tgcnet.recipes import recipe_path, recipe_values

__all__ = ["TrainConfig", "DEFAULT_IMAGE_SIZE", "GROUPS", "AUGMENT_CHOICES", "AMP_CHOICES", "CACHE_DTYPE_CHOICES", "RESUME_FIXED",
           "SEMI_DEFAULT_WEIGHTS", "parse_overrides", "read_saved_config"]

#: ``tgcnet train --help`` sections: name -> description (None: none)
GROUPS: dict[str, Optional[str]] = {
    "data and run": None,
    "frozen-feature cache": (
        "Compute the frozen ViT once per training image and reuse it in later epochs; the trainable parts run as "
        "usual, so losses match an uncached run. Needs --augment flip (two versions per image) or none. Kept in "
        "CPU memory, not checkpointed, one cache per DDP rank; the expected size is printed at start "
        "(tgcnet-vit-b16 at 224 px: 2.8 MB per image and version in float32)."),
    "model": None,
    "optimisation": None,
    "checkpoints and validation": None,
    "scarce masks": (
        "Train also on images that have a caption but no mask (semi-supervised). The labelled images train as "
        "usual; the unlabelled ones through what their captions say about sides, and optionally a mean teacher's "
        "pseudo-labels and a bound on the areas counted. Validation and test still need every mask."),
}
AUGMENT_CHOICES = ("full", "flip", "none")  # tgcnet.data.transforms.AUGMENT_MODES
CACHE_DTYPE_CHOICES = ("float32", "float16", "bfloat16")  # tgcnet.engine.feature_cache.CACHE_DTYPES
AMP_CHOICES = ("none", "bf16", "fp16")
#: fields that fix the data order or the model: a resumed run must not change them
RESUME_FIXED = ("data", "layout", "train_split", "preset", "image_size", "batch_size", "grad_accum", "seed",
                "knowledge", "model_overrides", "pretrained", "caption_override", "init_from", "lr", "weight_decay",
                "warmup_steps", "min_lr_ratio", "skip_bad", "amp", "augment", "semi_supervised", "labelled_fraction",
                "pseudo_label_weight", "pseudo_label_threshold", "ema_decay", "rampup_fraction",
                "language_loss_weight", "count_loss_weight")
#: the square size images are trained and segmented at unless a run says otherwise (CLIP's own 224)
DEFAULT_IMAGE_SIZE = 224
#: the unlabelled losses' weights when semi-supervised training is on and none is given (off otherwise).
#: See docs/cli.md, "Training with scarce masks", for what each was measured to be worth on qata-mini.
SEMI_DEFAULT_WEIGHTS = {"pseudo_label_weight": 0.0, "language_loss_weight": 1.0, "count_loss_weight": 0.0}


def _opt(default: Any, group: str, help: str, **extra: Any) -> Any:
    """A field with its command-line description (see the module docstring)."""
    meta = {"help": help, "group": group, **extra}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=meta)
    return field(default=default, metadata=meta)


RUN, CACHE, MODEL, OPTIM, CKPT, SEMI = GROUPS


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved as ``RUN_DIR/train_config.json``.

    ``model_overrides`` are create_model keyword overrides (``{"sse__channels": 32}``).
    ``max_minutes`` stops on wall-clock time and anneals the cosine schedule to it; such
    a run is not bit-reproducible (it depends on speed), an epoch/step-bounded one is.
    ``checkpoint_every`` is in optimizer steps (0: only at epoch end).
    ``caption_override`` replaces every caption (train and validation) by one string: the
    text-path ablation, where the text can no longer tell images apart.
    ``threads`` sets torch's CPU intra-op threads (None: torch's default). CPU-sized models
    are best at 1: their ops are too small for OpenMP to pay, and on a shared 2-core
    machine 2 threads were 4x slower per step than 1.

    ``augment``: ``"full"`` (flip with left/right caption swap, small affine,
    brightness/contrast), ``"flip"`` (the flip only) or ``"none"``.
    ``cache_image_features`` computes the frozen ViT's features of each training image
    once and reuses them in later epochs (see tgcnet.engine.feature_cache); everything
    trainable still runs, so losses match an uncached run. It needs ``augment`` "flip"
    (two cached versions per image) or "none": "full" changes the pixels every epoch, so
    the cache would never be hit and only fill memory, and that is refused. Entries are
    kept on the CPU in ``cache_dtype`` ("float16" halves memory, at fp16 rounding of the
    features) up to ``cache_max_gb`` per process (None: no limit); the expected size is
    printed at start (tgcnet-vit-b16 at 224 px: 2.8 MB per image and version in float32).
    Nothing is checkpointed: a resumed run refills the cache; under DDP every rank keeps
    its own.

    ``recipe`` names the shipped recipe (tgcnet.recipes) the settings started from; it is
    a record for train_config.json: setting it here applies nothing, ``from_recipe`` does.

    Scarce masks (tgcnet.engine.semi_supervised): ``semi_supervised`` trains the training
    images whose mask file is missing as unlabelled; ``labelled_fraction`` also hides the
    masks of a seeded, stratified ``1 - fraction`` of the others (tgcnet.engine.labelled_split)
    and implies ``semi_supervised``. ``pseudo_label_weight``, ``language_loss_weight`` and
    ``count_loss_weight`` weigh the unlabelled images' three losses; None means :data:`SEMI_DEFAULT_WEIGHTS` with
    semi-supervised training and 0 without, and a weight above 0 without it is refused.
    ``pseudo_label_threshold`` (tau) keeps the teacher's pixels with ``|p - 0.5| > tau``,
    ``ema_decay`` is the mean teacher's, and ``rampup_fraction`` the share of training over
    which the pseudo-label weight ramps up.
    """

    data: str = field(metadata={"help": "data set folder (simple, LViT, GuideDecoder or SGSeg layout, detected)",
                                "group": RUN})
    out: str = _opt("runs/tgcnet", RUN, "run directory to create (default {default})")
    preset: str = _opt("tgcnet-tiny", MODEL, "model preset (default {default}; see `tgcnet params`)")
    layout: Optional[str] = _opt(None, RUN, "force a layout instead of detecting it")
    train_split: str = _opt("train", RUN, "split to train on (default {default})")
    val_split: Optional[str] = _opt("valid", RUN, "split to select on (default {default}; 'none' disables)")
    epochs: int = _opt(10, OPTIM, "default {default}")
    max_steps: Optional[int] = _opt(None, OPTIM, "stop after this many optimizer steps")
    max_minutes: Optional[float] = _opt(None, OPTIM, "wall-clock budget; the cosine schedule anneals to it")
    batch_size: int = _opt(8, OPTIM, "per process (default {default})")
    lr: float = _opt(1e-3, OPTIM, "peak learning rate (default {default})")
    weight_decay: float = _opt(1e-2, OPTIM, "AdamW weight decay (default {default})")
    warmup_steps: int = _opt(50, OPTIM, "linear warmup steps (default {default})")
    min_lr_ratio: float = _opt(0.01, OPTIM, "final LR / peak LR (default {default})")
    image_size: int = _opt(DEFAULT_IMAGE_SIZE, OPTIM, "square training size, a multiple of the patch size (default {default})")
    grad_accum: int = _opt(1, OPTIM, "batches per optimizer step (default {default})")
    clip_grad: Optional[float] = _opt(1.0, OPTIM, "max gradient norm (default {default}; 0 disables)")
    amp: str = _opt("none", OPTIM, "mixed precision (fp16 needs CUDA)", choices=AMP_CHOICES)
    device: str = _opt("auto", OPTIM, "{default} (default), cpu, cuda, cuda:1 ...")
    seed: int = _opt(0, OPTIM, "data order, augmentation and init (default {default})")
    workers: int = _opt(0, RUN, "DataLoader workers (default {default})")
    checkpoint_every: int = _opt(0, CKPT, "also checkpoint every N optimizer steps (default: epoch ends only)")
    val_every: int = _opt(1, CKPT, "validate every N epochs (default {default})")
    eval_batch_size: Optional[int] = _opt(None, CKPT, "validation batch size (default: --batch-size)")
    resume: Optional[str] = _opt(None, RUN, "continue an interrupted run; other options default to the saved ones",
                                 metavar="RUN_DIR")
    skip_bad: bool = _opt(False, RUN, "drop bad triples with a warning")
    pretrained: Optional[str] = _opt(None, MODEL, "local open_clip checkpoint for the frozen CLIP towers",
                                     metavar="CKPT")
    init_from: Optional[str] = _opt(None, MODEL, "start from a saved tgcnet model (best/)", metavar="DIR")
    knowledge: str = _opt("default", MODEL, "'default' (shipped bank), 'none', or a knowledge cache JSON path")
    model_overrides: dict = _opt({}, MODEL, "model config override, repeatable, e.g. --set sse.channels=32 "
                                 "--set date.lora.r=8", flag="--set", action="append", metavar="KEY=VALUE")
    threshold: float = _opt(0.5, CKPT, "probability threshold of the metrics (default {default})")
    caption_override: Optional[str] = _opt(None, MODEL, "use this one caption for every image (text-path ablation)",
                                           metavar="TEXT")
    deterministic: bool = _opt(False, OPTIM, "torch.use_deterministic_algorithms")
    progress: bool = _opt(True, CKPT, "no progress bar or epoch lines", flag="--no-progress", action="store_false")
    find_unused_parameters: bool = _opt(False, OPTIM, "DDP option, for custom configs with parameters unused in "
                                        "some steps")
    threads: Optional[int] = _opt(None, RUN, "CPU intra-op threads (default: torch's; 1 is best for CPU presets)")
    augment: str = _opt("full", RUN, "training augmentation: full (default: flip with left/right caption swap, "
                        "small affine, brightness/contrast), flip (the flip only) or none", choices=AUGMENT_CHOICES)
    cache_image_features: bool = _opt(False, CACHE, "cache frozen-ViT features of the training images")
    cache_dtype: str = _opt("float32", CACHE, "storage dtype (default {default}: exact; float16 halves memory at "
                            "fp16 rounding)", choices=CACHE_DTYPE_CHOICES)
    cache_max_gb: Optional[float] = _opt(None, CACHE, "cache size limit per process in GiB; images beyond it run "
                                         "the ViT every time")
    semi_supervised: bool = _opt(False, SEMI, "train the training images whose mask file is missing as unlabelled "
                                 "(without it, a missing mask is an error)")
    labelled_fraction: Optional[float] = _opt(None, SEMI, "keep the masks of this seeded, stratified fraction of the "
                                              "training images and train the rest as unlabelled (implies "
                                              "--semi-supervised; the split goes to RUN_DIR/labelled.json)",
                                              metavar="F")
    pseudo_label_weight: Optional[float] = _opt(None, SEMI, "weight of the mean teacher's pseudo-label loss on "
                                                "unlabelled images (default 0: off; measured at 1.0)")
    pseudo_label_threshold: float = _opt(0.3, SEMI, "pixels count for the pseudo-label loss where the teacher's "
                                         "|p - 0.5| > this (default {default})", metavar="TAU")
    ema_decay: float = _opt(0.99, SEMI, "the mean teacher's EMA decay per optimizer step (default {default})")
    rampup_fraction: float = _opt(0.2, SEMI, "the unlabelled losses' weights ramp up (sigmoid-shaped) over this fraction "
                                  "of training (default {default})")
    language_loss_weight: Optional[float] = _opt(None, SEMI, "weight of the caption-guided loss on unlabelled "
                                                 "images: no lesion on the sides the caption does not name, some on "
                                                 "those it does (default 1.0 when semi-supervised, 0 disables)")
    count_loss_weight: Optional[float] = _opt(None, SEMI, "weight of the bound on unlabelled images' regions by the "
                                              "areas their caption counts (default 0)")
    recipe: Optional[str] = _opt(None, RUN, "start from a shipped recipe's settings (a published protocol; 'list' "
                                 "describes them); options given win over it", metavar="NAME")

    def __post_init__(self) -> None:
        self.data, self.out = str(self.data), str(self.out)
        self._resolve_semi_supervised()
        checks = {"epochs": self.epochs >= 1, "batch_size": self.batch_size >= 1, "grad_accum": self.grad_accum >= 1,
                  "lr": self.lr > 0, "warmup_steps": self.warmup_steps >= 0, "workers": self.workers >= 0,
                  "checkpoint_every": self.checkpoint_every >= 0, "val_every": self.val_every >= 1,
                  "image_size": self.image_size > 0, "weight_decay": self.weight_decay >= 0,
                  "min_lr_ratio": 0 <= self.min_lr_ratio <= 1, "threshold": 0 < self.threshold < 1,
                  "pseudo_label_weight": self.pseudo_label_weight >= 0,
                  "language_loss_weight": self.language_loss_weight >= 0,
                  "count_loss_weight": self.count_loss_weight >= 0,
                  "pseudo_label_threshold": 0 <= self.pseudo_label_threshold < 0.5,
                  "ema_decay": 0 <= self.ema_decay < 1, "rampup_fraction": 0 <= self.rampup_fraction <= 1}
        for name, ok in (("max_steps", lambda v: v >= 1), ("max_minutes", lambda v: v > 0),
                         ("clip_grad", lambda v: v > 0), ("threads", lambda v: v >= 1),
                         ("cache_max_gb", lambda v: v > 0), ("labelled_fraction", lambda v: 0 < v <= 1)):
            if getattr(self, name) is not None:
                checks[name] = ok(getattr(self, name))
        bad = [f"{k}={getattr(self, k)!r}" for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid training setting(s): {', '.join(bad)}")
        for name, choices in (("amp", AMP_CHOICES), ("augment", AUGMENT_CHOICES), ("cache_dtype", CACHE_DTYPE_CHOICES)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}; got {getattr(self, name)!r}")
        if self.cache_image_features and self.augment == "full":
            raise ValueError("cache_image_features=True needs augment='flip' or 'none', got augment='full': its "
                             "affine and brightness/contrast augmentation change every image in every epoch, so "
                             "cached frozen-ViT features would never be reused (pass --augment flip or "
                             "--augment none with --cache-image-features)")

    def _resolve_semi_supervised(self) -> None:
        """A labelled fraction implies semi-supervised training; unset loss weights take their default
        with it and 0 without, and a weight given without it is refused rather than ignored."""
        if self.labelled_fraction is not None:
            self.semi_supervised = True
        for name, default in SEMI_DEFAULT_WEIGHTS.items():
            value = getattr(self, name)
            if value is None:
                setattr(self, name, default if self.semi_supervised else 0.0)
            elif value != 0 and not self.semi_supervised:
                raise ValueError(f"{name}={value!r} weighs a loss of images without a mask, which only "
                                 "semi-supervised training has: add --semi-supervised (semi_supervised=True) or "
                                 "--labelled-fraction F, or drop the weight")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_recipe(cls, name: str, **overrides: Any) -> "TrainConfig":
        """The settings of recipe ``name`` (see tgcnet.recipes), with ``overrides`` on top.

        ``TrainConfig.from_recipe("qata-cov19", data="DIR", pretrained="CKPT", preset="tgcnet-biomedclip")``.
        Explicit values win over the recipe's, which win over the defaults; ``model_overrides``
        are merged key by key (yours win). ``recipe`` records the name in train_config.json.
        """
        if "recipe" in overrides:
            raise ValueError("from_recipe takes the recipe by name as its first argument, not as recipe=")
        values = recipe_values(name)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = [key for key in values if key not in fields]
        if unknown:
            raise ValueError(f"recipe {recipe_path(name)}: {', '.join(map(repr, unknown))} is not a TrainConfig field")
        if "data" not in overrides:
            raise ValueError(f"recipe {name!r}: give the data set folder, data=DIR (--data DIR)")
        model_overrides = {**values.get("model_overrides", {}), **overrides.pop("model_overrides", {})}
        values.update(overrides)
        if model_overrides:
            values["model_overrides"] = model_overrides
        return cls.from_dict({**values, "recipe": name})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training setting(s): {', '.join(unknown)}")
        return cls(**data)


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``["sse.channels=32", "date.lora.r=8"]`` -> ``{"sse__channels": 32, "date__lora__r": 8}``.

    Values are parsed as JSON when they are JSON (numbers, true/false, lists), else kept
    as strings, so ``--set laterality=patient`` needs no quotes.
    """
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value (e.g. sse.channels=32), got {pair!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[key.strip().replace(".", "__")] = value
    return out


def read_saved_config(run: str | Path) -> dict[str, Any]:
    """The ``train`` settings saved in ``RUN/train_config.json``, which a resume starts from.

    A damaged file names itself and says what of the run survives, instead of a bare
    JSON error: without its settings the run cannot be resumed.
    """
    from .files import TRAIN_CONFIG_NAME

    run = Path(run)
    path = run / TRAIN_CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume: {path} not found (is {run} a tgcnet run directory?)")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        problem = f"is not valid JSON (cut short or overwritten: {exc.msg} at line {exc.lineno})"
    except UnicodeDecodeError:
        problem = "is not UTF-8 text (overwritten?)"
    else:
        if isinstance(saved, dict) and isinstance(saved.get("train"), dict):
            return saved["train"]
        problem = 'does not hold training settings (expected a JSON object with a "train" object)'
    from .run_dir import recovery_hint  # run_dir imports this module

    raise ValueError(f"{path} {problem}: the run's settings are damaged, so {run} cannot be resumed; "
                     f"{recovery_hint(run)}")
