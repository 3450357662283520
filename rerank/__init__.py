"""Stage 2: rerankers behind one interface, ``score(query, candidates) -> scores``.

``create_reranker(name)``: ``float`` (exact cosine on stored vectors), ``cross`` (the shipped
offline cross-encoder), ``blip2`` (transformers ``Blip2ForImageTextRetrieval``, ITM + ITC as LAVIS),
``rewrite`` (an LLM rewrites the text query; SmolLM2 from pip, optional LoRA adapter).
"""

from .base import (
    Candidates, Query, Reranker, available_rerankers, create_reranker, register_reranker, reranker_class,
    reranker_from_config,
)
from .blip2 import Blip2Reranker
from .cross_encoder import CrossEncoderReranker
from .float_rescore import FloatReranker
from .fusion import fuse
from .rewrite import QueryRewriter, RewriteReranker

__all__ = [
    "Blip2Reranker", "Candidates", "CrossEncoderReranker", "FloatReranker", "Query", "Reranker", "available_rerankers",
    "QueryRewriter", "RewriteReranker", "create_reranker", "fuse", "register_reranker", "reranker_class",
    "reranker_from_config",
]
