"""Flip test-time augmentation: the mirrored image is read with its caption's sides swapped, so
the averaged prediction of a mirrored case is the mirror of the averaged prediction."""
from __future__ import annotations

import pytest
import torch

from helpers import images, tiny
from tgcnet.tta import TTA_MODES, check_tta, tta_logits

CAPTIONS = ["unilateral pulmonary infection, one infected area, lower left lung.",
            "bilateral pulmonary infection, two infected areas, upper right lung and lower left lung."]


class Recorder(torch.nn.Module):
    """A model that is not mirror-symmetric (a horizontal ramp) and remembers the captions it read."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[list[str]] = []

    def forward(self, x: torch.Tensor, captions: list[str]) -> torch.Tensor:
        self.seen.append(list(captions))
        ramp = torch.linspace(-1, 1, x.shape[-1]).expand_as(x[:, :1])
        return x[:, :1] + ramp


def test_modes_are_checked_by_name():
    assert TTA_MODES == ("none", "flip") and check_tta("flip") == "flip"
    with pytest.raises(ValueError, match="tta must be one of none, flip; got 'hflip'"):
        check_tta("hflip")


def test_flip_averages_the_mirrored_view_read_with_swapped_sides():
    model, x = Recorder(), images(2, 16)
    out = tta_logits(model, x, CAPTIONS, "flip")
    assert model.seen == [CAPTIONS, ["unilateral pulmonary infection, one infected area, lower right lung.",
                                     "bilateral pulmonary infection, two infected areas, upper left lung and "
                                     "lower right lung."]]
    torch.testing.assert_close(out, x[:, :1], rtol=0, atol=1e-6)   # the ramp cancels, the image stays
    assert torch.equal(tta_logits(model, x, CAPTIONS, "none"), model(x, CAPTIONS))


def test_tgcnet_flip_tta_is_mirror_equivariant():
    """TTA(mirror x, swapped c) = mirror TTA(x, c) holds only if the caption moves with the image."""
    model = tiny().eval()
    x = images(2, 64)
    swapped = ["unilateral pulmonary infection, one infected area, lower right lung.",
               "bilateral pulmonary infection, two infected areas, upper left lung and lower right lung."]
    with torch.no_grad():
        out = tta_logits(model, x, CAPTIONS, "flip")
        mirrored = tta_logits(model, torch.flip(x, dims=(-1,)), swapped, "flip")
        plain = model(x, CAPTIONS)
    torch.testing.assert_close(mirrored, torch.flip(out, dims=(-1,)), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(out, plain, atol=1e-3)   # the second view changed the prediction
