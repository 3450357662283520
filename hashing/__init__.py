"""Stage 1: hash learners (float features -> packed binary codes) and binary indexes."""

from importlib.util import find_spec

from .base import (
    Hasher,
    available_methods,
    create_hasher,
    hasher_class,
    register_hasher,
)
from .contrastive import ContrastiveHasher
from .itq import ITQHasher
from .lsh import LSHHasher

__all__ = [
    "ContrastiveHasher",
    "Hasher",
    "ITQHasher",
    "LSHHasher",
    "available_methods",
    "create_hasher",
    "hasher_class",
    "register_hasher",
]

if find_spec(f"{__name__}.uddh") is not None:  # written in parallel; registers method "uddh"
    from . import uddh  # noqa: F401
