"""peft LoRA for open_clip towers, installed as ``tgcnet.adapters``.

Nothing here imports the tgcnet model: adapters work on any open_clip tower.
"""
from .config import TARGET_PRESETS, LoraAdapterConfig
from .io import load_json, load_safetensors, save_json_atomic, save_safetensors_atomic
from .attention import ProjectedAttention, project_attention
from .lora import (apply_lora, load_adapter, load_lora_state_dict, lora_disabled, lora_layers, lora_parameters,
                   lora_state_dict, matching_modules, merge_lora, save_adapter)

__all__ = [
    "TARGET_PRESETS", "LoraAdapterConfig", "ProjectedAttention", "project_attention", "apply_lora", "load_adapter", "load_lora_state_dict",
    "lora_disabled", "lora_layers", "lora_parameters", "lora_state_dict", "matching_modules", "merge_lora",
    "save_adapter", "load_json", "load_safetensors", "save_json_atomic", "save_safetensors_atomic",
]
