"""Command-line settings for a named component: ``--reranker-arg cross.batch_size=64``.

Every command that passes constructor arguments through to a hasher, a reranker or an index
parses them here, so the values mean the same everywhere: a value that is JSON is decoded (``64``,
``0.5``, ``true``, ``null``, ``[1, 2]``, ``"text"``), anything else stays the string it is
(``adapter=rewriter-lora``).
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Iterable


def setting_value(text: str) -> Any:
    """JSON when the text is JSON, else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def key_setting(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> ``(key, value)``; an argparse ``type=`` (a malformed one is a usage error)."""
    key, sep, value = text.partition("=")
    if not (sep and key.strip() and value):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), setting_value(value)


def named_setting(text: str) -> tuple[str, str, Any]:
    """``NAME.KEY=VALUE`` -> ``(name, key, value)``; an argparse ``type=``."""
    key, sep, value = text.partition("=")
    name, dot, field = key.partition(".")
    if not (sep and dot and name.strip() and field.strip() and value):
        raise argparse.ArgumentTypeError(f"expected NAME.KEY=VALUE, got {text!r}")
    return name.strip(), field.strip(), setting_value(value)


def by_name(settings: Iterable[tuple[str, str, Any]]) -> dict[str, dict[str, Any]]:
    """``[(name, key, value), ...]`` -> ``{name: {key: value}}``; a later repeat of a key wins."""
    out: dict[str, dict[str, Any]] = {}
    for name, key, value in settings:
        out.setdefault(name, {})[key] = value
    return out
