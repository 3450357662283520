"""Moved to :mod:`common.atomic` (the bottom layer, which hashing/ and rerank/ import without loading
the Retriever); the old name re-exports it for the code that still imports ``retrieval.atomic``."""

from common.atomic import atomic_write_dir, atomic_write_file, fsync_dir, fsync_tree, write_json  # noqa: F401
