"""oneDNN linear for frozen layers: F.linear's numbers, F.linear's gradients, and the right path per call."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import needs_onednn
from tgcnet import kernels
from tgcnet.kernels import OneDNNLinear, onednn_linear_available, use_onednn_linears, use_torch_linears


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


@pytest.mark.parametrize("vendor, auto", [("amd", True), ("intel", False), ("other", False)])
def test_auto_picks_onednn_on_amd_only(monkeypatch, vendor, auto):
    monkeypatch.setattr(kernels, "cpu_vendor", lambda: vendor)
    assert kernels.resolve_cpu_linear("auto") is (auto and onednn_linear_available())
    assert kernels.resolve_cpu_linear("onednn") is True and kernels.resolve_cpu_linear("torch") is False


def test_torch_linears_undo_the_swap_sharing_parameters():
    block = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
    weight = block[2].weight
    use_onednn_linears(block)
    assert use_torch_linears(block) == 2 and use_torch_linears(block) == 0
    assert type(block[2]) is nn.Linear and block[2].weight is weight


def test_unknown_choice_is_refused_by_the_resolver():
    with pytest.raises(ValueError, match="one of 'auto', 'onednn', 'torch', got 'mkl'"):
        kernels.resolve_cpu_linear("mkl")


def test_cpu_vendor_reads_this_machine():
    assert kernels.cpu_vendor() in ("amd", "intel", "other")


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
