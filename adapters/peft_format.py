"""Save and load a tower's LoRA adapter in peft's own format, loadable by peft alone.

The folder holds ``adapter_config.json`` (a peft ``LoraConfig``) and
``adapter_model.safetensors`` (the weights under the keys ``PeftModel.save_pretrained``
writes), so anyone can put the adapter on the *bare* open_clip text tower without tgcnet::

    clip = open_clip.create_model("ViT-B-16", pretrained=...)      # or clip.text for a CustomTextCLIP
    clip = peft.PeftModel.from_pretrained(clip, "adapter/")

Why a mapping is needed: tgcnet adapts attention through :class:`~.attention.ProjectedAttention`,
whose ``attn.in_proj`` and ``attn.out_proj`` are plain Linear layers (see that module),
while the bare tower keeps ``nn.MultiheadAttention``, which peft adapts as one module
``attn`` (in_proj adapter ``attn.lora_A/B``, out_proj adapter
``attn.base_layer.out_proj.lora_A/B``). The weights are the same matrices under those
names; every other layer keeps its name. :func:`load_adapter` maps back, so it reads
adapters saved here and adapters peft itself trained on a bare tower.

A file means what the installed peft computes from it. peft 0.21 adds the out_proj delta of
an ``nn.MultiheadAttention`` twice (in its forward and its merge alike); that factor is
measured once (:func:`peft_out_proj_factor`) and the out_proj ``lora_B`` is divided by it
on saving and multiplied by it on loading, so peft alone reproduces tgcnet's outputs and
tgcnet reads peft-trained adapters as peft runs them. A peft that applies the delta once
gives a factor of 1 and the weights are written as they are.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import peft
import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from tgcnet.io import load_json, load_safetensors, save_json_atomic, save_safetensors_atomic

from .attention import ProjectedAttention
from .config import LoraAdapterConfig
from .lora import apply_lora, load_lora_state_dict, lora_layers, lora_state_dict

__all__ = ["ADAPTER_CONFIG_NAME", "ADAPTER_WEIGHTS_NAME", "save_adapter", "load_adapter", "peft_out_proj_factor"]

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
#: what ``PeftModel`` puts before a module name in its state dict
PEFT_PREFIX = "base_model.model."
_OUT_PROJ = "base_layer.out_proj"
# peft options that change what the weights mean; tgcnet adapters are plain LoRA
_UNSUPPORTED = {"use_dora": False, "use_rslora": False, "lora_bias": False, "rank_pattern": {}, "alpha_pattern": {}}


@lru_cache(maxsize=None)
def peft_out_proj_factor() -> int:
    """How many times the installed peft adds an ``nn.MultiheadAttention`` out_proj LoRA delta (1 when right)."""
    holder = nn.Module()
    holder.attn = nn.MultiheadAttention(4, 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        inject_adapter_in_model(LoraConfig(r=1, lora_alpha=1, target_modules=["attn"], init_lora_weights=False),
                                holder)
    out_proj = holder.attn.base_layer.out_proj
    before = out_proj.base_layer.weight.detach().clone()
    delta = out_proj.get_delta_weight("default").detach()
    with torch.no_grad():
        holder.attn.merge()
    added = out_proj.base_layer.weight.detach() - before
    return max(1, round(float((added * delta).sum() / (delta * delta).sum())))


def _is_out_proj_b(key: str) -> bool:
    return f".{_OUT_PROJ}.lora_B." in key


def _peft_names(tower: nn.Module) -> dict[str, str]:
    """Name of each LoRA layer of ``tower`` -> the name peft gives it on the bare tower."""
    attention = {name for name, m in tower.named_modules() if isinstance(m, ProjectedAttention)}
    names = {}
    for name in lora_layers(tower):
        parent, _, leaf = name.rpartition(".")
        if parent in attention and leaf == "in_proj":
            names[name] = parent
        elif parent in attention and leaf == "out_proj":
            names[name] = f"{parent}.{_OUT_PROJ}"
        else:
            names[name] = name
    return names


def _hyperparameters(tower: nn.Module) -> tuple[int, float, float]:
    """(r, alpha, dropout) shared by every LoRA layer; peft's config holds one of each."""
    found = set()
    for layer in lora_layers(tower).values():
        for adapter in layer.r:
            drop = layer.lora_dropout[adapter]
            found.add((int(layer.r[adapter]), float(layer.lora_alpha[adapter]),
                       float(drop.p) if isinstance(drop, nn.Dropout) else 0.0))
    if len(found) != 1:
        raise ValueError(f"the LoRA layers need one rank, alpha and dropout to save as one peft config; found {sorted(found)}")
    return found.pop()


def _fill_attention_pairs(state: dict[str, torch.Tensor], tower: nn.Module, names: dict[str, str],
                          r: int) -> None:
    """peft adapts an attention's in_proj and out_proj together: give the one tgcnet left out a zero adapter."""
    for name, module in tower.named_modules():
        if not isinstance(module, ProjectedAttention):
            continue
        adapted = {leaf for leaf in ("in_proj", "out_proj") if f"{name}.{leaf}" in names}
        if not adapted:
            continue
        for leaf in sorted({"in_proj", "out_proj"} - adapted):
            linear = getattr(module, leaf)
            linear = getattr(linear, "base_layer", linear)
            key = name if leaf == "in_proj" else f"{name}.{_OUT_PROJ}"
            state[f"{PEFT_PREFIX}{key}.lora_A.weight"] = torch.zeros(r, linear.in_features)
            state[f"{PEFT_PREFIX}{key}.lora_B.weight"] = torch.zeros(linear.out_features, r)


def save_adapter(tower: nn.Module, directory: str | Path, *, prefix: str = "") -> Path:
    """Write ``tower``'s LoRA adapter to ``directory`` in peft's format, atomically.

    ``prefix`` goes before every module name, for loading onto a model that holds the
    tower under a name (``"text."`` for a ``CustomTextCLIP``); an open_clip ``CLIP`` keeps
    its text blocks at the top level, so the default fits it and a bare ``TextTransformer``.
    """
    layers = lora_layers(tower)
    if not layers:
        raise ValueError(f"{type(tower).__name__} has no LoRA layers to save; apply_lora(tower, config) first")
    r, alpha, dropout = _hyperparameters(tower)
    names = _peft_names(tower)
    state: dict[str, torch.Tensor] = {}
    for key, value in lora_state_dict(tower).items():
        layer, _, rest = key.rpartition(".lora_")
        state[f"{PEFT_PREFIX}{prefix}{names[layer]}.lora_{rest}"] = value
    _fill_attention_pairs(state, tower, names, r)
    factor = peft_out_proj_factor()
    state = {k: v / factor if _is_out_proj_b(k) else v for k, v in state.items()}
    targets = sorted({prefix + (n.removesuffix(f".{_OUT_PROJ}")) for n in names.values()})
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none", inference_mode=True,
                        target_modules="^(?:" + "|".join(re.escape(t) for t in targets) + ")$")
    data = {k: list(v) if isinstance(v, set) else v for k, v in config.to_dict().items()}
    directory = Path(directory)
    save_safetensors_atomic(state, directory / ADAPTER_WEIGHTS_NAME, metadata={"format": "pt"})
    save_json_atomic({**data, "peft_version": peft.__version__}, directory / ADAPTER_CONFIG_NAME)
    return directory


def _check_config(data: Any, path: Path) -> None:
    if not isinstance(data, dict) or data.get("peft_type") != "LORA":
        found = data.get("peft_type") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: not a peft LoRA adapter config (peft_type {found!r}, expected 'LORA')")
    odd = {k: data[k] for k, plain in _UNSUPPORTED.items() if data.get(k, plain) not in (plain, None)}
    if odd:
        raise ValueError(f"{path}: {odd} are not supported; tgcnet loads plain LoRA adapters (train without them)")


def _tower_names(keys: list[str], prefix: str, tower: nn.Module) -> dict[str, str]:
    """peft module name (from the weight keys) -> the LoRA layer name inside ``tower``."""
    attention = {name for name, m in tower.named_modules()
                 if isinstance(m, (ProjectedAttention, nn.MultiheadAttention))}
    names = {}
    for key in keys:
        name = key.removeprefix(PEFT_PREFIX).rpartition(".lora_")[0]
        inner = name.removeprefix(prefix)
        if inner.endswith(f".{_OUT_PROJ}"):
            names[name] = inner.removesuffix(f".{_OUT_PROJ}") + ".out_proj"
        elif inner in attention:
            names[name] = f"{inner}.in_proj"
        else:
            names[name] = inner
    return names


def load_adapter(tower: nn.Module, directory: str | Path, *, prefix: str = "") -> LoraAdapterConfig:
    """Put the peft-format LoRA adapter in ``directory`` on a bare tower; returns its config.

    Reads what :func:`save_adapter` writes and what ``PeftModel.save_pretrained`` writes
    for a bare open_clip text tower (``prefix`` as given to :func:`save_adapter`).
    """
    directory = Path(directory)
    data = load_json(directory / ADAPTER_CONFIG_NAME, "adapter config")
    _check_config(data, directory / ADAPTER_CONFIG_NAME)
    weights = load_safetensors(directory / ADAPTER_WEIGHTS_NAME)
    names = _tower_names(sorted(weights), prefix, tower)
    targets = "^(?:" + "|".join(re.escape(n) for n in sorted(set(names.values()))) + ")$"
    config = LoraAdapterConfig(r=int(data["r"]), alpha=float(data["lora_alpha"]),
                               dropout=float(data.get("lora_dropout") or 0.0), targets=targets)
    apply_lora(tower, config)
    factor = peft_out_proj_factor()
    state = {}
    for key, value in weights.items():
        name, _, rest = key.removeprefix(PEFT_PREFIX).rpartition(".lora_")
        state[f"{names[name]}.lora_{rest}"] = value * factor if _is_out_proj_b(key) else value
    load_lora_state_dict(tower, state)
    return config
