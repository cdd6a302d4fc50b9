"""What the speed benchmark times: each member built through public API only.

A member is a model name, a variant and a mode (:class:`.harness.Member`). Every variant is
a ``create_model`` override, a knowledge source, ``tgcnet.accel.optimize_for_cpu``, a
module's own method (``.to(memory_format=...)``, ``.compile()``), ``tgcnet.adapters.merge_lora``
or a forward argument (``vit_features=``); none replaces a part or a method of the model.

Models, all random init (nothing is downloaded):

- ``floor_open_clip``: ``visual(x)`` of the preset's frozen open_clip image tower, open_clip's
  own path (``nn.MultiheadAttention``).
- ``floor``: the frozen image tower as TGCNet runs it (``model.sse.clip_visual`` after
  ``optimize_for_cpu``), i.e. the part of every TGCNet step no head can avoid.
- ``text_floor``: the frozen text tower as TGCNet runs it, LoRA bypassed, on the batch's
  distinct captions (``model.date.encode``).
- ``tgcnet``: ``create_model(preset)`` with the shipped knowledge bank and QaTa-style captions
  (:data:`CAPTIONS`), after ``optimize_for_cpu(model)`` on a CPU and ``optimize_for_cuda(model, amp)``
  on a GPU, as the engine's ``prepare_for_device`` does (under autocast on a GPU the frozen
  towers are then held in the autocast dtype).
  Inference in eval mode; training = forward + BCE (+ auxiliary losses) + backward + AdamW.
- ``method_core``: a TGCNet training step on only what any head of the method must run:
  frozen ViT forward, DATE (LoRA text tower, knowledge fusion) and the CNN branch, with a
  loss on their outputs (:func:`method_core_loss`); the lower bound of the training target.
- ``clipseg``: transformers' ``CLIPSegForImageSegmentation`` at ViT-B/16 size, CLIP frozen; on a
  GPU under autocast its frozen CLIP is held in the autocast dtype too, so both sides get the
  same treatment.
- ``unet``: segmentation_models_pytorch ``Unet("resnet34")``, everything trained.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from .harness import Comparison, Member, Settings, Step
from .wordpiece import tokenizer_folder

# qata-mini train captions: "six areas" 34%, "two areas" 23%, "one, lower right" 8%,
# "one, lower left" 5%, "three areas" 4%: 8 draws in that proportion, 5 distinct.
CAPTIONS = [
    "bilateral pulmonary infection, six infected areas, upper middle lower left lung and upper middle lower right lung.",
    "bilateral pulmonary infection, two infected areas, lower left lung and lower right lung.",
    "bilateral pulmonary infection, six infected areas, upper middle lower left lung and upper middle lower right lung.",
    "unilateral pulmonary infection, one infected area, lower right lung.",
    "bilateral pulmonary infection, six infected areas, upper middle lower left lung and upper middle lower right lung.",
    "bilateral pulmonary infection, two infected areas, lower left lung and lower right lung.",
    "bilateral pulmonary infection, three infected areas, middle lower left lung and lower right lung.",
    "unilateral pulmonary infection, one infected area, lower left lung.",
]

MODELS = {
    "floor_open_clip": "floor: open_clip `visual(x)`",
    "floor": "floor: frozen image tower as TGCNet runs it",
    "text_floor": "floor: frozen text tower as TGCNet runs it (LoRA bypassed), distinct captions",
    "tgcnet": "TGCNet",
    "method_core": "lower bound: frozen ViT + LoRA text tower + CNN branch, no head",
    "clipseg": "CLIPSeg (patch 16, CLIP frozen)",
    "unet": "U-Net resnet34 (smp)",
}

VARIANTS = {
    "torch_linear": "frozen linears through F.linear (optimize_for_cpu linear='torch')",
    "onednn_linear": "frozen linears through oneDNN (optimize_for_cpu linear='onednn')",
    "unfused": "FrozenViT with nn.MultiheadAttention (fused attention off)",
    "channels_last": "CNN branch channels_last",
    "no_dedup": "caption and description de-duplication off",
    "no_knowledge": "knowledge off (knowledge=None)",
    "lora_knowledge": "date.knowledge_encoder='lora'",
    "lora_merged": "LoRA merged (merge_lora)",
    "no_caption_cache": "eval caption cache off (date.caption_cache=0)",
    "light_head": "head widths halved (sse.channels, decoder.channels)",
    "feature_cache": "cached frozen-ViT features (FeatureCache, ViT skipped)",
    "bf16": "bfloat16 autocast",
    "compile": "torch.compile of frozen ViT, CNN, VLCM, decoder",
    "onednn": "CLIP linears through oneDNN (tgcnet.accel.use_onednn_linears)",
    "channels_last_head": "CNN branch, fusion and decoder channels_last (tgcnet.accel.use_channels_last)",
    "compile_head": "torch.compile of fusion, VLCM and decoder (tgcnet.accel.compile_trainable_head)",
    "fp32_frozen": "frozen towers kept in float32 under autocast (no tgcnet.accel.hold_frozen_in)",
    "fused_adamw": "AdamW(fused=True)",
}

CONFIG_VARIANTS: dict[str, dict[str, Any]] = {"lora_knowledge": {"date__knowledge_encoder": "lora"},
                                              "no_caption_cache": {"date__caption_cache": 0}}


def member_label(member: Member) -> str:
    parts = [] if member.variant == "default" else [VARIANTS[v] for v in member.variant.split("+")]
    return " — ".join([MODELS[member.model], " + ".join(parts)]) if parts else MODELS[member.model]


def variants_of(member: Member) -> set[str]:
    parts = set(member.variant.split("+")) - {"default"}
    unknown = parts - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown variant(s) {sorted(unknown)} of {member.key}; known: {sorted(VARIANTS)}")
    return parts


class PaddedKnowledge:
    """Defeats de-duplication without changing the numbers: trailing spaces make strings distinct.

    open_clip's tokenizer strips whitespace, so ``caption + " " * i`` has the same tokens as
    ``caption``; each caption's descriptions get the caption's padding, so no two positions
    of a batch share a caption or description string.
    """

    def __init__(self, source) -> None:
        self.source = source

    def descriptions_for(self, caption: str) -> list[str]:
        pad = " " * (len(caption) - len(caption.rstrip(" ")))
        return [d + pad for d in self.source.descriptions_for(caption.rstrip(" "))]


def undeduplicated(captions: list[str]) -> list[str]:
    return [c + " " * i for i, c in enumerate(captions)]


def batch(comparison: Comparison, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    g = torch.Generator().manual_seed(0)
    b, s = comparison.batch, comparison.size
    images = torch.rand(b, 3, s, s, generator=g).to(device)
    masks = (torch.rand(b, 1, s, s, generator=g) > 0.7).float().to(device)
    return images, masks, [CAPTIONS[i % len(CAPTIONS)] for i in range(b)]


def amp_of(member: Member, comparison: Comparison, settings: Settings) -> Optional[str]:
    """The member's autocast: its ``bf16`` variant, else the comparison's, else the run's (None: float32)."""
    if "bf16" in member.variant.split("+"):
        return "bf16"
    amp = comparison.amp or settings.amp
    return None if amp in (None, "none") else amp


def _autocast(amp: Optional[str], device: torch.device):
    from tgcnet.accel import AMP_DTYPES

    return torch.autocast(device.type, dtype=AMP_DTYPES[amp]) if amp else contextlib.nullcontext()


#: models built by :func:`reused` while ``Settings.reuse_models`` is on, by what makes them differ
_BUILT: dict[tuple, Any] = {}


def reused(settings: Settings, key: tuple, make: Callable[[], Any]) -> Any:
    """``make()``, or with ``settings.reuse_models`` the model an earlier comparison built under
    ``key``. Why: a sweep over batches and precisions times the same models again and again, and
    building ViT-B/16-sized models (seconds each) would take most of a short GPU lease."""
    if not settings.reuse_models:
        return make()
    if key not in _BUILT:
        _BUILT[key] = make()
    return _BUILT[key]


def forget_models() -> None:
    """Drop the reused models (end of a run: a later run in the same process builds its own)."""
    _BUILT.clear()


def _trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def infer_step(amp: Optional[str], module: torch.nn.Module, call: Callable[[], object],
               device: torch.device) -> Callable[[], None]:
    module.eval()

    def step() -> None:
        with torch.inference_mode(), _autocast(amp, device):
            call()
    return step


def train_step(amp: Optional[str], module: torch.nn.Module, loss_fn: Callable[[], torch.Tensor],
               device: torch.device, fused: Optional[bool] = None) -> Callable[[], None]:
    """One optimizer step; the optimizer is kept as ``step.optimizer`` (its state counts as the member's memory)."""
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4, fused=fused)
    module.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(amp, device):
            loss = loss_fn()
        loss.backward()
        optimizer.step()
    step.optimizer = optimizer
    return step


def owned(module: torch.nn.Module, call: Callable[[], None], *tensors: torch.Tensor) -> tuple:
    """What a step keeps between calls: its module, its optimizer (if any) and its input tensors."""
    optimizer = getattr(call, "optimizer", None)
    return (module, *((optimizer,) if optimizer is not None else ()), *tensors)


def _linear_choice(parts: set[str]) -> str:
    return "torch" if "torch_linear" in parts else "onednn" if "onednn_linear" in parts else "auto"


def preset_of(comparison: Comparison, settings: Settings) -> str:
    return comparison.preset or settings.preset


def create_tgcnet(member: Member, comparison: Comparison, settings: Settings, device: torch.device,
                  knowledge: Any = "default"):
    """``create_model`` for ``member``'s variant, with the stand-in tokenizer where the preset
    needs one, readied for the device as the engine readies it (``optimize_for_cpu``, or
    ``optimize_for_cuda`` with the member's autocast); returns the model and the batch's text stats.
    With ``settings.reuse_models`` an identical earlier build is returned instead."""
    amp = amp_of(member, comparison, settings)
    key = ("tgcnet", preset_of(comparison, settings), member.mode, member.variant, str(device), amp,
           knowledge if knowledge is None or isinstance(knowledge, str) else id(knowledge))
    model = reused(settings, key, lambda: _create_tgcnet(member, comparison, settings, device, knowledge, amp))
    return model, text_stats(model, batch(comparison, device)[2])


def _create_tgcnet(member: Member, comparison: Comparison, settings: Settings, device: torch.device,
                   knowledge: Any, amp: Optional[str]):
    from tgcnet import accel, create_model, prompts
    from tgcnet.config import get_preset

    parts = variants_of(member)
    preset = preset_of(comparison, settings)
    overrides: dict[str, Any] = {}
    for part in parts & set(CONFIG_VARIANTS):
        overrides.update(CONFIG_VARIANTS[part])
    if "light_head" in parts:
        widths = get_preset(preset)
        overrides.update(sse__channels=widths.sse.channels // 2, decoder__channels=widths.decoder.channels // 2)
    if "no_knowledge" in parts:
        knowledge = None
    elif "no_dedup" in parts:
        knowledge = PaddedKnowledge(prompts.load_default_bank())
    if "lora_merged" in parts and knowledge is not None:
        raise ValueError("variant 'lora_merged' needs 'no_knowledge': the frozen knowledge encoder bypasses "
                         "LoRA, which a merged LoRA cannot; use 'no_knowledge+lora_merged'")
    with tokenizer_folder(preset, CAPTIONS) as folder:
        if folder is not None:
            overrides["clip__tokenizer"] = folder
        model = create_model(preset, knowledge=knowledge, **overrides)
        text_stats(model, CAPTIONS)    # loads the tokenizer while its folder exists
    if device.type == "cuda":   # held before the move: the GPU never sees float32 frozen weights
        accel.optimize_for_cuda(model, amp=None if "fp32_frozen" in parts else amp)
    model = model.to(device)
    if device.type == "cpu":
        accel.optimize_for_cpu(model, linear=_linear_choice(parts))
    if member.model in ("tgcnet", "method_core"):
        _apply_model_variants(model, parts)
    return model


def _apply_model_variants(model, parts: set[str]) -> None:
    """The variants that change a built TGCNet in place (once per build: a reused model has them)."""
    from tgcnet import accel

    if "channels_last" in parts:
        model.sse.cnn.to(memory_format=torch.channels_last)
    if "channels_last_head" in parts:
        accel.use_channels_last(model)
    if "lora_merged" in parts:
        from tgcnet.adapters import merge_lora

        merge_lora(model.date.text_tower)
    if "compile" in parts:
        for module in (model.sse.clip_visual, model.sse.cnn, model.vlcm, model.decoder):
            module.compile()
    if "compile_head" in parts:
        accel.compile_trainable_head(model)


def text_stats(model, captions: list[str]) -> dict[str, int]:
    """How much text one batch sends through the text tower (with de-duplication)."""
    date = model.date
    unique = list(dict.fromkeys(captions))
    descs = [d for c in captions for d in (date.knowledge.descriptions_for(c) if date.knowledge else [])]
    uniq_descs = list(dict.fromkeys(descs))
    desc_ids = date.tokenize(uniq_descs, "description") if uniq_descs else None
    return {"captions": len(captions), "unique_captions": len(unique),
            "caption_tokens": int(date.tokenize(unique).shape[1]),
            "descriptions": len(descs), "unique_descriptions": len(uniq_descs),
            "description_tokens": int(desc_ids.shape[1]) if desc_ids is not None else 0}


def build_tgcnet(member: Member, comparison: Comparison, settings: Settings, device: torch.device) -> Step:
    parts = variants_of(member)
    model, stats = create_tgcnet(member, comparison, settings, device)
    images, masks, captions = batch(comparison, device)
    if "no_dedup" in parts:
        captions = undeduplicated(captions)
    features: Callable[[], dict] = dict
    if "feature_cache" in parts:
        from tgcnet.engine.feature_cache import FeatureCache

        cache = FeatureCache()
        features = lambda: {"vit_features": cache.get(images, model.frozen_vit_features, device=device)}
    amp = amp_of(member, comparison, settings)
    if member.mode == "infer":
        call = infer_step(amp, model, lambda: model(images, captions, **features()), device)
    else:
        def loss() -> torch.Tensor:
            out = model(images, captions, return_aux=True, **features())
            return F.binary_cross_entropy_with_logits(out.logits.float(), masks) + sum(out.aux_losses.values())
        call = train_step(amp, model, loss, device, fused=_fused(parts))
    # compiled graphs settle on the second call (the positional-embedding cache fills on the first)
    return Step(call=call, trainable=_trainable(model), extra={"text": stats}, model=model,
                warmup=3 if parts & {"compile", "compile_head"} else 1, owned=owned(model, call, images, masks))


def _fused(parts: set[str]) -> Optional[bool]:
    return True if "fused_adamw" in parts else None


def method_core_loss(model, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """A loss on the outputs of the parts every TGC-Net step runs whatever its head.

    Its step time bounds from below what any fusion/VLCM/decoder design of the method can
    reach: the frozen ViT still runs forward, and LoRA and the CNN branch still backpropagate.
    """
    x = model.clip_input(images)
    text = model.date(captions)
    model.sse.clip_visual(x)          # frozen: runs forward, nothing to backpropagate
    cnn_maps = model.sse.cnn(x)
    loss = text.tokens.float().square().mean() + text.pooled.float().square().mean()
    return loss + sum(m.float().square().mean() for m in cnn_maps)


def build_method_core(member: Member, comparison: Comparison, settings: Settings, device: torch.device) -> Step:
    if member.mode != "train":
        raise ValueError("'method_core' is a training lower bound: use mode 'train'")
    model, stats = create_tgcnet(member, comparison, settings, device)
    images, _, captions = batch(comparison, device)
    call = train_step(amp_of(member, comparison, settings), model, lambda: method_core_loss(model, images, captions),
                      device, fused=_fused(variants_of(member)))
    return Step(call=call, trainable=_trainable(model), extra={"text": stats}, owned=owned(model, call, images))


def build_floor(member: Member, comparison: Comparison, settings: Settings, device: torch.device) -> Step:
    """The frozen image tower: open_clip's own, TGCNet's (through a built model), or TGCNet's without
    fused attention (the tower's own switch, ``FrozenViT(fused_attention=False)``: how attention runs is
    an engineering choice, not part of the method's config, so a built TGCNet always runs it fused)."""
    from tgcnet.backbone import load_clip
    from tgcnet.config import get_preset

    parts = variants_of(member)
    config = get_preset(preset_of(comparison, settings))
    if member.model == "floor_open_clip":
        module = load_clip(config.clip).visual.requires_grad_(False)
        own = tuple(getattr(module, "image_size", (comparison.size,) * 2))
        if own != (comparison.size,) * 2:
            raise ValueError(f"open_clip's visual(x) takes only its own input size {own[0]}x{own[1]}, not "
                             f"{comparison.size} px: run floor_open_clip at that size")
    elif "unfused" in parts:
        from tgcnet.image_towers import FrozenViT

        module = FrozenViT(load_clip(config.clip).visual, tuple(config.sse.vit_indices), fused_attention=False)
    else:
        module = create_tgcnet(member, comparison, settings, device, knowledge=None)[0].sse.clip_visual
    module = module.to(device)
    if "compile" in parts:
        module.compile()
    images = batch(comparison, device)[0]
    call = infer_step(amp_of(member, comparison, settings), module, lambda: module(images), device)
    return Step(call=call, trainable=0, warmup=3 if "compile" in parts else 1, owned=owned(module, call, images))


def build_text_floor(member: Member, comparison: Comparison, settings: Settings, device: torch.device) -> Step:
    from tgcnet.adapters import lora_disabled

    model, stats = create_tgcnet(member, comparison, settings, device, knowledge=None)
    unique = list(dict.fromkeys(batch(comparison, device)[2]))
    tower = model.date.text_tower

    def encode() -> None:
        with lora_disabled(tower):
            model.date.encode(unique)
    call = infer_step(amp_of(member, comparison, settings), model, encode, device)
    return Step(call=call, trainable=0, owned=owned(tower, call),
                extra={"text": {k: stats[k] for k in ("captions", "unique_captions", "caption_tokens")}})


def _clipseg(settings: Settings, size: int):
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation

    if settings.tiny_peers:
        small = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2}
        config = CLIPSegConfig(text_config=small, vision_config={**small, "patch_size": 16, "image_size": size},
                               projection_dim=64, reduce_dim=16, extract_layers=[0, 1])
    else:
        config = CLIPSegConfig(vision_config={"patch_size": 16, "image_size": size},
                               use_complex_transposed_convolution=True)
    return CLIPSegForImageSegmentation(config)


def build_clipseg(member: Member, comparison: Comparison, settings: Settings, device: torch.device) -> Step:
    from open_clip.tokenizer import SimpleTokenizer

    parts = variants_of(member)
    amp = amp_of(member, comparison, settings)
    key = ("clipseg", member.mode, member.variant, comparison.size, str(device), amp, settings.tiny_peers)
    model = reused(settings, key, lambda: _ready_clipseg(parts, settings, comparison.size, device, amp))
    images, masks, captions = batch(comparison, device)
    tok = SimpleTokenizer()   # CLIP's BPE vocabulary; transformers' tokenizer needs files
    rows = [[tok.sot_token_id, *tok.encode(c), tok.eot_token_id] for c in captions]
    ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
    ids, attention = ids.to(device), (ids > 0).long().to(device)

    def forward() -> torch.Tensor:
        return model(input_ids=ids, pixel_values=images, attention_mask=attention).logits
    if member.mode == "infer":
        call = infer_step(amp, model, forward, device)
    else:
        call = train_step(amp, model, lambda: F.binary_cross_entropy_with_logits(
            forward().float().reshape(masks.shape), masks), device, fused=_fused(parts))
    return Step(call=call, trainable=_trainable(model), owned=owned(model, call, images, masks, ids, attention))


def _ready_clipseg(parts: set[str], settings: Settings, size: int, device: torch.device, amp: Optional[str]):
    """CLIPSeg with its CLIP frozen, readied for ``device`` as TGCNet is: oneDNN linears on request, and
    on a GPU under autocast the frozen CLIP held in the autocast dtype."""
    from tgcnet.accel import AMP_DTYPES, use_onednn_linears

    model = _clipseg(settings, size)
    model.clip.requires_grad_(False)
    if "onednn" in parts:
        use_onednn_linears(model.clip)
    if device.type == "cuda" and amp and "fp32_frozen" not in parts:
        model.clip.to(AMP_DTYPES[amp])
    return model.to(device)


def build_unet(member: Member, comparison: Comparison, settings: Settings, device: torch.device) -> Step:
    import segmentation_models_pytorch as smp

    variants_of(member)
    encoder = "resnet18" if settings.tiny_peers else "resnet34"
    model = smp.Unet(encoder, encoder_weights=None, in_channels=3, classes=1).to(device)
    images, masks, _ = batch(comparison, device)
    amp = amp_of(member, comparison, settings)
    if member.mode == "infer":
        call = infer_step(amp, model, lambda: model(images), device)
    else:
        call = train_step(amp, model, lambda: F.binary_cross_entropy_with_logits(model(images).float(), masks),
                          device, fused=_fused(variants_of(member)))
    return Step(call=call, trainable=_trainable(model), owned=owned(model, call, images, masks))


BUILDERS = {"floor_open_clip": build_floor, "floor": build_floor, "text_floor": build_text_floor,
            "tgcnet": build_tgcnet, "method_core": build_method_core, "clipseg": build_clipseg, "unet": build_unet}


def build(member: Member, comparison: Comparison, settings: Settings, device: torch.device) -> Step:
    """The harness's builder: ``member`` of ``comparison``, on ``device``."""
    if member.model not in BUILDERS:
        raise ValueError(f"unknown model {member.model!r}; known: {sorted(BUILDERS)}")
    if member.mode not in ("infer", "train"):
        raise ValueError(f"mode must be 'infer' or 'train', got {member.mode!r}")
    torch.manual_seed(0)
    return BUILDERS[member.model](member, comparison, settings, device)


def default_linear() -> Optional[str]:
    """What ``optimize_for_cpu(linear='auto')`` picks on this machine's CPU ('onednn' or 'torch')."""
    from tgcnet.accel import resolve_cpu_linear

    return "onednn" if resolve_cpu_linear("auto") else "torch"
