"""What several commands share: the exit-code convention, thread setting and the metrics line."""
from __future__ import annotations

from typing import Any, Optional

__all__ = ["CommandError", "set_threads", "format_metrics"]


class CommandError(Exception):
    """A failure a command reports as one line with its own exit code.

    ``tgcnet`` exits 2 for errors only the user can fix (``ValueError`` and
    ``FileNotFoundError`` are treated so without wrapping) and 1 for failures where a
    rerun may succeed (a chat endpoint that kept answering badly).
    """

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def set_threads(threads: Optional[int]) -> None:
    """torch's CPU intra-op threads (None: leave torch's default)."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


def format_metrics(m: dict[str, Any]) -> str:
    """One line of an evaluation's metrics, per-image and pooled."""
    side = "n/a" if m.get("side_error") is None else f"{m['side_error']:.4f} over {m['side_error_n']} one-side captions"
    return (f"{m['n_images']} images: Dice {m['dice']:.4f} IoU {m['iou']:.4f} (per-image mean) | "
            f"pooled Dice {m['pooled_dice']:.4f} IoU {m['pooled_iou']:.4f} | side error {side}")
