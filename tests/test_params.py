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
