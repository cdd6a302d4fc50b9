"""tgcnet.accel: the machine's linear kernel applied to a built model (same numbers, same training),
and the oneDNN layer itself (F.linear's numbers, F.linear's gradients, the right path per call)."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import CAPTIONS, StaticKnowledge, needs_onednn
from tgcnet import accel, create_model
from tgcnet.accel import (OneDNNLinear, has_onednn_linears, onednn_linear_available, optimize_for_cpu,
                          use_onednn_linears, use_torch_linears)


@needs_onednn
def test_model_outputs_and_lora_gradients_match_the_torch_path(onednn_calls):
    """The whole model: same logits, same LoRA gradients with oneDNN and with F.linear.

    Seeded: the tolerances hold for the weights and images seed 0 draws (float rounding of
    sums over a whole logit map reaches 1e-3 relative on a few small gradients for some
    draws), whatever tests ran before in the session."""
    torch.manual_seed(0)
    fast = optimize_for_cpu(create_model("tgcnet-tiny", knowledge=None), linear="onednn")
    plain = optimize_for_cpu(create_model("tgcnet-tiny", knowledge=None), linear="torch")
    assert has_onednn_linears(fast.sse.clip_visual) and not has_onednn_linears(plain.sse.clip_visual)
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
    message = "optimize_for_cpu: linear must be one of 'auto', 'onednn', 'torch', got 'mkl'"
    with pytest.raises(ValueError, match=message):
        optimize_for_cpu(model, linear="mkl")
    with pytest.raises(ValueError, match=message):
        accel.resolve_cpu_linear("mkl")


def test_cpu_linear_is_not_a_config_field():
    """The kernel is a property of the machine: an override says where it is chosen instead."""
    with pytest.raises(ValueError, match=r"clip\.cpu_linear is not a config field.*optimize_for_cpu"):
        create_model("tgcnet-tiny", knowledge=None, clip__cpu_linear="torch")


def test_model_follows_the_resolved_choice(monkeypatch):
    monkeypatch.setattr(accel, "cpu_vendor", lambda: "intel")
    model = optimize_for_cpu(create_model("tgcnet-tiny", knowledge=None))
    assert not hasattr(model.config.clip, "cpu_linear") and not has_onednn_linears(model)


@needs_onednn
def test_auto_on_amd_swaps_the_frozen_linears_of_both_towers(monkeypatch):
    monkeypatch.setattr(accel, "cpu_vendor", lambda: "amd")
    model = create_model("tgcnet-tiny", knowledge=None)
    assert optimize_for_cpu(model) is model
    assert has_onednn_linears(model.sse.clip_visual) and has_onednn_linears(model.date.text_tower)


def test_a_built_model_runs_plain_torch_linears():
    model = create_model("tgcnet-tiny", knowledge=None)
    assert not has_onednn_linears(model)


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
    assert not has_onednn_linears(model)
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


def test_a_switched_model_gives_the_bits_of_one_that_never_ran_the_other_kernel():
    """No cache may change a result: encodings kept before the switch are not served after it."""
    torch.manual_seed(0)
    used = create_model("tgcnet-tiny", knowledge=StaticKnowledge()).eval()
    fresh = create_model("tgcnet-tiny", knowledge=StaticKnowledge()).eval()
    fresh.load_state_dict(used.state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        used(x, CAPTIONS[:1])
        for model in (used, fresh):
            optimize_for_cpu(model, linear="onednn")
        assert torch.equal(used(x, CAPTIONS[:1]), fresh(x, CAPTIONS[:1]))


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
    assert has_onednn_linears(fast.sse.clip_visual) and has_onednn_linears(fast.date.text_tower)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fast(x, CAPTIONS[:2]), plain(x, CAPTIONS[:2]), atol=1e-4, rtol=1e-4)
    assert onednn_calls
    assert [n for n, p in fast.named_parameters() if p.requires_grad] == \
        [n for n, p in plain.named_parameters() if p.requires_grad]


# --------------------------------------------------------------------------- the oneDNN layer

def frozen_layer(bias: bool = True, seed: int = 0) -> OneDNNLinear:
    torch.manual_seed(seed)
    return OneDNNLinear.from_linear(nn.Linear(48, 80, bias=bias)).requires_grad_(False)


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(7, 48), (2, 9, 48), (3, 2, 5, 48)])
def test_forward_matches_f_linear(bias, shape, onednn_calls):
    layer = frozen_layer(bias)
    x = torch.randn(*shape)
    with torch.no_grad():
        got = layer(x)
    torch.testing.assert_close(got, F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)
    assert got.shape == (*shape[:-1], 80)
    assert len(onednn_calls) == 1


@needs_onednn
def test_non_contiguous_input(onednn_calls):
    layer = frozen_layer()
    x = torch.randn(9, 2, 48).transpose(0, 1)   # sequence-first layouts arrive transposed
    assert not x.is_contiguous()
    with torch.inference_mode():
        got = layer(x)
    torch.testing.assert_close(got, F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)
    assert onednn_calls


@needs_onednn
def test_input_gradient_through_frozen_weight(onednn_calls):
    """LoRA trains through frozen base layers: the input gradient must be F.linear's."""
    layer = frozen_layer()
    x = torch.randn(2, 6, 48, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    grad_out = torch.randn(2, 6, 80)
    layer(x).backward(grad_out)
    F.linear(x_ref, layer.weight, layer.bias).backward(grad_out)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
    assert layer.weight.grad is None and layer.bias.grad is None
    assert len(onednn_calls) == 2   # forward and the backward GEMM


def test_trainable_weight_uses_f_linear(onednn_calls):
    layer = frozen_layer().requires_grad_(True)
    x = torch.randn(4, 48)
    layer(x).sum().backward()
    assert not onednn_calls
    torch.testing.assert_close(layer.weight.grad, torch.ones(4, 80).t() @ x)


def test_autocast_and_other_dtypes_use_f_linear(onednn_calls):
    layer = frozen_layer()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(torch.randn(3, 48)).dtype == torch.bfloat16
    double = copy.deepcopy(layer).double()
    with torch.no_grad():
        assert double(torch.randn(3, 48, dtype=torch.float64)).dtype == torch.float64
        assert layer(torch.randn(0, 48)).shape == (0, 80)
    assert not onednn_calls


def test_swap_shares_parameters_and_keeps_state_dict():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 2)
    block = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16), mha)
    before = {k: v.clone() for k, v in block.state_dict().items()}
    weight = block[0].weight
    assert use_onednn_linears(block) == 2          # MHA's out_proj subclass is left alone
    assert type(block[0]) is OneDNNLinear and block[0].weight is weight
    assert type(mha.out_proj) is not OneDNNLinear
    assert list(block.state_dict()) == list(before)
    assert all(torch.equal(block.state_dict()[k], v) for k, v in before.items())
    assert use_onednn_linears(block) == 0          # idempotent


def test_swap_limited_to_the_layers_named():
    """What a tower's ``frozen_linears()`` names is swapped, nothing else inside the module."""
    block = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
    assert use_onednn_linears(block, only=[block[2]]) == 1
    assert type(block[0]) is nn.Linear and type(block[2]) is OneDNNLinear
    assert use_onednn_linears(block, only=[]) == 0


@pytest.mark.parametrize("vendor, auto", [("amd", True), ("intel", False), ("other", False)])
def test_auto_picks_onednn_on_amd_only(monkeypatch, vendor, auto):
    monkeypatch.setattr(accel, "cpu_vendor", lambda: vendor)
    assert accel.resolve_cpu_linear("auto") is (auto and onednn_linear_available())
    assert accel.resolve_cpu_linear("onednn") is True and accel.resolve_cpu_linear("torch") is False


def test_torch_linears_undo_the_swap_sharing_parameters():
    block = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
    weight = block[2].weight
    use_onednn_linears(block)
    assert use_torch_linears(block) == 2 and use_torch_linears(block) == 0
    assert type(block[2]) is nn.Linear and block[2].weight is weight


def test_cpu_vendor_reads_this_machine():
    assert accel.cpu_vendor() in ("amd", "intel", "other")


@needs_onednn
def test_torch_compile_traces_f_linear(onednn_calls):
    """Inductor cannot lower the internal oneDNN op on a parameter ("weight must be a graph
    constant"): a compiled frozen layer must trace the plain op and keep its numbers."""
    torch._dynamo.reset()
    layer = frozen_layer()
    x = torch.randn(3, 48)
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), F.linear(x, layer.weight, layer.bias))
    assert not onednn_calls
