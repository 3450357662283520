"""Moved to :mod:`common.images` (the bottom layer, which hashing/ and rerank/ import without loading
the Retriever); the old name re-exports it for the code that still imports ``retrieval.images``."""

from common.images import MAX_ASPECT, MAX_SIDE, ImageInput, ImageLoadError, describe, load_image  # noqa: F401
