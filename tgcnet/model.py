"""TGCNet: SSE -> DATE -> VLCM -> decoder, with only the adapters trainable.

What the model is and computes: the checks at its door, the forward and its training loss,
and which parameters train. Saving and loading (``save_pretrained``, ``from_pretrained``,
``push_to_hub``) come from :class:`tgcnet.hub.TGCNetHubMixin`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import torch
from torch import nn

from tgcnet.backbone import load_clip
from tgcnet.captions import normalize_caption
from tgcnet.config import LossConfig, TGCNetConfig
from tgcnet.date import DATE, KnowledgeSource
from tgcnet.decoder import Decoder
from tgcnet.guidance import guidance_masks
from tgcnet.hub import DEFAULT_KNOWLEDGE, KnowledgeArg, TGCNetHubMixin
from tgcnet.image_towers import FrozenImageTower, ViTOutput
from tgcnet.losses import deep_supervision_loss, dice_bce_loss, guidance_outside_loss, ot_alignment_loss
from tgcnet.sse import SSE
from tgcnet.text_towers import FrozenTextTower
from tgcnet.vlcm import VLCM

#: ``frozen_vit_features`` output: ViT maps (one per ``sse.vit_indices`` entry) and dense joint embeddings
ViTFeatures = ViTOutput


@dataclass
class TGCNetOutput:
    """What ``forward(..., return_aux=True)`` gives: logits, weighted auxiliary losses and, with
    deep supervision, the decoder levels' own logits; :meth:`loss` turns them into the training loss.

    ``aux_losses`` holds the SSA losses switched on in the config, already multiplied by
    their weights. ``side_logits`` (coarse to fine, each at its level's resolution) and
    ``side_weight`` come from ``decoder.deep_supervision_weight``; empty and 0 when it is off.
    ``loss_weights`` weigh Dice against BCE (``config.loss``) for the logits and the side logits alike.
    """

    logits: torch.Tensor
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    side_logits: list[torch.Tensor] = field(default_factory=list)
    side_weight: float = 0.0
    loss_weights: LossConfig = field(default_factory=LossConfig)

    def loss(self, target: torch.Tensor) -> torch.Tensor:
        """The training loss against the mask ``target``: weighted Dice + BCE of the logits, plus
        the auxiliary losses, plus ``side_weight`` times the deep-supervision loss of the side logits."""
        weights = {"dice_weight": self.loss_weights.dice_weight, "bce_weight": self.loss_weights.bce_weight}
        total = dice_bce_loss(self.logits, target, **weights) + sum(self.aux_losses.values())
        if self.side_logits and self.side_weight > 0:
            total = total + self.side_weight * deep_supervision_loss(self.side_logits, target, **weights)
        return total


def resolve_knowledge(knowledge: KnowledgeArg) -> Optional[KnowledgeSource]:
    """``"default"`` -> the knowledge bank shipped with tgcnet; a path -> a cache file; None -> off."""
    if knowledge is None or hasattr(knowledge, "descriptions_for"):
        return knowledge
    from tgcnet import prompts

    if knowledge == DEFAULT_KNOWLEDGE:
        return prompts.load_default_bank()
    if isinstance(knowledge, (str, Path)):
        return prompts.KnowledgeBank.from_cache(knowledge)
    raise ValueError(f"knowledge must be 'default', a cache path, None or an object with "
                     f"descriptions_for(caption), got {type(knowledge).__name__}")


class TGCNet(nn.Module, TGCNetHubMixin):
    """Text-guided segmentation from a frozen CLIP.

    ``forward(images, captions)`` takes images (B, 3 or 1, H, W) with values in [0, 1]
    (CLIP normalisation happens inside) and one caption per image, and returns mask
    logits (B, 1, H, W). H and W must be multiples of the ViT patch size.

    A built model runs the frozen towers' linear layers through ``F.linear``; on a CPU,
    :func:`tgcnet.accel.optimize_for_cpu` picks the fastest kernel for the machine.
    ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub``: :class:`tgcnet.hub.TGCNetHubMixin`.
    """

    def __init__(self, config: TGCNetConfig, knowledge: KnowledgeArg = DEFAULT_KNOWLEDGE) -> None:
        super().__init__()
        config = copy.deepcopy(config)
        source = resolve_knowledge(knowledge) if config.date.use_knowledge else None
        if source is None:
            # no knowledge: no fusion module either (no dead trainable weights; the saved
            # config says so, so from_pretrained rebuilds the same architecture)
            config.date.use_knowledge = False
        self.config = config
        towers = load_clip(config.clip)
        self.sse = SSE(towers.visual, config.sse)
        self.date = DATE(towers.text, towers.tokenizer, config.date, knowledge=source)
        if towers.text.output_dim != towers.embed_dim:
            raise ValueError(f"CLIP {config.clip.model_name!r}: text output dim {towers.text.output_dim} != "
                             f"image embed dim {towers.embed_dim}; the towers do not share a joint space")
        if self.sse.clip_visual.output_dim != towers.embed_dim:
            raise ValueError(f"CLIP {config.clip.model_name!r}: image tower gives {self.sse.clip_visual.output_dim}-d "
                             f"embeddings, not the joint space's {towers.embed_dim}")
        self.vlcm = VLCM(towers.embed_dim, config.vlcm, config.ssa)
        self.decoder = Decoder(self.sse.channels, self.sse.strides, towers.embed_dim,
                               self.sse.clip_visual.patch_size, config.decoder)
        self.patch_size = self.sse.clip_visual.patch_size
        mean = torch.tensor(towers.image_mean).view(1, -1, 1, 1)
        std = torch.tensor(towers.image_std).view(1, -1, 1, 1)
        self.register_buffer("image_mean", mean, persistent=False)
        self.register_buffer("image_std", std, persistent=False)

    # ------------------------------------------------------------------ forward
    #: how far outside [0, 1] pixel values may stray (resampling overshoot) before it is an error
    RANGE_TOLERANCE = 0.01

    def check_inputs(self, images: torch.Tensor, captions: Sequence[str]) -> tuple[torch.Tensor, list[str]]:
        """Validate at the door (smp style): 3-channel float images in [0, 1], captions in canonical form."""
        if not isinstance(images, torch.Tensor):
            raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.ndim != 4:
            raise ValueError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"images must be a float tensor with values in [0, 1], got dtype {images.dtype}")
        b, c, h, w = images.shape
        if b == 0:
            raise ValueError("empty batch: images has 0 images; pass at least one image and its caption")
        if c not in (1, 3):
            raise ValueError(f"images must have 1 (grayscale) or 3 channels, got {c}")
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"image size {h}x{w} is not divisible by the patch size {self.patch_size}; "
                             f"resize to e.g. {h // self.patch_size * self.patch_size}x"
                             f"{w // self.patch_size * self.patch_size}")
        if isinstance(captions, str) or not isinstance(captions, Sequence):
            raise ValueError("captions must be a list of strings, one per image")
        if len(captions) != b:
            raise ValueError(f"got {len(captions)} captions for a batch of {b} images; need one caption per image")
        if images.dtype == torch.float64:   # numpy's default: same values, the model's precision
            images = images.float()
        self._check_values(images)
        if self.config.normalize_captions:
            captions = [normalize_caption(t) if isinstance(t, str) else t for t in captions]
        return (images.expand(-1, 3, -1, -1) if c == 1 else images), list(captions)

    def _check_values(self, images: torch.Tensor) -> None:
        """Non-finite pixels make every logit NaN; 0..255 or CLIP-normalised input segments
        silently worse. Both are refused, naming the image and what was seen."""
        per_image = images.detach().flatten(1)
        finite = torch.isfinite(per_image).all(dim=1)
        if not bool(finite.all()):
            bad = [int(i) for i in (~finite).nonzero().flatten()[:5]]
            raise ValueError(f"image(s) {bad} of the batch hold NaN or infinite values; check the image "
                             "files and any preprocessing before the model")
        low, high = float(per_image.min()), float(per_image.max())
        tol = self.RANGE_TOLERANCE
        if low >= -tol and high <= 1 + tol:
            return
        if low >= 0 and high > 1 + tol:
            hint = "values up to 255 (or 65535) are raw pixel values: divide by the maximum (e.g. images / 255)"
        else:
            hint = ("negative values suggest the images are already normalised (CLIP mean/std): pass the "
                    "[0, 1] images, tgcnet normalises inside")
        raise ValueError(f"images must have values in [0, 1], got min {low:.4g} and max {high:.4g}; {hint}")

    @property
    def max_caption_tokens(self) -> int:
        """Tokens a caption may have (the text context less its start and end tokens)."""
        return self.date.tokenize.room

    def overlong_captions(self, captions: Sequence[str]) -> list[tuple[int, int]]:
        """``(index, tokens)`` of each caption the forward would refuse as too long, so a data
        set can be checked, and its files named, before the first batch."""
        if self.config.normalize_captions:
            captions = [normalize_caption(t) for t in captions]
        return self.date.tokenize.overlong(captions)

    def clip_input(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 1 or 3, H, W) in [0, 1] -> CLIP-normalised 3-channel input of SSE."""
        images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        return (images - self.image_mean.to(images.dtype)) / self.image_std.to(images.dtype)

    def frozen_vit_features(self, images: torch.Tensor) -> ViTFeatures:
        """What the frozen ViT computes inside ``forward(images, ...)``, to compute once and reuse.

        Frozen weights make it a pure function of the image, so a training loop whose
        images repeat across epochs can cache it and pass it back as ``vit_features=``.
        """
        return self.sse.clip_visual(self.clip_input(images))

    def _check_vit_features(self, vit_features: ViTFeatures, images: torch.Tensor) -> None:
        """A cached feature of another size, batch or preset must fail loudly, not mis-segment."""
        maps, dense = vit_features
        b, _, h, w = images.shape
        grid = (h // self.patch_size, w // self.patch_size)
        n_maps = len(self.sse.clip_visual.indices)
        if len(maps) != n_maps or any(m.shape[0] != b or tuple(m.shape[-2:]) != grid for m in (*maps, dense)):
            raise ValueError(f"vit_features do not belong to these images: expected {n_maps} maps and a dense "
                             f"map of batch {b} and grid {grid[0]}x{grid[1]}, got maps "
                             f"{[tuple(m.shape) for m in maps]} and dense {tuple(dense.shape)}")

    def guidance(self, captions: Sequence[str], grid: Sequence[int], device: Optional[torch.device] = None
                 ) -> torch.Tensor:
        """(B, 1, h, w) SSA guidance masks of canonical ``captions`` at the feature ``grid`` (h, w), as
        this model's settings (laterality, softness, zones) draw them."""
        ssa = self.config.ssa
        return guidance_masks(captions, grid[0], grid[1], laterality=self.config.laterality, soft=ssa.guidance_soft,
                              use_zones=ssa.guidance_use_zones, device=device)

    def forward(self, images: torch.Tensor, captions: Sequence[str], return_aux: bool = False,
                vit_features: Optional[ViTFeatures] = None) -> Union[torch.Tensor, TGCNetOutput]:
        """``vit_features``: ``frozen_vit_features(images)`` computed earlier (e.g. cached); the
        frozen ViT is then skipped and everything trainable runs as usual."""
        images, captions = self.check_inputs(images, captions)
        if vit_features is not None:
            self._check_vit_features(vit_features, images)
        x = self.clip_input(images)
        text = self.date(captions)
        visual = self.sse(x, vit_features=vit_features)
        ssa = self.config.ssa
        guidance = self.guidance(captions, visual.dense.shape[-2:], images.device) if ssa.guidance != "off" else None
        calibrated = self.vlcm(visual.dense, text, guidance)
        if not return_aux:
            return self.decoder(visual.pyramid, calibrated, size=images.shape[-2:])
        logits, sides = self.decoder(visual.pyramid, calibrated, size=images.shape[-2:], return_sides=True)
        aux: dict[str, torch.Tensor] = {}
        if ssa.ot_loss_weight > 0:
            aux["ot_alignment"] = ssa.ot_loss_weight * ot_alignment_loss(
                calibrated.pixels, calibrated.tokens, text.mask, epsilon=ssa.ot_epsilon, n_iters=ssa.ot_iters)
        if ssa.guidance_loss:
            aux["guidance_outside"] = ssa.guidance_loss_weight * guidance_outside_loss(logits, guidance)
        return TGCNetOutput(logits=logits, aux_losses=aux, side_logits=sides,
                            side_weight=self.config.decoder.deep_supervision_weight, loss_weights=self.config.loss)

    def train(self, mode: bool = True) -> "TGCNet":
        super().train(mode)
        self.sse.clip_visual.train(False)  # frozen: dropout/BN stay in inference behaviour
        return self

    # ------------------------------------------------------------------ parameters
    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """What an optimizer should see: adapters, CNN, fusion, VLCM, decoder."""
        return (p for p in self.parameters() if p.requires_grad)

    def count_parameters(self) -> list[dict[str, Any]]:
        from tgcnet.params import count_parameters

        return count_parameters(self)

    def print_trainable_parameters(self) -> None:
        """peft's one-line summary."""
        trainable = sum(p.numel() for p in self.trainable_parameters())
        total = sum(p.numel() for p in self.parameters())
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || "
              f"trainable%: {100 * trainable / total:.4f}")

    def frozen_state_names(self) -> set[str]:
        """Full names of the state the frozen CLIP towers own, as each tower reports it
        (:meth:`FrozenImageTower.frozen_state_names`, :meth:`FrozenTextTower.frozen_state_names`:
        the whole image tower, the text tower but its LoRA adapters). Never trained, never saved."""
        names: set[str] = set()
        for prefix, module in self.named_modules():
            if isinstance(module, (FrozenImageTower, FrozenTextTower)):
                names.update(f"{prefix}.{name}" for name in module.frozen_state_names())
        return names

    # ------------------------------------------------------------------ trainable state
    def _saved_names(self) -> list[str]:
        """Trainable parameters plus the buffers outside the frozen towers (e.g. BatchNorm stats):
        what ``save_pretrained`` writes, since the frozen towers are rebuilt from the config."""
        frozen = self.frozen_state_names()
        state = self.state_dict()
        names = [n for n, p in self.named_parameters() if p.requires_grad]
        names += [n for n, _ in self.named_buffers(remove_duplicate=True) if n not in frozen and n in state]
        return names

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The state that training changes (see :meth:`_saved_names`)."""
        state = self.state_dict()
        return {n: state[n] for n in self._saved_names()}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Load exactly the trainable weights, with a clear error on an architecture mismatch."""
        expected = self.state_dict()
        wanted = set(self._saved_names())
        missing = sorted(wanted - set(state))
        unexpected = sorted(set(state) - wanted)
        wrong_shape = [f"{k}: saved {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
                       for k, v in state.items() if k in expected and expected[k].shape != v.shape]
        if missing or unexpected or wrong_shape:
            parts = []
            if missing:
                parts.append(f"missing {len(missing)} (e.g. {missing[:3]})")
            if unexpected:
                parts.append(f"unexpected {len(unexpected)} (e.g. {unexpected[:3]})")
            if wrong_shape:
                parts.append(f"shape mismatch {len(wrong_shape)} (e.g. {wrong_shape[:3]})")
            raise ValueError(f"weights in {source} do not match this architecture ({self.config.name}): "
                             + "; ".join(parts))
        self.load_state_dict(state, strict=False)
        self.date.train(self.date.training)  # drop cached description embeddings

