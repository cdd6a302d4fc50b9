import dataclasses
import json

import pytest

from tgcnet import TGCNetConfig, add_preset, get_preset, list_presets


def test_presets_listed():
    assert {"tgcnet-vit-b16", "tgcnet-tiny"} <= set(list_presets())


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="unknown preset 'nope'.*tgcnet-tiny"):
        get_preset("nope")


def test_overrides_nested_and_sections():
    cfg = get_preset("tgcnet-tiny", date__lora__r=2, sse={"channels": 24}, laterality="patient")
    assert cfg.date.lora.r == 2
    assert cfg.sse.channels == 24 and cfg.sse.cnn_name == "convnext_atto"  # section merged, not replaced
    assert cfg.laterality == "patient"


def test_unknown_field_is_named():
    with pytest.raises(ValueError, match=r"config\.sse.*chanels"):
        get_preset("tgcnet-tiny", sse={"chanels": 3})


def test_bad_values_rejected():
    with pytest.raises(ValueError, match="laterality"):
        get_preset("tgcnet-tiny", laterality="sideways")
    with pytest.raises(ValueError, match="fusion"):
        get_preset("tgcnet-tiny", sse__fusion="sum")
    with pytest.raises(ValueError, match="one ViT block per CNN"):
        get_preset("tgcnet-tiny", sse__vit_indices=[0, 1])
    with pytest.raises(ValueError, match=r"loss weights.*'loss.bce_weight': -0.5"):
        get_preset("tgcnet-tiny", loss__bce_weight=-0.5)
    with pytest.raises(ValueError, match="at least one > 0"):
        get_preset("tgcnet-tiny", loss={"dice_weight": 0.0, "bce_weight": 0.0})


def test_round_trip_through_json():
    cfg = get_preset("tgcnet-vit-b16", date__lora__r=4)
    again = TGCNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


def test_add_preset(tmp_path):
    data = get_preset("tgcnet-tiny").to_dict()
    data["decoder"]["channels"] = 8
    data.pop("name")
    (tmp_path / "my-tiny.json").write_text(json.dumps(data))
    add_preset(tmp_path / "my-tiny.json")
    assert get_preset("my-tiny").decoder.channels == 8
    with pytest.raises(FileNotFoundError):
        add_preset(tmp_path / "missing.json")


def test_config_describes_the_method_not_the_machine():
    """No field of the config says how a CPU runs the model; one that tries is refused with where it is chosen."""
    from tgcnet.config import RUN_TIME_FIELDS, ClipConfig

    assert "cpu_linear" not in {f.name for f in dataclasses.fields(ClipConfig)}
    assert ("clip", "cpu_linear") in RUN_TIME_FIELDS
    saved = get_preset("tgcnet-tiny").to_dict()
    saved["clip"]["cpu_linear"] = "onednn"
    with pytest.raises(ValueError, match=r"config\.clip\.cpu_linear is not a config field.*optimize_for_cpu"):
        TGCNetConfig.from_dict(saved)
