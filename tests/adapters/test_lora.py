import open_clip
import pytest
import torch
from torch import nn

from tgcnet.adapters import (LoraAdapterConfig, ProjectedAttention, apply_lora, load_adapter, lora_layers,
                             lora_parameters, matching_modules, merge_lora, save_adapter)
from tgcnet.backbone import load_clip
from tgcnet.text_towers import OpenClipTextTower as TextTower
from tgcnet.config import get_preset


def tiny_text_tower() -> TextTower:
    return load_clip(get_preset("tgcnet-tiny").clip).text


def ids(batch=2, length=9):
    x = torch.randint(1, 1000, (batch, length))
    x[:, -1] = 49407  # EOT is the highest id: argmax pooling picks it
    return x


def test_projected_attention_matches_multihead_attention():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    mask = torch.full((7, 7), float("-inf")).triu(1)
    x = torch.randn(3, 7, 32)
    ref = mha(x, x, x, need_weights=False, attn_mask=mask)[0]
    out = ProjectedAttention(mha).eval()(x, x, x, need_weights=False, attn_mask=mask)[0]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_every_lora_weight_gets_a_gradient():
    tower = apply_lora(tiny_text_tower(), LoraAdapterConfig(r=4, alpha=8))
    with torch.no_grad():
        for name, p in lora_parameters(tower).items():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    tokens, pooled = tower(ids())
    (tokens.square().mean() + pooled.square().mean()).backward()
    params = lora_parameters(tower)
    assert len(params) == 2 * 4 * 2  # A and B, 4 targets per block, 2 blocks
    dead = [n for n, p in params.items() if p.grad is None or p.grad.abs().sum() == 0]
    assert dead == []
    assert all(p.grad is None for n, p in tower.named_parameters() if "lora_" not in n)


def test_lora_wraps_text_blocks_only_even_on_a_whole_clip():
    cfg = get_preset("tgcnet-tiny").clip.model_cfg
    clip = open_clip.model.CLIP(**cfg)
    names = matching_modules(clip, LoraAdapterConfig())
    assert names and all(n.startswith("transformer.resblocks.") for n in names)
    apply_lora(clip, LoraAdapterConfig())
    assert not any(n.startswith("visual") for n in lora_layers(clip))
    assert not any(p.requires_grad for p in clip.visual.parameters())


def test_vit_b16_text_tower_lora_count():
    clip = open_clip.model.CLIP(**open_clip.get_model_config("ViT-B-16"))
    tower = apply_lora(TextTower(clip, "argmax", None, 0), LoraAdapterConfig(r=8))
    assert sum(p.numel() for p in lora_parameters(tower).values()) == 786_432


def test_targets_matching_nothing_is_an_error():
    with pytest.raises(ValueError, match="match no module"):
        apply_lora(tiny_text_tower(), LoraAdapterConfig(targets=r"^nothing$"))


def test_rank_zero_freezes_without_adapters():
    tower = apply_lora(tiny_text_tower(), LoraAdapterConfig(r=0))
    assert not lora_layers(tower) and not any(p.requires_grad for p in tower.parameters())


def test_adapter_save_load_round_trip_and_merge(tmp_path):
    torch.manual_seed(0)
    tower = apply_lora(tiny_text_tower(), LoraAdapterConfig(r=4))
    with torch.no_grad():
        for name, p in lora_parameters(tower).items():
            p.normal_(0, 0.05)
    x = ids()
    expected = tower(x)[1]
    save_adapter(tower, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    fresh = load_adapter(tiny_text_tower(), tmp_path)
    assert fresh.r == 4
    # the bare towers are seeded identically, so the reloaded adapter reproduces the output
    reloaded = tiny_text_tower()
    load_adapter(reloaded, tmp_path)
    torch.testing.assert_close(reloaded(x)[1], expected)
    merge_lora(reloaded)
    torch.testing.assert_close(reloaded(x)[1], expected, atol=1e-5, rtol=1e-4)


def test_missing_adapter_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter config"):
        load_adapter(tiny_text_tower(), tmp_path / "none")


def test_lora_disabled_bypasses_adapters_and_restores_them():
    from tgcnet.adapters import lora_disabled

    base = tiny_text_tower()
    x = ids()
    expected_base = base(x)[1]
    tower = apply_lora(tiny_text_tower(), LoraAdapterConfig(r=4))
    with torch.no_grad():
        for name, p in lora_parameters(tower).items():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    trainable = {n for n, p in tower.named_parameters() if p.requires_grad}
    with_lora = tower(x)[1]
    with lora_disabled(tower):
        torch.testing.assert_close(tower(x)[1], expected_base)   # the frozen base, exactly
    assert not torch.allclose(with_lora, expected_base)
    torch.testing.assert_close(tower(x)[1], with_lora)           # adapters back on
    assert {n for n, p in tower.named_parameters() if p.requires_grad} == trainable


def test_lora_disabled_refuses_merged_adapters():
    from tgcnet.adapters import lora_disabled

    tower = apply_lora(tiny_text_tower(), LoraAdapterConfig(r=4))
    merge_lora(tower)
    with pytest.raises(ValueError, match="merged"):
        with lora_disabled(tower):
            pass
