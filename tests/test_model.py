"""TGCNet end to end: shapes, input validation at the door, gradients, frozen parts, caption form, knowledge argument."""
import pytest
import torch

from helpers import CAPTIONS, images, tiny, wake_lora


@pytest.fixture(scope="module")
def model():
    return tiny().eval()


@pytest.mark.parametrize("size", [224, 320])
@pytest.mark.parametrize("batch", [1, 3])
def test_forward_shape_any_size_and_batch(model, size, batch):
    with torch.no_grad():
        out = model(images(batch, size), CAPTIONS[:batch])
    assert out.shape == (batch, 1, size, size)
    assert torch.isfinite(out).all()


def test_grayscale_equals_expanded_rgb(model):
    gray = images(2, 224, channels=1)
    with torch.no_grad():
        torch.testing.assert_close(model(gray, CAPTIONS[:2]), model(gray.expand(-1, 3, -1, -1), CAPTIONS[:2]))


def test_non_square_input(model):
    with torch.no_grad():
        out = model(torch.rand(1, 3, 224, 288), CAPTIONS[:1])
    assert out.shape == (1, 1, 224, 288)


def test_output_depends_on_caption(model):
    x = images(1)
    with torch.no_grad():
        a = model(x, ["lower left lung."])
        b = model(x, ["upper right lung and bilateral infection."])
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("bad, captions, message", [
    (torch.rand(3, 224, 224), ["a"], r"shape \(B, C, H, W\)"),
    (torch.rand(1, 2, 224, 224), ["a"], "1 \\(grayscale\\) or 3 channels, got 2"),
    (torch.rand(1, 3, 200, 224), ["a"], "not divisible by the patch size 16"),
    (torch.randint(0, 255, (1, 3, 224, 224), dtype=torch.uint8), ["a"], "float tensor"),
    (torch.rand(2, 3, 224, 224), ["only one"], "2 images"),
    (torch.rand(1, 3, 224, 224), "a string", "list of strings"),
    (torch.rand(1, 3, 224, 224), ["   "], "caption 0 is empty"),
    (torch.rand(1, 3, 224, 224), [None], "caption 0 must be a str"),
    (torch.rand(0, 3, 224, 224), [], "empty batch"),
    (torch.rand(2, 3, 224, 224).index_put_((torch.tensor([1]),), torch.tensor(float("nan"))), ["a", "b"],
     r"image\(s\) \[1\] of the batch hold NaN or infinite"),
    (torch.full((1, 3, 224, 224), float("inf")), ["a"], r"image\(s\) \[0\].*NaN or infinite"),
    (torch.rand(1, 3, 224, 224) * 255, ["a"], r"values in \[0, 1\], got min .* max 25\d.*divide by the maximum"),
    ((torch.rand(1, 3, 224, 224) - 0.48) / 0.27, ["a"], "already normalised.*tgcnet normalises inside"),
])
def test_bad_input_is_one_clear_error(model, bad, captions, message):
    with pytest.raises(ValueError, match=message):
        model(bad, captions)


def test_over_long_caption_is_an_error_naming_its_batch_position(model):
    long = "bilateral ground glass opacity " * 40 + "."   # a caption in canonical form: normalisation keeps it
    room = model.max_caption_tokens
    captions = [CAPTIONS[0], CAPTIONS[0], long, long]   # the error names batch position 2, not unique index 1
    with pytest.raises(ValueError, match=rf"1 caption\(s\) longer than the text context of {room} tokens "
                                         r"\(caption 2 has 201 tokens\)"):
        with torch.no_grad():
            model(images(4), captions)
    assert model.overlong_captions(captions) == [(2, 201), (3, 201)]
    assert model.overlong_captions(CAPTIONS) == []


def test_caption_exactly_filling_the_context_is_accepted(model):
    words = ("lung " * 200).split()
    caption = " ".join(words[: model.max_caption_tokens - 1]) + "."   # canonical form: ends with its period
    assert model.date.tokenize.length(caption) == model.max_caption_tokens
    with torch.no_grad():
        assert model(images(1), [caption]).shape == (1, 1, 224, 224)
    with pytest.raises(ValueError, match="caption 0 has"):
        with torch.no_grad():
            model(images(1), ["lung " + caption])


def test_every_trainable_parameter_gets_a_gradient():
    model = tiny().train()
    wake_lora(model)
    out = model(images(2), CAPTIONS[:2])
    out.float().square().mean().backward()
    dead = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert dead == []
    assert all(p.grad is None for p in model.sse.clip_visual.parameters())


def test_frozen_weights_bit_identical_after_optimizer_steps():
    model = tiny().train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2, weight_decay=0.1)
    for step in range(3):
        opt.zero_grad()
        model(images(2, seed=step), CAPTIONS[:2]).square().mean().backward()
        opt.step()
    now = dict(model.named_parameters())
    assert set(now) == set(frozen) | set(trainable)
    assert all(torch.equal(now[n], v) for n, v in frozen.items())
    assert any(not torch.equal(now[n], v) for n, v in trainable.items())


def test_frozen_vit_stays_in_eval_mode(model):
    model.train()
    assert not model.sse.clip_visual.training and not model.sse.clip_visual.visual.training
    assert model.decoder.training
    model.eval()


def test_bf16_autocast_cpu(model):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images(2), CAPTIONS[:2])
    assert out.shape == (2, 1, 224, 224) and torch.isfinite(out.float()).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_forward_backward_with_autocast():
    model = tiny(device="cuda").train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(images(2).cuda(), CAPTIONS[:2])
    out.float().mean().backward()
    assert out.device.type == "cuda" and torch.isfinite(out.float()).all()


def test_knowledge_argument_checked():
    with pytest.raises(ValueError, match="knowledge must be"):
        tiny(knowledge=42)


def test_default_knowledge_is_the_shipped_bank():
    from tgcnet import create_model
    from tgcnet.prompts import KnowledgeBank

    model = create_model("tgcnet-tiny").eval()
    assert isinstance(model.date.knowledge, KnowledgeBank)
    assert len(model.date.knowledge.descriptions_for(CAPTIONS[0])) > 0
    with torch.no_grad():
        assert torch.isfinite(model(images(2), CAPTIONS[:2])).all()


def test_knowledge_off_by_config_or_argument():
    from tgcnet import create_model

    none = create_model("tgcnet-tiny", knowledge=None)
    assert none.date.knowledge is None and none.date.knowledge_fusion is None
    assert none.config.date.use_knowledge is False  # recorded, so from_pretrained rebuilds the same model
    off = create_model("tgcnet-tiny", date__use_knowledge=False)
    assert off.date.knowledge is None and off.date.knowledge_fusion is None


def test_float64_images_are_cast_and_give_the_float32_result(model):
    x = images(1)
    with torch.no_grad():
        assert torch.equal(model(x.double(), CAPTIONS[:1]), model(x, CAPTIONS[:1]))


def test_values_a_hair_outside_the_range_are_accepted(model):
    """Resampling overshoot (bicubic resize) leaves values like -0.003 or 1.004: not an error."""
    x = images(1).mul(1.008).sub(0.004)
    with torch.no_grad():
        assert torch.isfinite(model(x, CAPTIONS[:1])).all()


def test_noisy_captions_are_read_as_their_canonical_form(model):
    """LViT's verbatim QaTa text and the cleaned caption give the very same output."""
    clean = "unilateral pulmonary infection, one infected area, upper middle lower left lung."
    noisy = "Unilateral pulmonary  infection, one infection area, all left lung"
    typo = "unilateral pulmonary infection, one infected area, upper midlle lower left lung."
    x = images(1)
    with torch.no_grad():
        expected = model(x, [clean])
        assert torch.equal(model(x, [noisy]), expected) and torch.equal(model(x, [typo]), expected)
    assert model.overlong_captions([noisy]) == []


def test_caption_normalisation_can_be_switched_off():
    plain = tiny(normalize_captions=False).eval()
    x = images(1, size=64)
    with torch.no_grad():
        assert not torch.equal(plain(x, ["Left lung"]), plain(x, ["left lung."]))


def test_deep_supervision_output_and_its_training_loss():
    from tgcnet.losses import deep_supervision_loss, dice_bce_loss

    model = tiny(knowledge=None, decoder__deep_supervision_weight=0.5)
    x = images(2, 64)
    masks = (torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(1)) > 0.6).float()
    out = model(x, CAPTIONS[:2], return_aux=True)
    assert out.side_weight == 0.5 and len(out.side_logits) == len(model.decoder.strides) - 1
    expected = dice_bce_loss(out.logits, masks) + 0.5 * deep_supervision_loss(out.side_logits, masks)
    torch.testing.assert_close(out.loss(masks), expected)
    out.loss(masks).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.decoder.side_heads.parameters())
    plain = tiny(knowledge=None)(x, CAPTIONS[:2], return_aux=True)
    assert plain.side_logits == [] and torch.equal(plain.loss(masks), dice_bce_loss(plain.logits, masks))
    with pytest.raises(ValueError, match="deep_supervision_weight must be >= 0"):
        tiny(knowledge=None, decoder__deep_supervision_weight=-1.0)


def test_the_loss_weights_of_the_config_weigh_dice_against_bce_on_every_level():
    from tgcnet.losses import deep_supervision_loss, dice_bce_loss, dice_loss

    x = images(2, 64)
    masks = (torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(2)) > 0.6).float()
    dice_only = tiny(knowledge=None, loss__bce_weight=0.0)(x, CAPTIONS[:2], return_aux=True)
    torch.testing.assert_close(dice_only.loss(masks), dice_loss(dice_only.logits, masks))
    deep = tiny(knowledge=None, loss__bce_weight=0.25, decoder__deep_supervision_weight=0.5)
    out = deep(x, CAPTIONS[:2], return_aux=True)
    expected = (dice_bce_loss(out.logits, masks, bce_weight=0.25)
                + 0.5 * deep_supervision_loss(out.side_logits, masks, bce_weight=0.25))
    torch.testing.assert_close(out.loss(masks), expected)
    assert not torch.allclose(out.loss(masks), dice_bce_loss(out.logits, masks)
                              + 0.5 * deep_supervision_loss(out.side_logits, masks))
