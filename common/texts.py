"""Caption and query text validation, shared by every text encoder and the cross-encoder."""

from __future__ import annotations

from typing import Sequence


def check_texts(texts: Sequence[str]) -> list[str]:
    """Rejects what no text encoder can embed meaningfully, naming the index.

    Over-long texts are not an error: each encoder truncates to its context length.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not a single string; wrap it in a list")
    out = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__}, expected str")
        if not text.strip():
            raise ValueError(f"texts[{i}] is empty or whitespace only")
        out.append(text)
    return out
