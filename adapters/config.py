"""LoRA adapter configuration for open_clip towers (peft's ``LoraConfig``, narrowed).

Targets are regexes over module names *relative to the tower being adapted*. A plain
list of names (``["c_fc", "c_proj"]``) would also hit the visual tower when applied to a
whole CLIP. Attention targets name ``attn.in_proj`` / ``attn.out_proj``: :func:`apply_lora`
first turns each ``nn.MultiheadAttention`` into :class:`~.attention.ProjectedAttention`,
whose projections are real ``nn.Linear`` layers (see that module for why).
"""
from __future__ import annotations

from dataclasses import dataclass

TARGET_PRESETS: dict[str, str] = {
    # attention (in_proj + out_proj) and both MLP projections of every text block
    "open_clip_text": r"^transformer\.resblocks\.\d+\.(attn\.in_proj|attn\.out_proj|mlp\.c_fc|mlp\.c_proj)$",
    "open_clip_text_attn": r"^transformer\.resblocks\.\d+\.attn\.(in_proj|out_proj)$",
    "open_clip_text_mlp": r"^transformer\.resblocks\.\d+\.mlp\.(c_fc|c_proj)$",
    # a transformers BERT/RoBERTa encoder (open_clip's HFTextEncoder): q, k, v, attention output, both MLP layers
    "hf_bert_text": r"^transformer\.encoder\.layer\.\d+\.(attention\.self\.(query|key|value)"
                    r"|attention\.output\.dense|intermediate\.dense|output\.dense)$",
}


@dataclass
class LoraAdapterConfig:
    """Rank, scaling, dropout and targets of the LoRA adapters.

    ``targets`` is a key of :data:`TARGET_PRESETS`, a regex of its own (anchored on the
    full module name inside the tower), or ``"auto"``: the preset that suits the tower
    (its ``lora_targets`` attribute; tgcnet's text towers name theirs).
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: str = "open_clip_text"

    def __post_init__(self) -> None:
        if int(self.r) < 0:
            raise ValueError(f"lora.r must be >= 0 (0 disables LoRA), got {self.r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")

    def target_regex_for(self, tower: object) -> str:
        """The regex these targets mean for ``tower`` ("auto" asks the tower)."""
        targets = getattr(tower, "lora_targets", "") if self.targets == "auto" else self.targets
        if not targets:
            raise ValueError(f"LoRA targets 'auto': {type(tower).__name__} names no target preset; set "
                             "date.lora.targets to a preset name or a regex over its module names")
        return TARGET_PRESETS.get(targets, targets)

    @property
    def enabled(self) -> bool:
        return int(self.r) > 0
