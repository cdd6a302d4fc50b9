"""Captions as LViT's verbatim QaTa-COV19 text writes them, from the cleaned ones.

    python -m benchmarks.accuracy.noisy_captions --data ../shared/data/qata-mini --split test --out /tmp/qata-noisy

LViT's text (which GuideDecoder-layout copies carry verbatim) differs from the cleaned
captions of qata-mini in ways a model trained on the cleaned form has never seen: a capital
first letter, double spaces, "midlle" for "middle", "infection area(s)" for "infected
area(s)", "all left lung" for "upper middle lower left lung", no final period. ``noisy_copy``
writes a split with the same images and masks and each caption rewritten with these
patterns (each with its own probability, from a fixed seed), so the Dice on clean and on
noisy captions can be compared on the same images.
"""
from __future__ import annotations

import argparse
import csv
import random
import re
import sys
from pathlib import Path

#: (pattern, replacement, probability): one LViT habit each
NOISE: tuple[tuple[str, str, float], ...] = (
    (r"\bupper middle lower (left|right) lung\b", r"all \1 lung", 0.8),
    (r"\binfected (areas?)\b", r"infection \1", 0.5),
    (r"\bmiddle\b", "midlle", 0.5),
    (r", ", ",  ", 0.3),
    (r"\band\b", " and ", 0.2),
)


def make_noisy(caption: str, rng: random.Random) -> str:
    """``caption`` with LViT's habits applied, each with its probability; always capitalised
    and without its final period, as LViT's text is."""
    text = caption
    for pattern, replacement, probability in NOISE:
        if rng.random() < probability:
            text = re.sub(pattern, replacement, text)
    text = text.rstrip(".")
    return text[:1].upper() + text[1:]


def noisy_copy(root: Path, split: str, out: Path, seed: int = 0) -> Path:
    """``out/<split>`` in the simple layout: links to ``root``'s images and masks, noisy captions."""
    source = root / split
    target = out / split
    for folder in ("images", "masks"):
        (target / folder).mkdir(parents=True, exist_ok=True)
        for path in sorted((source / folder).iterdir()):
            link = target / folder / path.name
            if not link.exists():
                link.symlink_to(path.resolve())
    rng = random.Random(seed)
    with open(source / "prompts.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    with open(target / "prompts.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "Description": make_noisy(row["Description"], rng)})
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not (args.data / args.split / "prompts.csv").is_file():
        print(f"noisy_captions: no {args.split}/prompts.csv under {args.data}", file=sys.stderr)
        return 2
    print(noisy_copy(args.data, args.split, args.out, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
