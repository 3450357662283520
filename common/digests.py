"""Content fingerprints of files: one SHA-256 reader for every place that names a file by its bytes.

Users: the folder indexer (a file's identity, so that a touched file with the same content keeps
its id), the store's commit records (a chunk file changed after it was written is refused) and the
lite encoder's ONNX cache key (graphs exported from other weights are never loaded).
"""

from __future__ import annotations

import hashlib
import os


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of the file's bytes, read in 1 MiB blocks (memory stays flat for any size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
