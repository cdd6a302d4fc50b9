"""Run-time speed-ups that depend on the machine, not on the model.

A saved config describes the method; which GEMM library is fastest is a fact about the
processor the model happens to run on (:mod:`tgcnet.kernels` explains the measurements).
So the choice is applied to a built model here, by whoever runs it (the training and
evaluation loops, the benchmarks), and is never written to ``config.json``.

    model = optimize_for_cpu(create_model("tgcnet-vit-b16"))   # oneDNN on AMD, F.linear elsewhere
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from tgcnet.kernels import CPU_LINEAR_CHOICES, resolve_cpu_linear

if TYPE_CHECKING:
    from tgcnet.model import TGCNet

__all__ = ["CPU_LINEAR_CHOICES", "optimize_for_cpu"]

CpuLinear = Literal["auto", "onednn", "torch"]


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
    if linear not in CPU_LINEAR_CHOICES:
        raise ValueError(f"optimize_for_cpu: linear must be one of {', '.join(map(repr, CPU_LINEAR_CHOICES))}, "
                         f"got {linear!r}")
    onednn = resolve_cpu_linear(linear)
    model.sse.clip_visual.set_cpu_linear(onednn)
    model.date.set_cpu_linear(onednn)
    return model
