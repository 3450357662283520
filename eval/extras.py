"""Packages that only evaluation needs (the ``eval`` extra), and one message when one is missing.

The library (common/, hashing/, rerank/, retrieval/) installs without them; eval/ imports each
where it is used, through :func:`require`, so a missing one says which extra brings it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

INSTALL_HINT = "pip install 'crossmodal-retrieval[eval]' (in a clone: pip install -e '.[eval]')"


def require(module: str, needed_for: str) -> ModuleType:
    """Imports ``module`` or raises ImportError naming it, what needed it and the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{needed_for} needs the package {module.split('.')[0]!r}, part of the eval extra: "
                          f"{INSTALL_HINT}") from e
