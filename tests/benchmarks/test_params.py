"""benchmarks.params: the per-module counts of a preset and the report's verdict on the trainable target."""
from __future__ import annotations

from benchmarks import params
from tgcnet import count_parameters, create_model


def test_the_report_counts_each_preset_and_says_whether_it_meets_the_target():
    rows = params.count_tgcnet("tgcnet-tiny")
    assert rows == count_parameters(create_model("tgcnet-tiny"))
    total = next(r for r in rows if r["module"] == "total")
    clipseg = {"model": "CLIPSeg", "patch_size": 16, "total": 150_000_000, "trainable_with_clip_frozen": 1_127_009}
    result = {"date": "2026-01-01", "python": "3", "torch": "x", "tgcnet": {"tgcnet-tiny": rows}, "clipseg": clipseg,
              "target_met": {"tgcnet-tiny": True}}
    md = params.to_markdown(result)
    assert md.startswith("# Parameters (tgcnet-tiny)\n\nWritten by `python -m benchmarks.params` on 2026-01-01")
    assert f"| TGCNet tgcnet-tiny | {total['trainable']:,} | {total['total']:,} | counted here |" in md
    assert "| CLIPSeg (CLIP frozen, patch 16) | 1,127,009 | 150,000,000 | counted here |" in md
    assert f"tgcnet-tiny **met** ({total['trainable']:,})" in md
