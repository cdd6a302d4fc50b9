"""The prompt templates (prompts/templates/*.txt) and their hash.

The hash goes into each cache entry's provenance: a cached description is only reused when
it was produced by the very same template text, so editing a template regenerates its
descriptions on the next run instead of silently mixing two prompt versions.
"""
from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .concepts import concept_kind, concept_label

__all__ = ["PromptTemplates", "load_templates", "render_messages"]


@dataclass(frozen=True)
class PromptTemplates:
    """A system message and a user message with `$concept`, `$kind` and `$k` placeholders."""

    system: str
    user: str

    def __post_init__(self) -> None:
        for name in ("concept", "kind", "k"):
            if f"${name}" not in self.user and f"${{{name}}}" not in self.user:
                raise ValueError(f"user template lacks the ${name} placeholder")

    @property
    def text(self) -> str:
        """The exact text that is hashed: both templates with their role headers."""
        return f"[system]\n{self.system}\n[user]\n{self.user}"

    @property
    def hash(self) -> str:
        """sha256 of `text`, prefixed with the algorithm so another can be introduced later."""
        return "sha256:" + hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def load_templates(directory: str | Path | None = None) -> PromptTemplates:
    """Read system.txt and user.txt from `directory` (default: the shipped templates)."""
    if directory is None:
        root = resources.files(__package__) / "templates"
        return PromptTemplates(system=(root / "system.txt").read_text("utf-8"),
                               user=(root / "user.txt").read_text("utf-8"))
    root_path = Path(directory)
    try:
        return PromptTemplates(system=(root_path / "system.txt").read_text("utf-8"),
                               user=(root_path / "user.txt").read_text("utf-8"))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"template directory {root_path} must hold system.txt and user.txt: {exc}") from None


def render_messages(templates: PromptTemplates, concept: str, k: int) -> list[dict[str, str]]:
    """Chat messages asking for `k` descriptions of one concept key."""
    user = string.Template(templates.user).substitute(concept=concept_label(concept), kind=concept_kind(concept), k=k)
    return [{"role": "system", "content": templates.system.strip()}, {"role": "user", "content": user.strip()}]
