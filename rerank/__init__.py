"""Stage 2: rerankers behind one interface, ``score(query, candidates) -> scores``.

``create_reranker(name)``: ``float`` (exact cosine on stored vectors), ``cross`` (the shipped
offline cross-encoder, :mod:`rerank.cross_encoder`), ``blip2`` (transformers
``Blip2ForImageTextRetrieval``, ITM + ITC as LAVIS, :mod:`rerank.blip2`), ``rewrite`` (an LLM
rewrites the text query; SmolLM2 from pip, optional LoRA adapter), ``vlm`` (a vision-language model's
yes/no logits over a previous stage's top ``vlm_k``, :mod:`rerank.vlm`).

Importing the package loads no torch: the model rerankers are imported when first named
(``create_reranker("cross")``) or from their own modules.
"""

from .base import (
    Candidates, Query, Reranker, available_rerankers, create_reranker, register_reranker, reranker_class,
    reranker_from_config,
)
from .float_rescore import FloatReranker
from .fusion import fuse
from .rewrite import QueryRewriter, RewriteReranker

__all__ = [
    "Candidates", "FloatReranker", "Query", "QueryRewriter", "Reranker", "RewriteReranker", "available_rerankers",
    "create_reranker", "fuse", "register_reranker", "reranker_class", "reranker_from_config",
]
