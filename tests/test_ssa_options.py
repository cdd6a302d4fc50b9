"""SSA options wired into TGCNet: each one flag, each changes what it should and nothing else."""
import pytest
import torch

from helpers import CAPTIONS, images, tiny, wake_lora


def test_off_by_default_no_aux_losses():
    out = tiny(knowledge=None).eval()(images(1), CAPTIONS[:1], return_aux=True)
    assert out.aux_losses == {} and out.logits.shape == (1, 1, 224, 224)


@pytest.mark.parametrize("overrides, keys", [
    ({"ssa__ot_loss_weight": 0.1}, {"ot_alignment"}),
    ({"ssa__guidance": "loss"}, {"guidance_outside"}),
    ({"ssa__guidance": "both", "ssa__ot_loss_weight": 0.1, "ssa__ot_attention": True},
     {"ot_alignment", "guidance_outside"}),
])
def test_aux_losses_are_finite_and_train(overrides, keys):
    model = tiny(knowledge=None, **overrides).train()
    wake_lora(model)
    out = model(images(2), CAPTIONS[:2], return_aux=True)
    assert set(out.aux_losses) == keys
    total = out.logits.float().mean() + sum(out.aux_losses.values())
    total.backward()
    assert torch.isfinite(total)
    dead = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert dead == []


def test_guidance_prior_pushes_the_other_side_down():
    model = tiny(knowledge=None, ssa__guidance="prior", ssa__guidance_use_zones=False).eval()
    x = images(1)
    with torch.no_grad():
        text = model.date(["lower left lung."])
        visual = model.sse((x - model.image_mean) / model.image_std)
        h, w = visual.dense.shape[-2:]
        plain = model.vlcm(visual.dense, text, torch.ones(1, 1, h, w)).prior
        left_only = torch.zeros(1, 1, h, w)
        left_only[..., : w // 2] = 1
        guided = model.vlcm(visual.dense, text, left_only).prior
    assert torch.allclose(guided[..., : w // 2], plain[..., : w // 2])
    assert (guided[..., w // 2:] < plain[..., w // 2:]).all()


def test_ot_attention_changes_the_output():
    x = images(1)
    base = tiny(knowledge=None).eval()
    ot = tiny(knowledge=None, ssa__ot_attention=True).eval()
    ot.load_state_dict(base.state_dict())
    with torch.no_grad():
        assert not torch.allclose(base(x, CAPTIONS[:1]), ot(x, CAPTIONS[:1]))


def test_bad_guidance_mode():
    with pytest.raises(ValueError, match="ssa.guidance"):
        tiny(knowledge=None, ssa__guidance="sometimes")
