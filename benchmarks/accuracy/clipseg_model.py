"""CLIPSeg at the size of a tgcnet preset's CLIP, as a model for ``tgcnet.engine``'s model_factory hook.

The qata-mini benchmark's ``clipseg`` row: transformers' ``CLIPSegForImageSegmentation`` whose CLIP
vision and text towers have the width, depth, heads, MLP ratio, patch size, activation, vocabulary,
context length and joint-space width of the preset's open_clip towers (``tgcnet-cpu``: width 64,
2 layers, 2 heads, MLP 256, patch 16, GELU, BPE vocabulary 49408, context 77, joint space 64).
Everything else is CLIPSeg's own design at its published defaults, the refined variant
(``clipseg-rd64-refined``): reduce dim 64, FiLM conditioning at the first decoder layer, a decoder
layer per extracted ViT layer (here both layers, ``extract_layers=[0, 1]``), 4 decoder heads, decoder MLP
2048, and the "complex" transposed-convolution head (conv 3x3, two transposed convs of stride 4).

* **Weights.** Random init, as tgcnet-cpu's CLIP (no CLIP weights exist offline). The CLIP part is
  initialised from the preset's ``clip.init_seed``, whatever the training seed, as TGCNet's frozen
  towers are; the decoder is initialised from the trainer's seeded generator, so it changes with
  ``--seed`` as TGCNet's trainable parts do.
* **Decoder init.** transformers' generic init draws every Linear and Conv weight of the decoder from
  N(0, ``initializer_factor``), and CLIPSeg's ``initializer_factor`` is 1.0 (a scale, not a std): harmless
  when a checkpoint is loaded over it, but from scratch the first logits are in the thousands and the
  decoder collapses to all-background within the first epoch. The decoder's layers are therefore reset
  to PyTorch's default init (``reset_parameters``), the init TGCNet's own decoder starts from.
* **Frozen / trained.** The whole CLIP (``model.clip``: both towers and their projections) is frozen
  (``requires_grad=False``; CLIPSeg also runs it under ``no_grad``); only ``model.decoder`` trains.
* **Input path, no processor.** Images arrive as the engine gives them, floats in [0, 1] (B, 3, H, W);
  the wrapper normalises them with OpenAI CLIP's mean and std, as TGCNet does inside. Captions are
  put in TGCNet's canonical form (:func:`tgcnet.captions.normalize_caption`) and tokenised by the
  same open_clip ``SimpleTokenizer`` ids that tgcnet-cpu's text tower reads
  (:class:`tgcnet.tokenizer.OpenClipTokenizer`: start token, BPE ids, end token 49407, cut to the
  context keeping the end token), padded with 0 under an attention mask. CLIPSeg's text model pools
  at the first end token (its ``eos_token_id`` is 49407), which is where the open_clip tower pools.
  transformers' ``CLIPTokenizer`` is not used: without its vocabulary files it silently yields a
  two-token vocabulary.
* **Output.** CLIPSeg's logits (B, h, w) become (B, 1, H, W), bilinearly resized to the input size
  when they differ (they do not for sizes that are multiples of the patch size).

    from benchmarks.accuracy.clipseg_model import CLIPSegSegmenter, make_clipseg
    model = CLIPSegSegmenter(image_size=224, preset="tgcnet-cpu")
    logits = model(images, captions)            # (B, 1, H, W)
    train(cfg, model_factory=make_clipseg)      # tgcnet.engine
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from tgcnet.engine import TrainConfig

__all__ = ["tower_sizes", "clipseg_config", "reset_to_torch_init", "CLIPSegSegmenter", "make_clipseg", "DECODER"]

#: CLIPSeg's own decoder settings (transformers' defaults, the rd64-refined variant); extract_layers is
#: set from the preset's ViT depth
DECODER: dict[str, Any] = {"reduce_dim": 64, "conditional_layer": 0, "decoder_num_attention_heads": 4,
                           "decoder_intermediate_size": 2048, "use_complex_transposed_convolution": True}


def tower_sizes(preset: str = "tgcnet-cpu") -> dict[str, Any]:
    """The sizes of ``preset``'s open_clip towers, as CLIPSeg config fields.

    Raises ValueError for a preset whose towers are not an inline open_clip ViT + transformer config
    (a named or hub CLIP, an HF text tower): this builder only mirrors the CPU presets.
    """
    from tgcnet.config import get_preset

    clip = get_preset(preset).clip
    cfg = clip.model_cfg or {}
    vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    if not vision.get("width") or not text.get("width") or "hf_model_name" in text:
        raise ValueError(f"preset {preset!r} has no inline open_clip ViT and text transformer config "
                         "(clip.model_cfg); CLIPSeg can only mirror such towers")
    act = "quick_gelu" if cfg.get("quick_gelu") else "gelu"
    v_width, t_width = int(vision["width"]), int(text["width"])
    return {
        "projection_dim": int(cfg["embed_dim"]),
        "vision": {"hidden_size": v_width, "num_hidden_layers": int(vision["layers"]),
                   "num_attention_heads": v_width // int(vision.get("head_width", 64)),
                   "intermediate_size": int(v_width * float(vision.get("mlp_ratio", 4.0))),
                   "patch_size": int(vision["patch_size"]), "hidden_act": act},
        "text": {"hidden_size": t_width, "num_hidden_layers": int(text["layers"]),
                 "num_attention_heads": int(text.get("heads", 8)),
                 "intermediate_size": int(t_width * float(text.get("mlp_ratio", 4.0))),
                 "vocab_size": int(text.get("vocab_size", 49408)),
                 "max_position_embeddings": int(text.get("context_length", 77)), "hidden_act": act,
                 "eos_token_id": 49407, "bos_token_id": 49406, "pad_token_id": 0},
        "init_seed": int(clip.init_seed)}


def clipseg_config(image_size: int, preset: str = "tgcnet-cpu", **decoder: Any):
    """A ``CLIPSegConfig`` with ``preset``'s tower sizes, CLIPSeg's decoder (:data:`DECODER`, updated by
    ``decoder``) reading every ViT layer, and the vision tower's native size ``image_size``."""
    from transformers import CLIPSegConfig

    sizes = tower_sizes(preset)
    layers = sizes["vision"]["num_hidden_layers"]
    settings = {**DECODER, "extract_layers": list(range(layers)), **decoder}
    return CLIPSegConfig(text_config=dict(sizes["text"]),
                         vision_config={**sizes["vision"], "image_size": int(image_size)},
                         projection_dim=sizes["projection_dim"], **settings)


def reset_to_torch_init(module: nn.Module) -> None:
    """Re-draw every layer of ``module`` that has ``reset_parameters`` with PyTorch's default init."""
    for layer in module.modules():
        if layer is not module and hasattr(layer, "reset_parameters"):
            layer.reset_parameters()


class CLIPSegSegmenter(nn.Module):
    """CLIPSeg behind the engine's ``forward(images, captions) -> (B, 1, H, W)`` contract.

    ``self.model`` is the ``CLIPSegForImageSegmentation``; ``self.model.clip`` is frozen and seeded
    from the preset's ``clip.init_seed``; ``self.model.decoder`` is the trainable part.
    """

    def __init__(self, image_size: int = 224, preset: str = "tgcnet-cpu", normalize_captions: bool = True,
                 **decoder: Any) -> None:
        super().__init__()
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
        from transformers import CLIPSegForImageSegmentation
        from transformers.models.clipseg.modeling_clipseg import CLIPSegModel

        from tgcnet.tokenizer import OpenClipTokenizer

        self.config_clipseg = clipseg_config(image_size, preset, **decoder)
        self.preset, self.normalize_captions = preset, normalize_captions
        self.model = CLIPSegForImageSegmentation(self.config_clipseg)   # decoder: the trainer's generator
        reset_to_torch_init(self.model.decoder)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(tower_sizes(preset)["init_seed"])
            self.model.clip = CLIPSegModel(self.config_clipseg)         # CLIP: fixed, as TGCNet's towers
        self.model.clip.requires_grad_(False)
        self.tokenizer = OpenClipTokenizer(self.config_clipseg.text_config.max_position_embeddings)
        self.register_buffer("mean", torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1), persistent=False)

    def tokenize(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask), both (B, L) with L the longest caption's token count."""
        if self.normalize_captions:
            from tgcnet.captions import normalize_caption

            captions = [normalize_caption(c) for c in captions]
        tok = self.tokenizer
        rows = [ids if len(ids) <= tok.context_length else tok.truncate(ids) for ids in tok.encode(captions)]
        ids = torch.full((len(rows), max(map(len, rows))), tok.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = 1
        return ids, mask

    def forward(self, images: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        if len(captions) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(captions)} captions: CLIPSeg takes one caption "
                             "per image")
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        ids, mask = self.tokenize(captions)
        pixels = (images.float() - self.mean) / self.std
        logits = self.model(input_ids=ids.to(images.device), attention_mask=mask.to(images.device),
                            pixel_values=pixels).logits
        logits = logits.reshape(images.shape[0], 1, *logits.shape[-2:])
        if logits.shape[-2:] != images.shape[-2:]:
            logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return logits


def make_clipseg(cfg: "TrainConfig") -> CLIPSegSegmenter:
    """The ``model_factory`` of the qata-mini ``clipseg`` row: CLIPSeg at ``cfg.preset``'s tower sizes and
    ``cfg.image_size``. ``cfg.pretrained`` (an open_clip checkpoint) does not apply: the CLIP is random init."""
    return CLIPSegSegmenter(image_size=cfg.image_size, preset=cfg.preset)
