import pytest
import torch

from helpers import CAPTIONS, StaticKnowledge, images, tiny, wake_lora
from tgcnet import TGCNet


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


def test_over_long_description_is_truncated_with_a_warning():
    long = "ground glass opacity " * 40
    model = tiny(knowledge=StaticKnowledge({"left": [long]})).eval()
    with pytest.warns(UserWarning, match=r"description\(s\) longer than .* were truncated"):
        with torch.no_grad():
            out = model(images(1), ["lower left lung."])
    assert torch.isfinite(out).all()


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


def test_unique_captions_encoded_once():
    model = tiny(knowledge=None).eval()
    seen = []
    model.date.text_tower.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[0]))
    with torch.no_grad():
        model(images(4), [CAPTIONS[0], CAPTIONS[1], CAPTIONS[0], CAPTIONS[0]])
    assert seen == [1, 1]          # evaluation: each distinct caption alone, once
    with torch.enable_grad():
        model(images(4), [CAPTIONS[0], CAPTIONS[1], CAPTIONS[0], CAPTIONS[0]])
    assert seen == [1, 1, 2]       # with gradients: the distinct captions as one batch


def test_knowledge_strings_encoded_once_and_cached_in_eval():
    knowledge = StaticKnowledge()
    model = tiny(knowledge=knowledge, date__knowledge_encoder="lora").eval()
    seen = []
    model.date.text_tower.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[0]))
    captions = [CAPTIONS[0], CAPTIONS[1], CAPTIONS[2]]
    with torch.no_grad():
        first = model(images(3), captions)
        # 3 unique captions + 3 unique descriptions ("left" and "bilateral" share one), each alone
        assert seen == [1] * 6
        second = model(images(3), captions)
    assert seen == [1] * 6  # descriptions and (eval caption cache) captions came from the caches
    assert torch.equal(first, second)
    assert len(model.date._description_cache) == 3
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "lora_B" in n).add_(0.05)   # LoRA moved: re-encode
        model(images(3), captions)
    assert seen == [1] * 12


def test_caption_without_descriptions_is_fine():
    model = tiny(knowledge=StaticKnowledge({})).eval()
    with torch.no_grad():
        assert torch.isfinite(model(images(1), ["no known concept here"])).all()


def test_knowledge_changes_the_output():
    x = images(1)
    with_k = tiny(knowledge=StaticKnowledge()).eval()
    without = tiny(knowledge=None).eval()
    without.load_state_dict(with_k.state_dict(), strict=False)
    with torch.no_grad():
        assert not torch.allclose(with_k(x, CAPTIONS[:1]), without(x, CAPTIONS[:1]))


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


def test_frozen_knowledge_encoder_caches_in_training_and_ignores_lora():
    from tgcnet.adapters import lora_parameters

    model = tiny(date__knowledge_encoder="frozen").train()
    wake_lora(model)
    seen = []
    model.date.text_tower.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[0]))
    captions = [CAPTIONS[0], CAPTIONS[1], CAPTIONS[2]]
    model(images(3, size=64), captions).mean().backward()
    assert seen == [3, 1, 1, 1]           # captions, then the 3 unique descriptions once, each alone
    cached = {k: v[2].clone() for k, v in model.date._description_cache.items()}
    assert len(cached) == 3 and all(not v.requires_grad for v in cached.values())
    # LoRA still learns from the captions
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_parameters(model).values())
    model.train()                         # a new epoch keeps the cache: nothing trainable made it
    model(images(3, size=64), captions)
    assert seen == [3, 1, 1, 1, 3]
    # the cached embeddings are the base tower's: changing LoRA does not change them
    for p in lora_parameters(model).values():
        p.data.add_(0.5)
    model.date._description_cache.clear()
    model(images(3, size=64), captions)
    for key, value in model.date._description_cache.items():
        assert torch.equal(value[2], cached[key])


def test_lora_knowledge_encoder_differs_from_frozen_once_lora_moves():
    lora, frozen = tiny(date__knowledge_encoder="lora").eval(), tiny().eval()
    assert frozen.config.date.knowledge_encoder == "frozen"   # the default
    frozen.load_state_dict(lora.state_dict())
    wake_lora(lora)
    wake_lora(frozen)
    x = images(1, size=64)
    with torch.no_grad():
        assert not torch.allclose(lora(x, CAPTIONS[:1]), frozen(x, CAPTIONS[:1]))


def test_unknown_knowledge_encoder_is_named():
    with pytest.raises(ValueError, match="date.knowledge_encoder"):
        tiny(date__knowledge_encoder="both")


def _tower_calls(model):
    calls = []
    model.date.text_tower.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    return calls


def test_eval_caption_cache_skips_the_tower_and_keeps_the_logits():
    model = tiny(knowledge=None).eval()
    wake_lora(model)
    calls = _tower_calls(model)
    x = images(4)
    first = [CAPTIONS[0], CAPTIONS[1], CAPTIONS[0], CAPTIONS[2]]
    mixed = ["lower left lung.", CAPTIONS[2], "lower left lung.", CAPTIONS[1]]   # one new, shorter caption
    with torch.enable_grad():   # gradients asked for: the cache is bypassed
        reference = [model(x, first).detach(), model(x, mixed).detach()]
    assert calls == [3, 3] and not model.date._caption_cache
    with torch.no_grad():
        got = [model(x, first), model(x, mixed)]
        assert calls[2:] == [1, 1, 1, 1]     # each caption alone; of the second batch only the new one
        assert model(x, mixed).shape == (4, 1, 224, 224) and calls[6:] == []
    for a, b in zip(got, reference):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_caption_cache_is_dropped_when_weights_change_or_training_starts():
    model = tiny(knowledge=None).eval()
    calls = _tower_calls(model)
    x = images(1)
    with torch.no_grad():
        model(x, CAPTIONS[:1])
        lora = next(p for n, p in model.named_parameters() if "lora_B" in n)
        lora.add_(0.05)                       # what an optimizer step does: in place
        after = model(x, CAPTIONS[:1])
    assert calls == [1, 1]                    # re-encoded, not served stale
    with torch.enable_grad():
        torch.testing.assert_close(after, model(x, CAPTIONS[:1]).detach())
    model.train()
    assert not model.date._caption_cache


def test_caption_cache_is_bounded_and_can_be_off():
    model = tiny(knowledge=None, date__caption_cache=2).eval()
    with torch.no_grad():
        model(images(3), CAPTIONS[:3])
    assert list(model.date._caption_cache) == CAPTIONS[1:3]
    off = tiny(knowledge=None, date__caption_cache=0).eval()
    with torch.no_grad():
        off(images(1), CAPTIONS[:1])
    assert not off.date._caption_cache


def test_eval_outputs_do_not_depend_on_what_ran_before():
    """Two identical models: one fresh, one that served batches of other (longer, shorter,
    overlapping) captions first. Same inputs, same bits."""
    fresh, used = tiny(), tiny()
    wake_lora(fresh)
    used.load_state_dict(fresh.state_dict())
    fresh.eval(), used.eval()
    x = images(2, size=64)
    with torch.no_grad():
        used(images(3, size=64, seed=3), [CAPTIONS[2], "lower left lung.", CAPTIONS[0]])
        used(images(1, size=64, seed=4), [CAPTIONS[1] + " " + CAPTIONS[0]])
        assert torch.equal(used(x, CAPTIONS[:2]), fresh(x, CAPTIONS[:2]))
        assert torch.equal(used(x, CAPTIONS[1:3]), fresh(x, CAPTIONS[1:3]))


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


def test_cuda_device_without_a_gpu_is_named():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="device 'cuda': no CUDA device is available"):
        tiny(device="cuda")


def test_encodings_made_under_autocast_are_not_served_without_it(model):
    x = images(1)
    with torch.no_grad():
        expected = model(x, CAPTIONS[2:])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(x, CAPTIONS[2:])
        assert torch.equal(model(x, CAPTIONS[2:]), expected)
