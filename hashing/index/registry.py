"""The index kinds by name: what ``create_index`` and the loader dispatch on.

Its own module so that :mod:`.base` (the interface, whose ``save``/``load`` call the loader) and
:mod:`.io` (the loader, which looks kinds up here) do not import each other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import BinaryIndex

_REGISTRY: dict[str, type["BinaryIndex"]] = {}


def register_index(cls: type["BinaryIndex"]) -> type["BinaryIndex"]:
    """Class decorator: makes ``cls`` creatable and loadable by its ``kind`` name."""
    if not getattr(cls, "kind", None):
        raise TypeError(f"{cls.__name__} must set a class attribute `kind`")
    _REGISTRY[cls.kind] = cls
    return cls


def available_indexes() -> list[str]:
    return sorted(_REGISTRY)


def index_class(kind: str) -> type["BinaryIndex"]:
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise ValueError(f"unknown index kind {kind!r}; available: {', '.join(available_indexes())}") from None
