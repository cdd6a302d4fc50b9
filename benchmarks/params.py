"""Trainable and total parameters: TGCNet (per module) beside CLIPSeg and LViT.

    python -m benchmarks.params [--presets tgcnet-vit-b16,tgcnet-biomedclip] [--out benchmarks/results]
    python -m benchmarks.params --report benchmarks/results/params.json

Counts are of the architectures at random init (no weights or tokenizer files needed):
``tgcnet-vit-b16`` wraps OpenAI's ViT-B/16 CLIP, ``tgcnet-biomedclip`` BiomedCLIP (a timm
ViT-B/16 and PubMedBERT with an MLP projection). CLIPSeg is
transformers' ``CLIPSegForImageSegmentation`` with its default config, counted in the
same run, with "trainable" = everything outside its CLIP (the CLIP frozen, as CLIPSeg was
trained). LViT's 29.7M is the figure published in its paper (Li et al., IEEE TMI 2023),
not re-counted here. Writes params.json and params.md.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

from . import RESULTS
from .report_files import rerender, write_report

TARGET_TRAINABLE = 8_000_000
LVIT_PUBLISHED = 29_700_000


def count_tgcnet(preset: str) -> list[dict]:
    from tgcnet import count_parameters, create_model

    return count_parameters(create_model(preset))   # as shipped: knowledge bank on


def count_clipseg() -> dict:
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation

    config = CLIPSegConfig()
    model = CLIPSegForImageSegmentation(config)
    total = sum(p.numel() for p in model.parameters())
    clip = sum(p.numel() for p in model.clip.parameters())
    return {"model": "CLIPSegForImageSegmentation (transformers, default config)",
            "patch_size": config.vision_config.patch_size,
            "total": total, "trainable_with_clip_frozen": total - clip}


def _total(rows: list[dict]) -> dict:
    return next(r for r in rows if r["module"] == "total")


def to_markdown(result: dict) -> str:
    presets = result["tgcnet"]
    lines = [f"# Parameters ({', '.join(presets)})", "",
             f"Written by `python -m benchmarks.params` on {result['date']} ({result['python']}, "
             f"torch {result['torch']}).", ""]
    for preset, rows in presets.items():
        lines += [f"## {preset}", "", "| module | trainable | total | status |", "|---|---:|---:|---|"]
        for r in rows:
            status = "" if r["module"] == "total" else ("frozen" if r["frozen"] else "trainable")
            lines.append(f"| {r['module']} | {r['trainable']:,} | {r['total']:,} | {status} |")
        lines.append("")
    cs = result["clipseg"]
    lines += ["## Beside other text-guided segmenters", "",
              "| model | trainable | total | source |", "|---|---:|---:|---|"]
    lines += [f"| TGCNet {preset} | {_total(rows)['trainable']:,} | {_total(rows)['total']:,} | counted here |"
              for preset, rows in presets.items()]
    lines += [
        f"| CLIPSeg (CLIP frozen, patch {cs['patch_size']}) | {cs['trainable_with_clip_frozen']:,} | "
        f"{cs['total']:,} | counted here |",
        f"| LViT | {LVIT_PUBLISHED:,} | {LVIT_PUBLISHED:,} | published (Li et al., TMI 2023) |", "",
        f"Target: at most {TARGET_TRAINABLE:,} trainable for each preset: "
        + ", ".join(f"{preset} **{'met' if met else 'missed'}** ({_total(presets[preset])['trainable']:,})"
                    for preset, met in result["target_met"].items()) + ".", "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="tgcnet-vit-b16,tgcnet-biomedclip", help="comma list of presets")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--report", default=None, metavar="PARAMS_JSON", help="count nothing: re-render its markdown")
    args = parser.parse_args(argv)
    if args.report:
        print(rerender(Path(args.report), Path(args.out), "params", "tgcnet", to_markdown))
        return 0

    import torch

    presets = {name: count_tgcnet(name) for name in args.presets.split(",")}
    met = {name: _total(rows)["trainable"] <= TARGET_TRAINABLE for name, rows in presets.items()}
    result = {
        "date": time.strftime("%Y-%m-%d"), "python": platform.python_version(), "torch": torch.__version__,
        "tgcnet": presets,
        "clipseg": count_clipseg(),
        "lvit": {"trainable": LVIT_PUBLISHED, "source": "published"},
        "target_trainable": TARGET_TRAINABLE, "target_met": met,
    }
    write_report(Path(args.out), "params", result, to_markdown(result))
    print(to_markdown(result))
    return 0 if all(met.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
