"""Descriptions out of a chat model's reply, which need not have the shape it was asked for.

Chat models wrap JSON in code fences even when told not to, repeat themselves, and an
endpoint may botch the completion object itself; each of these is either tolerated here or
becomes a :class:`MalformedReplyError` naming the concept and quoting the reply's start.
"""
from __future__ import annotations

import json
import re
from typing import Any

from .generation_errors import MalformedReplyError

__all__ = ["parse_descriptions", "reply_descriptions"]

_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


def parse_descriptions(content: str, concept: str, k: int, finish_reason: str | None = None) -> list[str]:
    """Descriptions from a reply: `{"descriptions": [...]}` (a bare list is accepted too).

    Code fences are stripped because chat models add them even when told not to; anything
    else that is not that shape is an error naming the concept.
    """
    fenced = _FENCE.match(content)
    text = fenced.group(1) if fenced else content.strip()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        cut = " (finish_reason=length: the reply was cut off)" if finish_reason == "length" else ""
        raise MalformedReplyError(f"concept {concept!r}: the reply is not JSON ({exc.msg} at char {exc.pos}){cut}; "
                                  f"it starts {text[:80]!r}") from None
    items = data.get("descriptions") if isinstance(data, dict) else data
    if not isinstance(items, list) or not all(isinstance(d, str) for d in items):
        raise MalformedReplyError(f"concept {concept!r}: expected {{\"descriptions\": [string, ...]}}, "
                                  f"got {text[:80]!r}")
    out = _distinct(items)
    if not out:
        raise MalformedReplyError(f"concept {concept!r}: the reply holds no non-empty description")
    return out[:k]


def _distinct(items: list[str]) -> list[str]:
    """Whitespace-collapsed, non-empty, first of each case-insensitive repeat: a model's k "different" answers."""
    seen: set[str] = set()
    out: list[str] = []
    for d in (" ".join(d.split()) for d in items):
        if d and d.lower() not in seen:
            seen.add(d.lower())
            out.append(d)
    return out


def reply_descriptions(response: Any, concept: str, k: int) -> list[str]:
    """Dig the message text out of a chat completion whose shape the endpoint may have botched."""
    try:
        choice = response.choices[0]
        content = choice.message.content
        finish = getattr(choice, "finish_reason", None)
    except (AttributeError, IndexError, TypeError, KeyError):
        raise MalformedReplyError(f"concept {concept!r}: the response has no choices[0].message.content") from None
    if not isinstance(content, str) or not content.strip():
        raise MalformedReplyError(f"concept {concept!r}: empty reply (finish_reason={finish!r})")
    return parse_descriptions(content, concept, k, finish)
