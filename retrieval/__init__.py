"""Two-stage image-text retrieval: encoders, binary hash recall, reranking."""

from .encoders import Encoder, load_encoder

__all__ = ["Encoder", "load_encoder"]
