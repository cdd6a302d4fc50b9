"""tgcnet.clip_weights on its own: CLIP checkpoint files read into a state dict and loaded
strictly into an open_clip model. Every format, end to end through ``create_model``, is in
test_backbone.py."""
from __future__ import annotations

import re

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from tgcnet.backbone import instantiate
from tgcnet.clip_weights import load_checkpoint, read_checkpoint, read_clip_checkpoint
from tgcnet.config import get_preset


def tiny_clip(preset: str = "tgcnet-tiny", seed: int = 0, **vision) -> torch.nn.Module:
    cfg = get_preset(preset).clip.model_cfg
    cfg["vision_cfg"] = {**cfg["vision_cfg"], **vision}
    torch.manual_seed(seed)
    return open_clip.model.CLIP(**cfg) if preset == "tgcnet-tiny" else instantiate(cfg)


def test_load_checkpoint_into_an_open_clip_model(tmp_path):
    """The module's API as other code calls it (a ``Path`` will do): the same tensors, by name,
    through open_clip's key conversions (a BiomedCLIP-shaped timm ViT + BERT)."""
    source = tiny_clip("tgcnet-tiny-biomedclip", seed=91)
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(source.state_dict(), path)
    assert sorted(read_checkpoint(path)) == sorted(source.state_dict())
    model = instantiate(get_preset("tgcnet-tiny-biomedclip").clip.model_cfg)
    load_checkpoint(model, path)
    for name, tensor in source.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name


def test_a_training_checkpoint_of_a_ddp_run_is_its_state_dict(tmp_path):
    state = tiny_clip(seed=1).state_dict()
    path = tmp_path / "epoch_3.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    checkpoint = read_clip_checkpoint(path)
    assert not checkpoint.openai   # a pickle, not OpenAI's TorchScript file
    assert checkpoint.state.keys() == state.keys()
    assert all(torch.equal(checkpoint.state[k], v) for k, v in state.items())


def test_another_architecture_is_one_error_naming_the_file_and_the_tensor(tmp_path):
    path = tmp_path / "wider.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_clip(width=96, head_width=32).state_dict().items()}, str(path))
    with pytest.raises(ValueError, match="^" + re.escape(
            f"CLIP checkpoint {path} does not match this architecture: tensor 'visual.class_embedding' has shape "
            "(96,) in the file, (64,) in the model") + "$"):
        load_checkpoint(tiny_clip(), path)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(f"CLIP checkpoint not found: {tmp_path / 'none.bin'}")):
        read_checkpoint(tmp_path / "none.bin")
