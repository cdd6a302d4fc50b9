"""The ``model_factory`` hook: train and evaluate a model other than TGCNet through the same loop.

A benchmark baseline (say an smp U-Net) gets the trainer's data order, augmentation,
loss, optimiser, schedule, validation, checkpoints and resume by passing
``train(cfg, model_factory=make)``. The contract of ``make(cfg: TrainConfig) -> nn.Module``:

* ``forward(images, captions)`` takes a float batch (B, 3, H, W) in [0, 1] and a list of
  B caption strings (it may ignore them) and returns mask logits (B, 1, H, W).
* Every parameter with ``requires_grad`` is trained.
* The whole ``state_dict()`` (buffers such as BatchNorm statistics included) is saved,
  as ``model.safetensors`` in ``best/`` and in the checkpoint ``last/``.
* The same ``make`` rebuilds the model for ``evaluate(run, ..., model_factory=make)``:
  the saved ``config.json`` only names the factory, it cannot rebuild the model itself.
* Called with the run's TrainConfig: TGCNet-only settings (preset, knowledge,
  pretrained, init_from, --set overrides) are the factory's to use or ignore; the
  frozen-ViT feature cache is refused, and captions are not length-checked.

:class:`FactoryModel` wraps the module with the few methods the trainer calls on a TGCNet.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, Union

import torch
from torch import nn

from tgcnet.io import save_json_atomic, save_safetensors_atomic
from tgcnet.model import TGCNetOutput

from .files import MODEL_CONFIG_NAME, WEIGHTS_NAME

if TYPE_CHECKING:
    from .train_config import TrainConfig

__all__ = ["ModelFactory", "FactoryModel", "FactoryModelConfig", "build_factory_model", "build_preset_model",
           "is_factory_model_dir"]

ModelFactory = Callable[["TrainConfig"], nn.Module]
KIND = "model_factory"


@dataclass
class FactoryModelConfig:
    """What ``config.json`` records of a factory-built model: the factory's name, for the reader."""

    factory: str
    laterality: str = "image"  # side-error convention of the validation metrics
    kind: str = KIND

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _qualified_name(factory: Callable) -> str:
    return f"{getattr(factory, '__module__', '?')}:{getattr(factory, '__qualname__', repr(factory))}"


class FactoryModel(nn.Module):
    """A module from a model factory, with the interface the trainer uses on a TGCNet."""

    patch_size: Optional[int] = None  # no patch grid: any image size is accepted

    def __init__(self, module: nn.Module, factory_name: str) -> None:
        super().__init__()
        self.module = module
        self.config = FactoryModelConfig(factory=factory_name)

    def forward(self, images: torch.Tensor, captions: Sequence[str], return_aux: bool = False,
                vit_features: Any = None) -> Union[torch.Tensor, TGCNetOutput]:
        logits = self.module(images, list(captions))
        expected = (images.shape[0], 1, *images.shape[-2:])
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != expected:
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"model from factory {self.config.factory} returned {got} for images of shape "
                             f"{tuple(images.shape)}; forward(images, captions) must return logits of shape "
                             f"{expected}")
        return TGCNetOutput(logits=logits, aux_losses={}) if return_aux else logits

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole state dict: a factory model has no frozen part rebuilt from elsewhere."""
        return {k: v.detach().contiguous() for k, v in self.module.state_dict().items()}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
        try:
            self.module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{source} does not match the model of factory {self.config.factory}: "
                             f"{str(exc).splitlines()[0]} (was it saved by another factory?)") from None

    def overlong_captions(self, captions: Sequence[str]) -> list[tuple[int, int]]:
        return []  # captions are the module's to use or ignore

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        save_safetensors_atomic(self.trainable_state_dict(), directory / WEIGHTS_NAME)
        save_json_atomic(self.config.to_dict(), directory / MODEL_CONFIG_NAME)
        return directory


def build_factory_model(factory: ModelFactory, cfg: "TrainConfig") -> FactoryModel:
    """``factory(cfg)`` wrapped, after checking that it gave a module with something to train."""
    module = factory(cfg)
    name = _qualified_name(factory)
    if not isinstance(module, nn.Module):
        raise TypeError(f"model_factory {name} returned {type(module).__name__}; it must return a torch.nn.Module "
                        "whose forward(images, captions) gives logits (B, 1, H, W)")
    model = FactoryModel(module, name)
    if not model.trainable_parameters():
        raise ValueError(f"the model of factory {name} has no parameter with requires_grad=True: nothing to train")
    return model


def build_preset_model(cfg: "TrainConfig") -> nn.Module:
    """The model a run trains when no factory is given: the TGCNet of ``cfg.preset`` (with its
    overrides and knowledge), started from ``cfg.init_from``'s trained weights when given."""
    from tgcnet.factory import create_model
    from tgcnet.model import TGCNet

    from .loading import knowledge_arg

    model = create_model(cfg.preset, pretrained=cfg.pretrained, knowledge=knowledge_arg(cfg.knowledge),
                         **cfg.model_overrides)
    if cfg.init_from:
        start = TGCNet.from_pretrained(cfg.init_from, pretrained=cfg.pretrained, knowledge=None)
        model.load_trainable_state_dict(start.trainable_state_dict(), source=cfg.init_from)
    return model


def is_factory_model_dir(model_dir: str | Path) -> bool:
    """Whether a saved model directory was written by a :class:`FactoryModel`."""
    try:
        saved = json.loads((Path(model_dir) / MODEL_CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(saved, dict) and saved.get("kind") == KIND
