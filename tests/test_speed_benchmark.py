"""benchmarks/speed.py on the tiny preset, in-process: the measuring code runs and its toggles are faithful."""
import importlib.util
import json
import sys

import pytest
import torch

from helpers import StaticKnowledge, images
from conftest import REPO_ROOT


@pytest.fixture(scope="module")
def speed():
    spec = importlib.util.spec_from_file_location("speed_benchmark", REPO_ROOT / "benchmarks" / "speed.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_cases_run_and_report(speed, tmp_path):
    settings = speed.Settings(preset="tgcnet-tiny", warmup=1, iters=1)
    cases = [speed.Case("floor_fused", "infer", 2), speed.Case("floor_open_clip", "infer", 2),
             speed.Case("tgcnet", "infer", 2), speed.Case("tgcnet", "train", 2),
             speed.Case("tgcnet", "train", 2, variant="no_dedup", group="ways")]
    rows = [speed.run_case(c, settings) for c in cases]
    for row in rows:
        assert row["median_s"] > 0 and row["peak_mb"] > 0 and row["images_per_s"] > 0
    floor, _, infer, train, _ = rows
    again = speed.run_case(cases[2], settings)
    rows = speed.merge_repeats(rows + [again])
    assert len(rows) == 5 and rows[2]["process_medians_s"] == [infer["median_s"], again["median_s"]]
    assert len(rows[2]["times_s"]) == 2
    ab = speed.run_case(speed.Case("floor_ab", "infer", 2, group="ab"), settings)
    assert set(ab["ab_median_s"]) == {"open_clip", "unfused", "fused_torch_linear", "fused_onednn_linear", "fused"}
    assert len(ab["ab_times_s"]["fused"]) == 2
    ab_train = speed.run_case(speed.Case("tgcnet_ab", "train", 2, group="ab"), settings)
    assert list(ab_train["ab_median_s"]) == ["default", "torch_linear", "onednn_linear", "channels_last"]
    assert speed.ab_ratio([ab_train], "tgcnet_ab", "train", "default") == 1.0
    peers = {"model": "peers_ab", "mode": "infer", "batch": 2, "size": 224, "variant": "default", "group": "ab",
             "id": "peers_ab/default/infer/b2/224", "ab_median_s": {"tgcnet": 0.5, "clipseg": 0.6},
             "ab_times_s": {"tgcnet": [0.5], "clipseg": [0.6]}, "median_s": 0.5, "images_per_s": 4.0,
             "peak_mb": None, "threads": 1, "other_cores": 0.0}
    assert speed.AB_VARIANTS[("peers_ab", "train")] == ["tgcnet", "clipseg", "tgcnet_cached"]
    medians = {"tgcnet": 0.9, "clipseg": 0.6, "tgcnet_cached": 0.4}
    peers_train = {**peers, "mode": "train", "id": "peers_ab/default/train/b2/224", "ab_median_s": medians,
                   "ab_times_s": {k: [v] for k, v in medians.items()}, "median_s": 0.9}
    rows += [ab, ab_train, peers, peers_train]
    assert floor["trainable_params"] == 0 and train["trainable_params"] == infer["trainable_params"] > 0
    assert train["text"]["unique_captions"] == 2 and train["text"]["unique_descriptions"] > 0
    # descriptions are encoded once (frozen knowledge encoder) in the warm-up, not in the profiled step
    assert {"sse.clip_visual", "date.encode(caption)", "decoder"} <= set(train["forward_parts_s"])
    assert infer["fused_attention"] is True
    meta = {"preset": "tgcnet-tiny", "quick": True, "date": "today", "device_name": "cpu", "torch": torch.__version__,
            "threads": 1, "dtype": "float32", "warmup": 1, "iters": 1, "memory_kind": rows[0]["memory_kind"],
            "loadavg_start": [0], "loadavg_end": [0], "elapsed_s": 1.0, "batches": [2], "cpu_vendor": "intel",
            "cpu_linear_auto": "torch"}
    ratio = {"2": speed.ratios(rows, 2)}
    assert ratio["2"]["train_over_infer"] == pytest.approx(train["median_s"] / rows[2]["median_s"])
    md = speed.to_markdown({"meta": meta, "ratios": ratio, "targets": speed.targets(ratio["2"]), "rows": rows})
    assert "## Targets" in md and "| TGCNet | train | 2 |" in md and "de-duplication off" in md
    assert "| FrozenViT as shipped (fused SDPA attention, clip.cpu_linear='auto') |" in md
    assert "| CNN branch in channels_last" in md
    assert "TGCNet against CLIPSeg, inference" in md
    assert "- TGCNet / CLIPSeg inference throughput with the two interleaved in one process" in md and "1.20" in md
    assert "| TGCNet on cached frozen-ViT features" in md
    assert "`--augment flip` or `none`), interleaved with CLIPSeg in one process | >= 1.0 | 1.50 | **met** |" in md
    assert "| training throughput / CLIPSeg's, interleaved with CLIPSeg in one process | >= 1.0 | 0.67 |" in md
    assert "- Linear kernels (intel CPU, so clip.cpu_linear='auto' picked F.linear (MKL)): the frozen ViT" in md
    result = {"meta": meta, "ratios": ratio, "targets": speed.targets(ratio["2"]), "rows": rows}
    speed.write_results(result, tmp_path)
    assert speed.main(["--report", str(tmp_path / "speed.json"), "--out", str(tmp_path / "again"),
                       "--note", "re-rendered"]) == 0
    assert "Note: re-rendered" in (tmp_path / "again" / "speed.md").read_text()


def test_no_dedup_toggle_changes_work_not_numbers(speed):
    """Trailing spaces defeat de-duplication but tokenise identically: same logits, more strings encoded."""
    from tgcnet import create_model

    model = create_model("tgcnet-tiny", knowledge=StaticKnowledge()).eval()
    captions = ["bilateral pulmonary infection, lower left lung."] * 2
    x = images(2, 64)
    with torch.no_grad():
        ref = model(x, captions)
        model.date.knowledge = speed.PaddedKnowledge(model.date.knowledge)
        padded = speed.undeduplicated(captions)
        out = model(x, padded)
    assert len(set(padded)) == 2
    per_caption = set(model.date.knowledge.source.descriptions_for(captions[0]))
    descs = {d for c in padded for d in model.date.knowledge.descriptions_for(c)}
    assert len(descs) == 2 * len(per_caption) == 6
    torch.testing.assert_close(out, ref)


def test_load_probe_sees_another_process(speed):
    import subprocess

    probe = speed.LoadProbe()
    busy = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 0.6: pass"])
    busy.wait()
    assert probe.other_cores() > speed.DISTURBED_CORES
    assert speed.disturbed({"other_cores": 0.5}) and not speed.disturbed({"other_cores": None})


def test_plan_quick_and_full(speed):
    quick = speed.plan(quick=True, compile_=False, feature_cache=True)
    full = speed.plan(quick=False, compile_=True, feature_cache=False, repeats=2)
    assert {c.batch for c in quick} == {1, 2} and {c.batch for c in full} == {1, 8}
    assert {c.size for c in full} == {224, 320, 448} and {c.batch for c in full if c.size > 224} == {8}
    assert any(c.variant == "feature_cache" for c in quick) and not any("feature_cache" in c.variant for c in full)
    assert any(c.variant == "compile" for c in full) and not any(c.variant == "compile" for c in quick)
    repeated = [c for c in full if full.count(c) > 1]
    assert {c.model for c in repeated} == set(speed.REPEATED) and {c.batch for c in repeated} == {8}
    assert full[-len(repeated) // 2:] == repeated[:len(repeated) // 2]   # the repeats run last
    assert len(full) - len({c.id for c in full}) == 10   # 6 target rows, 4 BiomedCLIP-shaped ones
    assert {(c.model, c.batch) for c in quick if c.group == "biomedclip"} == {(m, 2) for m in speed.BIOMEDCLIP_MODELS}
    assert {c.batch for c in full if c.group == "biomedclip"} == {1, 8}
    assert {c.mode for c in full if c.model == "tgcnet_biomedclip"} == {"infer", "train"}
    assert {c.model for c in full if c.group == "ab"} == {"floor_ab", "tgcnet_ab", "peers_ab"}
    assert {c.model for c in quick if c.group == "ab"} == {"floor_ab"}
    assert not any(c.variant == "method_core" for c in quick) and any(c.variant == "method_core" for c in full)


@pytest.mark.parametrize("variant", ["no_caption_cache", "light_head", "onednn_linear"])
def test_tgcnet_variants_build_and_step(speed, variant):
    """Each "ways"/A-B variant builds and runs (lora_merged once failed: the frozen knowledge
    encoder cannot bypass merged LoRA, so descriptions must be encoded before the merge)."""
    settings = speed.Settings(preset="tgcnet-tiny", warmup=1, iters=1)
    bench = speed.build_tgcnet(speed.Case("tgcnet", "infer", 2, 64, variant=variant), settings, torch.device("cpu"))
    bench.step()
    bench.step()
    default = speed.build_tgcnet(speed.Case("tgcnet", "infer", 2, 64), settings, torch.device("cpu"))
    if variant == "light_head":
        assert bench.trainable < default.trainable


def test_method_core_variant_steps(speed):
    """The lower-bound what-if runs as a training step and refuses inference (it has no output to serve)."""
    settings = speed.Settings(preset="tgcnet-tiny", warmup=1, iters=1)
    torch.manual_seed(0)
    bench = speed.build_tgcnet(speed.Case("tgcnet", "train", 2, 64, variant="method_core"), settings,
                               torch.device("cpu"))
    bench.step()
    bench.step()
    with pytest.raises(ValueError, match="training what-if"):
        speed.build_tgcnet(speed.Case("tgcnet", "infer", 2, 64, variant="method_core"), settings,
                           torch.device("cpu"))


def test_method_core_loss_gradients(speed):
    """Its loss backpropagates into LoRA and the CNN branch and leaves the head untouched."""
    from tgcnet import create_model

    model = create_model("tgcnet-tiny", knowledge=StaticKnowledge()).train()
    captions = ["bilateral pulmonary infection, lower left lung.", "unilateral pulmonary infection, right lung."]
    speed._method_core_loss(model, images(2, 64), captions).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "lora" in n)
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith("sse.cnn."))
    assert all(g is None for n, g in grads.items() if n.startswith(("decoder.", "vlcm.", "sse.fusion.")))
    assert all(p.grad is None for p in model.sse.clip_visual.parameters())


def test_cached_training_target_row(speed):
    rows = [{"id": speed.Case("tgcnet", "train", 8, variant="feature_cache").id, "images_per_s": 9.0},
            {"id": speed.Case("clipseg", "train", 8).id, "images_per_s": 6.0},
            {"id": speed.Case("tgcnet", "train", 8).id, "images_per_s": 4.0}]
    ratio = speed.ratios(rows, 8)
    assert ratio["cached_train_throughput_over_clipseg"] == pytest.approx(1.5)
    assert ratio["train_throughput_over_clipseg"] == pytest.approx(4 / 6)
    checks = {c["key"]: c["met"] for c in speed.targets(ratio)}
    assert checks["cached_train_throughput_over_clipseg"] is True and checks["train_throughput_over_clipseg"] is False


def _fake_result(speed, rows: list[dict]) -> dict:
    meta = {"preset": "tgcnet-tiny", "quick": True, "date": "today", "device": "cpu", "device_name": "cpu",
            "torch": torch.__version__, "threads": None, "dtype": "float32", "warmup": 1, "iters": 1, "repeats": 1,
            "memory_kind": "peak RSS", "loadavg_start": [0], "loadavg_end": [0], "elapsed_s": 1.0, "batches": [2],
            "cpu_vendor": "intel", "cpu_linear_auto": "torch"}
    ratio = {"2": speed.ratios(rows, 2)}
    return {"meta": meta, "ratios": ratio, "targets": speed.targets(ratio["2"]), "rows": rows}


def test_biomedclip_rows_merge_into_an_earlier_run(speed, tmp_path, monkeypatch):
    """``--only biomedclip --merge-into`` on the tiny BiomedCLIP-shaped preset (in-process, no fork server):
    its rows build a WordPiece tokenizer, run, and are added to the earlier result, which keeps every row and line."""
    monkeypatch.setattr(speed, "run_all", lambda cases, settings: [speed._run_isolated(c, settings) for c in cases])
    earlier = {**dict.fromkeys(("min_s", "first_call_s", "build_s", "resident_after_build_mb"), 0.1),
               "model": "tgcnet", "mode": "infer", "batch": 2, "size": 224, "variant": "default", "group": "main",
               "id": "tgcnet/default/infer/b2/224", "median_s": 0.5, "times_s": [0.5], "process_medians_s": [0.5],
               "images_per_s": 4.0, "peak_mb": 900.0, "memory_kind": "peak RSS", "trainable_params": 10,
               "threads": 1, "other_cores": 0.0}
    speed.write_results(_fake_result(speed, [earlier]), tmp_path / "base")
    old_md = (tmp_path / "base" / "speed.md").read_text()
    assert speed.main(["--quick", "--preset", "tgcnet-tiny", "--biomedclip-preset", "tgcnet-tiny-biomedclip",
                       "--only", "biomedclip", "--merge-into", str(tmp_path / "base" / "speed.json"),
                       "--out", str(tmp_path / "merged"), "--note", "a merged run"]) == 0
    result = json.loads((tmp_path / "merged" / "speed.json").read_text())
    assert result["rows"][0] == earlier
    added = result["rows"][1:]
    assert [r["model"] for r in added] == list(speed.BIOMEDCLIP_MODELS) + ["tgcnet_biomedclip"]
    assert all("error" not in r and r["median_s"] > 0 and r["peak_mb"] > 0 for r in added), added
    text_floor, train = added[1], added[3]
    assert text_floor["text"]["unique_captions"] == 2 and text_floor["text"]["caption_tokens"] > 10
    assert train["mode"] == "train" and train["trainable_params"] > 0 and train["text"]["unique_descriptions"] > 0
    assert train["text"]["caption_tokens"] == text_floor["text"]["caption_tokens"]
    run = result["meta"]["merged_runs"][-1]
    assert run["ids"] == [r["id"] for r in added] and run["note"] == "a merged run"
    md = (tmp_path / "merged" / "speed.md").read_text()
    assert md.startswith(old_md.rstrip("\n") + "\n")     # only lines added
    section = md[len(old_md):]
    assert "## BiomedCLIP-shaped CLIP" in section and "`tgcnet-tiny-biomedclip` as shipped" in section
    assert "| TGCNet, tgcnet-biomedclip | train | 2 |" in section and "merged into this file" in section
    assert "inference / (image + text tower floors)" in section and "Note: a merged run" in section


def test_wordpiece_vocab_fits_the_tower(speed, tmp_path):
    """Whole words up to the tower's vocabulary size, every character kept: nothing tokenises to [UNK]."""
    from transformers import AutoTokenizer

    texts = ["Bilateral pulmonary infection, lower left lung.", "Ground-glass opacity (GGO) in COVID-19."]
    whole = speed.write_wordpiece_vocab(tmp_path / "whole", texts, size=30522)
    vocab = (tmp_path / "whole" / "vocab.txt").read_text().split("\n")[:-1]
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] and "bilateral" in vocab
    ids = AutoTokenizer.from_pretrained(whole)(texts)["input_ids"]
    assert len(ids[0]) == 2 + 8      # [CLS] bilateral pulmonary infection , lower left lung . [SEP]
    small = speed.write_wordpiece_vocab(tmp_path / "small", texts, size=len(vocab) - 5)
    assert len((tmp_path / "small" / "vocab.txt").read_text().split("\n")[:-1]) == len(vocab) - 5
    tok = AutoTokenizer.from_pretrained(small)
    cut = tok(texts)["input_ids"]
    assert all(tok.unk_token_id not in row for row in cut) and len(cut[1]) > len(ids[1])


def test_only_an_ab_row_still_reports(speed, tmp_path, monkeypatch):
    """A run of A/B rows only (``--only floor_ab``) has no row with a memory kind: it still writes its report."""
    medians = {"open_clip": 0.5, "fused": 0.4}
    row = {"model": "floor_ab", "mode": "infer", "batch": 2, "size": 224, "variant": "default", "group": "ab",
           "id": "floor_ab/default/infer/b2/224", "ab_median_s": medians, "ab_times_s": {k: [v] for k, v in
                                                                                           medians.items()},
           "median_s": 0.5, "images_per_s": 4.0, "peak_mb": None, "threads": 1, "other_cores": 0.0}
    monkeypatch.setattr(speed, "run_all", lambda cases, settings: [row])
    assert speed.main(["--quick", "--preset", "tgcnet-tiny", "--only", "floor_ab", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "speed.json").read_text())["meta"]["memory_kind"] == "n/a"
    assert "frozen ViT forward, batch 2" in (tmp_path / "speed.md").read_text()
