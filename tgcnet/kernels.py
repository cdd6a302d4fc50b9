"""Linear layers of the frozen CLIP towers through oneDNN on the CPU.

Why: PyTorch runs a float32 ``nn.Linear`` on the CPU through MKL's sgemm, and MKL picks its
AVX2 kernels on AMD processors. oneDNN, which ships inside PyTorch and already runs its CPU
convolutions, uses AVX-512 there. On this project's 2-core AMD EPYC (Zen 5) ViT-B/16's
GEMMs ran at 210-230 GFLOP/s through MKL and 450-520 GFLOP/s through oneDNN; the frozen
ViT is almost all GEMM, so it takes about half the time (the speed benchmark measures
both paths A/B). The maths is the same and only the float rounding differs (about 5e-6
relative), the same as any other change of GEMM library or of thread count.

On Intel processors MKL runs its AVX-512 code and there is nothing to win: on a 2-core
Xeon the ViT took 1.08-1.10x MKL's time through oneDNN and a training step 1-4% longer.
``"auto"`` (:func:`resolve_cpu_linear`) therefore uses oneDNN on AMD only. The choice is a
property of the machine, not of the model: it is made at run time by
:func:`tgcnet.accel.optimize_for_cpu`, never stored in a saved config.

Only layers whose weights are frozen are routed here. A frozen weight needs no weight
gradient, so the backward is one more oneDNN GEMM (``grad @ W``), and LoRA still trains
through a frozen base layer. Trainable layers, CUDA, other dtypes and autocast all keep
``F.linear``.
"""
from __future__ import annotations

import functools
import logging
import platform
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

#: how the frozen towers' linear layers may run on a CPU (:func:`resolve_cpu_linear`)
CPU_LINEAR_CHOICES = ("auto", "onednn", "torch")


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


def resolve_cpu_linear(choice: str) -> bool:
    """Whether ``choice`` means oneDNN linears in the frozen towers on this machine.

    ``"onednn"``: yes; ``"torch"``: no (``F.linear``, i.e. MKL); ``"auto"``: on AMD processors
    only, where oneDNN's AVX-512 code beats MKL's AVX2 fallback, and only if this PyTorch
    build has a working oneDNN linear.
    """
    if choice not in CPU_LINEAR_CHOICES:
        raise ValueError(f"CPU linear kernel must be one of {', '.join(map(repr, CPU_LINEAR_CHOICES))}, "
                         f"got {choice!r}")
    if choice == "auto":
        return cpu_vendor() == "amd" and onednn_linear_available()
    return choice == "onednn"


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
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        new.weight = linear.weight
        new.bias = linear.bias
        new.train(linear.training)
        return new

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


def _children_of_type(module: nn.Module, kind: type, skip: Optional[Callable[[str], bool]] = None
                      ) -> list[tuple[nn.Module, str, nn.Module]]:
    """``(parent, attribute, child)`` for every child of exactly type ``kind`` inside ``module``."""
    found = []
    for prefix, parent in module.named_modules():
        for name, child in parent.named_children():
            full = f"{prefix}.{name}" if prefix else name
            if type(child) is kind and not (skip is not None and skip(full)):
                found.append((parent, name, child))
    return found


def use_onednn_linears(module: nn.Module, skip: Optional[Callable[[str], bool]] = None) -> int:
    """Swap every plain ``nn.Linear`` inside ``module`` for :class:`OneDNNLinear`, in place.

    Subclasses (e.g. MultiheadAttention's ``out_proj``, which its owner never calls) and
    already-swapped layers are left alone, and so are layers whose qualified name ``skip``
    accepts (a LoRA adapter's own layers, which train). Returns how many were swapped.
    """
    swaps = _children_of_type(module, nn.Linear, skip)
    for parent, name, child in swaps:
        setattr(parent, name, OneDNNLinear.from_linear(child))
    return len(swaps)


def use_torch_linears(module: nn.Module) -> int:
    """Undo :func:`use_onednn_linears`: every :class:`OneDNNLinear` back to a plain ``nn.Linear``
    sharing its parameters. Returns how many were swapped back."""
    swaps = _children_of_type(module, OneDNNLinear)
    for parent, name, child in swaps:
        plain = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None, device="meta")
        plain.weight = child.weight
        plain.bias = child.bias
        plain.train(child.training)
        setattr(parent, name, plain)
    return len(swaps)


def has_onednn_linears(module: nn.Module) -> bool:
    """Whether any linear layer inside ``module`` is a :class:`OneDNNLinear`."""
    return any(isinstance(m, OneDNNLinear) for m in module.modules())
