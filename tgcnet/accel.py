"""Which kernel runs the frozen CLIP towers' linear layers on this CPU, and that kernel.

Why: PyTorch runs a float32 ``nn.Linear`` on the CPU through MKL's sgemm, and MKL picks its
AVX2 kernels on AMD processors. oneDNN, which ships inside PyTorch and already runs its CPU
convolutions, uses AVX-512 there. On this project's 2-core AMD EPYC (Zen 5) ViT-B/16's
GEMMs ran at 210-230 GFLOP/s through MKL and 450-520 GFLOP/s through oneDNN; the frozen
ViT is almost all GEMM, so it takes about half the time (the speed benchmark measures
both paths A/B). The maths is the same and only the float rounding differs (about 5e-6
relative), the same as any other change of GEMM library or of thread count.

On Intel processors MKL runs its AVX-512 code and there is nothing to win: on a 2-core
Xeon the ViT took 1.08-1.10x MKL's time through oneDNN and a training step 1-4% longer.
``"auto"`` (:func:`resolve_cpu_linear`) therefore uses oneDNN on AMD only.

Which library is fastest is a fact about the processor the model happens to run on, not
about the method: so the choice is applied to a built model by whoever runs it (the
training and evaluation loops, the benchmarks) and is never written to ``config.json``.

    model = optimize_for_cpu(create_model("tgcnet-vit-b16"))   # oneDNN on AMD, F.linear elsewhere

Only layers whose weights are frozen are routed to oneDNN. A frozen weight needs no weight
gradient, so the backward is one more oneDNN GEMM (``grad @ W``), and LoRA still trains
through a frozen base layer. Trainable layers, CUDA, other dtypes and autocast all keep
``F.linear``. The towers only say which of their layers are frozen (``frozen_linears()``);
the swap is made here.
"""
from __future__ import annotations

import functools
import logging
import platform
from typing import TYPE_CHECKING, Callable, Iterable, Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from tgcnet.adapters import project_attention

if TYPE_CHECKING:
    from tgcnet.model import TGCNet

__all__ = ["CPU_LINEAR_CHOICES", "OneDNNLinear", "cpu_vendor", "has_onednn_linears", "onednn_linear_available",
           "optimize_for_cpu", "resolve_cpu_linear", "use_onednn_linears", "use_torch_linears"]

logger = logging.getLogger(__name__)

#: how the frozen towers' linear layers may run on a CPU (:func:`resolve_cpu_linear`)
CPU_LINEAR_CHOICES = ("auto", "onednn", "torch")
CpuLinear = Literal["auto", "onednn", "torch"]


# --------------------------------------------------------------------------- the choice

def optimize_for_cpu(model: "TGCNet", linear: CpuLinear = "auto") -> "TGCNet":
    """Pick the kernel of the frozen CLIP towers' linear layers for this CPU, in place.

    ``linear``: ``"onednn"`` runs them through oneDNN, ``"torch"`` through ``F.linear`` (MKL;
    what a freshly built model does), ``"auto"`` picks oneDNN on AMD processors and
    ``F.linear`` elsewhere. Only frozen layers change: LoRA adapters and every trainable
    module keep ``F.linear``, and no parameter, state-dict name or trainable set changes.
    The kernel is chosen per call, so on a GPU, under autocast, for dtypes other than
    float32 and inside ``torch.compile`` the model runs ``F.linear`` whatever was picked.
    Outputs agree with the plain path to float rounding. Calling it again with the same
    choice changes nothing; another choice switches. Returns ``model``.
    """
    onednn = resolve_cpu_linear(linear)
    image, text = model.sse.clip_visual, model.date.text_tower
    if onednn:
        # the image tower chose its attention when built; a text tower without LoRA still holds
        # MultiheadAttention, which hands its raw weights to one fused op no Linear reaches
        project_attention(text)
        for tower in (image, text):
            use_onednn_linears(tower, only=tower.frozen_linears())
    else:
        for tower in (image, text):
            use_torch_linears(tower)
    # kept text encodings were made with the other kernel: serving them would make a result
    # depend on history, to the last bit
    model.date.clear_caches()
    return model


def resolve_cpu_linear(choice: str) -> bool:
    """Whether ``optimize_for_cpu(linear=choice)`` means oneDNN on this machine.

    ``"onednn"``: yes; ``"torch"``: no (``F.linear``, i.e. MKL); ``"auto"``: on AMD processors
    only, where oneDNN's AVX-512 code beats MKL's AVX2 fallback, and only if this PyTorch
    build has a working oneDNN linear.
    """
    if choice not in CPU_LINEAR_CHOICES:
        raise ValueError(f"optimize_for_cpu: linear must be one of {', '.join(map(repr, CPU_LINEAR_CHOICES))}, "
                         f"got {choice!r}")
    if choice == "auto":
        return cpu_vendor() == "amd" and onednn_linear_available()
    return choice == "onednn"


def cpu_vendor() -> str:
    """``"amd"``, ``"intel"`` or ``"other"``: from /proc/cpuinfo on Linux, else the platform string."""
    text = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = next((line for line in f if line.startswith("vendor_id")), "")
    except OSError:
        pass
    text = (text or platform.processor() or "").lower()
    if "amd" in text:
        return "amd"
    return "intel" if "intel" in text else "other"


# --------------------------------------------------------------------------- the oneDNN kernel

def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


@functools.lru_cache(maxsize=None)
def onednn_linear_available() -> bool:
    """Whether this PyTorch build has oneDNN's linear and it agrees with ``F.linear``.

    The op is PyTorch-internal (torch.compile's CPU backend uses it), so it is probed once
    rather than trusted: a build without it, or one where it misbehaves, keeps ``F.linear``.
    """
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return False
    try:
        g = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(*shape, generator=g) for shape in ((2, 5, 16), (24, 16), (24,)))
        with torch.no_grad():
            ok = torch.allclose(_onednn_linear(x, w, b), F.linear(x, w, b), atol=1e-5, rtol=1e-4)
    except Exception as exc:  # any failure of an internal op means: do not use it
        logger.info("oneDNN linear unavailable (%s); using F.linear", exc)
        return False
    if not ok:
        logger.warning("oneDNN linear disagrees with F.linear on this build; using F.linear")
    return ok


class _FrozenWeightLinear(torch.autograd.Function):
    """y = x W^T + b through oneDNN, with the input gradient (the only one) through oneDNN too."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        ctx.save_for_backward(weight)
        return _onednn_linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (weight,) = ctx.saved_tensors
        return _onednn_linear(grad, weight.t(), None), None, None


class OneDNNLinear(nn.Linear):
    """``nn.Linear`` (same parameters, same state-dict names) whose frozen CPU float32 calls use oneDNN.

    The choice is made per call, so the module follows ``.to("cuda")``, autocast, or a
    later ``requires_grad_(True)`` without being rebuilt.
    """

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "OneDNNLinear":
        """Share ``linear``'s parameters (no copy): the swap keeps loaded weights and their memory."""
        return _sharing_parameters(cls, linear)

    def _frozen_cpu_float32(self, x: torch.Tensor) -> bool:
        frozen = not self.weight.requires_grad and (self.bias is None or not self.bias.requires_grad)
        # under torch.compile inductor picks its own kernels (and needs the plain op to trace)
        return (frozen and x.device.type == "cpu" and x.dtype == torch.float32
                and self.weight.dtype == torch.float32 and x.numel() > 0
                and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling()
                and onednn_linear_available())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._frozen_cpu_float32(x):
            return F.linear(x, self.weight, self.bias)
        if torch.is_grad_enabled() and x.requires_grad:
            return _FrozenWeightLinear.apply(x, self.weight, self.bias)
        return _onednn_linear(x, self.weight, self.bias)


# --------------------------------------------------------------------------- swapping layers

def _sharing_parameters(cls: type, linear: nn.Linear) -> nn.Linear:
    """A ``cls`` holding ``linear``'s own parameters and mode: built on the meta device, nothing is copied."""
    new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
    new.weight = linear.weight
    new.bias = linear.bias
    new.train(linear.training)
    return new


def _swap(module: nn.Module, pick: Callable[[nn.Module], bool], make: Callable[[nn.Linear], nn.Linear]) -> int:
    """Replace every child inside ``module`` that ``pick`` accepts by ``make(child)``; returns how many."""
    swaps = [(parent, name, child) for parent in module.modules()
             for name, child in parent.named_children() if pick(child)]
    for parent, name, child in swaps:
        setattr(parent, name, make(child))
    return len(swaps)


def use_onednn_linears(module: nn.Module, only: Optional[Iterable[nn.Module]] = None) -> int:
    """Swap every plain ``nn.Linear`` inside ``module`` (of those in ``only``, if given) for
    :class:`OneDNNLinear`, in place; returns how many were swapped.

    Only the exact type is swapped: a subclass (e.g. MultiheadAttention's ``out_proj``, which
    its owner never calls) and an already-swapped layer are left alone.
    """
    allowed = None if only is None else {id(m) for m in only}
    return _swap(module, lambda m: type(m) is nn.Linear and (allowed is None or id(m) in allowed),
                 OneDNNLinear.from_linear)


def use_torch_linears(module: nn.Module) -> int:
    """Undo :func:`use_onednn_linears`: every :class:`OneDNNLinear` inside ``module`` back to a
    plain ``nn.Linear`` sharing its parameters. Returns how many were swapped back."""
    return _swap(module, lambda m: type(m) is OneDNNLinear, lambda m: _sharing_parameters(nn.Linear, m))


def has_onednn_linears(module: nn.Module) -> bool:
    """Whether any linear layer inside ``module`` is a :class:`OneDNNLinear`."""
    return any(isinstance(m, OneDNNLinear) for m in module.modules())
