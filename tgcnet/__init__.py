"""tgcnet: text-guided medical image segmentation on a frozen CLIP (TGC-Net).

    from tgcnet import create_model
    model = create_model("tgcnet-tiny")
    logits = model(images, ["bilateral pulmonary infection, lower left lung and lower right lung."])
"""
__version__ = "0.1.0"

from tgcnet.config import (ClipConfig, DATEConfig, DecoderConfig, SSAConfig, SSEConfig, TGCNetConfig, VLCMConfig,
                           add_preset, get_preset, list_presets)
from tgcnet.factory import create_model
from tgcnet.model import TGCNet, TGCNetOutput
from tgcnet.params import count_parameters, format_parameter_table

__all__ = [
    "TGCNet", "TGCNetOutput", "TGCNetConfig", "ClipConfig", "SSEConfig", "SSAConfig", "DATEConfig", "VLCMConfig", "DecoderConfig",
    "create_model", "list_presets", "get_preset", "add_preset", "count_parameters", "format_parameter_table",
]
