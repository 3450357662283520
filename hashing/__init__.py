"""Stage 1: hash learners (float features -> packed binary codes) and binary indexes."""

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
from .mgsgh import MGSGHHasher
from .uddh import UDDHHasher

__all__ = [
    "ContrastiveHasher",
    "Hasher",
    "ITQHasher",
    "LSHHasher",
    "MGSGHHasher",
    "UDDHHasher",
    "available_methods",
    "create_hasher",
    "hasher_class",
    "register_hasher",
]
