"""A trained model made ready for inference: its checkpoint found, its settings read, the model
rebuilt on a device.

Apart from the inference loop because prediction, the ONNX export and the Hub loader need a
loaded model and no loop, while validation during training needs the loop and no loading.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch

from .distributed import resolve_device
from .factory_model import ModelFactory, build_factory_model, is_factory_model_dir
from .files import BEST_DIR, INFERENCE_NAME, LAST_DIR, MODEL_CONFIG_NAME, TRAIN_CONFIG_NAME, WEIGHTS_NAME
from .train_config import DEFAULT_IMAGE_SIZE

__all__ = ["DEFAULT_IMAGE_SIZE", "knowledge_arg", "prepare_for_device", "resolve_checkpoint",
           "load_inference_model"]



def knowledge_arg(knowledge: Optional[str]) -> Optional[str]:
    """CLI/JSON spelling -> create_model's: ``"none"`` disables knowledge."""
    if knowledge is None or str(knowledge).lower() == "none":
        return None
    return str(knowledge)


def prepare_for_device(model: torch.nn.Module, device: torch.device, amp: Optional[str] = None) -> torch.nn.Module:
    """``model`` on ``device``, with what the machine (not the config) decides about a TGCNet.

    On the CPU, this processor's linear kernels (:func:`tgcnet.accel.optimize_for_cpu`). On a
    GPU with ``amp`` (``"bf16"``/``"fp16"``, the run's autocast), the frozen towers held in that
    dtype before the move (:func:`tgcnet.accel.optimize_for_cuda`): the GPU then never holds
    their float32 copy. Such a model must run under that autocast, as the engine's loops do;
    ``amp`` None or ``"none"`` keeps float32 weights, for callers that run without autocast.
    """
    from tgcnet.accel import optimize_for_cpu, optimize_for_cuda
    from tgcnet.model import TGCNet

    if device.type == "cuda" and isinstance(model, TGCNet):
        model = optimize_for_cuda(model, amp=amp)
    model = model.to(device)
    if device.type == "cpu" and isinstance(model, TGCNet):
        model = optimize_for_cpu(model)
    return model


def resolve_checkpoint(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """(model directory, inference settings) of a run directory or a save_pretrained directory.

    A run directory resolves to its ``best/`` (else ``last/``). Settings (image size,
    knowledge, threshold) come from ``inference.json`` beside the weights, else from the
    run's ``train_config.json``, else defaults.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} not found")
    candidates = [path, path / BEST_DIR, path / LAST_DIR]
    model_dir = next((c for c in candidates if (c / MODEL_CONFIG_NAME).is_file()), None)
    if model_dir is None:
        raise FileNotFoundError(f"{path} is neither a saved model ({MODEL_CONFIG_NAME} + {WEIGHTS_NAME}) nor a "
                                f"run directory with {BEST_DIR}/ or {LAST_DIR}/ inside")
    info: dict[str, Any] = {}
    for source in (model_dir.parent / TRAIN_CONFIG_NAME, model_dir / INFERENCE_NAME):
        if source.is_file():
            with open(source, encoding="utf-8") as f:
                data = json.load(f)
            train = data.get("train", data)
            info.update({k: train[k] for k in ("image_size", "knowledge", "threshold", "pretrained",
                                               "caption_override") if k in train})
    return model_dir, info


def _load_factory_model(model_dir: Path, model_factory: ModelFactory, dev: torch.device) -> torch.nn.Module:
    """Rebuild a factory model from the run's settings and load its saved weights."""
    from tgcnet.io import load_safetensors

    from .train_config import TrainConfig, read_saved_config

    if not (model_dir.parent / TRAIN_CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{model_dir} holds a model_factory model but {model_dir.parent / TRAIN_CONFIG_NAME} "
                                "is missing: the factory is called with the run's TrainConfig; pass the run directory")
    model = build_factory_model(model_factory, TrainConfig.from_dict(read_saved_config(model_dir.parent)))
    model.load_trainable_state_dict(load_safetensors(model_dir / WEIGHTS_NAME), source=str(model_dir))
    return model.to(dev)


def load_inference_model(checkpoint: str | Path, device: str | torch.device | None = "auto",
                         knowledge: Optional[str] = None, pretrained: Optional[str] = None,
                         model_factory: Optional[ModelFactory] = None,
                         amp: Optional[str] = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a trained model in eval mode; knowledge defaults to what it was trained with.

    ``amp``: the autocast every later call will run under, on a GPU (see :func:`prepare_for_device`);
    None keeps float32 weights, which run with or without autocast.

    A model trained through ``train(..., model_factory=make)`` is rebuilt by the same
    ``make`` (see tgcnet.engine.factory_model); a TGCNet needs none.
    """
    from tgcnet.model import TGCNet

    model_dir, info = resolve_checkpoint(checkpoint)
    if knowledge is None:
        knowledge = info.get("knowledge", "default")
    info["knowledge"] = knowledge
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    factory_dir = is_factory_model_dir(model_dir)
    if factory_dir != (model_factory is not None):
        raise ValueError(f"{model_dir} holds a model built by a model_factory; pass the same model_factory to "
                         "rebuild it" if factory_dir else
                         f"{model_dir} holds a TGCNet, not a model_factory model; call without model_factory")
    if model_factory is not None:
        model = _load_factory_model(model_dir, model_factory, dev)
    else:
        model = TGCNet.from_pretrained(model_dir, pretrained=pretrained or info.get("pretrained"),
                                       knowledge=knowledge_arg(knowledge), map_location=dev)
    model = prepare_for_device(model, dev, amp=amp)
    model.eval()
    info["model_dir"] = str(model_dir)
    return model, info
