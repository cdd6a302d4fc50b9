"""benchmarks.speed.run on the tiny presets, in-process: every selection runs and reports, targets come from one
process, and a run merges into an earlier one."""
from __future__ import annotations

import json
import tempfile

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
    assert md.startswith("# Speed and memory (tgcnet-tiny)\n\nWritten by `python -m benchmarks.speed.run` at commit ")
    assert json.loads((selections["targets"] / "speed.json").read_text())["meta"]["commit"] in md
    assert speed.main(["--report", str(selections["targets"] / "speed.json"), "--out", str(tmp_path / "again"),
                       "--note", "re-rendered"]) == 0
    assert "Note: re-rendered" in (tmp_path / "again" / "speed.md").read_text()


def test_plan_quick_and_full():
    quick = speed.plan(quick=True, compile_=False, feature_cache=True)
    full = speed.plan(quick=False, compile_=True, feature_cache=False)
    assert {c.batch for c in quick} == {2} and {c.batch for c in full} == {1, 8}
    assert {c.size for c in full} == {224, 320, 448} and {c.batch for c in full if c.size > 224} == {8}
    assert [c.name for c in quick] == ["targets", "biomedclip"]
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


def test_quick_and_partial_runs_never_write_the_committed_report(monkeypatch, tmp_path, capsys):
    """Only the full default plan (and --report, --merge-into) defaults to benchmarks/results; a quick run,
    an --only run and the GPU plan go to a new temporary folder, named on the way out."""
    from benchmarks import RESULTS

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    full = speed.parse_args([])
    assert speed.out_folder(full) == RESULTS
    assert speed.out_folder(speed.parse_args(["--only", "targets", "--merge-into", "x.json"])) == RESULTS
    assert speed.out_folder(speed.parse_args(["--report", "x.json"])) == RESULTS
    assert speed.out_folder(speed.parse_args(["--quick", "--out", str(tmp_path / "mine")])) == tmp_path / "mine"
    for argv in (["--quick"], ["--only", "targets"], ["--plan", "cuda"]):
        folder = speed.out_folder(speed.parse_args(argv))
        assert folder.parent == tmp_path and folder.name.startswith("tgcnet-speed-"), argv
    before = {p.name: p.stat().st_mtime_ns for p in RESULTS.glob("speed.*")}
    assert speed.main([*TINY, "--only", "biomedclip"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in RESULTS.glob("speed.*")} == before
    written = [line for line in capsys.readouterr().out.splitlines() if line.startswith("wrote ")]
    assert written and str(tmp_path) in written[-1]


def test_quick_is_short():
    """Quick: two comparisons at batch 2, one thread, memory in the timing process, short rounds."""
    args = speed.parse_args(["--quick"])
    settings = speed.make_settings(args)
    assert settings.threads == 1 and speed.make_settings(speed.parse_args(["--quick", "--threads", "2"])).threads == 2
    assert not settings.isolate and settings.rounds == 2 and settings.min_run_time == 0.0 and settings.memory_steps == 1
    assert [c.name for c in speed.comparisons_of(args)] == ["targets", "biomedclip"]


def test_cuda_plan_sweeps_batches_and_precisions_targets_first():
    plan = speed.cuda_plan((1, 8, 64), ("none", "bf16"), "tgcnet-biomedclip")
    assert plan[0].name == "cuda@bf16@b64" and plan[0].amp == "bf16" and plan[0].batch == 64
    assert [c.name for c in plan[:3]] == ["cuda@bf16@b64", "cuda_biomedclip@bf16@b64", "cuda_levers"]
    grid = {(c.amp, c.batch, c.preset is None) for c in plan if c.name != "cuda_levers"}
    assert grid == {(a, b, p) for a in ("none", "bf16") for b in (1, 8, 64) for p in (True, False)}
    assert all(c.memory for c in plan)
    for c in plan:
        keys = {m.key for m in c.members}
        assert len(keys) == len(c.members)
        if c.name != "cuda_levers":
            assert keys == {"floor/infer", "tgcnet/infer", "tgcnet/train", "clipseg/infer", "clipseg/train"}
    levers = {m.key for m in plan[2].members}
    assert {"tgcnet:fp32_frozen/train", "tgcnet:channels_last_head/infer", "tgcnet:fused_adamw/train"} <= levers
    assert any("compile_head" in m.variant for m in speed.cuda_plan(compile_=True)[2].members)
    settings = speed.make_settings(speed.parse_args(["--plan", "cuda", "--device", "cpu"]))
    assert settings.reuse_models and not settings.isolate and settings.amp is None


def test_sweep_options_are_checked():
    for argv, message in ((["--amp", "none,bf16"], "add --plan cuda"), (["--batches", "1,8"], "add --plan cuda"),
                          (["--plan", "cuda", "--amp", "fp8"], "'fp8' is not one of none, bf16, fp16"),
                          (["--plan", "cuda", "--batches", "1,x"], "'x' is not a int"),
                          (["--plan", "cuda", "--quick"], "neither --quick")):
        with pytest.raises(SystemExit):
            speed.parse_args(argv)
    assert speed.parse_list("1, 8,64", int) == [1, 8, 64]
    with pytest.raises(ValueError, match="'fp8' is not one of"):
        speed.parse_list("bf16,fp8", str, speed.AMPS)


def test_a_time_budget_records_what_was_not_measured(tmp_path):
    """Once the budget is spent no comparison starts; those left say why (a GPU lease is short)."""
    out = tmp_path / "cut"
    argv = ["--plan", "cuda", "--device", "cpu", "--preset", "tgcnet-tiny", "--biomedclip-preset",
            "tgcnet-tiny-biomedclip", "--batches", "2", "--amp", "bf16", "--size", "32", "--tiny-peers",
            "--rounds", "1", "--min-run-time", "0", "--memory-steps", "1", "--time-budget", "0", "--out", str(out)]
    assert speed.main(argv) == 0
    result = json.loads((out / "speed.json").read_text())
    first, *rest = result["comparisons"].values()
    assert "members" in first and first["amp"] == "bf16"
    assert rest and all("time budget of 0 s was spent" in c["skipped"] for c in rest)
    assert "Not measured: not started: the time budget" in (out / "speed.md").read_text()
    assert [t["value"] for t in result["cuda_targets"]] == [None] * 4    # 32 px: not the targets' 224
