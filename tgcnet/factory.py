"""``create_model``: one obvious constructor over the preset registry (open_clip style)."""
from __future__ import annotations

from typing import Any, Optional

import torch

from tgcnet.config import get_preset
from tgcnet.hub import DEFAULT_KNOWLEDGE, KnowledgeArg
from tgcnet.model import TGCNet


def create_model(name: str, pretrained: Optional[str] = None, clip_model: Optional[str] = None,
                 knowledge: KnowledgeArg = DEFAULT_KNOWLEDGE, device: str | torch.device | None = None,
                 **overrides: Any) -> TGCNet:
    """Build the TGCNet preset ``name``.

    Args:
        pretrained: a CLIP checkpoint file (open_clip's hub files, a state dict, OpenAI's
            TorchScript ``.pt``) or an open_clip pretrained tag such as ``"openai"`` resolved
            through the Hugging Face cache (none: random init).
        clip_model: swap the backbone for any open_clip name, ``hf-hub:org/name`` or
            ``local-dir:`` path; its own widths, depth and (unless ``clip__image_mean`` /
            ``clip__image_std`` are given) its own image normalisation are used.
        knowledge: ``"default"`` (the shipped bank), a cache path, any object with
            ``descriptions_for(caption)``, or None to disable knowledge.
        overrides: any config field, e.g. ``sse={"channels": 64}`` or ``date__lora__r=16``.

    The model's frozen towers run ``F.linear``; on a CPU, :func:`tgcnet.accel.optimize_for_cpu`
    picks this machine's fastest kernel (a fact about the machine, so not a config field).
    """
    config = get_preset(name, **overrides)
    if clip_model is not None:
        config.clip.model_name = clip_model
        config.clip.model_cfg = None
        # the preset's normalisation belongs to the preset's CLIP; the new one brings its own,
        # unless the caller overrode it
        preset = get_preset(name).clip
        if config.clip.image_mean == preset.image_mean and config.clip.image_std == preset.image_std:
            config.clip.image_mean = config.clip.image_std = None
    if pretrained is not None:
        config.clip.pretrained = pretrained
    device = check_device(device)
    model = TGCNet(config, knowledge=knowledge)
    return model.to(device) if device is not None else model


def check_device(device: str | torch.device | None) -> torch.device | None:
    """A device this machine has, or one clear error (rather than torch's driver error after the build)."""
    if device is None:
        return None
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device {device!r} is not a torch device name (e.g. 'cpu', 'cuda', 'cuda:1')") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r}: no CUDA device is available on this machine "
                             "(torch.cuda.is_available() is False); use device='cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device
