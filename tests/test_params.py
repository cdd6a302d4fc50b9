import pytest

from tgcnet import count_parameters, create_model, format_parameter_table

ROWS = ["sse.clip_visual", "sse.cnn", "sse.fusion", "date.text_tower", "date.lora", "date.knowledge_fusion",
        "vlcm", "decoder", "total"]


def test_rows_cover_every_parameter_once():
    model = create_model("tgcnet-tiny", knowledge=None)
    rows = {r["module"]: r for r in count_parameters(model)}
    assert list(rows) == ROWS
    assert rows["total"]["total"] == sum(p.numel() for p in model.parameters())
    assert rows["total"]["trainable"] == sum(p.numel() for p in model.trainable_parameters())
    assert rows["sse.clip_visual"]["trainable"] == 0 and rows["sse.clip_visual"]["frozen"]
    assert rows["date.text_tower"]["trainable"] == 0 and rows["date.text_tower"]["total"] > 0
    assert rows["date.lora"]["trainable"] == rows["date.lora"]["total"] > 0


def test_vit_b16_budget():
    """The paper's point: far fewer trainable parameters than LViT (29.7M)."""
    rows = {r["module"]: r for r in count_parameters(create_model("tgcnet-vit-b16", knowledge=None))}
    assert rows["date.lora"]["trainable"] == 786_432
    assert rows["total"]["trainable"] <= 8_000_000
    assert 140e6 < rows["sse.clip_visual"]["total"] + rows["date.text_tower"]["total"] < 155e6


def test_biomedclip_budget_as_shipped():
    """BiomedCLIP's ViT-B/16 + PubMedBERT, knowledge bank on: still at most 8M trainable."""
    rows = {r["module"]: r for r in count_parameters(create_model("tgcnet-biomedclip"))}
    # r=6 on 12 layers: q, k, v, attention output (768->768) and intermediate, output (768<->3072)
    assert rows["date.lora"]["trainable"] == 12 * (4 * 6 * (768 + 768) + 2 * 6 * (768 + 3072))
    assert rows["date.knowledge_fusion"]["trainable"] > 0
    assert rows["total"]["trainable"] <= 8_000_000
    assert rows["sse.clip_visual"]["total"] == 86_191_872   # timm vit_base_patch16_224 + 768->512 head


def test_print_trainable_parameters(capsys):
    create_model("tgcnet-tiny", knowledge=None).print_trainable_parameters()
    out = capsys.readouterr().out
    assert out.startswith("trainable params: ") and "|| all params: " in out and "|| trainable%: " in out


def test_table_format():
    table = format_parameter_table(count_parameters(create_model("tgcnet-tiny", knowledge=None)), "T")
    assert table.splitlines()[0] == "T" and "| date.lora |" in table and "| total |" in table


def test_biomedclip_trainable_count_is_exact():
    assert sum(p.numel() for p in create_model("tgcnet-biomedclip").trainable_parameters()) == 7_924_671


@pytest.mark.parametrize("preset", ["tgcnet-tiny", "tgcnet-tiny-biomedclip"])
def test_towers_say_what_is_frozen(preset):
    """Each tower reports its frozen state (the whole image tower; the text tower but its LoRA
    adapters): the model's frozen set is theirs, and it is exactly what does not train or save."""
    model = create_model(preset, knowledge=None)
    image = model.sse.clip_visual.frozen_state_names()
    text = model.date.text_tower.frozen_state_names()
    assert set(image) == set(model.sse.clip_visual.state_dict())
    assert text and not any("lora_" in n for n in text)
    lora = {n for n, _ in model.date.text_tower.named_parameters()} - set(text)
    assert lora and all("lora_" in n for n in lora)
    frozen = model.frozen_state_names()
    assert frozen == {f"sse.clip_visual.{n}" for n in image} | {f"date.text_tower.{n}" for n in text}
    params = dict(model.named_parameters())
    assert all(not params[n].requires_grad for n in frozen if n in params)
    assert all(n not in frozen for n, p in params.items() if p.requires_grad)
    assert not frozen & set(model.trainable_state_dict())
    assert set(model.trainable_state_dict()) | frozen == set(model.state_dict())


def test_count_rows_follow_what_the_text_tower_reports(monkeypatch):
    """The text-tower and LoRA rows split the tower by its own frozen list, not by names."""
    model = create_model("tgcnet-tiny", knowledge=None)
    tower = model.date.text_tower
    every = [n for n, _ in tower.named_parameters()]
    monkeypatch.setattr(type(tower), "frozen_state_names", lambda self: every)
    rows = {r["module"]: r for r in count_parameters(model)}
    assert rows["date.lora"]["total"] == 0
    assert rows["date.text_tower"]["total"] == sum(p.numel() for p in tower.parameters())
