"""Where one training step's time goes, per phase and per op: torch.profiler over a member's step.

    python -m benchmarks.speed.profile_step [--member tgcnet/train] [--preset tgcnet-vit-b16] [--batch 8]
                                            [--size 224] [--threads 2] [--device cpu] [--amp bf16] [--top 15]
                                            [--out FILE.json]

Why: the speed report's parts table times the forward of each part by hooks; what a training
step spends outside them (loss, backward, optimizer) it cannot split. Here the step is the
member's own (:mod:`.members`), built the same way, with each phase in a ``record_function``
range, and the profiler's ops are summed per phase by their self time.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, record_function

from .harness import Comparison, Member, Settings, setup_process
from .members import batch, create_tgcnet, method_core_loss

PHASES = ("forward", "loss", "backward", "optimizer")


def phased_step(member: Member, comparison: Comparison, settings: Settings, device: torch.device,
                fused: Optional[bool] = None):
    """The member's training step with its phases named (``fused``: AdamW's flag); returns (step, model)."""
    model, _ = create_tgcnet(member, comparison, settings, device)
    images, masks, captions = batch(comparison, device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=fused)
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(settings.amp)):
            with record_function("forward"):
                out = (model(images, captions, return_aux=True) if member.model == "tgcnet"
                       else method_core_loss(model, images, captions))
            with record_function("loss"):
                loss = (out if member.model != "tgcnet" else
                        F.binary_cross_entropy_with_logits(out.logits.float(), masks) + sum(out.aux_losses.values()))
        with record_function("backward"):
            loss.backward()
        with record_function("optimizer"):
            optimizer.step()
    return step, model


def phase_of(event, ranges: list) -> Optional[str]:
    for name, start, end in ranges:
        if start <= event.time_range.start and event.time_range.end <= end:
            return name
    return None


def summarize(prof, top: int) -> dict[str, Any]:
    """Wall time of each phase and the ops with the most self time inside it."""
    events = prof.events()
    ranges = [(e.name, e.time_range.start, e.time_range.end) for e in events if e.name in PHASES]
    # the autograd engine runs CPU backward ops on the calling thread, inside the "backward" range
    out: dict[str, Any] = {"phases_s": {n: (e - s) / 1e6 for n, s, e in ranges}}
    by_phase: dict[str, dict[str, list[float]]] = {}
    for e in events:
        if e.name in PHASES:
            continue
        phase = phase_of(e, ranges) or "other"
        row = by_phase.setdefault(phase, {}).setdefault(e.name, [0.0, 0])
        row[0] += e.self_cpu_time_total / 1e6
        row[1] += 1
    out["top_ops"] = {phase: [{"op": name, "self_s": round(v[0], 4), "calls": v[1]}
                              for name, v in sorted(ops.items(), key=lambda kv: -kv[1][0])[:top]]
                      for phase, ops in by_phase.items()}
    return out


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--member", default="tgcnet/train", choices=["tgcnet/train", "method_core/train"])
    p.add_argument("--preset", default="tgcnet-vit-b16")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", choices=["bf16"], default=None)
    p.add_argument("--fused-adamw", action="store_true", help="torch.optim.AdamW(fused=True)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--out", default=None, help="also write the summary as JSON here")
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    settings = Settings(preset=args.preset, device=args.device, threads=args.threads, amp=args.amp)
    device = setup_process(settings)
    model_name, mode = args.member.split("/")
    member = Member(model_name, mode)
    comparison = Comparison("profile", "profile", (member,), args.batch, args.size)
    step, _ = phased_step(member, comparison, settings, device, fused=True if args.fused_adamw else None)
    for _ in range(args.warmup):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    result = {"member": args.member, "preset": args.preset, "batch": args.batch, "size": args.size,
              "threads": torch.get_num_threads(), "device": args.device, "amp": args.amp,
              "fused_adamw": args.fused_adamw, **summarize(prof, args.top)}
    print(json.dumps(result["phases_s"]))
    for phase, ops in result["top_ops"].items():
        print(f"-- {phase}")
        for op in ops:
            print(f"   {op['self_s']:8.4f} s  {op['calls']:5d}  {op['op']}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
