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

On a GPU the levers are others (:func:`optimize_for_cuda`): the frozen towers held in the
autocast dtype, channels_last convolutions and a compiled head, each behind its own switch.
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

__all__ = ["AMP_DTYPES", "CPU_LINEAR_CHOICES", "OneDNNLinear", "compile_trainable_head", "cpu_vendor", "frozen_dtype",
           "has_onednn_linears", "hold_frozen_in", "onednn_linear_available", "optimize_for_cpu", "optimize_for_cuda",
           "resolve_cpu_linear", "use_channels_last", "use_onednn_linears", "use_torch_linears"]

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


# --------------------------------------------------------------------------- CUDA

#: autocast dtypes by the engine's ``--amp`` spelling
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def optimize_for_cuda(model: "TGCNet", amp: Optional[str] = None, channels_last: bool = False,
                      compile_head: bool = False) -> "TGCNet":
    """Ready a built model for a GPU, in place; each lever is its own switch. Returns ``model``.

    ``amp`` (``"bf16"``, ``"fp16"``; None or ``"none"`` leaves the weights alone): the frozen
    CLIP towers are held in that dtype (:func:`hold_frozen_in`), so a run under that autocast
    keeps no float32 copy of ~150M frozen weights and casts none of them per call.
    ``channels_last``: the CNN branch, fusion and decoder convolutions in channels_last
    (:func:`use_channels_last`). ``compile_head``: torch.compile of fusion, VLCM and decoder
    (:func:`compile_trainable_head`). Nothing here moves the model; call it before or after ``.to("cuda")``
    (before: the GPU never sees the float32 frozen weights). The engine applies it with the
    run's ``amp`` (:func:`tgcnet.engine.loading.prepare_for_device`); the other two stay off
    until measured on a GPU.
    """
    if amp is not None and amp != "none":
        if amp not in AMP_DTYPES:
            raise ValueError(f"optimize_for_cuda: amp must be one of none, {', '.join(AMP_DTYPES)}; got {amp!r}")
        hold_frozen_in(model, AMP_DTYPES[amp])
    if channels_last:
        use_channels_last(model)
    if compile_head:
        compile_trainable_head(model)
    return model


def frozen_dtype(model: "TGCNet") -> torch.dtype:
    """The dtype the frozen towers' floating-point weights are held in (float32 as built)."""
    frozen = model.frozen_state_names()
    state = model.state_dict(keep_vars=True)
    dtypes = {state[n].dtype for n in frozen if n in state and state[n].is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32


def hold_frozen_in(model: "TGCNet", dtype: torch.dtype) -> "TGCNet":
    """The frozen CLIP towers' floating-point parameters and buffers cast to ``dtype``, in place.

    Why: autocast casts a float32 weight down on every matmul and convolution (it caches only
    weights that require grad), so a frozen tower costs its float32 copy plus a cast per call.
    Held in ``dtype``, matmuls and convolutions compute exactly what autocast computed (it
    rounds the same weights the same way); norms, embeddings and layer scales, which autocast
    runs in float32, now read ``dtype``-rounded values: differences within ``dtype``'s rounding.
    Only what the towers call frozen (:meth:`TGCNet.frozen_state_names`) changes: LoRA
    adapters and every trainable module stay float32, so optimizer state and updates do too.
    The same Parameter objects are kept (their ``.data`` changes), as ``Module.to`` does.

    A tower holding ``dtype`` weights must run under autocast: called without it, it raises and
    says so, instead of failing deep inside with a dtype mismatch. Held weights cannot go back
    to float32 exactly, so asking for another dtype afterwards is refused.
    """
    current = frozen_dtype(model)
    if current == dtype:
        return model
    if current != torch.float32:
        raise ValueError(f"the frozen towers already hold {current} weights; {dtype} from those is not the model's "
                         f"float32 weights rounded once: build or load the model again")
    state = model.state_dict(keep_vars=True)
    for name in model.frozen_state_names():
        tensor = state.get(name)
        if tensor is not None and tensor.is_floating_point():
            tensor.data = tensor.data.to(dtype)
    for tower in (model.sse.clip_visual, model.date.text_tower):
        _guard_autocast(tower)
    _drop_derived_caches(model)
    return model


def _needs_autocast(module: nn.Module, args: tuple) -> None:
    device = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
    if not torch.is_autocast_enabled(device):
        raise RuntimeError(f"{type(module).__name__} holds its frozen weights in a low-precision dtype "
                           f"(optimize_for_cuda(amp=...) / hold_frozen_in): run the model under "
                           f"torch.autocast('{device}', dtype=...), i.e. with the amp it was prepared for")


def _guard_autocast(tower: nn.Module) -> None:
    if not getattr(tower, "_tgcnet_autocast_guard", False):
        tower.register_forward_pre_hook(_needs_autocast)
        tower._tgcnet_autocast_guard = True


def _drop_derived_caches(model: "TGCNet") -> None:
    """Tensors derived from the frozen weights before the cast would give other numbers than
    the cast weights now do; a result must not depend on what ran before."""
    from tgcnet.image_towers import FrozenViT

    model.date.clear_caches()
    for module in model.modules():
        if isinstance(module, FrozenViT):
            module._pos_cache.clear()   # resized positional embeddings, keyed on the input dtype only


def use_channels_last(model: "TGCNet") -> "TGCNet":
    """CNN branch, fusion and decoder weights in channels_last, in place.

    Why: cuDNN's tensor-core convolutions run NHWC; with NCHW weights every conv transposes
    its operands. A conv whose weight is channels_last returns channels_last, so the layout
    then flows through the branch. The same numbers to convolution-algorithm rounding.
    """
    for module in (model.sse.cnn, model.sse.fusion, model.decoder):
        module.to(memory_format=torch.channels_last)
    return model


#: the trainable head that :func:`compile_trainable_head` compiles, as submodule names
HEAD_MODULES = ("sse.fusion", "vlcm", "decoder")


def compile_trainable_head(model: "TGCNet", **options) -> "TGCNet":
    """``torch.compile`` (``Module.compile``, in place; ``options`` go to it) of each fusion
    module, VLCM and the decoder: the many small elementwise, norm and resize ops between
    their GEMMs fuse into few kernels. The frozen towers are left alone (their time is GEMMs
    and fused attention already) and so is DATE, whose text batch changes shape with the
    captions. Parameters, state-dict names and outputs (to float rounding) are unchanged;
    the first calls compile. Calling it again changes nothing."""
    for name in HEAD_MODULES:
        module = model.get_submodule(name)
        for part in (module if isinstance(module, nn.ModuleList) else [module]):
            if getattr(part, "_compiled_call_impl", None) is None:
                part.compile(**options)
    return model
