"""Per-module parameter counts: the paper's claim is about trainable parameters."""
from __future__ import annotations

from typing import Any

from torch import nn

# (row name, attribute path, which parameters of it) in the order of the method; "frozen" and
# "adapters" split a tower by what it reports as frozen (``frozen_state_names``: LoRA is not)
MODULE_ROWS: list[tuple[str, str, str]] = [
    ("sse.clip_visual", "sse.clip_visual", "all"),
    ("sse.cnn", "sse.cnn", "all"),
    ("sse.fusion", "sse.fusion", "all"),
    ("date.text_tower", "date.text_tower", "frozen"),
    ("date.lora", "date.text_tower", "adapters"),
    ("date.knowledge_fusion", "date.knowledge_fusion", "all"),
    ("vlcm", "vlcm", "all"),
    ("decoder", "decoder", "all"),
]


def _get(model: nn.Module, path: str) -> nn.Module | None:
    node: Any = model
    for part in path.split("."):
        node = getattr(node, part, None)
        if node is None:
            return None
    return node


def _parameters(module: nn.Module, which: str) -> list[tuple[str, nn.Parameter]]:
    params = list(module.named_parameters())
    if which == "all":
        return params
    frozen = set(module.frozen_state_names())
    return [(n, p) for n, p in params if (n in frozen) == (which == "frozen")]


def count_parameters(model: nn.Module) -> list[dict[str, Any]]:
    """Rows ``{"module", "trainable", "total", "frozen"}`` per part, then a ``total`` row.

    Every parameter is counted in exactly one row; anything outside the known parts is
    reported as ``other`` rather than silently dropped.
    """
    rows, seen = [], set()
    for row, path, which in MODULE_ROWS:
        module = _get(model, path)
        params = [] if module is None else _parameters(module, which)
        seen.update(id(p) for _, p in params)
        total = sum(p.numel() for _, p in params)
        trainable = sum(p.numel() for _, p in params if p.requires_grad)
        rows.append({"module": row, "trainable": trainable, "total": total,
                     "frozen": total > 0 and trainable == 0})
    other = [p for p in model.parameters() if id(p) not in seen]
    if other:
        total = sum(p.numel() for p in other)
        trainable = sum(p.numel() for p in other if p.requires_grad)
        rows.append({"module": "other", "trainable": trainable, "total": total, "frozen": trainable == 0})
    rows.append({"module": "total", "trainable": sum(r["trainable"] for r in rows),
                 "total": sum(r["total"] for r in rows), "frozen": False})
    return rows


def format_parameter_table(rows: list[dict[str, Any]], title: str = "") -> str:
    """A markdown table, readable in a terminal too."""
    lines = [f"{title}\n" if title else "",
             "| module | trainable | total | status |", "|---|---:|---:|---|"]
    for r in rows:
        status = "" if r["module"] == "total" else ("frozen" if r["frozen"] else "trainable")
        lines.append(f"| {r['module']} | {r['trainable']:,} | {r['total']:,} | {status} |")
    return "\n".join(line for line in lines if line != "") + "\n"
