"""LoRA adapters in peft's own format: saved by tgcnet, loaded by peft alone on the bare open_clip tower."""
from __future__ import annotations

import json

import open_clip
import pytest
import torch
from peft import PeftModel

from tgcnet import create_model
from tgcnet.adapters import (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, LoraAdapterConfig, apply_lora, load_adapter,
                             lora_parameters, lora_state_dict, merge_lora, save_adapter)
from tgcnet.adapters.peft_format import peft_out_proj_factor
from tgcnet.config import get_preset
from tgcnet.text_towers import OpenClipTextTower


def ids(batch: int = 2, length: int = 9, context: int = 77) -> torch.Tensor:
    """Token ids padded to the full context, as open_clip's encode_text takes them."""
    torch.manual_seed(1)
    x = torch.zeros(batch, context, dtype=torch.long)
    x[:, :length] = torch.randint(1, 1000, (batch, length))
    x[:, length - 1] = 49407  # EOT is the highest id: argmax pooling picks it
    return x


def lora_text_tower() -> OpenClipTextTower:
    """The LoRA'd text tower of a tiny TGCNet, its adapters made non-zero so they change the output."""
    torch.manual_seed(0)
    tower = create_model("tgcnet-tiny", knowledge=None).date.text_tower.eval()
    with torch.no_grad():
        for p in lora_parameters(tower).values():
            p.normal_(0, 0.05)
    return tower


def bare_clip_like(tower: OpenClipTextTower) -> open_clip.model.CLIP:
    """An open_clip CLIP whose text weights are the frozen weights of ``tower``, with no tgcnet module in it."""
    clip = open_clip.model.CLIP(**get_preset("tgcnet-tiny").clip.model_cfg).eval()
    frozen = {k.replace(".base_layer", ""): v for k, v in tower.state_dict().items() if "lora_" not in k}
    frozen = {k.replace("attn.in_proj.weight", "attn.in_proj_weight").replace("attn.in_proj.bias", "attn.in_proj_bias"): v
              for k, v in frozen.items()}
    missing = [k for k in frozen if k not in clip.state_dict()]
    assert not missing, missing
    clip.load_state_dict(frozen, strict=False)
    return clip


def test_peft_alone_loads_the_adapter_on_the_bare_tower(tmp_path):
    tower = lora_text_tower()
    x = ids()
    with torch.no_grad():
        expected = tower(x)[1]
    save_adapter(tower, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME]
    assert json.loads((tmp_path / ADAPTER_CONFIG_NAME).read_text())["peft_type"] == "LORA"

    bare = bare_clip_like(tower)
    with torch.no_grad():
        base = bare.encode_text(x)
    model = PeftModel.from_pretrained(bare, tmp_path).eval()
    # every adapter weight arrives bit for bit (out_proj's B divided by the times peft adds its delta)
    factor = peft_out_proj_factor()
    saved = lora_state_dict(tower)
    loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(loaded) == len(saved)
    for key, value in saved.items():
        block, _, rest = key.rpartition(".lora_")
        block = block.replace("attn.in_proj", "attn").replace("attn.out_proj", "attn.base_layer.out_proj")
        name, _, tail = rest.partition(".")
        if "out_proj" in block and name == "B":
            value = value / factor
        assert torch.equal(model.state_dict()[f"base_model.model.{block}.lora_{name}.default.{tail}"], value), key
    with torch.no_grad():
        got = model.base_model.model.encode_text(x)
    assert not torch.allclose(got, base, atol=1e-4)  # the adapter is on
    # the same maths through nn.MultiheadAttention instead of tgcnet's attention: float rounding apart
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)

    # merged weights agree bit for bit
    merged = model.merge_and_unload()
    merge_lora(tower)
    for i, block in enumerate(merged.transformer.resblocks):
        assert torch.equal(block.attn.in_proj_weight, tower.transformer.resblocks[i].attn.in_proj.base_layer.weight)
        assert torch.equal(block.mlp.c_fc.weight, tower.transformer.resblocks[i].mlp.c_fc.base_layer.weight)


def test_adapter_peft_saved_loads_back_into_tgcnet_exactly(tmp_path):
    tower = lora_text_tower()
    x = ids()
    with torch.no_grad():
        expected = tower(x)
    save_adapter(tower, tmp_path / "tgcnet")
    PeftModel.from_pretrained(bare_clip_like(tower), tmp_path / "tgcnet").save_pretrained(tmp_path / "peft")

    fresh = create_model("tgcnet-tiny", date__lora__r=0, knowledge=None).date.text_tower.eval()
    config = load_adapter(fresh, tmp_path / "peft")
    preset = get_preset("tgcnet-tiny").date.lora
    assert (config.r, config.alpha) == (preset.r, preset.alpha)
    with torch.no_grad():
        got = fresh(x)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_one_attention_projection_gets_a_zero_partner(tmp_path):
    tower = OpenClipTextTower(open_clip.model.CLIP(**get_preset("tgcnet-tiny").clip.model_cfg), "argmax", None, 0)
    apply_lora(tower, LoraAdapterConfig(r=2, targets="open_clip_text_mlp"))
    attn_only = OpenClipTextTower(open_clip.model.CLIP(**get_preset("tgcnet-tiny").clip.model_cfg), "argmax", None, 0)
    apply_lora(attn_only, LoraAdapterConfig(r=2, targets=r"^transformer\.resblocks\.\d+\.attn\.in_proj$"))
    save_adapter(attn_only, tmp_path)
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / ADAPTER_WEIGHTS_NAME))
    out_proj = [k for k in weights if "out_proj" in k]
    assert len(out_proj) == 4 and all(not weights[k].any() for k in out_proj)


def test_prefix_names_the_tower_inside_a_bigger_model(tmp_path):
    save_adapter(lora_text_tower(), tmp_path, prefix="text.")
    config = json.loads((tmp_path / ADAPTER_CONFIG_NAME).read_text())
    assert config["target_modules"].startswith("^(?:text\\.transformer")


def test_errors_say_what_to_do(tmp_path):
    bare = OpenClipTextTower(open_clip.model.CLIP(**get_preset("tgcnet-tiny").clip.model_cfg), "argmax", None, 0)
    with pytest.raises(ValueError, match="apply_lora"):
        save_adapter(bare, tmp_path)
    save_adapter(lora_text_tower(), tmp_path)
    config = json.loads((tmp_path / ADAPTER_CONFIG_NAME).read_text())
    (tmp_path / ADAPTER_CONFIG_NAME).write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ValueError, match="use_dora.*plain LoRA"):
        load_adapter(bare, tmp_path)
    (tmp_path / ADAPTER_CONFIG_NAME).write_text(json.dumps({**config, "peft_type": "IA3"}))
    with pytest.raises(ValueError, match="not a peft LoRA adapter"):
        load_adapter(bare, tmp_path)


def test_bert_text_tower_adapter_loads_on_the_bare_hf_encoder_bit_identically(tmp_path):
    """No attention rewrite on a BERT tower: peft on the bare encoder runs the very same layers."""
    from helpers import CAPTIONS, write_bert_tokenizer
    from tgcnet.backbone import instantiate
    from tgcnet.text_towers import text_tower
    from tgcnet.tokenizer import CaptionTokenizer, HFTokenizer

    cfg = get_preset("tgcnet-tiny-biomedclip").clip.model_cfg

    def clip():
        torch.manual_seed(0)
        return instantiate(cfg).eval()

    context = cfg["text_cfg"]["context_length"]
    tower = apply_lora(text_tower(clip(), context), LoraAdapterConfig(r=2, alpha=4, targets="hf_bert_text"))
    with torch.no_grad():
        for p in lora_parameters(tower).values():
            p.normal_(0, 0.05)
    folder = write_bert_tokenizer(tmp_path / "tok")
    x = CaptionTokenizer(HFTokenizer(folder, context, folder, "test"))(CAPTIONS)
    with torch.no_grad():
        expected = tower(x)[1]
    save_adapter(tower, tmp_path / "adapter")
    bare = clip().text  # the open_clip HFTextEncoder, no tgcnet module in it
    with torch.no_grad():
        before = bare(x)
        got = PeftModel.from_pretrained(bare, tmp_path / "adapter").eval()(x)
    assert not torch.allclose(got, before, atol=1e-4) and torch.equal(got, expected)
