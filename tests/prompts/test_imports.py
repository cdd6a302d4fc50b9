"""The knowledge tooling and the text modules load without torch (nor the model's other heavy deps)."""
from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "open_clip", "peft", "timm", "pandas", "safetensors")


def test_text_side_imports_no_heavy_package():
    code = ("import sys, tgcnet.prompts, tgcnet.prompts.locations, tgcnet.prompts.harvest, tgcnet.captions, "
            f"tgcnet.io; print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
