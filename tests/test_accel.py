"""optimize_for_cpu: the machine's linear kernels applied to a built model, same numbers, same training."""
import pytest
import torch

from helpers import CAPTIONS, StaticKnowledge, needs_onednn
from tgcnet import create_model
from tgcnet import kernels
from tgcnet.accel import optimize_for_cpu
from tgcnet.kernels import OneDNNLinear


@needs_onednn
def test_model_outputs_and_lora_gradients_match_the_torch_path(onednn_calls):
    """The whole model: same logits, same LoRA gradients with oneDNN and with F.linear.

    Seeded: the tolerances hold for the weights and images seed 0 draws (float rounding of
    sums over a whole logit map reaches 1e-3 relative on a few small gradients for some
    draws), whatever tests ran before in the session."""
    torch.manual_seed(0)
    fast = optimize_for_cpu(create_model("tgcnet-tiny", knowledge=None), linear="onednn")
    plain = optimize_for_cpu(create_model("tgcnet-tiny", knowledge=None), linear="torch")
    assert fast.sse.clip_visual.onednn_linear and not plain.sse.clip_visual.onednn_linear
    plain.load_state_dict(fast.state_dict())
    images = torch.rand(2, 3, 64, 64)
    captions = ["left lung opacity", "two infected areas, lower right lung"]
    fast.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(images, captions), plain(images, captions), atol=1e-4, rtol=1e-4)
    assert onednn_calls
    fast.train(), plain.train()
    for model in (fast, plain):
        model(images, captions).sum().backward()
    grads = {n: p.grad for n, p in fast.named_parameters() if "lora_" in n}
    assert grads and all(g is not None for g in grads.values())
    for name, param in plain.named_parameters():
        if name in grads:
            torch.testing.assert_close(grads[name], param.grad, atol=1e-4, rtol=1e-3)


def test_unknown_cpu_linear_is_refused():
    model = create_model("tgcnet-tiny", knowledge=None)
    with pytest.raises(ValueError, match="linear must be one of 'auto', 'onednn', 'torch', got 'mkl'"):
        optimize_for_cpu(model, linear="mkl")


def test_cpu_linear_is_not_a_config_field():
    """The kernel is a property of the machine: an override says where it is chosen instead."""
    with pytest.raises(ValueError, match=r"clip\.cpu_linear is not a config field.*optimize_for_cpu"):
        create_model("tgcnet-tiny", knowledge=None, clip__cpu_linear="torch")


def test_model_follows_the_resolved_choice(monkeypatch):
    monkeypatch.setattr(kernels, "cpu_vendor", lambda: "intel")
    model = optimize_for_cpu(create_model("tgcnet-tiny", knowledge=None))
    assert not hasattr(model.config.clip, "cpu_linear") and not model.sse.clip_visual.onednn_linear
    assert not any(isinstance(m, OneDNNLinear) for m in model.modules())


@needs_onednn
def test_auto_on_amd_swaps_the_frozen_linears_of_both_towers(monkeypatch):
    monkeypatch.setattr(kernels, "cpu_vendor", lambda: "amd")
    model = create_model("tgcnet-tiny", knowledge=None)
    assert optimize_for_cpu(model) is model
    assert model.sse.clip_visual.onednn_linear and model.date.text_tower.onednn_linear


def test_a_built_model_runs_plain_torch_linears():
    model = create_model("tgcnet-tiny", knowledge=None)
    assert not model.sse.clip_visual.onednn_linear and not model.date.text_tower.onednn_linear
    assert not any(isinstance(m, OneDNNLinear) for m in model.modules())


def _layer_types(model):
    return {n: type(m) for n, m in model.named_modules()}


def test_optimize_for_cpu_is_idempotent_and_switches_back():
    model = create_model("tgcnet-tiny", knowledge=None)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    optimize_for_cpu(model, linear="onednn")
    once = _layer_types(model)
    swapped = [n for n, t in once.items() if t is OneDNNLinear]
    assert swapped and all(n.startswith(("sse.clip_visual.", "date.text_tower.")) for n in swapped)
    assert not any("lora_" in n for n in swapped)            # LoRA's own layers train: F.linear
    assert any(n.endswith("base_layer") for n in swapped)     # LoRA's frozen base layers: oneDNN
    optimize_for_cpu(model, linear="onednn")
    assert _layer_types(model) == once
    assert [n for n, p in model.named_parameters() if p.requires_grad] == trainable
    optimize_for_cpu(model, linear="torch")
    assert not any(isinstance(m, OneDNNLinear) for m in model.modules())
    assert not model.sse.clip_visual.onednn_linear and not model.date.text_tower.onednn_linear
    assert [n for n, p in model.named_parameters() if p.requires_grad] == trainable
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_switching_kernels_drops_the_kept_text_encodings():
    """Encodings made with one kernel must not be served after a switch to the other."""
    model = create_model("tgcnet-tiny", knowledge=StaticKnowledge()).eval()
    with torch.no_grad():
        model(torch.rand(1, 3, 64, 64), CAPTIONS[:1])
    assert len(model.date._caption_cache) and len(model.date._description_cache)
    optimize_for_cpu(model, linear="onednn")
    assert not len(model.date._caption_cache) and not len(model.date._description_cache)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_off_the_cpu_nothing_changes():
    """On a GPU every call takes F.linear, so an optimized model gives the very same bits."""
    plain = create_model("tgcnet-tiny", knowledge=StaticKnowledge(), device="cuda").eval()
    fast = create_model("tgcnet-tiny", knowledge=StaticKnowledge(), device="cuda").eval()
    fast.load_state_dict(plain.state_dict())
    optimize_for_cpu(fast, linear="onednn")
    x = torch.rand(2, 3, 64, 64, device="cuda")
    with torch.no_grad():
        assert torch.equal(fast(x, CAPTIONS[:2]), plain(x, CAPTIONS[:2]))


def _tiny_biomedclip(tmp_path):
    from helpers import write_bert_tokenizer

    folder = write_bert_tokenizer(tmp_path / "tok")
    return create_model("tgcnet-tiny-biomedclip", knowledge=StaticKnowledge(), clip__tokenizer=folder)


@needs_onednn
@pytest.mark.parametrize("build", [
    pytest.param(lambda tmp: _tiny_biomedclip(tmp), id="timm-vit+bert"),
    pytest.param(lambda tmp: create_model("tgcnet-tiny", knowledge=None, date__lora__r=0), id="no-lora"),
])
def test_every_tower_kind_keeps_its_numbers(tmp_path, build, onednn_calls):
    """timm ViT + BERT towers, and an open_clip text tower without LoRA (its attention still a
    MultiheadAttention until the swap): oneDNN gives F.linear's logits to float rounding."""
    torch.manual_seed(0)
    plain = build(tmp_path).eval()
    fast = build(tmp_path).eval()
    fast.load_state_dict(plain.state_dict())
    optimize_for_cpu(fast, linear="onednn")
    assert fast.sse.clip_visual.onednn_linear and fast.date.text_tower.onednn_linear
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fast(x, CAPTIONS[:2]), plain(x, CAPTIONS[:2]), atol=1e-4, rtol=1e-4)
    assert onednn_calls
    assert [n for n, p in fast.named_parameters() if p.requires_grad] == \
        [n for n, p in plain.named_parameters() if p.requires_grad]
