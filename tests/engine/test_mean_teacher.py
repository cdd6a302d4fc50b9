"""The mean teacher: an EMA of the trainable weights, its predictions, and the pseudo-label ramp."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tgcnet.engine.mean_teacher import MeanTeacher, rampup_weight


class Tiny(nn.Module):
    """A per-pixel linear model with a frozen part, called like TGCNet (images, captions)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, 1, 1)
        self.frozen = nn.Conv2d(3, 3, 1)
        self.frozen.requires_grad_(False)
        self.drop = nn.Dropout(0.5)
        self.modes: list[bool] = []

    def forward(self, images, captions):
        self.modes.append(self.training)
        return self.head(self.drop(self.frozen(images)))


def test_update_is_an_ema_of_the_trainable_weights_with_a_warm_start():
    model = Tiny()
    teacher = MeanTeacher(model, decay=0.9)
    assert set(teacher.state_dict()) == {"head.weight", "head.bias"}
    start = teacher.state_dict()["head.weight"].clone()
    assert teacher.decay_at(1) == 0.5 and teacher.decay_at(4) == 0.8 and teacher.decay_at(100) == 0.9
    with torch.no_grad():
        model.head.weight.add_(1.0)
    teacher.update(model, step=100)
    torch.testing.assert_close(teacher.state_dict()["head.weight"], 0.9 * start + 0.1 * model.head.weight)
    teacher.update(model, step=1)  # half way to the student
    assert not torch.equal(teacher.state_dict()["head.weight"], model.head.weight)


def test_probabilities_use_the_teacher_then_give_the_model_its_own_weights_back():
    torch.manual_seed(0)
    model = Tiny()
    teacher = MeanTeacher(model, decay=0.99)
    own = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        teacher.shadow["head.bias"].fill_(-50.0)
    images = torch.rand(2, 3, 4, 4)
    probs = teacher.probabilities(model, images, ["a", "b"])
    assert probs.shape == (2, 1, 4, 4) and probs.max() < 1e-10  # the teacher's bias, in eval mode
    assert model.modes == [False] and model.training
    assert all(torch.equal(model.state_dict()[k], v) for k, v in own.items())
    assert torch.equal(probs, teacher.probabilities(model, images, ["a", "b"]))  # no dropout draw


def test_state_round_trip_and_a_teacher_of_another_model_is_refused():
    model = Tiny()
    teacher = MeanTeacher(model, decay=0.9)
    other = MeanTeacher(Tiny(), decay=0.9)
    other.load_state_dict(teacher.state_dict(), source="last/teacher.safetensors")
    assert all(torch.equal(other.shadow[k], v) for k, v in teacher.shadow.items())
    with pytest.raises(ValueError, match=r"last/teacher.safetensors does not fit .*missing \['head.bias'\]"):
        other.load_state_dict({"head.weight": teacher.shadow["head.weight"]}, source="last/teacher.safetensors")
    with pytest.raises(ValueError, match="ema_decay"):
        MeanTeacher(model, decay=1.0)


def test_rampup_is_sigmoid_shaped_over_its_fraction():
    assert rampup_weight(0.0, 0.2) == pytest.approx(math.exp(-5))
    assert rampup_weight(0.1, 0.2) == pytest.approx(math.exp(-1.25))
    assert rampup_weight(0.2, 0.2) == 1.0 and rampup_weight(0.9, 0.2) == 1.0
    assert rampup_weight(0.0, 0.0) == 1.0
    weights = [rampup_weight(i / 100, 0.5) for i in range(60)]
    assert weights == sorted(weights)
    with pytest.raises(ValueError, match="rampup_fraction"):
        rampup_weight(0.1, 1.5)
