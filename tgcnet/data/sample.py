"""Where the embedded QaTa-COV19 demo sample lives (see sample/README.md for provenance)."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["sample_root"]


def sample_root() -> Path:
    """Folder of the embedded 48-triple sample, in the "simple" layout (train 32, valid 8, test 8).

    Located through importlib.resources so it works from an installed wheel as from a clone.
    """
    root = Path(str(resources.files("tgcnet.data").joinpath("sample")))
    if not (root / "train" / "prompts.csv").is_file():
        raise FileNotFoundError(f"embedded sample not found at {root}: the package was installed without its "
                                "data files (setup.cfg package_data tgcnet: data/sample/...)")
    return root
