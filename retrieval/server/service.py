"""The rules of the server, without HTTP: which rerankers a client may ask for, which gallery a query
searches, what a hit shows, and how items are looked up (by id, never by path).

Kept apart from :mod:`.app` so that the routes only parse and respond. Every method here that calls
a model runs in a worker thread (the app sends it there); :class:`retrieval.Retriever` is
thread-safe, so concurrent searches return what sequential ones would.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from rerank.base import available_rerankers, reranker_class

from .errors import BadRequest
from .stats import LatencyStats
from .thumbnails import Thumbnails

MODALITIES = ("image", "text")
PLURAL = {"image": "images", "text": "texts"}
#: Longest text query accepted; captions are a few dozen words and models truncate anyway.
MAX_QUERY_CHARS = 1000


def rerank_options(retriever: Any, rerank: Sequence[str] | None) -> tuple[str, list[str]]:
    """``(default, allowed)``. Given names: the first is the default, all may be asked for per request.

    Without names: the index's own reranker (if it was saved with one), else exact float rescoring
    when the index keeps float vectors (it costs a millisecond and doubles hash-only R@1), else none.
    Heavier rerankers (cross, blip2, rewrite) are offered only when named, since each loads a model.
    """
    stores_vectors = bool(getattr(retriever, "store_vectors", True))
    if rerank:
        names = list(dict.fromkeys(str(n) for n in rerank))
        known = set(available_rerankers()) | {"none"}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"unknown reranker {', '.join(map(repr, unknown))}; available: "
                             f"none, {', '.join(available_rerankers())}")
        if "float" in names and not stores_vectors:
            raise ValueError("rerank 'float' needs stored float vectors, and this index was built without them")
        default = names[0]
    else:
        saved = getattr(getattr(retriever, "reranker", None), "method", None)
        default = saved or ("float" if stores_vectors else "none")
        names = [default] + (["float"] if stores_vectors else [])
    allowed = list(dict.fromkeys([*names, "none"]))
    return default, allowed


def configured_rerankers(settings: Mapping[str, Mapping[str, Any]], allowed: Sequence[str]) -> dict[str, Any]:
    """``{name: reranker}`` built once from the server's settings (``--reranker-arg vlm.model=DIR``), so
    a reranker that needs a checkpoint or a weight other than its default is usable from the page and
    the API. Settings for a reranker the server does not offer are refused, naming it: they would
    silently do nothing."""
    from rerank import create_reranker

    stray = sorted(set(settings) - (set(allowed) - {"none"}))
    if stray:
        raise ValueError(f"reranker settings name {', '.join(map(repr, stray))}, which this server does not "
                         f"offer (its choices: {', '.join(allowed)}); add it to --rerank")
    built = {}
    for name, values in settings.items():
        try:
            built[name] = create_reranker(name, **dict(values))
        except TypeError as e:  # an unknown keyword: say which settings, not only the class's complaint
            raise ValueError(f"reranker {name!r} does not take the settings {', '.join(sorted(values))}: {e}") from e
    return built


def same_modality_ok(rerank: str) -> bool:
    """Whether a reranker can score items of the query's own modality (image -> image)."""
    return rerank == "none" or bool(getattr(reranker_class(rerank), "same_modality", False))


class SearchService:
    """One retriever behind the API. ``prefix`` is prepended to the URLs in responses (a root path)."""

    def __init__(self, retriever: Any, rerank: Sequence[str] | None = None, *,
                 reranker_settings: Mapping[str, Mapping[str, Any]] | None = None,
                 index_name: str | None = None, thumbnails: Thumbnails | None = None) -> None:
        self.retriever = retriever
        self.rerank_default, self.rerank_allowed = rerank_options(retriever, rerank)
        self.rerankers = configured_rerankers(reranker_settings or {}, self.rerank_allowed)
        self.index_name = index_name
        self.thumbnails = thumbnails or Thumbnails()
        self.latency = LatencyStats()

    def stage2(self, rerank: str) -> Any:
        """What :meth:`Retriever.search` takes for the choice ``rerank``: False for none, the reranker
        built from the server's settings when it has any, else the name (the retriever's own defaults)."""
        return False if rerank == "none" else self.rerankers.get(rerank, rerank)

    # -- parameters -------------------------------------------------------------------------------
    def sizes(self) -> dict[str, int]:
        return {m: len(g) for m, g in self.retriever.galleries.items()}

    def check_rerank(self, rerank: str | None, query_modality: str, target: str | None) -> str:
        """The stage 2 to use. Rerankers that only score across modalities (cross, blip2) cannot rank
        image -> image: asked for by name, that is a 422; as the server's default, the best allowed
        one that can (float, else none) is used instead, and the response says which."""
        asked = rerank is not None  # "" too is a name, and not one of the choices the document lists
        name = rerank if asked else self.rerank_default
        if name not in self.rerank_allowed:
            raise BadRequest(f"query parameter 'rerank' must be one of {', '.join(self.rerank_allowed)} "
                             f"(this server's choices), got {rerank!r}")
        if target != query_modality or same_modality_ok(name):
            return name
        fallback = next((n for n in self.rerank_allowed if n != "none" and same_modality_ok(n)), "none")
        if asked:
            raise BadRequest(f"rerank {name!r} scores across modalities only, so it cannot rank a "
                             f"{query_modality} -> {target} search; use rerank={fallback!r}")
        return fallback

    def check_target(self, query_modality: str, target: str | None) -> str | None:
        """The retriever's rule: the other modality if that gallery has items, else the same one.

        A target named by the client is searched even when empty (200, no hits), not refused: which
        galleries hold items is not something the API document can state, and a client built from
        it must not be refused for a request the document allows.
        """
        sizes = self.sizes()
        if target is not None:  # an empty gallery answers no hits: what the OpenAPI document can promise
            return target
        other = "text" if query_modality == "image" else "image"
        for candidate in (other, query_modality):
            if sizes.get(candidate):
                return candidate
        return None

    def text_query(self, q: str) -> str:
        """The text searched; the limits are those the OpenAPI document declares (length before stripping)."""
        if len(q) > MAX_QUERY_CHARS:
            raise BadRequest(f"query parameter 'q' is {len(q)} characters long, more than {MAX_QUERY_CHARS}")
        q = q.strip()
        if not q:
            raise BadRequest("query parameter 'q' is empty: give the text to search for")
        return q

    def lookup(self, modality: str, item_id: int) -> tuple[Any, Any]:
        """``(item, payload)``; an unknown id is a 404 naming the id and modality."""
        if modality not in MODALITIES:
            raise BadRequest(f"modality must be 'image' or 'text', got {modality!r}")
        try:
            return self.retriever.get_item(modality, int(item_id))
        except (KeyError, IndexError):
            raise BadRequest(f"no {modality} with id {item_id} in this index "
                             f"({self.sizes().get(modality, 0)} {PLURAL[modality]})", 404) from None

    def item_query(self, modality: str, item_id: int) -> Any:
        """An indexed item as a query ("more like this"): its caption, or its image file as a Path."""
        item, _ = self.lookup(modality, item_id)
        if modality == "text":
            return item
        if not isinstance(item, str):
            raise BadRequest(f"image {item_id} was indexed from memory and has no file to search with", 422)
        if not Path(item).is_file():
            raise BadRequest(f"the file of image {item_id} is missing on the server", 404)
        return Path(item)

    # -- answers ----------------------------------------------------------------------------------
    def search(self, query: Any, query_info: dict[str, Any], k: int, rerank: str, target: str | None,
               prefix: str = "") -> dict[str, Any]:
        """Runs in a worker thread. ``query``: a str (text) or an image (PIL or Path)."""
        timings: dict[str, float] = {}
        start = time.perf_counter()
        if target is None:
            hits = []
        else:
            hits = self.retriever.search(query, k=k, rerank=self.stage2(rerank), target=target, timings=timings)
        total = (time.perf_counter() - start) * 1000.0
        self.latency.add(total)
        return {
            "query": query_info, "k": k, "rerank": rerank, "target": target,
            "hits": [self.hit_json(h, rank, prefix) for rank, h in enumerate(hits, 1)],
            "timings": {**{key: round(float(v), 3) for key, v in timings.items()}, "total_ms": round(total, 3)},
        }

    @staticmethod
    def item_fields(modality: str, item_id: int, item: Any, payload: Any, prefix: str) -> dict[str, Any]:
        """What a hit and ``GET /items/{id}`` both show: a path (image with a file) or a caption."""
        path = item if modality == "image" and isinstance(item, str) else None
        return {"id": int(item_id), "modality": modality, "path": path,
                "caption": item if modality == "text" else None, "payload": payload,
                "thumbnail_url": f"{prefix}/items/{item_id}/thumbnail" if path is not None else None}

    def hit_json(self, hit: Any, rank: int, prefix: str = "") -> dict[str, Any]:
        return {**self.item_fields(hit.modality, hit.id, getattr(hit, "item", None), hit.payload, prefix),
                "rank": rank, "score": float(hit.score), "hamming": int(hit.hamming),
                "item_url": f"{prefix}/items/{hit.id}?modality={hit.modality}"}

    def item_json(self, modality: str, item_id: int, prefix: str = "") -> dict[str, Any]:
        item, payload = self.lookup(modality, item_id)
        return self.item_fields(modality, item_id, item, payload, prefix)

    def thumbnail(self, item_id: int) -> bytes:
        """Runs in a worker thread: the JPEG of image ``item_id``, from the file the index holds for it."""
        item, _ = self.lookup("image", item_id)
        if not isinstance(item, str):
            raise BadRequest(f"image {item_id} was indexed from memory and has no file to make a thumbnail of", 404)
        try:
            return self.thumbnails.get(int(item_id), item)
        except FileNotFoundError:
            raise BadRequest(f"the file of image {item_id} is missing on the server", 404) from None
        except (OSError, ValueError):
            raise BadRequest(f"the file of image {item_id} cannot be decoded", 422) from None

    def warm_up(self) -> None:
        """One search per allowed reranker, so model loading happens at start, not in a client's request;
        a reranker that cannot run on this index fails here, with its name."""
        query_modality = "text"
        target = self.check_target(query_modality, None)
        if target is None:
            return
        for rerank in self.rerank_allowed:
            if target == query_modality and not same_modality_ok(rerank):
                continue
            try:
                self.retriever.search("a photo", k=1, rerank=self.stage2(rerank), target=target)
            except Exception as e:
                raise RuntimeError(f"rerank {rerank!r} cannot run on this index: {type(e).__name__}: {e}") from e

    def stats(self, errors: int) -> dict[str, Any]:
        r = self.retriever
        hasher = getattr(r, "hasher", None)
        return {
            "counts": self.sizes(),
            "model": str(getattr(r.encoder, "model_id", None) or type(r.encoder).__name__),
            "index": {"name": self.index_name, "kind": getattr(r, "index_kind", None),
                      "hasher": getattr(hasher, "method", None), "bits": getattr(hasher, "bits", None),
                      "candidates": getattr(r, "candidates", None)},
            "rerank": {"default": self.rerank_default, "allowed": self.rerank_allowed},
            "searches": self.latency.summary(),
            "errors": errors,
            "thumbnails_cached": len(self.thumbnails.cache),
        }
