"""benchmarks/speed.py on the tiny presets, in-process: every selection runs and reports, and its toggles are faithful."""
import importlib.util
import json
import sys

import pytest
import torch

from helpers import StaticKnowledge, images
from conftest import REPO_ROOT

#: the harness at test scale: tiny presets, 32 px, batch 2, one round, memory in this process
TINY = ["--preset", "tgcnet-tiny", "--biomedclip-preset", "tgcnet-tiny-biomedclip", "--size", "32", "--batch", "2",
        "--rounds", "1", "--min-run-time", "0", "--in-process-memory", "--memory-steps", "1", "--tiny-peers"]


@pytest.fixture(scope="module")
def speed():
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("speed_benchmark", REPO_ROOT / "benchmarks" / "speed.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def members(speed):
    """benchmarks/speed_members.py, importable once speed.py put benchmarks/ on the path."""
    import speed_members

    return speed_members


def _settings(speed):
    return speed.Settings(preset="tgcnet-tiny", rounds=1, min_run_time=0.0, isolate=False, tiny_peers=True)


def _build(speed, model, mode="infer", variant="default", size=64):
    member = speed.Member(model, mode, variant)
    comparison = speed.Comparison("check", "check", (member,), 2, size)
    return speed.build(member, comparison, _settings(speed), torch.device("cpu"))


def _names(speed):
    """Every comparison of the full plan but torch.compile's (minutes of compiling, even on the tiny presets)."""
    return [c.name for c in speed.plan(quick=False, compile_=False, feature_cache=True)]


@pytest.fixture(scope="module")
def selections(speed, tmp_path_factory):
    """Every comparison of the full plan but torch.compile's, each run alone with ``--only``: name -> its out folder."""
    root = tmp_path_factory.mktemp("speed")
    outs = {}
    for name in _names(speed):
        outs[name] = root / name
        # open_clip's own visual(x) takes only its input size: those comparisons run at 224 px
        tiny = [a for a in TINY if a not in ("--size", "32")] if name in ("floor_paths", "batch1") else TINY
        assert speed.main([*tiny, "--only", name, "--out", str(outs[name])]) == 0
    return outs


def test_every_selection_writes_json_and_md(speed, selections):
    """Each selection runs all its members to the end and writes both files."""
    assert set(selections) >= {"targets", "floor_paths", "biomedclip", "lora_merged", "peers", "scaling_448"}
    for name, out in selections.items():
        result = json.loads((out / "speed.json").read_text())
        assert list(result["comparisons"]) == [name]
        comparison = result["comparisons"][name]
        assert "error" not in comparison, comparison
        for member in comparison["members"]:
            assert "error" not in member and member["median_s"] > 0 and member["images_per_s"] > 0, member
        md = (out / "speed.md").read_text()
        assert f"(`{name}`)" in md and "failed" not in md


def test_targets_come_from_one_process(speed, selections, tmp_path):
    """The targets comparison: TGCNet, its floor, its lower bound and CLIPSeg interleaved; memory per member."""
    result = json.loads((selections["targets"] / "speed.json").read_text())
    rows = {m["key"]: m for m in result["comparisons"]["targets"]["members"]}
    assert set(rows) == {"floor/infer", "tgcnet/infer", "tgcnet/train", "method_core/train", "clipseg/infer",
                         "clipseg/train", "tgcnet:feature_cache/train"}
    assert all(r["peak_mb"] > 0 for r in rows.values())
    infer, train = rows["tgcnet/infer"], rows["tgcnet/train"]
    assert rows["floor/infer"]["trainable_params"] == 0 and train["trainable_params"] == infer["trainable_params"] > 0
    assert train["text"]["unique_captions"] == 2 and train["text"]["unique_descriptions"] > 0
    assert {"sse.clip_visual", "date", "decoder", "step"} <= set(train["parts_s"])
    ratio = result["ratios"]
    assert ratio["train_over_method_core"] == pytest.approx(train["median_s"] / rows["method_core/train"]["median_s"])
    assert ratio["train_over_infer"] == pytest.approx(train["median_s"] / infer["median_s"])
    assert ratio["infer_throughput_over_clipseg"] == pytest.approx(rows["clipseg/infer"]["median_s"] / infer["median_s"])
    md = (selections["targets"] / "speed.md").read_text()
    assert "## Targets" in md and "| TGCNet | train |" in md and "## Where TGCNet's time goes" in md
    assert "| training step / the method's lower bound (method_core) | <= 1.15 |" in md
    assert speed.main(["--report", str(selections["targets"] / "speed.json"), "--out", str(tmp_path / "again"),
                       "--note", "re-rendered"]) == 0
    assert "Note: re-rendered" in (tmp_path / "again" / "speed.md").read_text()


def test_cached_training_target_row(speed):
    def row(key, median):
        model, mode = key.split("/")
        name, _, variant = model.partition(":")
        return {"key": key, "model": name, "mode": mode, "variant": variant or "default", "median_s": median}
    comparison = {"members": [row("tgcnet:feature_cache/train", 6 / 1.5), row("clipseg/train", 6.0),
                              row("tgcnet/train", 9.0), row("method_core/train", 8.0)]}
    ratio = speed.ratios(comparison)
    assert ratio["cached_train_throughput_over_clipseg"] == pytest.approx(1.5)
    assert ratio["train_throughput_over_clipseg"] == pytest.approx(6 / 9)
    assert ratio["train_over_method_core"] == pytest.approx(9 / 8)
    checks = {c["key"]: c["met"] for c in speed.targets(ratio)}
    assert checks["cached_train_throughput_over_clipseg"] is True and checks["train_over_method_core"] is True
    assert "train_throughput_over_clipseg" not in checks      # shown as information, not a target
    assert checks["infer_over_floor"] is None                 # missing members: n/a, not a failure


def test_plan_quick_and_full(speed):
    quick = speed.plan(quick=True, compile_=False, feature_cache=True)
    full = speed.plan(quick=False, compile_=True, feature_cache=False)
    assert {c.batch for c in quick} == {2} and {c.batch for c in full} == {1, 8}
    assert {c.size for c in full} == {224, 320, 448} and {c.batch for c in full if c.size > 224} == {8}
    assert [c.name for c in quick] == ["targets", "floor_paths", "biomedclip"]
    assert any(m.variant == "feature_cache" for c in quick for m in c.members)
    assert not any("feature_cache" in m.variant for c in full for m in c.members)
    assert any(c.name == "compile" for c in full) and not any(c.name == "compile" for c in quick)
    for c in full:
        assert len({m.key for m in c.members}) == len(c.members), c.name
    targets = {m.key for m in full[0].members}
    assert {"floor/infer", "tgcnet/infer", "tgcnet/train", "method_core/train", "clipseg/infer",
            "clipseg/train"} <= targets and full[0].memory
    assert {m.key for m in next(c for c in full if c.name == "floor_paths").members} == {
        "floor_open_clip/infer", "floor:unfused/infer", "floor:torch_linear/infer", "floor:onednn_linear/infer",
        "floor/infer"}
    scaling = next(c for c in full if c.name == "scaling_448")
    assert (speed.resized(scaling, 2, 32).size, speed.resized(scaling, 2, 32).batch) == (64, 2)
    assert speed.resized(next(c for c in full if c.name == "batch1"), 2, 32).batch == 1
    assert [c.name for c in full if c.profile] == ["targets"]
    lora = next(c for c in full if c.name == "lora_merged")
    assert all("no_knowledge" in m.variant for m in lora.members)
    assert {c.name for c in full if c.preset is not None or "biomedclip" in c.name} == {"biomedclip",
                                                                                         "biomedclip_batch1"}


def test_unknown_selection_names_the_comparisons(speed):
    with pytest.raises(ValueError, match="no comparison named peers_ab in this plan; names: targets, floor_paths"):
        speed.select(speed.plan(), "targets,peers_ab")
    assert [c.name for c in speed.select(speed.plan(), "biomedclip")] == ["biomedclip"]
    with pytest.raises(SystemExit, match="names: targets"):
        speed.main([*TINY, "--only", "nothing-like-this"])


def test_an_earlier_layout_is_refused_with_what_to_do(speed, tmp_path):
    old = tmp_path / "speed.json"
    old.write_text(json.dumps({"meta": {}, "rows": []}))
    with pytest.raises(SystemExit, match="earlier layout.*measure it again"):
        speed.main(["--report", str(old), "--out", str(tmp_path / "out")])


def test_no_dedup_toggle_changes_work_not_numbers(members):
    """Trailing spaces defeat de-duplication but tokenise identically: same logits, more strings encoded."""
    from tgcnet import create_model

    knowledge = StaticKnowledge()
    torch.manual_seed(0)
    model = create_model("tgcnet-tiny", knowledge=knowledge).eval()
    torch.manual_seed(0)
    padded_model = create_model("tgcnet-tiny", knowledge=members.PaddedKnowledge(knowledge)).eval()
    captions = ["bilateral pulmonary infection, lower left lung."] * 2
    x = images(2, 64)
    with torch.no_grad():
        ref = model(x, captions)
        padded = members.undeduplicated(captions)
        out = padded_model(x, padded)
    assert len(set(padded)) == 2
    per_caption = set(padded_model.date.knowledge.source.descriptions_for(captions[0]))
    descs = {d for c in padded for d in padded_model.date.knowledge.descriptions_for(c)}
    assert len(descs) == 2 * len(per_caption) == 6
    torch.testing.assert_close(out, ref)


def test_load_probe_sees_another_process(speed):
    import subprocess

    from harness import DISTURBED_CORES, LoadProbe, disturbed

    probe = LoadProbe()
    busy = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 0.6: pass"])
    busy.wait()
    assert probe.other_cores() > DISTURBED_CORES
    assert disturbed(0.5) and not disturbed(None)


@pytest.mark.parametrize("variant", ["no_caption_cache", "light_head", "onednn_linear", "torch_linear",
                                     "no_knowledge+lora_merged", "channels_last", "no_dedup"])
def test_tgcnet_variants_build_and_step(speed, variant):
    """Each variant builds through public API and runs."""
    bench = _build(speed, "tgcnet", "infer", variant)
    bench.call()
    bench.call()
    if variant == "light_head":
        assert bench.trainable < _build(speed, "tgcnet").trainable


def test_linear_variants_go_through_optimize_for_cpu(speed):
    """The kernel variants are optimize_for_cpu's choices on the built model: same numbers to float rounding."""
    from tgcnet.accel import has_onednn_linears, onednn_linear_available

    torch_model = _build(speed, "tgcnet", "infer", "torch_linear").model
    onednn_model = _build(speed, "tgcnet", "infer", "onednn_linear").model
    assert not has_onednn_linears(torch_model.sse.clip_visual)
    assert has_onednn_linears(onednn_model.sse.clip_visual) is onednn_linear_available()
    x, captions = images(2, 64), ["bilateral pulmonary infection, lower left lung."] * 2
    with torch.no_grad():
        torch.testing.assert_close(onednn_model(x, captions), torch_model(x, captions), rtol=1e-4, atol=1e-4)


def test_lora_merged_runs_with_knowledge_off_and_computes_the_same(speed):
    """A merged LoRA cannot be bypassed for the frozen knowledge encoder: the variant refuses knowledge on, and
    with knowledge off its outputs are the unmerged model's (the row measures the same computation)."""
    with pytest.raises(ValueError, match="'lora_merged' needs 'no_knowledge'"):
        _build(speed, "tgcnet", "infer", "lora_merged")
    from tgcnet.adapters import lora_layers, merge_lora

    merged = _build(speed, "tgcnet", "infer", "no_knowledge+lora_merged").model
    plain = _build(speed, "tgcnet", "infer", "no_knowledge").model
    assert merged.date.knowledge is None and lora_layers(merged.date.text_tower)
    assert all(layer.merged for layer in lora_layers(merged.date.text_tower).values())
    x, captions = images(2, 64), ["bilateral pulmonary infection, lower left lung."] * 2
    with torch.no_grad():
        torch.testing.assert_close(merged.eval()(x, captions), plain.eval()(x, captions), rtol=1e-4, atol=1e-4)
        for name, p in plain.date.text_tower.named_parameters():   # LoRA starts at zero: give the merge work
            if "lora_B" in name:
                p.fill_(0.01)
        before = plain(x, captions)
        merge_lora(plain.date.text_tower)
        torch.testing.assert_close(plain(x, captions), before, rtol=1e-4, atol=1e-4)


def test_method_core_variant_steps(speed):
    """The lower bound runs as a training step and refuses inference (it has no output to serve)."""
    bench = _build(speed, "method_core", "train")
    bench.call()
    bench.call()
    with pytest.raises(ValueError, match="training lower bound"):
        _build(speed, "method_core", "infer")


def test_method_core_loss_gradients(members):
    """Its loss backpropagates into LoRA and the CNN branch and leaves the head untouched."""
    from tgcnet import create_model

    model = create_model("tgcnet-tiny", knowledge=StaticKnowledge()).train()
    captions = ["bilateral pulmonary infection, lower left lung.", "unilateral pulmonary infection, right lung."]
    members.method_core_loss(model, images(2, 64), captions).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "lora" in n)
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith("sse.cnn."))
    assert all(g is None for n, g in grads.items() if n.startswith(("decoder.", "vlcm.", "sse.fusion.")))
    assert all(p.grad is None for p in model.sse.clip_visual.parameters())


def test_biomedclip_comparison(speed, selections):
    """The BiomedCLIP-shaped preset's members build a WordPiece tokenizer and run beside its frozen towers."""
    added = json.loads((selections["biomedclip"] / "speed.json").read_text())["comparisons"]["biomedclip"]
    assert added["preset"] == "tgcnet-tiny-biomedclip"
    rows = {m["key"]: m for m in added["members"]}
    assert list(rows) == ["floor/infer", "text_floor/infer", "tgcnet/infer", "tgcnet/train"]
    assert all("error" not in r and r["median_s"] > 0 and r["peak_mb"] > 0 for r in rows.values()), rows
    text_floor, train = rows["text_floor/infer"], rows["tgcnet/train"]
    assert text_floor["text"]["unique_captions"] == 2 and text_floor["text"]["caption_tokens"] > 10
    assert train["trainable_params"] > 0 and train["text"]["unique_descriptions"] > 0
    assert train["text"]["caption_tokens"] == text_floor["text"]["caption_tokens"]


def test_merge_into_an_earlier_run(speed, selections, tmp_path):
    """``--only floor_paths --merge-into``: the run's comparison is added; the earlier result keeps every
    comparison and line."""
    base = selections["biomedclip"] / "speed.json"
    earlier, old_md = json.loads(base.read_text()), (selections["biomedclip"] / "speed.md").read_text()
    tiny = [a for a in TINY if a not in ("--size", "32")]
    assert speed.main([*tiny, "--only", "floor_paths", "--merge-into", str(base), "--out", str(tmp_path),
                       "--note", "a merged run"]) == 0
    result = json.loads((tmp_path / "speed.json").read_text())
    assert result["comparisons"]["biomedclip"] == earlier["comparisons"]["biomedclip"]
    assert list(result["comparisons"]) == ["biomedclip", "floor_paths"]
    run = result["meta"]["merged_runs"][-1]
    assert run["comparisons"] == ["floor_paths"] and run["note"] == "a merged run"
    md = (tmp_path / "speed.md").read_text()
    assert md.startswith(old_md.rstrip("\n") + "\n")     # only lines added
    section = md[len(old_md):]
    assert "(`floor_paths`)" in section and "merged into this file" in section and "Note: a merged run" in section
    assert "| floor: open_clip `visual(x)` | infer |" in section


def test_wordpiece_vocab_fits_the_tower(speed, tmp_path):
    """Whole words up to the tower's vocabulary size, every character kept: nothing tokenises to [UNK]."""
    import wordpiece
    from transformers import AutoTokenizer

    texts = ["Bilateral pulmonary infection, lower left lung.", "Ground-glass opacity (GGO) in COVID-19."]
    whole = wordpiece.write_wordpiece_vocab(tmp_path / "whole", texts, size=30522)
    vocab = (tmp_path / "whole" / "vocab.txt").read_text().split("\n")[:-1]
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] and "bilateral" in vocab
    ids = AutoTokenizer.from_pretrained(whole)(texts)["input_ids"]
    assert len(ids[0]) == 2 + 8      # [CLS] bilateral pulmonary infection , lower left lung . [SEP]
    small = wordpiece.write_wordpiece_vocab(tmp_path / "small", texts, size=len(vocab) - 5)
    assert len((tmp_path / "small" / "vocab.txt").read_text().split("\n")[:-1]) == len(vocab) - 5
    tok = AutoTokenizer.from_pretrained(small)
    cut = tok(texts)["input_ids"]
    assert all(tok.unk_token_id not in row for row in cut) and len(cut[1]) > len(ids[1])


def test_memory_is_measured_in_a_fresh_process(speed):
    """The real memory path: each member rebuilt in a spawned process, its peak read there."""
    import harness

    comparison = speed.Comparison("check", "check", (speed.Member("floor"),), 2, 32, memory=True)
    settings = speed.Settings(preset="tgcnet-tiny", memory_steps=1)
    memory = harness.memory_of(comparison, settings, speed.build)
    assert memory["floor/infer"]["peak_mb"] > 0 and "peak" in memory["floor/infer"]["memory_kind"], memory
