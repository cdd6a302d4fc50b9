"""create_model: the one constructor over the presets, its overrides, backbone swap and device check."""
import json

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from helpers import tiny
from tgcnet import TGCNet, create_model, get_preset
from tgcnet.factory import check_device


def test_builds_the_preset_with_keyword_overrides():
    model = create_model("tgcnet-tiny", knowledge=None, decoder__channels=8, sse={"channels": 24})
    assert isinstance(model, TGCNet) and model.config.name == "tgcnet-tiny"
    assert model.config.decoder.channels == 8 and model.decoder.lateral[0].out_channels == 8
    assert model.config.sse.channels == 24 and model.sse.channels == 24


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="unknown preset 'tgcnet-nope'.*tgcnet-tiny"):
        create_model("tgcnet-nope")


def test_pretrained_is_recorded_in_the_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="CLIP checkpoint not found"):
        create_model("tgcnet-tiny", pretrained=str(tmp_path / "clip.safetensors"), knowledge=None)


def _clip_folder(tmp_path, mean):
    """An open_clip hub folder (config with its own preprocessing, and weights) of a tiny CLIP."""
    folder = tmp_path / "clip"
    folder.mkdir()
    model_cfg = get_preset("tgcnet-tiny").clip.model_cfg
    config = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": mean, "std": mean}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    state = open_clip.model.CLIP(**model_cfg).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "open_clip_model.safetensors"))
    return f"local-dir:{folder}"


def test_another_clip_brings_its_own_normalisation(tmp_path):
    clip = _clip_folder(tmp_path, [0.5, 0.5, 0.5])
    model = create_model("tgcnet-tiny", clip_model=clip, knowledge=None)
    assert model.config.clip.model_name == clip and model.config.clip.model_cfg is None
    assert model.image_mean.flatten().tolist() == [0.5, 0.5, 0.5]
    mine = create_model("tgcnet-tiny", clip_model=clip, knowledge=None, clip__image_mean=[0.1, 0.2, 0.3])
    assert mine.image_mean.flatten().tolist() == pytest.approx([0.1, 0.2, 0.3])


def test_device_names_are_checked_before_the_build():
    assert check_device(None) is None
    assert check_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="'gpu0' is not a torch device name"):
        check_device("gpu0")


def test_cuda_device_without_a_gpu_is_named():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="device 'cuda': no CUDA device is available"):
        tiny(device="cuda")
