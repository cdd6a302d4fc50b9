"""A batch's loss with images without a mask, and a semi-supervised run under two gloo ranks."""
from __future__ import annotations

import json
import math
import textwrap
from types import SimpleNamespace

import torch
from helpers import run_two_gloo_ranks

from tgcnet.config import LossConfig
from tgcnet.data import sample_root
from tgcnet.engine import TrainConfig
from tgcnet.engine.mean_teacher import rampup_weight
from tgcnet.engine.semi_supervised import SemiSupervision, supervised_loss
from tgcnet.io import load_safetensors
from tgcnet.caption_counts import stated_area_count
from tgcnet.losses import COUNT_POOL, language_guided_loss, pseudo_label_loss, region_count_loss
from tgcnet.model import TGCNetOutput

CAPTIONS = ["one infected area, lower left lung.", "two infected areas, right lung.", "left lung.", "no findings."]


def _output(requires_grad: bool = False) -> tuple[TGCNetOutput, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 1, 8, 8, generator=g).requires_grad_(requires_grad)
    side = torch.randn(4, 1, 4, 4, generator=g).requires_grad_(requires_grad)
    masks = (torch.rand(4, 1, 8, 8, generator=g) > 0.5).float()
    out = TGCNetOutput(logits=logits, aux_losses={"ot_alignment": torch.tensor(0.25)}, side_logits=[side],
                       side_weight=0.5, loss_weights=LossConfig())
    return out, masks


def test_supervised_loss_counts_only_the_labelled_images():
    out, masks = _output()
    assert torch.equal(supervised_loss(out, masks, torch.ones(4, dtype=torch.bool)), out.loss(masks))
    labelled = torch.tensor([True, False, True, False])
    part = TGCNetOutput(logits=out.logits[[0, 2]], aux_losses=out.aux_losses, side_logits=[out.side_logits[0][[0, 2]]],
                        side_weight=0.5)
    torch.testing.assert_close(supervised_loss(out, masks, labelled), part.loss(masks[[0, 2]]))


def test_a_batch_without_labelled_images_is_finite_and_reaches_every_output():
    out, masks = _output(requires_grad=True)
    loss = supervised_loss(out, torch.zeros_like(masks), torch.zeros(4, dtype=torch.bool))
    assert loss.item() == 0.25  # the mask-free auxiliary losses only
    loss.backward()
    for t in (out.logits, out.side_logits[0]):  # a zero gradient, not None: DDP sees every parameter used
        assert t.grad is not None and torch.equal(t.grad, torch.zeros_like(t))


def test_batch_loss_adds_the_weighted_unlabelled_losses():
    cfg = TrainConfig(data="d", labelled_fraction=0.5, pseudo_label_weight=2.0, language_loss_weight=0.3,
                      count_loss_weight=0.7, rampup_fraction=0.5, pseudo_label_threshold=0.2)
    model = torch.nn.Conv2d(3, 1, 1)
    model.config = SimpleNamespace(laterality="image")
    semi = SemiSupervision(cfg, model)
    out, masks = _output()
    labelled = torch.tensor([True, False, True, False])
    teacher = torch.sigmoid(torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)))
    loss = semi.batch_loss(out, masks, labelled, CAPTIONS, teacher, progress=0.25)
    pl = pseudo_label_loss(out.logits[[1, 3]], teacher, 0.2)
    lang = language_guided_loss(out.logits[[1, 3]], [CAPTIONS[1], CAPTIONS[3]])
    count = region_count_loss(out.logits[[1, 3]], [stated_area_count(CAPTIONS[1]), stated_area_count(CAPTIONS[3])],
                              pool=COUNT_POOL)
    ramp = rampup_weight(0.25, 0.5)   # every unlabelled loss is ramped in
    expected = supervised_loss(out, masks, labelled) + ramp * (2.0 * pl + 0.3 * lang + 0.7 * count)
    torch.testing.assert_close(loss.total, expected)
    assert (loss.pseudo_label, loss.language, loss.count) == (float(pl), float(lang), float(count))
    assert rampup_weight(0.25, 0.5) == math.exp(-1.25)
    every = semi.batch_loss(out, masks, torch.ones(4, dtype=torch.bool), CAPTIONS, None, progress=0.25)
    assert torch.equal(every.total, out.loss(masks)) and (every.pseudo_label, every.language, every.count) == (None,) * 3
    assert SemiSupervision(TrainConfig(data="d", semi_supervised=True), model).teacher is None   # off by default


LAUNCHED = textwrap.dedent('''
    import os, sys
    from pathlib import Path
    import importlib
    from tgcnet.io import save_safetensors_atomic
    train_mod = importlib.import_module("tgcnet.engine.trainer")

    record, rank = Path(sys.argv[1]), int(os.environ.get("RANK", "0"))

    class Recorder(train_mod.Trainer):
        def run(self):
            out = super().run()
            save_safetensors_atomic(self.model.trainable_state_dict(), record / f"weights{rank}.safetensors")
            save_safetensors_atomic(self.semi.teacher.state_dict(), record / f"teacher{rank}.safetensors")
            return out

    train_mod.Trainer = Recorder
    from tgcnet.cli import main
    sys.exit(main(sys.argv[2:]))
''')



def test_two_gloo_ranks_keep_one_student_and_one_teacher(tmp_path):
    """Each rank draws other images (labelled or not) but the weights and the teacher stay identical."""
    run = tmp_path / "run"
    args = ["train", "--data", str(sample_root()), "--out", str(run), "--image-size", "64", "--batch-size", "4",
            "--max-steps", "3", "--warmup-steps", "1", "--device", "cpu", "--no-progress", "--knowledge", "none",
            "--val-split", "none", "--labelled-fraction", "0.25", "--rampup-fraction", "0", "--pseudo-label-weight", "1",
            "--count-loss-weight", "0.2"]
    record, res = run_two_gloo_ranks(tmp_path, LAUNCHED, args)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stderr.count("semi-supervised: 8 of 32 training images labelled, 24 unlabelled") == 1  # rank 0 only
    for name in ("weights", "teacher"):
        r0, r1 = (load_safetensors(record / f"{name}{r}.safetensors") for r in (0, 1))
        assert r0.keys() == r1.keys() and all(torch.equal(r0[k], r1[k]) for k in r0), name
    teacher, weights = (load_safetensors(record / f"{name}0.safetensors") for name in ("teacher", "weights"))
    assert any(not torch.equal(teacher[k], weights[k]) for k in teacher)  # an average, not a copy
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and log[0]["train_pseudo_label_loss"] is not None and log[0]["train_language_loss"] > 0
    assert log[0]["train_count_loss"] >= 0
    assert (run / "last" / "teacher.safetensors").is_file()
