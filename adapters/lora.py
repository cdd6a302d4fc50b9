"""Apply, inspect and merge peft LoRA adapters on an open_clip tower (saving: :mod:`.peft_format`).

peft's ``inject_adapter_in_model`` is used rather than ``get_peft_model`` so the tower
keeps its own class and attributes (``token_embedding``, ``attn_mask``...) that the
caller reads directly.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterator

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn

from .attention import project_attention
from .config import LoraAdapterConfig


def matching_modules(tower: nn.Module, config: LoraAdapterConfig) -> list[str]:
    """Names of the modules of ``tower`` that ``config`` would wrap."""
    pattern = re.compile(config.target_regex_for(tower))
    return [name for name, _ in tower.named_modules() if name and pattern.fullmatch(name)]


def apply_lora(tower: nn.Module, config: LoraAdapterConfig) -> nn.Module:
    """Freeze ``tower`` and inject LoRA adapters into the modules ``config`` targets.

    Raises when the targets match nothing: an adapter that silently wraps no module
    would leave the text tower untrainable without any sign of it.
    """
    tower.requires_grad_(False)
    if not config.enabled:
        return tower
    project_attention(tower)
    regex = config.target_regex_for(tower)
    targets = matching_modules(tower, config)
    if not targets:
        linears = [n for n, m in tower.named_modules() if isinstance(m, nn.Linear)][:4]
        raise ValueError(
            f"LoRA targets {config.targets!r} (regex {regex!r}) match no module of "
            f"{type(tower).__name__}; its linear layers are named like: {linears}")
    peft_config = LoraConfig(
        r=int(config.r), lora_alpha=float(config.alpha), lora_dropout=float(config.dropout),
        target_modules=regex, bias="none")
    inject_adapter_in_model(peft_config, tower)
    for name, param in tower.named_parameters():
        param.requires_grad_("lora_" in name)
    return tower


def lora_layers(module: nn.Module) -> dict[str, LoraLayer]:
    return {name: m for name, m in module.named_modules() if isinstance(m, LoraLayer)}


@contextmanager
def lora_disabled(module: nn.Module) -> Iterator[None]:
    """Run ``module`` as its frozen base inside the block: every LoRA layer is bypassed.

    Only the bypass flag is toggled (peft's ``enable_adapters`` would also flip the
    adapters' ``requires_grad``, i.e. what the optimizer trains). A merged adapter cannot
    be bypassed without unmerging the frozen weight, so that is refused.
    """
    named = lora_layers(module)
    layers = list(named.values())
    merged = [name for name, layer in named.items() if layer.merged]
    if merged:
        raise ValueError(f"cannot bypass LoRA on merged layers ({merged[:3]}...): run the frozen base before "
                         "merge_lora")
    before = [layer._disable_adapters for layer in layers]
    try:
        for layer in layers:
            layer._disable_adapters = True
        yield
    finally:
        for layer, flag in zip(layers, before):
            layer._disable_adapters = flag


def lora_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in module.named_parameters() if "lora_" in name}


def lora_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights only, under peft's portable key names."""
    return get_peft_model_state_dict(module)


def load_lora_state_dict(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    result = set_peft_model_state_dict(module, state)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise ValueError(f"adapter weights do not fit this tower; unexpected keys: {unexpected[:5]}")


def merge_lora(module: nn.Module) -> None:
    """Fold every adapter into its base weight (faster inference; no longer trainable)."""
    for layer in lora_layers(module).values():
        layer.merge()
