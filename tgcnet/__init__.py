"""tgcnet: text-guided medical image segmentation on a frozen CLIP (TGC-Net).

    from tgcnet import create_model
    model = create_model("tgcnet-tiny")
    logits = model(images, ["bilateral pulmonary infection, lower left lung and lower right lung."])

The names below load on first use (PEP 562), so ``import tgcnet.prompts``, ``tgcnet --help``
and ``tgcnet prompts ...`` start without torch, open_clip, peft or timm.
"""
from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any, Callable

__version__ = "0.1.0"

#: public name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    "TGCNet": "tgcnet.model",
    "TGCNetOutput": "tgcnet.model",
    "TGCNetConfig": "tgcnet.config",
    "ClipConfig": "tgcnet.config",
    "SSEConfig": "tgcnet.config",
    "SSAConfig": "tgcnet.config",
    "DATEConfig": "tgcnet.config",
    "VLCMConfig": "tgcnet.config",
    "DecoderConfig": "tgcnet.config",
    "LossConfig": "tgcnet.config",
    "create_model": "tgcnet.factory",
    "list_presets": "tgcnet.config",
    "get_preset": "tgcnet.config",
    "add_preset": "tgcnet.config",
    "count_parameters": "tgcnet.params",
    "format_parameter_table": "tgcnet.params",
    "optimize_for_cpu": "tgcnet.accel",
    "segment": "tgcnet.segmentation",
    "Segmentation": "tgcnet.segmentation",
}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:
    from tgcnet.accel import optimize_for_cpu
    from tgcnet.config import (ClipConfig, DATEConfig, DecoderConfig, LossConfig, SSAConfig, SSEConfig, TGCNetConfig,
                               VLCMConfig, add_preset, get_preset, list_presets)
    from tgcnet.factory import create_model
    from tgcnet.model import TGCNet, TGCNetOutput
    from tgcnet.params import count_parameters, format_parameter_table
    from tgcnet.segmentation import Segmentation, segment


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """PEP 562 ``__getattr__`` and ``__dir__`` for ``package``: each name in ``exports`` is
    imported from its module (absolute, or relative to ``package``) on first use, then cached."""
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value  # later lookups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted([*namespace, *exports])

    return __getattr__, __dir__


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
