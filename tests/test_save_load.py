import json

import open_clip
import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import CAPTIONS, StaticKnowledge, images, tiny, wake_lora
from tgcnet import TGCNet, create_model, get_preset


def trained_tiny():
    model = tiny()
    wake_lora(model)
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    model.train()
    model(images(2), CAPTIONS[:2]).mean().backward()
    opt.step()
    return model.eval()


def test_round_trip_bit_identical(tmp_path):
    model = trained_tiny()
    model.save_pretrained(tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors",
                                                                     "text_adapter"]
    assert sorted(p.name for p in (tmp_path / "out" / "text_adapter").iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors"]
    again = TGCNet.from_pretrained(tmp_path / "out", knowledge=StaticKnowledge()).eval()
    x = images(2)
    with torch.no_grad():
        assert torch.equal(model(x, CAPTIONS[:2]), again(x, CAPTIONS[:2]))
    for (n, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), n


OTHER_CAPTIONS = ["left lung.", "bilateral pulmonary infection, eight infected areas, upper middle lower left lung "
                  "and upper middle lower right lung, both lungs with diffuse ground-glass opacity."]


@pytest.mark.parametrize("encoder", ["frozen", "lora"])
def test_reload_reproduces_a_model_that_already_served_other_batches(tmp_path, encoder):
    """Nothing cached while serving (captions, descriptions at other batches' lengths) may
    change the saving model's outputs, so the reloaded model gives the very same bits."""
    model = tiny(date__knowledge_encoder=encoder)
    wake_lora(model)
    model.eval()
    with torch.no_grad():
        for batch in ([OTHER_CAPTIONS[1], CAPTIONS[0]], [CAPTIONS[2], OTHER_CAPTIONS[0], CAPTIONS[1]]):
            model(images(len(batch), seed=7), batch)
        served = model(images(2), CAPTIONS[:2])
    model.save_pretrained(tmp_path / "out")
    again = TGCNet.from_pretrained(tmp_path / "out", knowledge=StaticKnowledge()).eval()
    with torch.no_grad():
        assert torch.equal(again(images(2), CAPTIONS[:2]), served)


def test_only_trainable_weights_saved(tmp_path):
    model = trained_tiny()
    model.save_pretrained(tmp_path)
    saved = load_file(str(tmp_path / "model.safetensors"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable <= set(saved)
    assert not any(k.startswith("sse.clip_visual.") for k in saved)
    assert not any(k.startswith("date.text_tower.") and "lora_" not in k for k in saved)
    assert sum(v.numel() for v in saved.values()) < 0.2 * sum(p.numel() for p in model.parameters())
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["config"]["name"] == "tgcnet-tiny" and config["format_version"] == 1


def test_no_temp_files_left_behind(tmp_path):
    trained_tiny().save_pretrained(tmp_path)
    trained_tiny().save_pretrained(tmp_path)  # overwrite in place
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        TGCNet.from_pretrained(tmp_path / "nowhere")


def test_wrong_architecture_is_named(tmp_path):
    trained_tiny().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["config"]["decoder"]["channels"] = 8
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="do not match this architecture.*shape mismatch"):
        TGCNet.from_pretrained(tmp_path, knowledge=StaticKnowledge())


def test_newer_format_refused(tmp_path):
    trained_tiny().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["format_version"] = 99
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="newer"):
        TGCNet.from_pretrained(tmp_path, knowledge=None)


def test_encoder_choice_survives_a_reload(tmp_path):
    trained_tiny().save_pretrained(tmp_path)
    assert TGCNet.from_pretrained(tmp_path).config.date.knowledge_encoder == "frozen"
    config = json.loads((tmp_path / "config.json").read_text())
    config["config"]["date"]["knowledge_encoder"] = "lora"
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert TGCNet.from_pretrained(tmp_path).config.date.knowledge_encoder == "lora"


def _tiny_clip_checkpoint(path, seed=123):
    torch.manual_seed(seed)
    clip = open_clip.model.CLIP(**get_preset("tgcnet-tiny").clip.model_cfg)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(path))
    return clip


def test_local_checkpoint_loads_into_frozen_towers(tmp_path):
    ckpt = tmp_path / "tiny_clip.safetensors"
    clip = _tiny_clip_checkpoint(ckpt)
    model = create_model("tgcnet-tiny", pretrained=str(ckpt), knowledge=None)
    assert torch.equal(model.sse.clip_visual.visual.conv1.weight, clip.visual.conv1.weight)
    assert torch.equal(model.date.text_tower.token_embedding.weight, clip.token_embedding.weight)
    # the recorded path rebuilds the same frozen towers
    model.save_pretrained(tmp_path / "run")
    again = TGCNet.from_pretrained(tmp_path / "run", knowledge=None)
    assert torch.equal(again.sse.clip_visual.visual.conv1.weight, clip.visual.conv1.weight)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="CLIP checkpoint not found"):
        create_model("tgcnet-tiny", pretrained=str(tmp_path / "none.safetensors"), knowledge=None)


def test_checkpoint_of_another_architecture(tmp_path):
    ckpt = tmp_path / "other.safetensors"
    cfg = get_preset("tgcnet-tiny").clip.model_cfg
    cfg["vision_cfg"] = {**cfg["vision_cfg"], "width": 32, "head_width": 16}
    save_file(open_clip.model.CLIP(**cfg).state_dict(), str(ckpt))
    with pytest.raises(ValueError, match=r"other.safetensors does not match this architecture: tensor "
                                         r"'visual\.class_embedding' has shape \(32,\) in the file, \(64,\)"):
        create_model("tgcnet-tiny", pretrained=str(ckpt), knowledge=None)


def test_hf_hub_backbone_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="could not load CLIP 'hf-hub:org/name'"):
        create_model("tgcnet-tiny", clip_model="hf-hub:org/name", knowledge=None)


def test_unknown_clip_architecture():
    with pytest.raises(ValueError, match="unknown CLIP architecture"):
        create_model("tgcnet-tiny", clip_model="ViT-Q-99", knowledge=None)


def test_reloading_without_the_knowledge_it_was_trained_with_says_how(tmp_path):
    trained_tiny().save_pretrained(tmp_path / "out")
    with pytest.raises(ValueError, match="trained with knowledge descriptions.*knowledge='default'"):
        TGCNet.from_pretrained(tmp_path / "out", knowledge=None)


def test_text_adapter_is_peft_loadable_onto_a_fresh_tower(tmp_path):
    """The peft-format copy holds the same LoRA weights the model trained."""
    from tgcnet.adapters import load_adapter, lora_state_dict

    model = trained_tiny()
    model.save_pretrained(tmp_path / "out")
    fresh = create_model("tgcnet-tiny", knowledge=None)
    load_adapter(fresh.date.text_tower, tmp_path / "out" / "text_adapter")
    trained, loaded = lora_state_dict(model.date.text_tower), lora_state_dict(fresh.date.text_tower)
    assert trained.keys() == loaded.keys() and trained
    assert all(torch.equal(trained[k], loaded[k]) for k in trained)
