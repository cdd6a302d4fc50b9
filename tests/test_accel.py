"""tgcnet.accel: the machine's linear kernel applied to a built model (same numbers, same training),
the oneDNN layer itself (F.linear's numbers, F.linear's gradients, the right path per call), and the
GPU levers (frozen towers held in the autocast dtype, channels_last, a compiled head), checked on the
CPU where the CPU can run them and on CUDA by the tests named for it."""
import copy
import os

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
def test_on_cuda_nothing_changes():
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


# --------------------------------------------------------------------------- the CUDA path (checked on the CPU)

def _pair(build, seed: int = 0):
    """Two models with the same weights (LoRA's B awake, so the adapters change the numbers)."""
    from helpers import wake_lora

    torch.manual_seed(seed)
    ref = build()
    wake_lora(ref)
    held = build()
    held.load_state_dict(ref.state_dict())
    return ref, held


TOWER_KINDS = [pytest.param(lambda tmp: (lambda: create_model("tgcnet-tiny", knowledge=StaticKnowledge())),
                            id="open_clip"),
               pytest.param(lambda tmp: (lambda: _tiny_biomedclip(tmp)), id="timm-vit+bert")]


@pytest.mark.parametrize("builder", TOWER_KINDS)
def test_frozen_towers_held_in_bf16_keep_the_numbers_and_the_gradients(tmp_path, builder):
    """Frozen weights bf16, trainable ones float32; logits within bf16 rounding of float32's;
    every trainable parameter (LoRA on a bf16 base layer among them) gets a float32 gradient."""
    from helpers import images

    ref, held = _pair(builder(tmp_path))
    assert accel.optimize_for_cuda(held, amp="bf16") is held
    frozen = held.frozen_state_names()
    for name, p in held.named_parameters():
        assert p.dtype == (torch.bfloat16 if name in frozen else torch.float32), name
        assert p.requires_grad == (name not in frozen), name
    assert any("lora_" in n for n, p in held.named_parameters() if p.requires_grad)
    assert accel.frozen_dtype(held) == torch.bfloat16 and accel.frozen_dtype(ref) == torch.float32
    x = images(2, 64)
    ref.eval(), held.eval()
    with torch.no_grad():
        want = ref(x, CAPTIONS[:2])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = held(x, CAPTIONS[:2]).float()
    torch.testing.assert_close(got, want, atol=0.1, rtol=0.05)   # bf16 keeps 8 bits of mantissa
    held.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = held(x, CAPTIONS[:2], return_aux=True)
    out.loss((x[:, :1] > 0.5).float()).backward()
    for name, p in held.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), name


def test_held_towers_refuse_to_run_without_autocast():
    model = accel.optimize_for_cuda(create_model("tgcnet-tiny", knowledge=None), amp="bf16").eval()
    with pytest.raises(RuntimeError, match=r"Tower holds its frozen weights.*torch.autocast\('cpu'"):
        with torch.no_grad():
            model(torch.rand(1, 3, 64, 64), CAPTIONS[:1])


def test_holding_is_idempotent_and_never_rounds_twice():
    model = create_model("tgcnet-tiny", knowledge=None)
    accel.optimize_for_cuda(model, amp="bf16")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    accel.optimize_for_cuda(model, amp="bf16")
    accel.optimize_for_cuda(model, amp="none")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    with pytest.raises(ValueError, match="already hold torch.bfloat16 weights"):
        accel.optimize_for_cuda(model, amp="fp16")
    with pytest.raises(ValueError, match="amp must be one of none, bf16, fp16; got 'fp8'"):
        accel.optimize_for_cuda(model, amp="fp8")


def test_a_held_model_gives_the_bits_of_one_held_from_the_start():
    """Encodings and resized positional embeddings kept before the cast are not served after it:
    64 px resizes the 224 px positional grid, and the captions and descriptions were encoded."""
    torch.manual_seed(0)
    used = create_model("tgcnet-tiny", knowledge=StaticKnowledge()).eval()
    fresh = create_model("tgcnet-tiny", knowledge=StaticKnowledge()).eval()
    fresh.load_state_dict(used.state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        used(x, CAPTIONS[:1])
        assert len(used.date._caption_cache) and len(used.date._description_cache)
        for model in (used, fresh):
            accel.optimize_for_cuda(model, amp="bf16")
        assert torch.equal(used(x, CAPTIONS[:1]), fresh(x, CAPTIONS[:1]))


def test_channels_last_keeps_the_numbers():
    torch.manual_seed(0)
    ref = create_model("tgcnet-tiny", knowledge=StaticKnowledge()).eval()
    fast = create_model("tgcnet-tiny", knowledge=StaticKnowledge()).eval()
    fast.load_state_dict(ref.state_dict())
    accel.optimize_for_cuda(fast, channels_last=True)
    convs = [m for part in (fast.sse.cnn, fast.sse.fusion, fast.decoder) for m in part.modules()
             if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fast(x, CAPTIONS[:2]), ref(x, CAPTIONS[:2]), atol=1e-5, rtol=1e-5)


def _compiled_pair(backend: str):
    from helpers import images

    ref, fast = _pair(lambda: create_model("tgcnet-tiny", knowledge=StaticKnowledge()))
    torch._dynamo.reset()
    accel.compile_trainable_head(fast, backend=backend)
    assert accel.compile_trainable_head(fast) is fast            # compiled once
    return ref, fast, images(2, 64)


def _assert_compiled_matches(ref, fast, x, atol: float) -> None:
    ref.eval(), fast.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(x, CAPTIONS[:2]), ref(x, CAPTIONS[:2]), atol=atol, rtol=atol)
    ref.train(), fast.train()
    target = (x[:, :1] > 0.5).float()
    for model in (ref, fast):
        model(x, CAPTIONS[:2], return_aux=True).loss(target).backward()
    grads = dict(ref.named_parameters())
    for name, p in fast.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, grads[name].grad, atol=atol, rtol=1e-3, msg=name)


def test_compiled_head_traces_and_keeps_the_numbers():
    """Dynamo captures fusion, VLCM and the decoder (eager backend: the graphs, without code generation)."""
    ref, fast, x = _compiled_pair("eager")
    _assert_compiled_matches(ref, fast, x, atol=1e-5)
    assert all(getattr(fast.get_submodule(n), "_compiled_call_impl", None) is not None for n in ("vlcm", "decoder"))
    assert all(m._compiled_call_impl is not None for m in fast.sse.fusion)


@pytest.mark.skipif(os.environ.get("TGCNET_TEST_INDUCTOR") != "1",
                    reason="inductor compiles the head's forward and backward with gcc: about 3 minutes on a "
                           "2-core CPU; set TGCNET_TEST_INDUCTOR=1 to run it (benchmarks.speed.gpu_check does)")
def test_inductor_compiled_head_keeps_the_numbers():
    ref, fast, x = _compiled_pair("inductor")
    _assert_compiled_matches(ref, fast, x, atol=1e-4)


def test_prepare_for_device_leaves_a_cpu_model_in_float32():
    from tgcnet.engine.loading import prepare_for_device

    model = prepare_for_device(create_model("tgcnet-tiny", knowledge=None), torch.device("cpu"), amp="bf16")
    assert accel.frozen_dtype(model) == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_cuda_prepare_for_device_holds_the_frozen_towers_in_the_amp_dtype(amp):
    """On a GPU the engine's preparation holds the towers in the autocast dtype before the move:
    half the frozen bytes on the GPU, and a training step under that autocast reaches every
    trainable parameter in float32."""
    from helpers import images, wake_lora
    from tgcnet.engine.loading import prepare_for_device

    dtype = accel.AMP_DTYPES[amp]
    torch.manual_seed(0)
    plain = create_model("tgcnet-tiny", knowledge=StaticKnowledge())
    wake_lora(plain)
    held = create_model("tgcnet-tiny", knowledge=StaticKnowledge())
    held.load_state_dict(plain.state_dict())
    frozen_bytes = lambda m: sum(t.numel() * t.element_size() for n, t in m.state_dict().items()
                                 if n in m.frozen_state_names())
    held = prepare_for_device(held, torch.device("cuda"), amp=amp)
    plain = prepare_for_device(plain, torch.device("cuda"))
    assert accel.frozen_dtype(held) == dtype and accel.frozen_dtype(plain) == torch.float32
    assert frozen_bytes(held) < 0.55 * frozen_bytes(plain)
    x = images(2, 64).cuda()
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype):
        torch.testing.assert_close(held.eval()(x, CAPTIONS[:2]).float(), plain.eval()(x, CAPTIONS[:2]).float(),
                                   atol=0.1, rtol=0.05)
    with torch.autocast("cuda", dtype=dtype):
        held.train()(x, CAPTIONS[:2], return_aux=True).loss((x[:, :1] > 0.5).float()).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in held.parameters() if p.requires_grad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_channels_last_keeps_the_numbers():
    torch.manual_seed(0)
    ref = create_model("tgcnet-tiny", knowledge=StaticKnowledge(), device="cuda").eval()
    fast = create_model("tgcnet-tiny", knowledge=StaticKnowledge(), device="cuda").eval()
    fast.load_state_dict(ref.state_dict())
    accel.optimize_for_cuda(fast, channels_last=True)
    x = torch.rand(2, 3, 64, 64, device="cuda")
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):   # float32 convs both ways
        torch.testing.assert_close(fast(x, CAPTIONS[:2]), ref(x, CAPTIONS[:2]), atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.skipif(os.environ.get("TGCNET_TEST_INDUCTOR") != "1",
                    reason="inductor compiles the head with Triton: set TGCNET_TEST_INDUCTOR=1 to run it")
def test_cuda_inductor_compiled_head_keeps_the_numbers():
    ref, fast, x = _compiled_pair("inductor")
    ref.cuda(), fast.cuda()
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):   # float32 convs both ways
        _assert_compiled_matches(ref, fast, x.cuda(), atol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("build", TOWER_KINDS)
def test_cuda_attention_runs_on_the_fused_kernels(tmp_path, build):
    """Both towers reach scaled_dot_product_attention in a form the fused kernels take: under bf16
    autocast the image tower (no mask) runs on flash attention alone, the text towers (causal or
    padding mask) on flash or memory-efficient attention; the math fallback would raise here."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = accel.optimize_for_cuda(build(tmp_path)(), amp="bf16").cuda().eval()
    x = torch.rand(2, 3, 64, 64, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            model.sse.clip_visual(model.clip_input(x))
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
            model.date.encode(CAPTIONS[:2])
