"""Trainable and total parameters: TGCNet (per module) beside CLIPSeg and LViT.

    python benchmarks/params.py [--preset tgcnet-vit-b16] [--out benchmarks/results]

Counts are of the architectures at random init (no weights needed): CLIPSeg is
transformers' ``CLIPSegForImageSegmentation`` with its default config, counted in the
same run, with "trainable" = everything outside its CLIP (the CLIP frozen, as CLIPSeg was
trained). LViT's 29.7M is the figure published in its paper (Li et al., IEEE TMI 2023),
not re-counted here. Writes params.json and params.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TARGET_TRAINABLE = 8_000_000
LVIT_PUBLISHED = 29_700_000


def count_tgcnet(preset: str) -> list[dict]:
    from tgcnet import count_parameters, create_model

    return count_parameters(create_model(preset, knowledge=None))


def count_clipseg() -> dict:
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation

    config = CLIPSegConfig()
    model = CLIPSegForImageSegmentation(config)
    total = sum(p.numel() for p in model.parameters())
    clip = sum(p.numel() for p in model.clip.parameters())
    return {"model": "CLIPSegForImageSegmentation (transformers, default config)",
            "patch_size": config.vision_config.patch_size,
            "total": total, "trainable_with_clip_frozen": total - clip}


def to_markdown(result: dict) -> str:
    rows = result["tgcnet"]["rows"]
    total = next(r for r in rows if r["module"] == "total")
    lines = [
        f"# Parameters ({result['tgcnet']['preset']})", "",
        f"Written by `benchmarks/params.py` on {result['date']} ({result['python']}, torch {result['torch']}).", "",
        "| module | trainable | total | status |", "|---|---:|---:|---|",
    ]
    for r in rows:
        status = "" if r["module"] == "total" else ("frozen" if r["frozen"] else "trainable")
        lines.append(f"| {r['module']} | {r['trainable']:,} | {r['total']:,} | {status} |")
    cs = result["clipseg"]
    lines += [
        "", "## Beside other text-guided segmenters", "",
        "| model | trainable | total | source |", "|---|---:|---:|---|",
        f"| TGCNet {result['tgcnet']['preset']} | {total['trainable']:,} | {total['total']:,} | counted here |",
        f"| CLIPSeg (CLIP frozen, patch {cs['patch_size']}) | {cs['trainable_with_clip_frozen']:,} | "
        f"{cs['total']:,} | counted here |",
        f"| LViT | {LVIT_PUBLISHED:,} | {LVIT_PUBLISHED:,} | published (Li et al., TMI 2023) |",
        "", f"Target: at most {TARGET_TRAINABLE:,} trainable for tgcnet-vit-b16: "
        f"**{'met' if result['target_met'] else 'missed'}** ({total['trainable']:,}).", "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tgcnet-vit-b16")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)

    import torch

    rows = count_tgcnet(args.preset)
    trainable = next(r for r in rows if r["module"] == "total")["trainable"]
    result = {
        "date": time.strftime("%Y-%m-%d"), "python": platform.python_version(), "torch": torch.__version__,
        "tgcnet": {"preset": args.preset, "rows": rows},
        "clipseg": count_clipseg(),
        "lvit": {"trainable": LVIT_PUBLISHED, "source": "published"},
        "target_trainable": TARGET_TRAINABLE, "target_met": trainable <= TARGET_TRAINABLE,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "params.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "params.md").write_text(to_markdown(result))
    print(to_markdown(result))
    return 0 if result["target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
