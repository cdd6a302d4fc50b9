"""DATE: caption encoding, knowledge fusion, the knowledge encoder and the eval caches, through the model."""
import pytest
import torch

from helpers import CAPTIONS, StaticKnowledge, images, tiny, wake_lora


@pytest.fixture(scope="module")
def model():
    return tiny().eval()


def test_over_long_description_is_truncated_with_a_warning():
    long = "ground glass opacity " * 40
    model = tiny(knowledge=StaticKnowledge({"left": [long]})).eval()
    with pytest.warns(UserWarning, match=r"description\(s\) longer than .* were truncated"):
        with torch.no_grad():
            out = model(images(1), ["lower left lung."])
    assert torch.isfinite(out).all()


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


def test_encodings_made_under_autocast_are_not_served_without_it(model):
    x = images(1)
    with torch.no_grad():
        expected = model(x, CAPTIONS[2:])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(x, CAPTIONS[2:])
        assert torch.equal(model(x, CAPTIONS[2:]), expected)
