"""The one interface of stage 2: ``score(query, candidates) -> scores``.

A reranker sees one query (a text for text->image search, an image for image->text) and the
stage-1 candidates of the other modality, and returns one score per candidate, higher = better.
What it needs of the candidates differs (float rescoring reads their vectors, BLIP-2 and the
cross-encoder read their raw content, the query rewriter re-encodes the query), so a
:class:`Candidates` carries whatever the caller has and each reranker says what it ``requires``;
missing inputs are an error naming the field, never a silent fallback.

Persistence follows the hashers: ``config.json`` names the reranker ``method`` and its settings,
so a saved :class:`retrieval.Retriever` can rebuild it (``rerankers.load_reranker``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Sequence

import numpy as np

Modality = Literal["image", "text"]
MODALITIES: tuple[str, ...] = ("image", "text")

_REGISTRY: dict[str, type["Reranker"]] = {}
#: The shipped rerankers by module. A module registers its class when imported, and is imported
#: the first time its name is asked for: BLIP-2, the cross-encoder and the VLM load torch and
#: transformers (over a second), which the float rescoring of every Retriever search does not need.
BUILTIN_MODULES: dict[str, str] = {
    "blip2": "rerank.blip2",
    "cross": "rerank.cross_encoder",
    "float": "rerank.float_rescore",
    "rewrite": "rerank.rewrite",
    "vlm": "rerank.vlm",
}


def register_reranker(cls: type["Reranker"]) -> type["Reranker"]:
    """Class decorator: makes ``cls`` creatable by its ``method`` name."""
    if not getattr(cls, "method", None):
        raise TypeError(f"{cls.__name__} must set a class attribute `method`")
    _REGISTRY[cls.method] = cls
    return cls


def available_rerankers() -> list[str]:
    return sorted(set(_REGISTRY) | set(BUILTIN_MODULES))


def reranker_class(method: str) -> type["Reranker"]:
    if method not in _REGISTRY and method in BUILTIN_MODULES:
        import importlib

        importlib.import_module(BUILTIN_MODULES[method])
    try:
        return _REGISTRY[method]
    except (KeyError, TypeError):
        raise ValueError(f"unknown reranker {method!r}; available: {', '.join(available_rerankers())}") from None


def other_modality(modality: str) -> Modality:
    if modality not in MODALITIES:
        raise ValueError(f"modality must be 'image' or 'text', got {modality!r}")
    return "text" if modality == "image" else "image"


@dataclass(frozen=True, eq=False)
class Query:
    """``content`` is a string (text query) or an image (path, PIL image or HWC array), or None
    when the caller searches by embedding only; ``embedding`` is the stage-1 encoder's float vector.
    """

    modality: Modality
    content: Any
    embedding: np.ndarray | None = None

    def __post_init__(self) -> None:
        other_modality(self.modality)
        if self.modality == "text" and self.content is not None and not (
                isinstance(self.content, str) and self.content.strip()):
            raise ValueError(f"a text query must be a non-empty string, got {self.content!r}")


@dataclass(frozen=True, eq=False)
class Candidates:
    """The stage-1 candidates of one query, all fields aligned with ``ids`` (length m).

    ``items``: raw content (captions, or image paths / PIL images); ``embeddings``: (m, dim) float
    vectors; ``stage1_scores``: stage-1 similarity, higher = better (Hamming similarity
    ``1 - 2 d / bits`` from a :class:`retrieval.Retriever`).
    """

    modality: Modality
    ids: np.ndarray
    items: Sequence[Any] | None = None
    embeddings: np.ndarray | None = None
    stage1_scores: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        other_modality(self.modality)
        ids = np.asarray(self.ids)
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"candidate ids must be a 1-D integer array, got dtype {ids.dtype} shape {ids.shape}")
        object.__setattr__(self, "ids", ids.astype(np.int64, copy=False))
        m = len(ids)
        if self.items is not None and len(self.items) != m:
            raise ValueError(f"candidates have {m} ids but {len(self.items)} items")
        if self.embeddings is not None and (np.ndim(self.embeddings) != 2 or len(self.embeddings) != m):
            raise ValueError(f"candidate embeddings must be ({m}, dim), got shape {np.shape(self.embeddings)}")
        if self.stage1_scores is not None and np.shape(self.stage1_scores) != (m,):
            raise ValueError(f"stage1_scores must have shape ({m},), got {np.shape(self.stage1_scores)}")

    def __len__(self) -> int:
        return len(self.ids)


class Reranker(ABC):
    """Re-scores stage-1 candidates. Subclasses set ``method`` and ``requires`` and implement ``score``.

    ``requires`` names what :meth:`score` reads: ``"query"`` (the query's content),
    ``"query_embedding"``, ``"items"``, ``"embeddings"``. :meth:`check` turns a missing one into a
    ValueError naming it.
    """

    method: ClassVar[str] = ""
    requires: ClassVar[frozenset[str]] = frozenset()
    #: whether it can score items of the query's own modality (image -> image "more like this")
    same_modality: ClassVar[bool] = False

    @abstractmethod
    def score(self, query: Query, candidates: Candidates) -> np.ndarray:
        """(m,) float32 scores, higher = better, aligned with ``candidates.ids``."""

    def score_batch(self, queries: Sequence[Query], candidates: Sequence[Candidates]) -> list[np.ndarray]:
        """Scores many queries; backends that batch across queries override this."""
        if len(queries) != len(candidates):
            raise ValueError(f"{len(queries)} queries but {len(candidates)} candidate lists")
        return [self.score(q, c) for q, c in zip(queries, candidates)]

    def check_batch(self, queries: Sequence[Query], candidates: Sequence[Candidates]) -> None:
        """:meth:`check` for every pair, after checking there is one candidate list per query."""
        if len(queries) != len(candidates):
            raise ValueError(f"{len(queries)} queries but {len(candidates)} candidate lists")
        for query, cands in zip(queries, candidates):
            self.check(query, cands)

    def check(self, query: Query, candidates: Candidates) -> None:
        if query.modality == candidates.modality and not self.same_modality:
            raise ValueError(f"query and candidates are both {query.modality}: a reranker scores across modalities")
        if "query" in self.requires and query.content is None:
            raise ValueError(f"reranker {self.method!r} needs the query itself (Query.content), not only its embedding")
        if "query_embedding" in self.requires and query.embedding is None:
            raise ValueError(f"reranker {self.method!r} needs the query's embedding (Query.embedding)")
        for name in ("items", "embeddings"):
            if name in self.requires and getattr(candidates, name) is None:
                raise ValueError(f"reranker {self.method!r} needs the candidates' {name} (Candidates.{name})")

    def forget(self, query: Query) -> None:
        """Drops what was cached for this query itself (features, rewrites), not for any item.

        A latency probe calls it before timing a query the batch run has already seen, so it times
        a new query against a warm gallery, which is what a long-running service answers.
        """

    def attach(self, encoder: Any) -> None:
        """Called by the Retriever with its stage-1 encoder; rerankers that re-encode (query rewriting) keep it."""

    def config(self) -> dict[str, Any]:
        """JSON-serialisable settings that :func:`create_reranker` rebuilds this reranker from."""
        return {"method": self.method}

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "method")
        return f"{type(self).__name__}({settings})"


def create_reranker(method: str, **kwargs: Any) -> Reranker:
    """``create_reranker("float")``, ``create_reranker("cross")``, ``create_reranker("blip2", model_id=...)``."""
    return reranker_class(method)(**kwargs)


def reranker_from_config(config: dict[str, Any]) -> Reranker:
    config = dict(config)
    method = config.pop("method", None)
    if not method:
        raise ValueError(f"reranker config has no 'method': {config}")
    return create_reranker(method, **config)
