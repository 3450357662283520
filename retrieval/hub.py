"""Moved to :mod:`common.hub` (the bottom layer, which hashing/ and rerank/ import without loading
the Retriever); the old name re-exports it for the code that still imports ``retrieval.hub``."""

from common.hub import (  # noqa: F401
    ModelNotAvailableError, hub_kwargs, is_offline, not_available_message, push_folder, resolve_pretrained_dir,
)
