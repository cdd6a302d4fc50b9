"""Configuration dataclasses, one per part of the method, and the preset registry.

Presets are data (``model_configs/*.json``), as in open_clip: a preset is the JSON form
of :class:`TGCNetConfig`, and every config serialises back to the JSON it came from, so
``save_pretrained`` can record exactly what to rebuild.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from tgcnet.adapters.config import LoraAdapterConfig
from tgcnet.laterality import DEFAULT_LATERALITY, check_laterality

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: choices that belong to the machine a model runs on, not to the model, with where each is
#: made: a config naming one is refused with that hint
RUN_TIME_FIELDS: dict[tuple[str, ...], str] = {
    ("clip", "cpu_linear"): "tgcnet.accel.optimize_for_cpu(model, linear=...)",
}


@dataclass
class ClipConfig:
    """Which CLIP to wrap and how to build it.

    ``model_name`` is any open_clip architecture name, an ``hf-hub:org/name`` id, a
    ``local-dir:`` folder holding ``open_clip_config.json`` and weights, or ``custom`` with
    ``model_cfg`` holding an inline open_clip model config (presets). An HF text tower's
    transformers config may sit inline in ``model_cfg.text_cfg.hf_model_config``, so the
    model builds offline. ``pretrained`` is a checkpoint file (open_clip's hub files, a
    state dict, OpenAI's TorchScript ``.pt``) or an open_clip pretrained tag such as
    ``"openai"``; it says where weights come from, not what the model is, so it can be
    overridden when a saved model is reloaded elsewhere. Without weights the towers are
    initialised from ``init_seed`` so that a saved random-init model rebuilds bit-identically.

    ``tokenizer``: a local folder holding a Hugging Face tokenizer, for towers whose
    tokenizer is a Hugging Face one (BiomedCLIP, SigLIP); without it the tokenizer is taken
    from the Hugging Face cache by the name the CLIP's config gives. ``image_mean`` /
    ``image_std`` normalise the [0, 1] input; None takes them from the CLIP's own
    preprocessing config (hub config or pretrained tag), else OpenAI's.
    """

    model_name: str = "ViT-B-16"
    model_cfg: Optional[dict] = None
    pretrained: Optional[str] = None
    init_seed: int = 0
    tokenizer: Optional[str] = None
    image_mean: Optional[tuple[float, ...]] = OPENAI_CLIP_MEAN
    image_std: Optional[tuple[float, ...]] = OPENAI_CLIP_STD


@dataclass
class SSEConfig:
    """Semantic-Structural Synergy Encoder: frozen ViT + trainable timm CNN, fused per scale.

    ``vit_indices`` picks one ViT block per CNN scale (shallow blocks feed the fine
    scales). Negative indices count from the last block, so one preset works for any depth.
    """

    vit_indices: tuple[int, ...] = (-9, -7, -5, -1)
    cnn_name: str = "convnext_atto"
    cnn_out_indices: tuple[int, ...] = (0, 1, 2, 3)
    cnn_kwargs: dict = field(default_factory=dict)
    fusion: Literal["gated", "concat"] = "gated"
    channels: int = 128


@dataclass
class DATEConfig:
    """Domain-Augmented Text Encoder: LoRA-tuned CLIP text tower + knowledge fusion.

    ``knowledge_encoder`` says which text tower encodes the knowledge descriptions.
    ``"frozen"`` (default): the same tower with its LoRA adapters switched off, so a
    description's embedding is a pure function of its text, computed once and cached in
    training too; the knowledge-fusion attention still learns how to use them, and LoRA
    still learns from the captions. ``"lora"``: the LoRA-tuned tower, with gradients, as
    the captions: every training step re-encodes every description in the batch and
    backpropagates through them (slower, more memory).

    ``caption_cache``: how many distinct captions an eval-mode DATE keeps the encodings of
    when no gradient is asked for (evaluation, prediction, validation); a cached caption
    skips the text tower. 0 turns it off.
    """

    lora: LoraAdapterConfig = field(default_factory=lambda: LoraAdapterConfig(targets="auto"))
    use_knowledge: bool = True
    knowledge_encoder: str = "frozen"
    knowledge_dim: int = 256
    knowledge_heads: int = 4
    gate_init: float = 0.1
    caption_cache: int = 512


@dataclass
class VLCMConfig:
    """Vision-Language Calibration Module in CLIP's joint space."""

    attn_dim: int = 256
    heads: int = 4
    gate_init: float = 0.1
    scale_init: float = 10.0
    bias_init: float = -2.0


@dataclass
class DecoderConfig:
    """Light FPN decoder over the SSE pyramid.

    ``deep_supervision_weight`` > 0 gives every decoder level above the finest its own 1x1
    mask head; their Dice + BCE against the mask, averaged over levels and times this weight,
    joins the training loss (:meth:`tgcnet.model.TGCNetOutput.loss`), so the coarse levels learn
    the lesion's extent directly rather than only through the finest level. Inference reads the
    finest level only; 0 (the default) adds no parameters.
    """

    channels: int = 96
    prior_weight_init: float = 1.0
    deep_supervision_weight: float = 0.0


@dataclass
class LossConfig:
    """The mask loss: ``dice_weight`` times the per-image soft Dice plus ``bce_weight`` times
    the pixel BCE (:func:`tgcnet.losses.dice_bce_loss`), for the final logits and, with deep
    supervision, for every side level alike.

    Dice is the metric reported, so it carries the overlap signal on small lesions; BCE keeps a
    well-conditioned per-pixel gradient while Dice is still flat. Equal weights are the usual
    text-guided segmentation loss; each must be >= 0 and at least one > 0.
    """

    dice_weight: float = 1.0
    bce_weight: float = 1.0


@dataclass
class SSAConfig:
    """SSA's spatial ideas (arXiv 2512.22981), each off by default and one flag away.

    ``ot_loss_weight`` > 0 adds the symmetric optimal-transport alignment loss between the
    calibrated pixels and the caption tokens; ``ot_attention`` biases the pixel->token
    attention by the log of that transport plan. ``guidance`` turns location words into
    region masks used as a soft prior in VLCM ("prior"), as an auxiliary loss on the
    predicted mass outside the region ("loss"), or both.
    """

    ot_loss_weight: float = 0.0
    ot_attention: bool = False
    ot_epsilon: float = 0.05
    ot_iters: int = 30
    guidance: Literal["off", "prior", "loss", "both"] = "off"
    guidance_strength_init: float = 2.0
    guidance_loss_weight: float = 0.2
    guidance_soft: float = 0.05
    guidance_use_zones: bool = True

    @property
    def guidance_prior(self) -> bool:
        return self.guidance in ("prior", "both")

    @property
    def guidance_loss(self) -> bool:
        return self.guidance in ("loss", "both")


@dataclass
class TGCNetConfig:
    """Everything needed to rebuild a TGCNet, bar the weights."""

    name: str = "custom"
    clip: ClipConfig = field(default_factory=ClipConfig)
    sse: SSEConfig = field(default_factory=SSEConfig)
    date: DATEConfig = field(default_factory=DATEConfig)
    vlcm: VLCMConfig = field(default_factory=VLCMConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    ssa: SSAConfig = field(default_factory=SSAConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    laterality: str = DEFAULT_LATERALITY
    #: put every caption in one canonical form (case, spacing, location-word typos, "all left
    #: lung", final period: ``tgcnet.captions``) before the text tower and guidance read it
    normalize_captions: bool = True

    def __post_init__(self) -> None:
        check_laterality(self.laterality)
        if not self.decoder.deep_supervision_weight >= 0:
            raise ValueError(f"decoder.deep_supervision_weight must be >= 0, got {self.decoder.deep_supervision_weight}")
        weights = {"loss.dice_weight": self.loss.dice_weight, "loss.bce_weight": self.loss.bce_weight}
        if not all(w >= 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
            raise ValueError(f"loss weights must be >= 0 with at least one > 0, got {weights}")
        if self.ssa.guidance not in ("off", "prior", "loss", "both"):
            raise ValueError(f"ssa.guidance must be 'off', 'prior', 'loss' or 'both', got {self.ssa.guidance!r}")
        if self.sse.fusion not in ("gated", "concat"):
            raise ValueError(f"sse.fusion must be 'gated' or 'concat', got {self.sse.fusion!r}")
        if len(self.sse.vit_indices) != len(self.sse.cnn_out_indices):
            raise ValueError(
                f"sse.vit_indices ({len(self.sse.vit_indices)} entries) must give one ViT block per CNN "
                f"scale in sse.cnn_out_indices ({len(self.sse.cnn_out_indices)} entries)")

    def to_dict(self) -> dict[str, Any]:
        return _to_jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TGCNetConfig":
        return _from_dict(cls, data, "config")


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    return value


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from a dict, rejecting unknown keys with their full path."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        hints = [f"{where}.{name} is not a config field: it is chosen at run time with {RUN_TIME_FIELDS[key]}"
                 for name in unknown if (key := (*where.split(".")[1:], name)) in RUN_TIME_FIELDS]
        raise ValueError(f"unknown field(s) in {where}: {', '.join(unknown)}; known: {', '.join(known)}"
                         + "".join(f"; {h}" for h in hints))
    kwargs = {}
    for name, value in data.items():
        default = known[name].default_factory() if known[name].default_factory is not dataclasses.MISSING \
            else known[name].default
        if is_dataclass(default):
            kwargs[name] = _from_dict(type(default), value, f"{where}.{name}")
        elif isinstance(default, tuple) and isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


# ---------------------------------------------------------------------------- presets

_PRESET_DIRS: list[Path] = [Path(__file__).parent / "model_configs"]
_PRESETS: dict[str, dict] = {}


def _rescan() -> None:
    _PRESETS.clear()
    for directory in _PRESET_DIRS:
        paths = [directory] if directory.is_file() else sorted(directory.glob("*.json"))
        for path in paths:
            with open(path, encoding="utf-8") as f:
                _PRESETS[path.stem] = json.load(f)


def list_presets() -> list[str]:
    """Names accepted by :func:`tgcnet.create_model`."""
    if not _PRESETS:
        _rescan()
    return sorted(_PRESETS)


def add_preset(path: str | Path) -> None:
    """Register a JSON preset file, or a folder of them (open_clip's ``add_model_config``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"preset path not found: {path}")
    _PRESET_DIRS.append(path)
    _rescan()


def get_preset(name: str, **overrides: Any) -> TGCNetConfig:
    """The config of preset ``name`` with keyword overrides applied.

    Overrides address any field: a top-level one (``laterality="patient"``), a whole
    section as a dict (``sse={"channels": 64}``), or a nested field with a double
    underscore (``date__lora__r=16``, ``clip__pretrained="/ckpt.safetensors"``).
    """
    names = list_presets()
    if name not in _PRESETS:
        raise ValueError(f"unknown preset {name!r}; available presets: {', '.join(names)}")
    data = copy.deepcopy(_PRESETS[name])
    data.setdefault("name", name)
    for key, value in overrides.items():
        _apply_override(data, key, value)
    return TGCNetConfig.from_dict(data)


def _apply_override(data: dict, key: str, value: Any) -> None:
    path = key.split("__")
    node = data
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {key!r}: {part!r} is not a config section")
    leaf = path[-1]
    if isinstance(value, dict) and isinstance(node.get(leaf), dict):
        node[leaf] = {**node[leaf], **value}
    else:
        node[leaf] = value
