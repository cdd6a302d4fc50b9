"""Which training images keep their masks in a semi-supervised run.

``--labelled-fraction F`` keeps the masks of a seeded fraction ``F`` of the training images
that have one and hides the rest, which then train as unlabelled images (their captions
still guide them). The choice is stratified on what each caption says, so the labelled
part keeps the data set's mix rather than, by chance, its one-sided or one-area cases:

* the sides the location parse finds (:func:`tgcnet.prompts.locations.parse_location`):
  left only, right only, both, or none named;
* the count of infected areas it states (:func:`tgcnet.caption_counts.stated_count_word`):
  "one" ... "ten", "multiple", or none stated.

Each stratum keeps ``F`` of its images, rounded by largest remainder so the strata add up to
``round(F * n)`` (at least one image); which images is a seeded shuffle of the stratum's
names, so the split is a pure function of (names, captions, fraction, seed) and does not
depend on the order of the annotation file. Images whose mask file is missing (``--semi-
supervised``) are unlabelled whatever the fraction, which applies to the images with masks.

The split is written to ``RUN_DIR/labelled.json`` when a run starts; a resume reads it back
instead of choosing again, and refuses a data set whose training images have changed.
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from tgcnet.caption_counts import stated_count_word
from tgcnet.data.readers import Triple
from tgcnet.prompts.locations import parse_location

__all__ = ["LabelledSplit", "caption_stratum", "choose_labelled", "STRATIFIED_BY"]

#: what labelled.json says the split was stratified on
STRATIFIED_BY = "caption sides (left, right, both, none) x stated count of infected areas"
_SPLIT_STREAM = 0x1ABE1  # keeps the split's random stream apart from the data order's and the augmentation's


def caption_stratum(caption: str) -> str:
    """``"sides=left count=two"``: the stratum of an image in a labelled split (see the module docstring)."""
    sides = parse_location(caption).sides
    side = "none" if not sides else ("both" if len(sides) == 2 else next(iter(sides)))
    return f"sides={side} count={stated_count_word(caption) or 'none'}"


@dataclass(frozen=True)
class LabelledSplit:
    """The training images that keep their masks, and those that train without.

    ``fraction`` is None when no fraction was asked for (``--semi-supervised`` alone: only
    the images without a mask file are unlabelled). ``missing`` are the unlabelled images
    whose mask file is missing (a subset of ``unlabelled``). ``strata`` counts, per stratum,
    the labelled images and all images with a mask: a record, not read back.
    """

    fraction: Optional[float]
    seed: int
    labelled: tuple[str, ...]
    unlabelled: tuple[str, ...]
    missing: tuple[str, ...] = ()
    strata: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict, compare=False)

    def describe(self) -> str:
        """One line for the start of a run: how many images train with and without masks, and why."""
        n = len(self.labelled) + len(self.unlabelled)
        why = []
        if self.fraction is not None:
            why.append(f"labelled fraction {self.fraction:g}, seed {self.seed}")
        if self.missing:
            why.append(f"{len(self.missing)} without a mask file")
        return (f"semi-supervised: {len(self.labelled)} of {n} training images labelled, {len(self.unlabelled)} "
                f"unlabelled" + (f" ({'; '.join(why)})" if why else ""))

    def apply(self, triples: Sequence[Triple], source: str) -> list[Triple]:
        """``triples`` with the masks of the unlabelled images dropped (``mask_path`` None).

        ``source`` names where the split came from (labelled.json on a resume), for the error
        raised when it does not describe these images.
        """
        names = {t.name for t in triples}
        recorded = set(self.labelled) | set(self.unlabelled)
        gone, new = sorted(recorded - names), sorted(names - recorded)
        labelled = set(self.labelled)
        unmasked = sorted(t.name for t in triples if t.mask_path is None and t.name in labelled)
        problems = []
        if gone:
            problems.append(f"{len(gone)} recorded image(s) are no longer in the training split (e.g. {gone[:3]})")
        if new:
            problems.append(f"{len(new)} training image(s) are not recorded (e.g. {new[:3]})")
        if unmasked:
            problems.append(f"{len(unmasked)} labelled image(s) have no mask file now (e.g. {unmasked[:3]})")
        if problems:
            raise ValueError(f"{source} does not describe the training images of this data set: "
                             f"{'; '.join(problems)}; resume with the data set the run started with")
        hidden = set(self.unlabelled)
        return [dataclasses.replace(t, mask_path=None) if t.name in hidden else t for t in triples]

    def to_dict(self) -> dict[str, Any]:
        return {"fraction": self.fraction, "seed": self.seed, "stratified_by": STRATIFIED_BY,
                "n_labelled": len(self.labelled), "n_unlabelled": len(self.unlabelled),
                "labelled": list(self.labelled), "unlabelled": list(self.unlabelled),
                "missing_masks": list(self.missing), "strata": self.strata}

    @classmethod
    def from_dict(cls, data: Any, source: str) -> "LabelledSplit":
        """The split as :meth:`to_dict` wrote it; anything else is a ValueError naming ``source``."""
        lists = ("labelled", "unlabelled", "missing_masks")
        ok = (isinstance(data, dict) and all(isinstance(data.get(k), list) for k in lists)
              and all(isinstance(x, str) for k in lists for x in data[k]) and isinstance(data.get("seed"), int)
              and (data.get("fraction") is None or isinstance(data["fraction"], (int, float))))
        if not ok:
            raise ValueError(f"{source} does not hold a labelled split (expected a JSON object with fraction, seed "
                             f"and lists {', '.join(lists)}); restore it from a copy of the run, or start afresh")
        return cls(None if data["fraction"] is None else float(data["fraction"]), data["seed"],
                   tuple(data["labelled"]), tuple(data["unlabelled"]), tuple(data["missing_masks"]),
                   dict(data.get("strata") or {}))

    @classmethod
    def read(cls, path: Path) -> "LabelledSplit":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"cannot resume a semi-supervised run without {path} (which training images "
                                    "are labelled): restore it from a copy of the run, or start afresh") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path} is not valid JSON ({exc}); restore it from a copy of the run, or start "
                             "afresh") from None
        return cls.from_dict(data, str(path))


def _allocate(sizes: dict[str, int], total: int, rng: np.random.Generator) -> dict[str, int]:
    """``total`` spread over the strata in proportion to their ``sizes``, by largest remainder.

    Ties in the remainder go in a seeded order, so small strata do not always lose to the
    first ones in name order.
    """
    n = sum(sizes.values())
    keys = sorted(sizes)
    quotas = {k: total * sizes[k] / n for k in keys}
    out = {k: math.floor(quotas[k]) for k in keys}
    tie = dict(zip(keys, rng.permutation(len(keys)).tolist()))
    for k in sorted(keys, key=lambda k: (-(quotas[k] - out[k]), tie[k]))[: total - sum(out.values())]:
        out[k] += 1
    return out


def choose_labelled(triples: Sequence[Triple], fraction: Optional[float], seed: int) -> LabelledSplit:
    """The labelled split of a training split (see the module docstring).

    ``fraction`` None keeps every mask that exists. Refuses a split where no image would
    have a mask: the supervised loss is what the unlabelled losses refine.
    """
    if fraction is not None and not 0 < fraction <= 1:
        raise ValueError(f"labelled_fraction must be in (0, 1], got {fraction}")
    missing = sorted(t.name for t in triples if t.mask_path is None)
    masked = [t for t in triples if t.mask_path is not None]
    if not masked:
        raise ValueError(f"none of the {len(triples)} training images has a mask file: semi-supervised training "
                         "needs some labelled images (it refines what the masks teach)")
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for t in masked:
        by_stratum[caption_stratum(t.caption)].append(t.name)
    rng = np.random.default_rng([int(seed), _SPLIT_STREAM])
    total = len(masked) if fraction is None else max(1, math.floor(fraction * len(masked) + 0.5))
    quota = _allocate({k: len(v) for k, v in by_stratum.items()}, total, rng)
    labelled: set[str] = set()
    for key in sorted(by_stratum):
        names = sorted(by_stratum[key])
        labelled.update(names[i] for i in rng.permutation(len(names))[: quota[key]].tolist())
    order = [t.name for t in triples]
    strata = {k: {"labelled": quota[k], "images": len(by_stratum[k])} for k in sorted(by_stratum)}
    return LabelledSplit(fraction, int(seed), tuple(n for n in order if n in labelled),
                         tuple(n for n in order if n not in labelled), tuple(missing), strata)
