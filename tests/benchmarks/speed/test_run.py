"""benchmarks.speed.run on the tiny presets, in-process: every selection runs and reports, targets come from one
process, and a run merges into an earlier one."""
from __future__ import annotations

import json

import pytest

from benchmarks.speed import run as speed

#: the harness at test scale: tiny presets, 32 px, batch 2, one round, memory in this process
TINY = ["--preset", "tgcnet-tiny", "--biomedclip-preset", "tgcnet-tiny-biomedclip", "--size", "32", "--batch", "2",
        "--rounds", "1", "--min-run-time", "0", "--in-process-memory", "--memory-steps", "1", "--tiny-peers"]


def _names():
    """Every comparison of the full plan but torch.compile's (minutes of compiling, even on the tiny presets)."""
    return [c.name for c in speed.plan(quick=False, compile_=False, feature_cache=True)]


@pytest.fixture(scope="module")
def selections(tmp_path_factory):
    """Every comparison of the full plan but torch.compile's, each run alone with ``--only``: name -> its out folder."""
    root = tmp_path_factory.mktemp("speed")
    outs = {}
    for name in _names():
        outs[name] = root / name
        # open_clip's own visual(x) takes only its input size: those comparisons run at 224 px
        tiny = [a for a in TINY if a not in ("--size", "32")] if name in ("floor_paths", "batch1") else TINY
        assert speed.main([*tiny, "--only", name, "--out", str(outs[name])]) == 0
    return outs


def test_every_selection_writes_json_and_md(selections):
    """Each selection runs all its members to the end and writes both files."""
    assert set(selections) >= {"targets", "floor_paths", "biomedclip", "lora_merged", "peers", "scaling_448"}
    for name, out in selections.items():
        result = json.loads((out / "speed.json").read_text())
        assert list(result["comparisons"]) == [name]
        comparison = result["comparisons"][name]
        assert "error" not in comparison, comparison
        for member in comparison["members"]:
            assert "error" not in member and member["median_s"] > 0, member
            assert member["images_per_s"] == pytest.approx(comparison["batch"] / member["median_s"])
        md = (out / "speed.md").read_text()
        assert f"(`{name}`)" in md and "failed" not in md


def test_targets_come_from_one_process(selections, tmp_path):
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
    assert md.startswith("# Speed and memory (tgcnet-tiny)\n\nWritten by `python -m benchmarks.speed.run` on ")
    assert speed.main(["--report", str(selections["targets"] / "speed.json"), "--out", str(tmp_path / "again"),
                       "--note", "re-rendered"]) == 0
    assert "Note: re-rendered" in (tmp_path / "again" / "speed.md").read_text()


def test_plan_quick_and_full():
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


def test_unknown_selection_names_the_comparisons():
    with pytest.raises(ValueError, match="no comparison named peers_ab in this plan; names: targets, floor_paths"):
        speed.select(speed.plan(), "targets,peers_ab")
    assert [c.name for c in speed.select(speed.plan(), "biomedclip")] == ["biomedclip"]
    with pytest.raises(SystemExit, match="names: targets"):
        speed.main([*TINY, "--only", "nothing-like-this"])


def test_an_earlier_layout_is_refused_with_what_to_do(tmp_path):
    old = tmp_path / "speed.json"
    old.write_text(json.dumps({"meta": {}, "rows": []}))
    with pytest.raises(SystemExit, match="earlier layout.*measure it again"):
        speed.main(["--report", str(old), "--out", str(tmp_path / "out")])


def test_biomedclip_comparison(selections):
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


def test_merge_into_an_earlier_run(selections, tmp_path):
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
