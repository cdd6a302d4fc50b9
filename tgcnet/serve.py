"""``tgcnet serve``: a web page to try a trained model: upload an image, type a caption, see the mask.

    from tgcnet.serve import build_app, serve
    serve("runs/demo/run")                    # http://127.0.0.1:7860, until Ctrl+C
    build_app("runs/demo/run").launch()       # the same page, launched by the caller

The page is a Gradio app over :func:`tgcnet.segment`: it takes PNG, JPEG, TIFF or DICOM files (a
file upload, since browsers cannot show DICOM), or one of the embedded sample's test images with
its caption and ground truth, and shows the overlay, the 0/255 mask, the foreground share, the
location words as the caption was read, and Dice when a ground-truth mask is given. A bad upload
shows the library's one-line error on the page; nothing else (a bug) shows more than one generic
line, and its traceback goes to the server's stderr.

It is meant for one machine or a hospital network that may be offline: it binds to loopback
unless told otherwise, never opens a public share link, caps uploads, sends no analytics and uses
system fonts, so the page loads nothing from outside. Gradio is the ``serve`` extra:
``pip install "tgcnet[serve]"``.
"""
from __future__ import annotations

import functools
import math
import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

if TYPE_CHECKING:
    import gradio as gr

    from tgcnet.segmentation import Segmentation

__all__ = ["build_app", "serve", "segment_upload", "sample_examples", "DEFAULT_HOST", "DEFAULT_PORT"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
_INSTALL = 'pip install "tgcnet[serve]"'
_INTERNAL_ERROR = "segmentation failed with an internal error; the server's log has the details"
_NO_IMAGE = "no image: upload one (PNG, JPEG, TIFF or DICOM) or pick a sample below"
#: a caption the model reads at start, to prove the checkpoint segments before the page opens
_WARMUP_CAPTION = "pulmonary infection."

Outputs = tuple[Optional[np.ndarray], Optional[np.ndarray], str]


def _require_gradio() -> Any:
    """The gradio module, or an ImportError naming the extra that installs it.

    Analytics are switched off before the import: Gradio reads the variable at call time in
    several places, not only through ``Blocks(analytics_enabled=False)``.
    """
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        import gradio as gr
    except ImportError as exc:
        raise ImportError(f"the web page needs gradio ({exc.name} is missing): {_INSTALL}") from exc
    return gr


# --------------------------------------------------------------------------- the handler

def _without_folders(message: str, *paths: Optional[str]) -> str:
    """The message with the upload folders removed: Gradio keeps each upload under a hashed temporary
    folder, which tells the user nothing; the file's own name does."""
    for path in paths:
        if path:
            message = message.replace(str(Path(path).parent) + os.sep, "")
    return message


def _report(result: "Segmentation", dice: Optional[float]) -> str:
    lines = [f"Foreground: {100 * result.foreground:.1f}% of the image",
             f"Location words: {result.describe_location()}"]
    if dice is not None:
        lines.append(f"Dice against the ground truth: {dice:.4f}")
    return "\n".join(lines)


def _dice(mask: np.ndarray, ground_truth: str, image: str) -> float:
    """Dice as ``tgcnet predict`` computes it, after the same check that the mask fits the image."""
    import torch

    from tgcnet.engine.metrics import dice_iou
    from tgcnet.engine.prediction import _read_mask

    truth = _read_mask(Path(ground_truth), mask.shape, Path(image))
    dice, _ = dice_iou(torch.from_numpy(mask)[None], torch.from_numpy(truth > 0)[None])
    return float(dice[0])


def segment_upload(model: Any, image: Optional[str], caption: Optional[str], ground_truth: Optional[str] = None,
                   *, device: str = "auto", tta: str = "none") -> Outputs:
    """What the page's button runs: ``(overlay, mask 0/255, report)`` of one uploaded image and caption.

    ``model`` is what :func:`tgcnet.segment` takes (a run directory is loaded once and kept).
    A refused input gives ``(None, None, error)`` with the library's message, so the page clears
    the previous result rather than leave it beside a new error; an unexpected failure gives one
    generic line and prints its traceback to stderr, so no internals reach the browser.
    """
    import tgcnet

    if not image:
        return None, None, f"Error: {_NO_IMAGE}"
    try:
        result = tgcnet.segment(model, image, caption or "", device=device, tta=tta)
        dice = _dice(result.mask, ground_truth, image) if ground_truth else None
    except (ValueError, FileNotFoundError, ImportError) as exc:   # DataError is a ValueError
        # ImportError: a DICOM upload on a server without the dicom extra; the message names the fix
        return None, None, f"Error: {_without_folders(str(exc), image, ground_truth)}"
    except Exception:
        print("tgcnet serve: segmentation failed:", file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
        return None, None, f"Error: {_INTERNAL_ERROR}"
    return result.overlay, result.mask.astype(np.uint8) * 255, _report(result, dice)


# --------------------------------------------------------------------------- the page

def sample_examples() -> list[list[str]]:
    """``[image, caption, ground-truth mask]`` of the embedded sample's test images, for one-click
    examples; empty when the package was installed without its sample (the page works without)."""
    from tgcnet.data import sample_root
    from tgcnet.engine.prediction import read_captions

    try:
        test = sample_root() / "test"
    except FileNotFoundError:
        return []
    items = read_captions(test / "images", test / "prompts.csv", masks=test / "masks")
    return [[str(item.image), item.caption, str(item.mask)] for item in items]


def _offline_theme(gr: Any) -> Any:
    """Gradio's default look with system fonts: no font is fetched, so an offline network's page
    renders without waiting on a font server."""
    Font = gr.themes.Font
    return gr.themes.Default(font=[Font("system-ui"), Font("Segoe UI"), Font("Helvetica"), Font("sans-serif")],
                             font_mono=[Font("ui-monospace"), Font("Consolas"), Font("monospace")])


def _launch_defaults(gr: Any, max_upload_mb: float) -> dict[str, Any]:
    """What every launch of the page gets unless the caller overrides it: loopback, no share link,
    the upload cap, the offline theme, no server-side rendering (it needs Node) and no Gradio
    banner (it suggests share=True)."""
    return {"server_name": DEFAULT_HOST, "share": False, "max_file_size": int(max_upload_mb * 1024 * 1024),
            "theme": _offline_theme(gr), "ssr_mode": False, "quiet": True}


def _layout(gr: Any, handler: Any) -> None:
    gr.Markdown("## tgcnet: text-guided segmentation\n"
                "Upload an image (PNG, JPEG, TIFF or DICOM), describe what to segment, and press **Segment**. "
                "A ground-truth mask is optional: with one, Dice is shown.")
    with gr.Row():
        with gr.Column(scale=1):
            image = gr.File(label="Image (PNG, JPEG, TIFF or DICOM)", type="filepath", elem_id="tgcnet-image")
            caption = gr.Textbox(label="Caption", lines=2, elem_id="tgcnet-caption",
                                 placeholder="bilateral pulmonary infection, lower left lung and lower right lung.")
            truth = gr.File(label="Ground-truth mask (optional)", type="filepath", elem_id="tgcnet-truth")
            button = gr.Button("Segment", variant="primary", elem_id="tgcnet-submit")
        with gr.Column(scale=2):
            with gr.Row():
                # PNG: the default WebP is lossy and would blur the mask; no share button: it
                # uploads the picture to Hugging Face, never what a patient's image should do
                overlay = gr.Image(label="Overlay (the mask's outline in red)", type="numpy", format="png",
                                   interactive=False, height=360, buttons=["download", "fullscreen"],
                                   elem_id="tgcnet-overlay")
                mask = gr.Image(label="Mask", type="numpy", format="png", interactive=False, height=360,
                                buttons=["download", "fullscreen"], elem_id="tgcnet-mask")
            report = gr.Textbox(label="Result", lines=3, interactive=False, elem_id="tgcnet-result")
    examples = sample_examples()
    if examples:
        gr.Examples(examples, inputs=[image, caption, truth], label="Samples (QaTa-COV19 test images)",
                    elem_id="tgcnet-samples")
    inputs, outputs = [image, caption, truth], [overlay, mask, report]
    # one queue for the button and Enter: one image at a time, as the model is shared (and on a
    # CPU, parallel requests only slow each other down)
    button.click(handler, inputs=inputs, outputs=outputs, api_name="segment", concurrency_id="segment")
    caption.submit(handler, inputs=inputs, outputs=outputs, api_name=False, concurrency_id="segment")


def build_app(checkpoint: str | Path, *, max_upload_mb: float = 50.0, device: str = "auto",
              tta: str = "none") -> "gr.Blocks":
    """The page over ``checkpoint`` (a run directory, a saved model directory or a Hub id).

    The model is loaded and run once on a blank image here, so a missing or broken checkpoint
    fails before any port opens. Gradio 6 takes the theme and upload cap at launch rather than
    construction, so they are bound to the returned app's ``launch`` with the loopback and no-share
    defaults: ``build_app(...).launch()`` is as closed as :func:`serve` (keywords still override).
    """
    import tgcnet

    if not 0 < max_upload_mb < math.inf:
        raise ValueError(f"--max-upload-mb must be a positive number, got {max_upload_mb}")
    gr = _require_gradio()
    tgcnet.segment(checkpoint, np.zeros((8, 8), np.uint8), _WARMUP_CAPTION, device=device, tta=tta)
    handler = functools.partial(segment_upload, checkpoint, device=device, tta=tta)
    # uploads are patients' images: Gradio's copies are deleted after an hour rather than kept
    with gr.Blocks(title="tgcnet", analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        _layout(gr, handler)
    app.launch = functools.partial(app.launch, **_launch_defaults(gr, max_upload_mb))
    return app


def serve(checkpoint: str | Path, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, max_upload_mb: float = 50.0,
          device: str = "auto", tta: str = "none") -> None:
    """Build the page, print its address once it answers, and serve until interrupted."""
    app = build_app(checkpoint, max_upload_mb=max_upload_mb, device=device, tta=tta)
    _, url, _ = app.launch(server_name=host, server_port=port, prevent_thread_lock=True)
    exposed = "" if host in ("127.0.0.1", "localhost", "::1") else \
        f" (bound to {host}: reachable from other machines, with no login)"
    print(f"tgcnet serve: {url}{exposed}; Ctrl+C stops it", flush=True)
    app.block_thread()
