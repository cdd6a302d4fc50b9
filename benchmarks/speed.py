"""Speed and memory: TGCNet beside its floor (the bare frozen ViT), CLIPSeg and a U-Net.

    python benchmarks/speed.py [--quick] [--threads N] [--compile] [--device cpu|cuda] [--amp bf16]
                               [--preset tgcnet-vit-b16] [--out benchmarks/results] [--only SUBSTRING]
                               [--merge-into benchmarks/results/speed.json]

Every configuration (model, variant, inference or training, batch, input size) runs in a
fresh process forked from a server that has only imported the libraries, so peak memory
is per configuration and nothing (allocator pools, caches, compiled graphs) leaks from
one measurement into the next. In each: build, then warm up (the first call is timed on
its own: it includes torch.compile or cache filling), then time ``--iters`` calls and
report the median. Peak memory is the resident set's high-water mark (VmHWM, reset after
construction, so it covers warm-up and timed steps: weights, activations, gradients,
optimizer state) on CPU, and ``torch.cuda.max_memory_allocated`` on CUDA.

Models, all random init (nothing is downloaded), 3x224x224 unless a scaling row says not:

- floor, open_clip: ``visual(x)`` of the frozen open_clip tower of the preset, open_clip's
  default path (``nn.MultiheadAttention``), under ``torch.inference_mode``.
- floor, fused: ``tgcnet.image_towers.FrozenViT`` on the same weights, as TGCNet runs it (attention
  through ``scaled_dot_product_attention``, linear layers as ``clip.cpu_linear="auto"`` picks
  them on this CPU (``tgcnet.kernels``), the maps TGCNet needs), ``inference_mode``.
- tgcnet: ``create_model(preset)`` as shipped (``date.knowledge_encoder="frozen"``,
  ``clip.cpu_linear="auto"``, eval caption cache) with the shipped knowledge bank and QaTa-style captions
  (:data:`CAPTIONS`, drawn to follow qata-mini's caption frequencies, so a batch of 8 has 5
  distinct captions). Inference in eval mode (description embeddings cached after the first
  batch, as in evaluation); training = forward + Dice-free BCE loss + backward + AdamW step
  over the trainable parameters.
- clipseg: transformers' ``CLIPSegForImageSegmentation``, ViT-B/16 sized (patch 16, as the
  released ``rd64-refined`` model), its CLIP frozen (CLIPSeg's own forward runs CLIP under
  ``no_grad``; its parameters are excluded from the optimizer), captions tokenised with
  open_clip's tokenizer (same BPE vocabulary; transformers' tokenizer needs files). Stock
  transformers code, so its linear layers run through MKL; where TGCNet runs oneDNN linears
  (AMD), a "ways" row gives CLIPSeg them too, for a like-for-like reading of the comparison.
- unet: segmentation_models_pytorch ``Unet("resnet34", encoder_weights=None)``, all trained.
- BiomedCLIP-shaped: ``tgcnet-biomedclip`` (timm ViT-B/16 image tower in open_clip's
  ``TimmModel``, 12-layer BERT-base text tower with LoRA) as shipped, inference and training
  as for tgcnet, beside its own floors: its frozen image tower as TGCNet runs it
  (``tgcnet.image_towers.FrozenTimmViT``) and its frozen text tower (``HFTextTower``, linears
  as TGCNet runs them, no LoRA) on the batch's distinct captions, both ``inference_mode``.
  Its Hugging Face tokenizer files are not shipped, so each of these processes writes a
  BERT WordPiece vocabulary to a temporary folder (:func:`write_wordpiece_vocab`: BERT's
  special tokens, single characters, and the whole words of the QaTa-style captions, the
  embedded sample's captions and the shipped knowledge bank), so texts tokenise to about as
  many word pieces as with BiomedCLIP's own vocabulary.

Before/after rows ("ways"), TGCNet at the largest batch: caption/description de-duplication
off, knowledge off (a what-if that locates the training cost), ``date.knowledge_encoder=
"lora"`` (the earlier default), the linear kernel "auto" did not pick, halved head widths
(a what-if), the method's core alone (frozen ViT, DATE, CNN branch, no head: a lower bound
for any head), the engine's frozen-ViT feature cache (``tgcnet.engine.feature_cache``),
bfloat16 autocast and ``--compile``. Changes of a few per cent (fused attention off, CNN
branch channels_last, de-duplication in inference, LoRA merged, the caption cache off) and
both linear kernels are also measured A/B inside one process, where process-to-process
spread cannot hide them, and so are TGCNet (in training also with cached ViT features) and
CLIPSeg against each other.
Writes speed.json and speed.md to ``--out``; ``--report`` re-renders the markdown;
``--merge-into`` adds the rows of this run (e.g. ``--only biomedclip``) to an earlier
speed.json, measured with that run's threads and calls, its other rows kept as they were.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# What every configuration imports anyway (tgcnet pulls in peft and transformers), imported
# once by the fork server instead of ~5 s per configuration.
PRELOAD = ["torch", "open_clip", "timm", "segmentation_models_pytorch",
           "transformers.models.clipseg.modeling_clipseg", "tgcnet"]

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

TARGETS = {"infer_over_floor": 1.35, "train_over_infer": 1.6, "train_mem_over_infer_mem": 1.5}

VARIANTS = {
    "default": "as shipped",
    "unfused": "frozen ViT with open_clip's nn.MultiheadAttention (fused SDPA attention off)",
    "channels_last": "CNN branch in channels_last memory format",
    "no_dedup": "caption and description de-duplication off (every caption and description encoded)",
    "no_knowledge": "what-if: knowledge descriptions off (knowledge=None)",
    "frozen_knowledge": "date.knowledge_encoder='frozen' (descriptions encoded once with the LoRA bypassed, "
                        "cached in training too)",
    "lora_knowledge": "date.knowledge_encoder='lora' (the earlier default: descriptions re-encoded through the "
                      "LoRA-tuned text tower with gradients every training step)",
    "torch_linear": "frozen towers' linear layers through F.linear, i.e. MKL (clip.cpu_linear='torch')",
    "onednn_linear": "frozen towers' linear layers through oneDNN (clip.cpu_linear='onednn')",
    "onednn": "its frozen CLIP's linear layers through oneDNN (tgcnet.kernels.use_onednn_linears)",
    "no_caption_cache": "eval caption cache off (date.caption_cache=0: every batch's captions through the tower)",
    "light_head": "what-if: head widths halved (sse.channels and decoder.channels; 128 -> 64 and 96 -> 48 on "
                  "tgcnet-vit-b16)",
    "lora_merged": "LoRA merged into the text tower for inference (tgcnet.adapters.merge_lora)",
    "feature_cache": "frozen-ViT features from the engine's FeatureCache (ViT skipped on a hit)",
    "method_core": "what-if, a lower bound for any head: only what every TGC-Net training step runs whatever its "
                   "head (frozen ViT forward, DATE with LoRA and knowledge fusion, the trainable CNN branch, a "
                   "loss on their outputs); no fusion, VLCM or decoder",
    "bf16": "bfloat16 autocast (not float-exact: about 1% relative error in the ViT's output)",
    "compile": "torch.compile of the frozen ViT, CNN branch, VLCM and decoder",
}


def variant_label(variant: str) -> str:
    """Variants combine with '+', e.g. ``feature_cache+lora_knowledge``."""
    return " + ".join(VARIANTS[v] for v in variant.split("+"))


@dataclass(frozen=True)
class Case:
    """One measured configuration."""

    model: str                 # floor_open_clip | floor_fused | tgcnet | clipseg | unet | BIOMEDCLIP_MODELS
    mode: str                  # infer | train
    batch: int
    size: int = 224
    variant: str = "default"
    group: str = "main"        # main | ways | scaling | ab | biomedclip

    @property
    def id(self) -> str:
        return f"{self.model}/{self.variant}/{self.mode}/b{self.batch}/{self.size}"


@dataclass(frozen=True)
class Settings:
    """How every case of a run is measured."""

    preset: str = "tgcnet-vit-b16"
    device: str = "cpu"
    threads: Optional[int] = None   # None: torch's default
    warmup: int = 1                  # calls before timing, each timed on its own
    iters: int = 3
    amp: Optional[str] = None        # None | "bf16"
    biomedclip_preset: str = "tgcnet-biomedclip"   # the BIOMEDCLIP_MODELS rows' preset


@dataclass
class Bench:
    """A built model and one call of what is measured (an inference or a training step)."""

    step: Callable[[], None]
    trainable: int
    extra: dict[str, Any] = field(default_factory=dict)
    profile: Optional[Callable[[], dict[str, float]]] = None


# ---------------------------------------------------------------------------------- builders
def _amp(case: Case, settings: Settings) -> Optional[str]:
    return "bf16" if "bf16" in case.variant.split("+") else settings.amp


def _autocast(amp: Optional[str], device: "torch.device"):
    import contextlib

    import torch

    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _data(case: Case, device):
    import torch

    g = torch.Generator().manual_seed(0)
    images = torch.rand(case.batch, 3, case.size, case.size, generator=g).to(device)
    masks = (torch.rand(case.batch, 1, case.size, case.size, generator=g) > 0.7).float().to(device)
    captions = [CAPTIONS[i % len(CAPTIONS)] for i in range(case.batch)]
    return images, masks, captions


def _trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _train_step(model, loss_fn: Callable[[], "torch.Tensor"], amp: Optional[str], device) -> Callable[[], None]:
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(amp, device):
            loss = loss_fn()
        loss.backward()
        optimizer.step()
    return step


def _infer_step(model, call: Callable[[], object], amp: Optional[str], device) -> Callable[[], None]:
    import torch

    model.eval()

    def step() -> None:
        with torch.inference_mode(), _autocast(amp, device):
            call()
    return step


def build_floor(case: Case, settings: Settings, device) -> Bench:
    from tgcnet.backbone import load_clip
    from tgcnet.config import get_preset
    from tgcnet.image_towers import FrozenViT

    config = get_preset(settings.preset)
    visual = load_clip(config.clip).visual     # same seed, same weights as the TGCNet preset
    images, _, _ = _data(case, device)
    if case.model == "floor_open_clip":
        module = visual.requires_grad_(False).to(device)
    else:
        module = FrozenViT(visual, tuple(config.sse.vit_indices), fused_attention=case.variant != "unfused",
                           onednn_linear=_onednn_for(case.variant)).to(device)
        if "compile" in case.variant.split("+"):
            module.compile()
    return Bench(step=_infer_step(module, lambda: module(images), _amp(case, settings), device), trainable=0)


def _onednn_for(variant: str) -> bool:
    """Whether the frozen towers use oneDNN linears in ``variant`` (the default: what 'auto' picks here)."""
    from tgcnet.kernels import resolve_cpu_linear

    parts = variant.split("+")
    choice = "torch" if "torch_linear" in parts else "onednn" if "onednn_linear" in parts else "auto"
    return resolve_cpu_linear(choice)


def other_linear() -> str:
    """The linear-kernel variant that is not this machine's default."""
    from tgcnet.kernels import resolve_cpu_linear

    return "torch_linear" if resolve_cpu_linear("auto") else "onednn_linear"


class PaddedKnowledge:
    """Defeats de-duplication without changing the numbers: trailing spaces make strings distinct.

    open_clip's tokenizer strips whitespace, so ``caption + " " * i`` has the same tokens
    as ``caption``; each caption's descriptions get the caption's padding, so no two
    positions of a batch share a caption or description string.
    """

    def __init__(self, source) -> None:
        self.source = source

    def descriptions_for(self, caption: str) -> list[str]:
        pad = " " * (len(caption) - len(caption.rstrip(" ")))
        return [d + pad for d in self.source.descriptions_for(caption.rstrip(" "))]


def undeduplicated(captions: list[str]) -> list[str]:
    return [c + " " * i for i, c in enumerate(captions)]


def text_stats(model, captions: list[str]) -> dict[str, int]:
    """How much text one batch sends through the text tower (with de-duplication)."""
    date = model.date
    unique = list(dict.fromkeys(captions))
    descs = [d for c in captions for d in (date.knowledge.descriptions_for(c) if date.knowledge else [])]
    uniq_descs = list(dict.fromkeys(descs))
    cap_ids = date.tokenize(unique)
    desc_ids = date.tokenize(uniq_descs, "description") if uniq_descs else None
    return {"captions": len(captions), "unique_captions": len(unique), "caption_tokens": int(cap_ids.shape[1]),
            "descriptions": len(descs), "unique_descriptions": len(uniq_descs),
            "description_tokens": int(desc_ids.shape[1]) if desc_ids is not None else 0}


def _apply_tgcnet_variant(model, variant: str, device) -> Optional[Callable[..., dict]]:
    """Change ``model`` in place for ``variant``; returns a feature provider for the cache variant."""
    import torch

    features = None
    for part in variant.split("+"):
        if part == "unfused":
            from tgcnet.backbone import load_clip
            from tgcnet.image_towers import FrozenViT

            visual = load_clip(model.config.clip).visual
            model.sse.clip_visual = FrozenViT(visual, tuple(model.config.sse.vit_indices), fused_attention=False,
                                              onednn_linear=_onednn_for(variant)).to(device)
        elif part == "channels_last":
            model.sse.cnn.to(memory_format=torch.channels_last)
        elif part == "no_dedup":
            model.date.knowledge = PaddedKnowledge(model.date.knowledge)
        elif part == "lora_merged":
            from tgcnet.adapters import merge_lora

            with torch.no_grad():   # the frozen knowledge encoder bypasses LoRA: encode descriptions first
                model.eval().date(CAPTIONS)
            merge_lora(model.date.text_tower)
        elif part == "compile":
            for module in (model.sse.clip_visual, model.sse.cnn, model.vlcm, model.decoder):
                module.compile()
        elif part == "feature_cache":
            from tgcnet.engine.feature_cache import FeatureCache

            cache = FeatureCache()
            features = lambda images: {"vit_features": cache.get(images, model.frozen_vit_features, device=device)}
        elif part not in ("default", "no_knowledge", "frozen_knowledge", "lora_knowledge", "torch_linear",
                          "onednn_linear", "no_caption_cache", "light_head", "bf16", "method_core"):
            raise ValueError(f"unknown variant {part!r}; known: {sorted(VARIANTS)}")
    return features


def _module_timer(model, device) -> tuple[Callable[[], None], Callable[[], dict[str, float]]]:
    """Forward time per part of TGCNet, by hooks, and caption vs description encoding by wrapping encode."""
    import torch

    parts = ["sse.clip_visual", "sse.cnn", "sse.fusion", "date", "vlcm", "decoder"]
    spent: dict[str, float] = {}
    started: dict[str, float] = {}

    def now() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def hooks(name: str):
        def pre(*_):
            started[name] = now()

        def post(*_):
            spent[name] = spent.get(name, 0.0) + now() - started[name]
        return pre, post

    handles = []
    for name in parts:
        pre, post = hooks(name)
        module = model.get_submodule(name)
        # a ModuleList is never called itself: time each of its members under the list's name
        for m in (module if isinstance(module, torch.nn.ModuleList) else [module]):
            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    encode = model.date.encode

    def timed_encode(texts, what="caption", positions=None):
        t0 = now()
        out = encode(texts, what, positions)
        key = f"date.encode({what})"
        spent[key] = spent.get(key, 0.0) + now() - t0
        return out
    model.date.encode = timed_encode

    def reset() -> None:
        spent.clear()

    def result() -> dict[str, float]:
        for h in handles:
            h.remove()
        model.date.encode = encode
        return dict(spent)
    return reset, result


def build_tgcnet(case: Case, settings: Settings, device) -> Bench:
    import torch.nn.functional as F

    from tgcnet import create_model

    preset = settings.biomedclip_preset if case.model == "tgcnet_biomedclip" else settings.preset
    parts = case.variant.split("+")
    knowledge = None if "no_knowledge" in parts else "default"
    config: dict[str, Any] = {}
    for part, key, value in (("frozen_knowledge", "date__knowledge_encoder", "frozen"),
                             ("lora_knowledge", "date__knowledge_encoder", "lora"),
                             ("torch_linear", "clip__cpu_linear", "torch"),
                             ("onednn_linear", "clip__cpu_linear", "onednn"),
                             ("no_caption_cache", "date__caption_cache", 0)):
        if part in parts:
            config[key] = value
    if "light_head" in parts:
        from tgcnet.config import get_preset

        widths = get_preset(preset)
        config.update(sse__channels=widths.sse.channels // 2, decoder__channels=widths.decoder.channels // 2)
    with tokenizer_folder(preset) as folder:
        if folder is not None:
            config["clip__tokenizer"] = folder
        model = create_model(preset, knowledge=knowledge, **config).to(device)
        images, masks, captions = _data(case, device)
        stats = text_stats(model, captions)     # loads the tokenizer while its folder exists
    if case.variant == "no_dedup":
        captions = undeduplicated(captions)
    features = _apply_tgcnet_variant(model, case.variant, device)
    amp = _amp(case, settings)

    def forward(**kw):
        extra = features(images) if features is not None else {}
        return model(images, captions, **kw, **extra)
    if "method_core" in parts:
        if case.mode != "train":
            raise ValueError("variant 'method_core' is a training what-if")
        step = _train_step(model, lambda: _method_core_loss(model, images, captions), amp, device)
    elif case.mode == "infer":
        step = _infer_step(model, forward, amp, device)
    else:
        def loss():
            out = forward(return_aux=True)
            return F.binary_cross_entropy_with_logits(out.logits.float(), masks) + sum(out.aux_losses.values())
        step = _train_step(model, loss, amp, device)

    def profile() -> dict[str, float]:
        reset, result = _module_timer(model, device)
        reset()
        t0 = time.perf_counter()
        step()
        _sync(device)
        total = time.perf_counter() - t0
        return {"step": total, **result()}
    return Bench(step=step, trainable=_trainable(model), profile=profile,
                 extra={"text": stats, "fused_attention": getattr(model.sse.clip_visual, "fused_attention", None)})


def _method_core_loss(model, images, captions) -> "torch.Tensor":
    """A loss on the outputs of the parts every TGC-Net step runs whatever its head.

    Its step time bounds from below what any fusion/VLCM/decoder design of the method can
    reach: the frozen ViT still runs forward, and LoRA and the CNN branch still backpropagate.
    """
    x = model.clip_input(images)
    text = model.date(captions)
    model.sse.clip_visual(x)          # frozen: runs forward under no_grad, nothing to backpropagate
    cnn_maps = model.sse.cnn(x)
    loss = text.tokens.float().square().mean() + text.pooled.float().square().mean()
    return loss + sum(m.float().square().mean() for m in cnn_maps)


def build_clipseg(case: Case, settings: Settings, device) -> Bench:
    import torch
    import torch.nn.functional as F
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation

    config = CLIPSegConfig(vision_config={"patch_size": 16, "image_size": case.size},
                           use_complex_transposed_convolution=True)
    model = CLIPSegForImageSegmentation(config).to(device)
    model.clip.requires_grad_(False)
    if case.variant == "onednn":
        from tgcnet.kernels import use_onednn_linears

        use_onednn_linears(model.clip)
    elif case.variant not in ("default", "bf16"):
        raise ValueError(f"unknown CLIPSeg variant {case.variant!r}")
    images, masks, captions = _data(case, device)
    tok = SimpleTokenizer()
    rows = [[tok.sot_token_id, *tok.encode(c), tok.eot_token_id] for c in captions]
    ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
    ids, attention = ids.to(device), (ids > 0).long().to(device)

    def forward():
        return model(input_ids=ids, pixel_values=images, attention_mask=attention).logits
    amp = _amp(case, settings)
    if case.mode == "infer":
        step = _infer_step(model, forward, amp, device)
    else:
        step = _train_step(model, lambda: F.binary_cross_entropy_with_logits(
            forward().float().reshape(masks.shape), masks), amp, device)
    return Bench(step=step, trainable=_trainable(model),
                 extra={"config": "CLIPSegConfig(patch_size=16, use_complex_transposed_convolution=True)"})


def build_unet(case: Case, settings: Settings, device) -> Bench:
    import segmentation_models_pytorch as smp
    import torch.nn.functional as F

    model = smp.Unet("resnet34", encoder_weights=None, in_channels=3, classes=1).to(device)
    images, masks, _ = _data(case, device)
    amp = _amp(case, settings)
    if case.mode == "infer":
        step = _infer_step(model, lambda: model(images), amp, device)
    else:
        step = _train_step(model, lambda: F.binary_cross_entropy_with_logits(model(images).float(), masks),
                           amp, device)
    return Bench(step=step, trainable=_trainable(model))


def _vocab_texts() -> list[str]:
    """Texts whose words :func:`write_wordpiece_vocab` keeps whole: the benchmark's captions,
    the embedded sample's captions and every description of the shipped knowledge bank."""
    from tgcnet import prompts
    from tgcnet.data import read_split
    from tgcnet.data.sample import sample_root

    bank = prompts.load_default_bank()
    sample = [s.caption for split in ("train", "val", "test")
              for s in _read_optional(read_split, sample_root(), split)]
    return [*CAPTIONS, *sample, *(d for concept in bank.keys() for d in bank[concept])]


def _read_optional(read_split, root, split) -> list:
    try:
        return list(read_split(root, split))
    except (FileNotFoundError, KeyError, ValueError):
        return []


def write_wordpiece_vocab(folder: Path, texts: list[str], size: int) -> str:
    """A BERT WordPiece tokenizer folder (vocab.txt, tokenizer_config.json) for ``texts``.

    BERT's special tokens, every character of ``texts`` alone and as a ``##`` continuation
    (so no word becomes [UNK]), then whole words, most frequent first, up to ``size`` entries
    (the text tower's vocabulary size). A word kept whole is one token, as common and
    medical words are in PubMedBERT's 30,522-entry vocabulary (BiomedCLIP's); a word left
    out splits into characters.
    """
    from collections import Counter

    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer

    normalize, split = BertNormalizer(lowercase=True).normalize_str, BertPreTokenizer().pre_tokenize_str
    words = Counter(w for t in texts for w, _ in split(normalize(t)))
    chars = sorted({c for w in words for c in w})
    vocab = list(dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *("##" + c for c in chars),
                                *(w for w, _ in words.most_common())]))
    if len(vocab) > size and size < 5 + 2 * len(chars):
        raise ValueError(f"a vocabulary of {size} entries cannot hold the {len(chars)} characters of the texts")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab[:size]) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True}), encoding="utf-8")
    return str(folder)


def tokenizer_folder(preset: str):
    """Context manager: a temporary WordPiece tokenizer folder for a preset whose text tower
    takes a Hugging Face tokenizer and names no local folder (``clip.tokenizer``), else None.
    The tokenizer must be loaded (first tokenisation) before the context ends."""
    import contextlib
    import tempfile

    from tgcnet.config import get_preset

    clip = get_preset(preset).clip
    text_cfg = (clip.model_cfg or {}).get("text_cfg", {})
    if clip.tokenizer is not None or not text_cfg.get("hf_tokenizer_name"):
        return contextlib.nullcontext(None)

    @contextlib.contextmanager
    def folder():
        with tempfile.TemporaryDirectory(prefix="speed-wordpiece-") as tmp:
            size = int(text_cfg.get("hf_model_config", {}).get("vocab_size", 30522))
            yield write_wordpiece_vocab(Path(tmp), _vocab_texts(), size)
    return folder()


def build_biomedclip_floor(case: Case, settings: Settings, device) -> Bench:
    """The frozen towers of the BiomedCLIP preset as TGCNet runs them, nothing trained.

    ``floor_biomedclip_image``: ``image_tower(visual)`` (a ``FrozenTimmViT``: the maps SSE
    reads and the dense joint embeddings), i.e. ``model.sse.clip_visual``.
    ``floor_biomedclip_text``: the ``HFTextTower`` with DATE's kernel choices (attention
    projections and oneDNN linears where ``clip.cpu_linear='auto'`` picks them; no LoRA) on
    the batch's distinct captions, padded as DATE pads them.
    """
    from tgcnet.adapters import project_attention
    from tgcnet.backbone import load_clip
    from tgcnet.config import get_preset
    from tgcnet.image_towers import image_tower
    from tgcnet.kernels import use_onednn_linears
    from tgcnet.tokenizer import CaptionTokenizer

    preset = settings.biomedclip_preset
    config = get_preset(preset)
    images, _, captions = _data(case, device)
    onednn = _onednn_for(case.variant)
    if case.model == "floor_biomedclip_image":
        module = image_tower(load_clip(config.clip).visual, tuple(config.sse.vit_indices), onednn_linear=onednn)
        module = module.to(device)
        return Bench(step=_infer_step(module, lambda: module(images), _amp(case, settings), device), trainable=0)
    with tokenizer_folder(preset) as folder:
        config.clip.tokenizer = folder or config.clip.tokenizer
        towers = load_clip(config.clip)
        unique = list(dict.fromkeys(captions))
        ids = CaptionTokenizer(towers.tokenizer, pad_to_context=towers.text.pads_to_context)(unique).to(device)
    tower = towers.text.requires_grad_(False)
    del towers                     # the image tower goes: only the text tower is measured
    if onednn:
        project_attention(tower)
        use_onednn_linears(tower.transformer)
    tower = tower.to(device)
    return Bench(step=_infer_step(tower, lambda: tower(ids), _amp(case, settings), device), trainable=0,
                 extra={"text": {"captions": len(captions), "unique_captions": len(unique),
                                 "caption_tokens": int(ids.shape[1])}})


#: the BiomedCLIP-shaped preset's rows (``Settings.biomedclip_preset``)
BIOMEDCLIP_MODELS = ("floor_biomedclip_image", "floor_biomedclip_text", "tgcnet_biomedclip")

BUILDERS = {"floor_open_clip": build_floor, "floor_fused": build_floor, "tgcnet": build_tgcnet,
            "clipseg": build_clipseg, "unet": build_unet, "floor_biomedclip_image": build_biomedclip_floor,
            "floor_biomedclip_text": build_biomedclip_floor, "tgcnet_biomedclip": build_tgcnet}


# ---------------------------------------------------------------------------------- measuring
def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _status_mb(field_name: str) -> Optional[float]:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


DISTURBED_CORES = 0.25   # other CPU use during the timed calls above which a row is re-run / flagged
LOADED = 0.7             # a 1-minute load average at the start of a merged run from which it is called loaded


class LoadProbe:
    """CPU that others used while we timed: all busy time in /proc/stat minus this process's own.

    Why: on a shared machine another job's burst (a test run, a training lane) slows our
    2-thread steps several-fold (an OpenMP thread that waits for a core stalls the other at
    every barrier). A row that saw it is re-run once at the end and flagged if it still did.
    Counts hypervisor steal time as busy too: it slows us the same way.
    """

    def __init__(self) -> None:
        self.wall, self.own, self.busy = time.perf_counter(), time.process_time(), self._busy()

    @staticmethod
    def _busy() -> Optional[float]:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        except (OSError, ValueError):
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")

    def other_cores(self) -> Optional[float]:
        """Average number of cores busy with something else since construction (None: too short to tell,
        /proc/stat counts in 10 ms ticks)."""
        busy = self._busy()
        wall = time.perf_counter() - self.wall
        if busy is None or self.busy is None or wall < 0.5:
            return None
        return max(0.0, (busy - self.busy) - (time.process_time() - self.own)) / wall


class MemoryMeter:
    """Peak memory from now on: VmHWM (reset through clear_refs) on CPU, max_memory_allocated on CUDA."""

    def __init__(self, device) -> None:
        import torch

        self.device = device
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            self.kind = "cuda max_memory_allocated"
            self.start = torch.cuda.memory_allocated(device) / 2**20
            return
        self.start = _status_mb("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")   # resets VmHWM to the current RSS
            self.kind = "peak RSS (VmHWM, reset after construction)"
            self.reset = True
        except OSError:
            self.kind = "peak RSS (ru_maxrss, including construction)"
            self.reset = False

    def peak(self) -> Optional[float]:
        import torch

        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.reset:
            return _status_mb("VmHWM")
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def run_case(case: Case, settings: Settings) -> dict[str, Any]:
    """Build, warm up, time and measure one configuration (meant for a fresh process).

    A compile case gets an empty inductor cache, so its warm-up shows compiling from
    scratch rather than whatever an earlier case or run left on disk.
    """
    if "compile" not in case.variant.split("+"):
        return _measure(case, settings)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="speed-inductor-") as cache_dir:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
        return _measure(case, settings)


AB_VARIANTS = {
    ("floor_ab", "infer"): ["open_clip", "unfused", "fused_torch_linear", "fused_onednn_linear", "fused"],
    ("tgcnet_ab", "infer"): ["default", "torch_linear", "onednn_linear", "unfused", "channels_last", "no_dedup",
                             "lora_merged", "no_caption_cache"],
    ("tgcnet_ab", "train"): ["default", "torch_linear", "onednn_linear", "channels_last"],
    # the peer comparison of the targets, free of process-to-process spread
    ("peers_ab", "infer"): ["tgcnet", "clipseg"],
    ("peers_ab", "train"): ["tgcnet", "clipseg", "tgcnet_cached"],
}


def _ab_steps(case: Case, settings: Settings, device) -> dict[str, Callable[[], None]]:
    """One step per path/variant, each on its own copy of the same weights (same init seed)."""
    if case.model == "peers_ab":
        return {m: _build_peer(m, case, settings, device).step for m in AB_VARIANTS[(case.model, case.mode)]}
    if case.model == "tgcnet_ab":
        return {v: build_tgcnet(dataclasses.replace(case, model="tgcnet", variant=v), settings, device).step
                for v in AB_VARIANTS[(case.model, case.mode)]}
    import copy

    from tgcnet.backbone import load_clip
    from tgcnet.config import get_preset
    from tgcnet.image_towers import FrozenViT

    config = get_preset(settings.preset)
    visual = load_clip(config.clip).visual.requires_grad_(False).eval().to(device)
    indices = tuple(config.sse.vit_indices)
    paths = {"open_clip": visual,
             "unfused": FrozenViT(copy.deepcopy(visual), indices, fused_attention=False).to(device),
             "fused_torch_linear": FrozenViT(copy.deepcopy(visual), indices, onednn_linear=False).to(device),
             "fused_onednn_linear": FrozenViT(copy.deepcopy(visual), indices, onednn_linear=True).to(device),
             "fused": FrozenViT(copy.deepcopy(visual), indices, onednn_linear=_onednn_for("default")).to(device)}
    images = _data(case, device)[0]
    amp = _amp(case, settings)
    return {k: _infer_step(m, (lambda m=m: m(images)), amp, device) for k, m in paths.items()}


#: peers_ab members that are a model under a variant rather than a model as built by default
PEER_VARIANTS = {"tgcnet_cached": ("tgcnet", "feature_cache")}


def _build_peer(name: str, case: Case, settings: Settings, device) -> Bench:
    model, variant = PEER_VARIANTS.get(name, (name, "default"))
    return BUILDERS[model](dataclasses.replace(case, model=model, variant=variant), settings, device)


def _measure_ab(case: Case, settings: Settings) -> dict[str, Any]:
    """Several variants in one process, their calls interleaved round by round.

    Why: the same configuration measured in fresh processes differed by up to ~15 % here
    (from process to process and run to run), more than fused attention or channels_last
    change; calling the variants in turn inside one process keeps that out of their ratios.
    """
    import torch

    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = torch.device(settings.device)
    steps = _ab_steps(case, settings, device)
    for step in steps.values():     # warm-up: fills caches (descriptions, oneDNN primitives)
        step()
    times: dict[str, list[float]] = {k: [] for k in steps}
    probe = LoadProbe()
    for _ in range(settings.iters + 1):
        for name, step in steps.items():
            times[name].append(_timed(step, device))
    other = probe.other_cores()
    medians = {k: statistics.median(v) for k, v in times.items()}
    first = next(iter(medians))
    return {**dataclasses.asdict(case), "id": case.id, "ab_times_s": times, "ab_median_s": medians,
            "median_s": medians[first], "images_per_s": case.batch / medians[first], "peak_mb": None,
            "threads": torch.get_num_threads(), "other_cores": other}


def _measure(case: Case, settings: Settings) -> dict[str, Any]:
    import torch

    if case.model.endswith("_ab"):
        return _measure_ab(case, settings)

    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(0)
    device = torch.device(settings.device)
    t0 = time.perf_counter()
    bench = BUILDERS[case.model](case, settings, device)
    build_s = time.perf_counter() - t0
    meter = MemoryMeter(device)
    # compiled graphs settle on the second call (FrozenViT fills its positional-embedding cache
    # on the first, which dynamo guards on): give them three warm-up calls
    warmup = max(settings.warmup, 3) if "compile" in case.variant.split("+") else settings.warmup
    warm = [_timed(bench.step, device) for _ in range(warmup)]
    probe = LoadProbe()
    times = [_timed(bench.step, device) for _ in range(settings.iters)]
    other = probe.other_cores()
    peak = meter.peak()
    median = statistics.median(times)
    row = {**dataclasses.asdict(case), "id": case.id, "median_s": median, "min_s": min(times), "times_s": times,
           "first_call_s": warm[0], "warmup_s": warm, "build_s": build_s, "images_per_s": case.batch / median,
           "peak_mb": peak, "resident_after_build_mb": meter.start, "memory_kind": meter.kind,
           "trainable_params": bench.trainable, "threads": torch.get_num_threads(), "other_cores": other,
           **bench.extra}
    if bench.profile is not None and case.variant == "default":
        row["forward_parts_s"] = bench.profile()
    return row


def _timed(step: Callable[[], None], device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    step()
    _sync(device)
    return time.perf_counter() - t0


def _run_isolated(case: Case, settings: Settings) -> dict[str, Any]:
    try:
        return run_case(case, settings)
    except Exception as exc:  # one failing configuration (e.g. compile) must not lose the others
        return {**dataclasses.asdict(case), "id": case.id, "error": f"{type(exc).__name__}: {exc}"[:500]}


# ---------------------------------------------------------------------------------- plan
REPEATED = ("floor_fused", "floor_open_clip", "tgcnet", "clipseg", *BIOMEDCLIP_MODELS)


def plan(quick: bool, compile_: bool, feature_cache: bool, repeats: int = 1) -> list[Case]:
    """What to measure, in order.

    Full: batches 1 and 8 for every model, before/after rows at 8, sizes 320 and 448 at 8.
    Quick (a check of the script in under 2 minutes on 2 CPU cores): batch 2 (and 1 for
    TGCNet and its floor), sizes 224 and 320, no bf16 / knowledge-off / linear-kernel /
    light-head / lower-bound rows (the kernels are in the frozen-ViT A/B), no TGCNet or
    peer A/B (eight or more model builds: the 2-core AMD EPYC took 161 s with them), the
    BiomedCLIP-shaped preset at batch 2 only.
    Both end with the frozen-ViT paths A/B in one process and then ``repeats - 1`` more
    fresh processes for each target row (floors, TGCNet, CLIPSeg, the BiomedCLIP-shaped
    preset and its floors at the largest batch).
    """
    batches = (1, 2) if quick else (1, 8)
    big = batches[-1]
    cases = [Case("floor_fused", "infer", b) for b in batches]
    cases += [Case("floor_open_clip", "infer", b) for b in batches[quick:]]
    cases += [Case("tgcnet", mode, b) for mode in ("infer", "train") for b in batches]
    cases += [Case(m, mode, b) for m in ("clipseg", "unet") for mode in ("infer", "train") for b in batches[quick:]]
    # changes of a few % (fused attention, channels_last, LoRA merge, caption cache, de-duplication
    # in inference) are measured A/B in one process (AB_VARIANTS); here those that move memory or a lot
    ways = [("tgcnet", "train", "no_dedup"), ("tgcnet", "train", "lora_knowledge")]
    if not quick:   # quick sees the linear kernels in the frozen-ViT A/B only
        ways += [("tgcnet", "infer", "lora_knowledge"), ("tgcnet", "train", "no_knowledge"),
                 ("floor_fused", "infer", other_linear()), ("tgcnet", "infer", other_linear()),
                 ("tgcnet", "train", other_linear()),
                 ("tgcnet", "infer", "light_head"), ("tgcnet", "train", "light_head"),
                 ("tgcnet", "train", "method_core")]
    if feature_cache:
        ways += [("tgcnet", "train", "feature_cache")]
    if not quick and _onednn_for("default"):   # TGCNet runs oneDNN here: CLIPSeg like for like
        ways += [("clipseg", "infer", "onednn"), ("clipseg", "train", "onednn")]
    if not quick:
        ways += [("floor_fused", "infer", "bf16"), ("tgcnet", "infer", "bf16"), ("tgcnet", "train", "bf16"),
                 ("clipseg", "infer", "bf16"), ("clipseg", "train", "bf16")]
    if compile_:
        # compiling from scratch takes minutes on a small CPU: TGCNet only (its ViT is the floor's)
        ways += [("tgcnet", "infer", "compile"), ("tgcnet", "train", "compile")]
    cases += [Case(m, mode, big, variant=v, group="ways") for m, mode, v in ways]
    for size in ((320,) if quick else (320, 448)):   # growth with batch is shown at 224
        for b in batches[-1:]:
            cases.append(Case("floor_fused", "infer", b, size, group="scaling"))
            cases += [Case("tgcnet", mode, b, size, group="scaling") for mode in ("infer", "train")]
    cases += [Case(model, mode, big, group="ab") for model, mode in AB_VARIANTS
              if not (quick and model != "floor_ab")]
    cases += [Case(m, mode, b, group="biomedclip") for m, modes in (("floor_biomedclip_image", ("infer",)),
                                                                    ("floor_biomedclip_text", ("infer",)),
                                                                    ("tgcnet_biomedclip", ("infer", "train")))
              for mode in modes for b in batches[quick:]]
    # the target rows again, each in another fresh process and minutes later: process-to-process spread
    main_big = [c for c in cases if c.group in ("main", "biomedclip") and c.batch == big and c.model in REPEATED]
    return cases + main_big * (repeats - 1)


def merge_repeats(rows: list[dict]) -> list[dict]:
    """One row per configuration: timed calls of all its processes pooled (median), peak = the highest."""
    merged: dict[str, dict] = {}
    for row in rows:
        first = merged.get(row["id"])
        if first is None or "error" in first:
            merged[row["id"]] = {**row, "process_medians_s": [row["median_s"]]} if "error" not in row else row
            continue
        if "error" in row:
            continue
        first["times_s"] = first["times_s"] + row["times_s"]
        first["process_medians_s"].append(row["median_s"])
        first["median_s"] = statistics.median(first["times_s"])
        first["min_s"] = min(first["times_s"])
        first["images_per_s"] = first["batch"] / first["median_s"]
        first["peak_mb"] = max(first["peak_mb"], row["peak_mb"])
        first["other_cores"] = max(first.get("other_cores") or 0.0, row.get("other_cores") or 0.0)
    return list(merged.values())


def has_feature_cache() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("tgcnet.engine.feature_cache") is not None
    except ModuleNotFoundError:
        return False


# ---------------------------------------------------------------------------------- report
def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical CPUs"


def index(rows: list[dict]) -> dict[str, dict]:
    return {r["id"]: r for r in rows if "error" not in r}


def ratios(rows: list[dict], batch: int) -> dict[str, Optional[float]]:
    """The issue's target ratios at one batch size, 224 px."""
    r = index(rows)

    def get(model: str, mode: str, key: str, variant: str = "default") -> Optional[float]:
        row = r.get(Case(model, mode, batch, 224, variant).id)
        return None if row is None else row.get(key)

    def div(a: Optional[float], b: Optional[float]) -> Optional[float]:
        return None if a is None or b is None or b == 0 else a / b
    infer, train = get("tgcnet", "infer", "median_s"), get("tgcnet", "train", "median_s")
    return {
        "infer_over_floor": div(infer, get("floor_fused", "infer", "median_s")),
        "infer_over_open_clip_floor": div(infer, get("floor_open_clip", "infer", "median_s")),
        "fused_floor_over_open_clip_floor": div(get("floor_fused", "infer", "median_s"),
                                                get("floor_open_clip", "infer", "median_s")),
        "train_over_infer": div(train, infer),
        "train_mem_over_infer_mem": div(get("tgcnet", "train", "peak_mb"), get("tgcnet", "infer", "peak_mb")),
        "infer_throughput_over_clipseg": div(get("tgcnet", "infer", "images_per_s"),
                                             get("clipseg", "infer", "images_per_s")),
        "train_throughput_over_clipseg": div(get("tgcnet", "train", "images_per_s"),
                                             get("clipseg", "train", "images_per_s")),
        "cached_train_throughput_over_clipseg": div(get("tgcnet", "train", "images_per_s", "feature_cache"),
                                                    get("clipseg", "train", "images_per_s")),
    }


#: the same target for TGCNet trained the way the issue names as the way there for training:
#: frozen-ViT features cached (no spatial augmentation, so each image's features are reused)
CACHED_TARGET = ("training throughput / CLIPSeg's, TGCNet trained with `--cache-image-features` "
                 "(`--augment flip` or `none`)")


def targets(ratio: dict[str, Optional[float]]) -> list[dict]:
    checks = [("inference time / fused floor", "infer_over_floor", "<=", TARGETS["infer_over_floor"]),
              ("training step / inference time", "train_over_infer", "<=", TARGETS["train_over_infer"]),
              ("training peak memory / inference peak", "train_mem_over_infer_mem", "<=",
               TARGETS["train_mem_over_infer_mem"]),
              ("inference throughput / CLIPSeg's", "infer_throughput_over_clipseg", ">=", 1.0),
              ("training throughput / CLIPSeg's", "train_throughput_over_clipseg", ">=", 1.0),
              (CACHED_TARGET, "cached_train_throughput_over_clipseg", ">=", 1.0)]
    out = []
    for name, key, op, bound in checks:
        value = ratio.get(key)
        met = None if value is None else (value <= bound if op == "<=" else value >= bound)
        out.append({"target": name, "key": key, "bound": f"{op} {bound}", "value": value, "met": met})
    return out


def _flag(row: Optional[dict]) -> str:
    return " †" if row and disturbed(row) else ""


def _fmt(x: Optional[float], digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _mb(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:,.0f}"


LABELS = {"floor_open_clip": "floor: open_clip `visual(x)`", "floor_fused": "floor: fused FrozenViT",
          "tgcnet": "TGCNet", "clipseg": "CLIPSeg (patch 16, CLIP frozen)", "unet": "U-Net resnet34 (smp)",
          "floor_biomedclip_image": "floor: frozen image tower (FrozenTimmViT, timm ViT-B/16)",
          "floor_biomedclip_text": "floor: frozen text tower (HFTextTower, BERT-base), distinct captions",
          "tgcnet_biomedclip": "TGCNet, tgcnet-biomedclip"}


def _main_table(rows: list[dict], group: str = "main") -> list[str]:
    lines = ["| model | mode | batch | s/step (median) | per-process medians | images/s | peak MB | "
             "trainable params |", "|---|---|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        if r["group"] != group:
            continue
        if "error" in r:
            lines.append(f"| {LABELS[r['model']]} | {r['mode']} | {r['batch']} | failed: {r['error']} | | | | |")
            continue
        procs = r.get("process_medians_s", [])
        spread = ", ".join(f"{t:.3f}" for t in procs) if len(procs) > 1 else ""
        lines.append(f"| {LABELS[r['model']]} | {r['mode']} | {r['batch']} | {r['median_s']:.3f}{_flag(r)} | {spread} | "
                     f"{r['images_per_s']:.2f} | {_mb(r['peak_mb'])} | {r['trainable_params']:,} |")
    return lines


AB_LABELS = {"open_clip": "open_clip `visual(x)` (nn.MultiheadAttention, F.linear)",
             "unfused": "FrozenViT with open_clip's nn.MultiheadAttention (fused attention off)",
             "fused_torch_linear": "FrozenViT, fused SDPA attention, linears through F.linear (MKL)",
             "fused_onednn_linear": "FrozenViT, fused SDPA attention, linears through oneDNN",
             "fused": "FrozenViT as shipped (fused SDPA attention, clip.cpu_linear='auto')",
             "default": "TGCNet as shipped (fused attention, cpu_linear='auto', de-duplication, caption cache)",
             "tgcnet": "TGCNet as shipped", "clipseg": "CLIPSeg (patch 16, CLIP frozen)",
             "tgcnet_cached": "TGCNet on cached frozen-ViT features (`--cache-image-features`: ViT skipped)"}


def _ab_medians(rows: list[dict], model: str, mode: str) -> dict[str, float]:
    """Variant -> median s of the in-process A/B row of ``model`` and ``mode`` (empty if none ran)."""
    row = next((r for r in rows if r["model"] == model and r["mode"] == mode and "ab_median_s" in r), None)
    return (row or {}).get("ab_median_s", {})


def ab_ratio(rows: list[dict], model: str, mode: str, variant: str) -> Optional[float]:
    """Median time of ``variant`` over the first variant's, from an in-process A/B row."""
    med = _ab_medians(rows, model, mode)
    return med[variant] / med[next(iter(med))] if variant in med else None


def _ab_table(rows: list[dict]) -> list[str]:
    lines: list[str] = []
    for row in rows:
        if row["group"] != "ab" or "error" in row:
            if row["group"] == "ab":
                lines += [f"{row['id']} failed: {row['error']}", ""]
            continue
        med, times = row["ab_median_s"], row["ab_times_s"]
        base = next(iter(med))
        step = "inference" if row["mode"] == "infer" else "training step"
        what = {"tgcnet_ab": f"TGCNet {step}", "peers_ab": f"TGCNet against CLIPSeg, {step}"}.get(
            row["model"], "frozen ViT forward")
        lines += [f"{what}, batch {row['batch']}, 224 px: {len(times[base])} rounds after a warm-up round"
                  f"{_flag(row)}.", "",
                  f"| variant | median s | calls s | / {base} |", "|---|---:|---|---:|"]
        for key in med:
            label = AB_LABELS.get(key) or variant_label(key)
            calls = ", ".join(f"{t:.3f}" for t in times[key])
            lines.append(f"| {label} | {med[key]:.3f} | {calls} | {med[key] / med[base]:.3f} |")
        lines.append("")
    return lines


#: variant -> the shipped change it undoes (its row is the "before", the default the "after")
SHIPPED_CHANGES = {
    "unfused": "fused SDPA attention in the frozen ViT (before: open_clip's nn.MultiheadAttention)",
    "no_caption_cache": "eval caption cache, date.caption_cache=512 (before: 0, every batch's captions encoded)",
    "lora_knowledge": "date.knowledge_encoder='frozen': descriptions encoded once by the tower with LoRA bypassed, "
                      "cached (before: 'lora', re-encoded with gradients every training step)",
}


def _ways_table(rows: list[dict]) -> list[str]:
    r = index(rows)
    lines = ["| change | model | mode | batch | before s | after s | after / before | before MB | after MB |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        if row["group"] != "ways":
            continue
        base = r.get(Case(row["model"], row["mode"], row["batch"], row["size"]).id)
        if "error" in row or base is None:
            why = row.get("error", "baseline missing")
            lines.append(f"| {variant_label(row['variant'])} | {row['model']} | {row['mode']} | {row['batch']} | "
                         f"failed: {why} | | | | |")
            continue
        # these variants are the before of a shipped default: show them that way round
        shipped = SHIPPED_CHANGES.get(row["variant"])
        before, after = (row, base) if shipped else (base, row)
        label = shipped or variant_label(row["variant"])
        extra = (" (warm-up calls incl. compiling: " + ", ".join(f"{t:.1f}" for t in row["warmup_s"]) + " s)"
                 if row["variant"] == "compile" else "")
        lines.append(f"| {label}{extra} | {row['model']} | {row['mode']} | {row['batch']} | "
                     f"{before['median_s']:.3f}{_flag(before)} | {after['median_s']:.3f}{_flag(after)} | "
                     f"{after['median_s'] / before['median_s']:.2f} | {_mb(before['peak_mb'])} | "
                     f"{_mb(after['peak_mb'])} |")
    return lines


def _scaling_table(rows: list[dict]) -> list[str]:
    r = index(rows)
    keys = sorted({(row["size"], row["batch"]) for row in rows if row["model"] == "tgcnet"
                   and row["variant"] == "default" and "error" not in row})
    lines = ["| size | batch | floor s | TGCNet infer s | infer / floor | TGCNet train s | train / infer | "
             "infer peak MB | train peak MB |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for size, batch in keys:
        floor_row = r.get(Case("floor_fused", "infer", batch, size).id, {})
        floor = floor_row.get("median_s")
        inf = r.get(Case("tgcnet", "infer", batch, size).id, {})
        tr = r.get(Case("tgcnet", "train", batch, size).id, {})
        ratio_f = inf["median_s"] / floor if floor and inf else None
        ratio_t = tr["median_s"] / inf["median_s"] if tr and inf else None
        lines.append(f"| {size} | {batch} | {_fmt(floor, 3)}{_flag(floor_row)} | {_fmt(inf.get('median_s'), 3)}"
                     f"{_flag(inf)} | {_fmt(ratio_f)} | {_fmt(tr.get('median_s'), 3)}{_flag(tr)} | {_fmt(ratio_t)} | "
                     f"{_mb(inf.get('peak_mb'))} | "
                     f"{_mb(tr.get('peak_mb'))} |")
    return lines


def _parts_table(rows: list[dict], batch: int, model: str = "tgcnet") -> list[str]:
    r = index(rows)
    inf = r.get(Case(model, "infer", batch).id, {}).get("forward_parts_s", {})
    tr = r.get(Case(model, "train", batch).id, {}).get("forward_parts_s", {})
    if not inf or not tr:
        return []
    names = ["sse.clip_visual", "sse.cnn", "sse.fusion", "date", "date.encode(caption)",
             "date.encode(description)", "vlcm", "decoder"]
    lines = [f"One extra step of each (batch {batch}, 224 px), timed by forward hooks; "
             "`date` includes both encodes. Training's remainder is backward + optimizer step.", "",
             "| part | inference s | training s |", "|---|---:|---:|"]
    for n in names:
        lines.append(f"| {n} | {_fmt(inf.get(n), 3)} | {_fmt(tr.get(n), 3)} |")
    fwd = lambda p: sum(p.get(n, 0.0) for n in ("sse.clip_visual", "sse.cnn", "sse.fusion", "date", "vlcm", "decoder"))
    lines.append(f"| whole step | {_fmt(inf.get('step'), 3)} | {_fmt(tr.get('step'), 3)} |")
    lines.append(f"| of it outside the forward (backward, optimizer, loss) | {_fmt(inf['step'] - fwd(inf), 3)} | "
                 f"{_fmt(tr['step'] - fwd(tr), 3)} |")
    return lines


def _alternatives(get: Callable, mode: str, variants: list[str], infer: dict) -> list[str]:
    """Sub-bullets: the same TGCNet step under other variants, with the ratios the targets use."""
    lines = []
    for v in variants:
        alt = get("tgcnet", mode, v)
        if alt is None:
            continue
        ratio = (f"; train / infer {alt['median_s'] / infer['median_s']:.2f}, train / infer peak memory "
                 f"{alt['peak_mb'] / infer['peak_mb']:.2f}" if mode == "train" else "")
        lines.append(f"  - {variant_label(v)}: {alt['median_s']:.3f} s/step, {alt['images_per_s']:.2f} images/s, "
                     f"peak {_mb(alt['peak_mb'])} MB{ratio}.")
    return lines


WHAT_IFS = ["no_knowledge", "lora_knowledge", "light_head", "method_core", "feature_cache"]


def _ab_pair(rows: list[dict], model: str, mode: str, variant: str, base: str) -> Optional[tuple[float, float]]:
    """(median s of ``variant``, of ``base``) from one in-process A/B row."""
    med = _ab_medians(rows, model, mode)
    return (med[variant], med[base]) if variant in med and base in med else None


def _kernel_lines(rows: list[dict], meta: dict) -> list[str]:
    pair = _ab_pair(rows, "floor_ab", "infer", "fused_onednn_linear", "fused_torch_linear")
    if pair is None:
        return []
    picked = "oneDNN" if meta.get("cpu_linear_auto") == "onednn" else "F.linear (MKL)"
    line = (f"- Linear kernels ({meta.get('cpu_vendor', '?')} CPU, so clip.cpu_linear='auto' picked {picked}): the "
            f"frozen ViT took {pair[0]:.3f} s with oneDNN linears and {pair[1]:.3f} s with F.linear in the "
            f"one-process A/B ({pair[0] / pair[1]:.2f}x)")
    for mode, what in (("infer", "inference"), ("train", "training step")):
        both = _ab_pair(rows, "tgcnet_ab", mode, "onednn_linear", "torch_linear")
        if both:
            line += f"; TGCNet {what} {both[0] / both[1]:.2f}x"
    return [line + ". MKL runs AVX2 code on AMD processors and AVX-512 on Intel ones; oneDNN AVX-512 on both."]


def explain(rows: list[dict], batch: int, checks: list[dict], meta: Optional[dict] = None) -> list[str]:
    """What moved the target ratios, and for each missed target the measured facts behind it."""
    r = index(rows)
    get = lambda model, mode, variant="default": r.get(Case(model, mode, batch, 224, variant).id)
    infer, train = get("tgcnet", "infer"), get("tgcnet", "train")
    if not infer or not train:
        return []
    missed = {c["key"] for c in checks if c["met"] is False}
    lines = _kernel_lines(rows, meta or {})
    for mode, what in (("infer", "inference"), ("train", "training")):
        pair = _ab_pair(rows, "peers_ab", mode, "clipseg", "tgcnet")
        if pair:
            lines.append(f"- TGCNet / CLIPSeg {what} throughput with the two interleaved in one process (free of "
                         f"the process-to-process spread of the table's rows): {pair[0] / pair[1]:.2f} "
                         f"({pair[1]:.3f} s against {pair[0]:.3f} s per batch).")
    cached_pair = _ab_pair(rows, "peers_ab", "train", "clipseg", "tgcnet_cached")
    if cached_pair:
        lines.append(f"- The same for TGCNet trained on cached frozen-ViT features (`--cache-image-features`): "
                     f"{cached_pair[0] / cached_pair[1]:.2f} ({cached_pair[1]:.3f} s against {cached_pair[0]:.3f} s "
                     f"per batch). The cache serves epochs whose pixels repeat (`--augment flip`: two versions per "
                     f"image; `none`); qata_mini.md's `tgcnet_cached` row gives the Dice of that recipe.")
    lora = get("tgcnet", "train", "lora_knowledge")
    if lora:
        lines.append(
            f"- Knowledge encoder: with date.knowledge_encoder='lora' (the earlier default) every training step "
            f"re-encodes the batch's {train.get('text', {}).get('unique_descriptions')} distinct descriptions "
            f"through the LoRA text tower with gradients: {lora['median_s']:.3f} s/step and {_mb(lora['peak_mb'])} MB "
            f"peak (train / infer {lora['median_s'] / infer['median_s']:.2f}, memory "
            f"{lora['peak_mb'] / infer['peak_mb']:.2f}) against {train['median_s']:.3f} s and "
            f"{_mb(train['peak_mb'])} MB as shipped.")
    cs_inf, cs_tr = get("clipseg", "infer"), get("clipseg", "train")
    cs_inf1, cs_tr1 = get("clipseg", "infer", "onednn"), get("clipseg", "train", "onednn")
    if cs_inf and cs_tr:
        line = (f"- CLIPSeg runs stock transformers code (linears through MKL): {cs_inf['median_s']:.3f} s "
                f"inference, {cs_tr['median_s']:.3f} s training step. It keeps its whole CLIP under no_grad and "
                f"trains only its decoder ({cs_tr['trainable_params']:,} parameters); TGCNet backpropagates "
                f"through the LoRA text tower, CNN, fusion, VLCM and decoder ({train['trainable_params']:,}).")
        if cs_inf1 and cs_tr1:
            line += (f" Given the same oneDNN linears CLIPSeg took {cs_inf1['median_s']:.3f} s / "
                     f"{cs_tr1['median_s']:.3f} s: like for like, TGCNet's inference throughput is "
                     f"{cs_inf1['median_s'] / infer['median_s']:.2f}x and its training throughput "
                     f"{cs_tr1['median_s'] / train['median_s']:.2f}x CLIPSeg's.")
        lines.append(line)
    cached = get("tgcnet", "train", "feature_cache")
    if cached:
        lines.append(f"- With the frozen-ViT feature cache (`--cache-image-features`, epochs without spatial "
                     f"augmentation): {cached['median_s']:.3f} s/step, {cached['images_per_s']:.2f} images/s.")
    if missed & {"train_over_infer", "train_mem_over_infer_mem", "train_throughput_over_clipseg"}:
        parts = train.get("forward_parts_s", {})
        names = ("sse.clip_visual", "date", "sse.cnn", "sse.fusion", "vlcm", "decoder")
        forward = sum(parts.get(n, 0.0) for n in names)
        lines.append(
            f"- Training (a target missed): of the {_fmt(parts.get('step'), 3)} s profiled step the forward takes "
            f"{forward:.3f} s (frozen ViT {_fmt(parts.get('sse.clip_visual'), 3)}, DATE {_fmt(parts.get('date'), 3)}, "
            f"CNN {_fmt(parts.get('sse.cnn'), 3)}, fusion {_fmt(parts.get('sse.fusion'), 3)}, VLCM "
            f"{_fmt(parts.get('vlcm'), 3)}, decoder {_fmt(parts.get('decoder'), 3)}); the other "
            f"{_fmt((parts.get('step') or 0.0) - forward, 3)} s are the loss, the backward through everything "
            f"trained (the fusion and decoder convolutions at stride 4 and 8, the CNN branch, LoRA through the text "
            f"tower) and the optimizer step. CLIPSeg's training step costs what its inference does, because all it "
            f"trains is a decoder on stride-16 tokens behind a no_grad CLIP. Memory: "
            f"{_mb(train['resident_after_build_mb'])} MB resident after construction; inference adds "
            f"{_mb(infer['peak_mb'] - infer['resident_after_build_mb'])} MB, training "
            f"{_mb(train['peak_mb'] - train['resident_after_build_mb'])} MB. Same step otherwise:")
        lines += _alternatives(get, "train", WHAT_IFS, infer)
        core = get("tgcnet", "train", "method_core")
        if core and cs_tr:
            verdict = ("so no fusion/VLCM/decoder design of the method can reach CLIPSeg's training throughput "
                       "on uncached images here: the frozen ViT alone is most of CLIPSeg's step, and LoRA and the "
                       "CNN branch must backpropagate" if core["median_s"] > cs_tr["median_s"] else
                       "so a lighter head could in principle reach CLIPSeg's training throughput")
            lines.append(f"- Lower bound: the parts every TGC-Net step runs whatever its head take "
                         f"{core['median_s']:.3f} s/step against CLIPSeg's {cs_tr['median_s']:.3f} s "
                         f"({core['median_s'] / cs_tr['median_s']:.2f}x), {verdict}.")
    if missed & {"infer_over_floor", "infer_throughput_over_clipseg"}:
        ip = infer.get("forward_parts_s", {})
        lines.append(f"- Inference (a target missed): the frozen ViT takes {_fmt(ip.get('sse.clip_visual'), 3)} s "
                     f"of the {_fmt(ip.get('step'), 3)} s step; caption encoding {_fmt(ip.get('date'), 3)} s, CNN "
                     f"{_fmt(ip.get('sse.cnn'), 3)} s, fusion {_fmt(ip.get('sse.fusion'), 3)} s, VLCM "
                     f"{_fmt(ip.get('vlcm'), 3)} s, decoder {_fmt(ip.get('decoder'), 3)} s.")
        for v in ("lora_merged", "no_caption_cache"):
            ratio = ab_ratio(rows, "tgcnet_ab", "infer", v)
            if ratio is not None:
                lines.append(f"  - {variant_label(v)}: {ratio:.3f} x the shipped step in the A/B.")
        light = get("tgcnet", "infer", "light_head")
        if light:
            lines.append(f"  - {variant_label('light_head')}: {light['median_s']:.3f} s/step "
                         f"({light['trainable_params']:,} trainable parameters), against CLIPSeg's "
                         f"{_fmt((get('clipseg', 'infer') or {}).get('median_s'), 3)} s.")
    return lines


def to_markdown(result: dict) -> str:
    meta, rows = result["meta"], result["rows"]
    batch = meta["batches"][-1]
    checks = result["targets"]
    ratio = result["ratios"][str(batch)]
    lines = [f"# Speed and memory ({meta['preset']})", "",
             f"Written by `benchmarks/speed.py{' --quick' if meta['quick'] else ''}` on {meta['date']}: "
             f"{meta['device_name']}, torch {meta['torch']}, {meta['threads']} torch threads, "
             f"{meta['dtype']}; {meta['warmup']} warm-up + {meta['iters']} timed calls per configuration "
             f"(median), each configuration in a fresh process; the target rows (floors, TGCNet, CLIPSeg at "
             f"batch {meta['batches'][-1]}) in {meta.get('repeats', 1)} fresh processes each, run minutes apart, "
             f"their calls pooled. Random-init weights, 3x224x224 unless said.",
             f"Peak memory: {meta['memory_kind']}. Load average at start / end: {meta['loadavg_start']} / "
             f"{meta['loadavg_end']}; whole run {meta['elapsed_s']:.0f} s.",
             f"A configuration during whose timed calls other processes (or hypervisor steal) used more than "
             f"{DISTURBED_CORES} of a core was run once more at the end and the less disturbed measurement kept "
             f"({meta.get('reruns', 0)} re-run); † marks one still above that."]
    if meta.get("quick"):
        lines.append("**Quick mode**: batches 1 and 2 (not 8), fewer calls, scaling to 320 px only, no bf16 / "
                     "knowledge-off / linear-kernel / light-head / lower-bound rows, no TGCNet or peer A/B (the "
                     "frozen-ViT one only); numbers are for "
                     "checking the script, not for the targets.")
    if meta.get("note"):
        lines += ["", f"Note: {meta['note']}"]
    lines += ["", f"## Targets (batch {batch}, 224 px, same run)", "", "| target | bound | measured | status |",
              "|---|---|---:|---|"]
    for c in checks:
        status = "n/a" if c["met"] is None else ("**met**" if c["met"] else "**missed**")
        lines.append(f"| {c['target']} | {c['bound']} | {_fmt(c['value'])} | {status} |")
    for mode, member, what in (("infer", "tgcnet", "inference throughput / CLIPSeg's"),
                               ("train", "tgcnet", "training throughput / CLIPSeg's"),
                               ("train", "tgcnet_cached", CACHED_TARGET)):
        pair = _ab_pair(rows, "peers_ab", mode, "clipseg", member)
        if pair:   # the same ratio without process-to-process spread: shown beside, never instead
            value = pair[0] / pair[1]
            status = "**met**" if value >= 1.0 else "**missed**"
            lines.append(f"| {what}, interleaved with CLIPSeg in one process | >= 1.0 | {value:.2f} | {status} |")
    lines += ["", f"Against open_clip's default path as the floor: inference / floor = "
                  f"{_fmt(ratio['infer_over_open_clip_floor'])}; fused floor / open_clip floor = "
                  f"{_fmt(ratio['fused_floor_over_open_clip_floor'])} across processes, "
                  f"{_fmt(ab_ratio(rows, 'floor_ab', 'infer', 'fused'), 3)} in the one-process A/B below "
                  f"(FrozenViT without fused attention: {_fmt(ab_ratio(rows, 'floor_ab', 'infer', 'unfused'), 3)})."]
    why = explain(rows, batch, checks, meta)
    if why:
        lines += ["", "What moved these numbers, and why any missed one is missed (measured in this run):", "",
                  *why]
    lines += ["", "## All models", "", *_main_table(rows), "",
              "## Small changes, A/B in one process", "",
              "Each variant on its own copy of the same weights, in one process, called in turn round by round: "
              "the differences between fresh processes (see the per-process medians above, and the absolute "
              "times here against the table above) do not enter these ratios.", "", *_ab_table(rows),
              "## Where TGCNet's time goes", "",
              *_parts_table(rows, batch), "", "## Ways there, before / after", "", *_ways_table(rows)]
    if not meta.get("feature_cache_available"):
        lines += ["", "The frozen-ViT feature cache (tgcnet.engine.feature_cache) was not installed: not measured."]
    if not meta.get("compile"):
        lines += ["", "torch.compile not measured in this run (`--compile`)."]
    lines += ["", "## Scaling with input size and batch (TGCNet, fused floor)", "", *_scaling_table(rows), ""]
    lines += _biomedclip_section(rows, meta)
    return "\n".join(lines)


def _biomedclip_section(rows: list[dict], meta: dict) -> list[str]:
    """The BiomedCLIP-shaped preset beside its own frozen towers (empty if none of its rows ran)."""
    mine = [r for r in rows if r["group"] == "biomedclip"]
    if not mine:
        return []
    r = index(rows)
    ids = {row["id"] for row in mine}
    run = next((m for m in reversed(meta.get("merged_runs", [])) if ids & set(m.get("ids", []))), None)
    preset = (run or meta).get("biomedclip_preset", "tgcnet-biomedclip")
    if run is None:
        when = "Measured in this run, as the rows above."
    else:
        loaded = (" (measured under load: other processes were using the CPU)"
                  if run["loadavg_start"][0] >= LOADED else "")
        others = [row["other_cores"] for row in mine if row.get("other_cores") is not None]
        if others:
            loaded += (f"; other processes used at most {max(others):.2f} of a core during any of these rows' timed "
                       f"calls")
        when = (f"Measured on {run['date']} by `benchmarks/speed.py --only {run.get('only')}` and merged into this "
                f"file (`--merge-into`; the rows above are untouched): same machine, {run['threads']} torch threads, "
                f"{run['warmup']} warm-up + {run['iters']} timed calls, each configuration in a fresh process, the "
                f"batch-{meta['batches'][-1]} rows in {run.get('repeats', 1)} fresh processes each; load average "
                f"at start / end {run['loadavg_start']} / {run['loadavg_end']}"
                f"{loaded}; {run['elapsed_s']:.0f} s.")
    lines = ["## BiomedCLIP-shaped CLIP", "",
             f"`{preset}` as shipped (open_clip `TimmModel` image tower: timm ViT-B/16, CLS pooling, linear head "
             f"768 -> 512; `HFTextEncoder` text tower: 12-layer BERT-base, MLP projection, LoRA; knowledge bank on), "
             f"random init, beside its own floors: its frozen image tower as TGCNet runs it (`model.sse.clip_visual`, "
             f"a FrozenTimmViT) and its frozen text tower on the batch's distinct captions (linears as TGCNet runs "
             f"them, no LoRA). Same captions, batches and 224 px images as above. The tokenizer is a BERT WordPiece "
             f"vocabulary written at run time (BERT's special tokens, single characters, and the whole words of the "
             f"QaTa-style captions, the embedded sample's captions and the knowledge bank), since BiomedCLIP's "
             f"tokenizer files are not available offline; real BiomedCLIP captions and descriptions tokenise to "
             f"roughly the same number of word pieces. Inference is timed as TGCNet's above: eval mode, caption and "
             f"description embeddings cached after the first batch, so the text tower runs in training steps only "
             f"(on the distinct captions, through LoRA). {when}"]
    if run is not None and run.get("note"):
        lines += ["", f"Note: {run['note']}"]
    lines += ["", *_main_table(rows, "biomedclip"), ""]
    for batch in sorted({row["batch"] for row in mine}):
        get = lambda model, mode: r.get(Case(model, mode, batch).id)
        image, text = get("floor_biomedclip_image", "infer"), get("floor_biomedclip_text", "infer")
        infer, train = get("tgcnet_biomedclip", "infer"), get("tgcnet_biomedclip", "train")
        facts = []
        if infer and image:
            facts.append(f"inference / image-tower floor {infer['median_s'] / image['median_s']:.2f}")
        if infer and image and text:
            facts.append(f"inference / (image + text tower floors) "
                         f"{infer['median_s'] / (image['median_s'] + text['median_s']):.2f}")
        if infer and train:
            facts.append(f"training step / inference {train['median_s'] / infer['median_s']:.2f}, training / "
                         f"inference peak memory {train['peak_mb'] / infer['peak_mb']:.2f}")
        stats = (train or infer or {}).get("text")
        if stats:
            facts.append(f"text per batch: {stats['unique_captions']} distinct caption"
                         f"{'s' if stats['unique_captions'] != 1 else ''} padded to "
                         f"{stats['caption_tokens']} tokens, {stats['unique_descriptions']} distinct descriptions "
                         f"padded to {stats['description_tokens']}")
        if facts:
            lines.append(f"- Batch {batch}: " + "; ".join(facts) + ".")
    big = max(row["batch"] for row in mine)
    parts = _parts_table(rows, big, "tgcnet_biomedclip")
    if parts:
        lines += ["", *parts]
    return [*lines, ""]


# ---------------------------------------------------------------------------------- main
def disturbed(row: dict) -> bool:
    return (row.get("other_cores") or 0.0) > DISTURBED_CORES


def run_all(cases: list[Case], settings: Settings) -> list[dict]:
    """Each case in a fresh process forked from a forkserver that preloaded the libraries.

    Cases that ran while others used the CPU (:class:`LoadProbe`) are run once more at the
    end; the less disturbed of the two measurements is kept.
    """
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    rows: list[dict] = []
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx, max_tasks_per_child=1) as pool:
        for i, case in enumerate(cases, 1):
            rows.append(_run_logged(pool, case, settings, f"{i}/{len(cases)}"))
        for i, row in enumerate(list(rows)):
            if disturbed(row):
                again = _run_logged(pool, cases[i], settings, f"re-run {i + 1}")
                again["reruns"] = row["reruns"] = row.get("reruns", 0) + 1
                if "error" not in again and (again.get("other_cores") or 0.0) < row["other_cores"]:
                    rows[i] = again
    return rows


def _run_logged(pool, case: Case, settings: Settings, tag: str) -> dict:
    row = pool.submit(_run_isolated, case, settings).result()
    status = row.get("error") or (f"{row['median_s']:.3f} s/step, {row['images_per_s']:.2f} img/s, "
                                  f"peak {_mb(row['peak_mb'])} MB")
    if "ab_median_s" in row:
        status = ", ".join(f"{k} {v:.3f} s" for k, v in row["ab_median_s"].items())
    if row.get("other_cores") is not None:
        status += f"; others used {row['other_cores']:.2f} cores" + (" (DISTURBED)" if disturbed(row) else "")
    print(f"[{tag}] {case.id}: {status}", flush=True)
    return row


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batches 1-2, 1+2 calls: a check in under 2 minutes")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile rows")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--amp", choices=["bf16"], default=None, help="autocast dtype (default: float32)")
    parser.add_argument("--preset", default="tgcnet-vit-b16")
    parser.add_argument("--biomedclip-preset", default="tgcnet-biomedclip",
                        help="preset of the BiomedCLIP-shaped rows (default: tgcnet-biomedclip)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None,
                        help="fresh processes per target row (default: 2, quick: 1)")
    parser.add_argument("--only", default=None, help="measure only cases whose id contains this")
    parser.add_argument("--note", default=None, help="a line for the report (e.g. other load on the machine)")
    parser.add_argument("--report", default=None, metavar="SPEED_JSON",
                        help="measure nothing: rewrite speed.md (and --note) from an earlier speed.json")
    parser.add_argument("--merge-into", default=None, metavar="SPEED_JSON",
                        help="add this run's rows to an earlier speed.json (same id: replaced), measured with its "
                             "threads, warm-up, calls and repeats unless given; write the merged result to --out")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)

    if args.report:
        return rewrite_report(Path(args.report), Path(args.out), args.note)
    base = _read_result(Path(args.merge_into), "--merge-into") if args.merge_into else None
    if base is not None:
        earlier = base["meta"]
        if (earlier["preset"], earlier["quick"]) != (args.preset, args.quick):
            parser.error(f"--merge-into: that run measured preset {earlier['preset']!r}, quick={earlier['quick']}; "
                         f"give the same --preset and --quick")
        for name in ("threads", "warmup", "iters", "repeats", "device"):
            if getattr(args, name) is None:
                setattr(args, name, earlier.get(name))
        if args.amp is None and earlier.get("dtype", "float32") != "float32":
            args.amp = earlier["dtype"].split()[-1]

    import torch

    from tgcnet.kernels import cpu_vendor

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    warmup = args.warmup if args.warmup is not None else 1
    iters = args.iters if args.iters is not None else (2 if args.quick else 3)
    if warmup < 1 or iters < 1:
        parser.error("--warmup and --iters must be at least 1")
    settings = Settings(preset=args.preset, device=device, threads=args.threads, warmup=warmup, iters=iters,
                        amp=args.amp, biomedclip_preset=args.biomedclip_preset)
    cache = has_feature_cache()
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 2)
    if repeats < 1:
        parser.error("--repeats must be at least 1")
    cases = plan(args.quick, args.compile, cache, repeats)
    if args.only:
        cases = [c for c in cases if args.only in c.id]
    start, load_start = time.time(), os.getloadavg()
    measured = run_all(cases, settings)
    rows = merge_repeats(measured)
    batches = sorted({c.batch for c in cases if c.group == "main"}) or [1]
    ok = [r for r in rows if "error" not in r]
    if base is not None:
        run = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "only": args.only,
               "threads": ok[0]["threads"] if ok else args.threads, "warmup": warmup, "iters": iters,
               "repeats": repeats, "reruns": sum(r.get("reruns", 0) for r in measured), "note": args.note,
               "biomedclip_preset": args.biomedclip_preset, "loadavg_start": [round(x, 2) for x in load_start],
               "loadavg_end": [round(x, 2) for x in os.getloadavg()], "elapsed_s": time.time() - start}
        write_results(merge_into(base, rows, run), Path(args.out))
        return 0
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "preset": args.preset, "quick": args.quick,
            "device": device, "device_name": device_name(device), "torch": torch.__version__,
            "python": platform.python_version(), "threads": ok[0]["threads"] if ok else args.threads,
            "dtype": f"autocast {args.amp}" if args.amp else "float32", "warmup": warmup, "iters": iters,
            "memory_kind": next((r["memory_kind"] for r in ok if "memory_kind" in r), "n/a"), "batches": batches,
            "compile": args.compile, "feature_cache_available": cache, "repeats": repeats,
            "reruns": sum(r.get("reruns", 0) for r in measured), "captions": CAPTIONS, "note": args.note,
            "biomedclip_preset": args.biomedclip_preset,
            "cpu_vendor": cpu_vendor(), "cpu_linear_auto": "onednn" if _onednn_for("default") else "torch",
            "loadavg_start": [round(x, 2) for x in load_start],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()], "elapsed_s": time.time() - start}
    ratio = {str(b): ratios(rows, b) for b in batches}
    result = {"meta": meta, "ratios": ratio, "targets": targets(ratio[str(batches[-1])]), "rows": rows}
    write_results(result, Path(args.out))
    return 0


def write_results(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "speed.md").write_text(to_markdown(result))
    print(to_markdown(result))


def _read_result(source: Path, flag: str) -> dict:
    try:
        return json.loads(source.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"{flag}: cannot read {source}: {exc}") from exc


def merge_into(base: dict, rows: list[dict], run: dict) -> dict:
    """An earlier result with ``rows`` added: a row whose id it has replaces that row in place,
    the others are appended; every other row stays as it was. ``run`` (when, settings, load)
    goes into ``meta['merged_runs']`` with the ids it measured; ratios and targets are
    recomputed (the same unless a replaced row enters them)."""
    new = {r["id"]: r for r in rows}
    merged = [new.pop(r["id"], r) for r in base["rows"]] + list(new.values())
    meta = {**base["meta"], "merged_runs": [*base["meta"].get("merged_runs", []),
                                            {**run, "ids": [r["id"] for r in rows]}]}
    batches = meta["batches"]
    ratio = {str(b): ratios(merged, b) for b in batches}
    return {"meta": meta, "ratios": ratio, "targets": targets(ratio[str(batches[-1])]), "rows": merged}


def rewrite_report(source: Path, out: Path, note: Optional[str]) -> int:
    """Re-render the markdown of a finished run (e.g. to add a note); the measurements stay as they were."""
    result = _read_result(source, "--report")
    if note is not None:
        result["meta"]["note"] = note
    write_results(result, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
