"""peft LoRA for open_clip towers, installed as ``tgcnet.adapters``.

Nothing here imports the tgcnet model: adapters work on any open_clip tower, and are saved
in peft's own format (:func:`save_adapter`), so peft alone can load them on the bare tower.
"""
from tgcnet.io import load_json, load_safetensors, save_json_atomic, save_safetensors_atomic

from .attention import ProjectedAttention, project_attention
from .config import TARGET_PRESETS, LoraAdapterConfig
from .lora import (apply_lora, load_lora_state_dict, lora_disabled, lora_layers, lora_parameters, lora_state_dict,
                   matching_modules, merge_lora)
from .peft_format import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, load_adapter, save_adapter

__all__ = [
    "TARGET_PRESETS", "LoraAdapterConfig", "ProjectedAttention", "project_attention", "apply_lora", "load_adapter",
    "load_lora_state_dict", "lora_disabled", "lora_layers", "lora_parameters", "lora_state_dict", "matching_modules",
    "merge_lora", "save_adapter", "ADAPTER_CONFIG_NAME", "ADAPTER_WEIGHTS_NAME",
    # file helpers, kept importable from here until callers import them from tgcnet.io
    "load_json", "load_safetensors", "save_json_atomic", "save_safetensors_atomic",
]
