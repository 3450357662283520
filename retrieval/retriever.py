"""The Retriever: encoder -> hash codes -> binary index top-k -> optional reranker.

    from retrieval import Retriever
    r = Retriever.build(images=paths, texts=captions, fit_pairs=(caption_image, caption_rows))
    r.search("a dog catching a frisbee", k=5, rerank="float")      # text -> images
    r.search(Path("photo.jpg"), k=5)                                # image -> texts (Path, PIL or array)
    r.save_pretrained("my-retriever"); Retriever.from_pretrained("my-retriever")

Two galleries, one per modality: a text query searches the image gallery, an image query the text
gallery. Stage 1 ranks the whole gallery by Hamming distance and keeps ``candidates`` (128);
stage 2, when asked for, re-scores only those with a :class:`rerank.base.Reranker` and fuses the
two scores (``rerank.fusion``; ``fusion_weight = 0`` ranks by stage 2 alone). Without stage 2 the
score of a hit is its Hamming similarity ``1 - 2 d / bits`` and ties keep the index's order.

Thread safety: searches run concurrently (a readers-writer lock lets many searches share the
index and only ``add`` excludes them); model calls (encoder, reranker) are serialised because
Hugging Face fast tokenizers are not re-entrant ("Already borrowed"). Results of concurrent
searches equal those of sequential ones (tests/test_retriever.py).

Hashers without captions: a photo collection has images only, so there are no pairs to fit a
hasher on. The embedded ``lite`` encoder ships a fitted ITQ-64 hasher (Flickr8K train pairs,
``retrieval/weights/lite/hasher``), used whenever a lite retriever is built with no fitted hasher
and no texts. Any other encoder fits its hasher on the collection's own image vectors
(``fit(images, images)``: the same hyperplanes and centre then hash text queries); fewer than
:data:`MIN_IMAGES_TO_FIT` images fall back to LSH (random hyperplanes), with a warning.

Saved as one directory (format 2, written atomically; format 1 still loads)::

    retriever.json   encoder id + its preprocessing, hasher, index kind, reranker, fusion weight
    hasher/          Hasher.save_pretrained
    store.sqlite, chunks/   the items of both modalities (retrieval/store.py): codes, memory-mapped
                     vectors (fp16 by default), items and payloads; the binary index is rebuilt from
                     the codes on open

A retriever opened with ``Retriever.open(directory, writable=True)`` (or made by
:meth:`Retriever.create`) appends each ``add_*`` call to that directory as one atomic commit.
"""

from __future__ import annotations

import json
import os
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from hashing import Hasher, create_hasher
from hashing.index import create_index
from rerank.base import Candidates, Query, Reranker, create_reranker, reranker_from_config
from rerank.fusion import fuse

from common.atomic import atomic_write_dir
from common.checks import check_optional_int

from .encoders import Encoder, load_encoder
from .gallery import Gallery
from .store import LOCK_NAME, Store, check_vector_dtype
from .stores import open_store
from .stored_gallery import StoredGallery

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
CONFIG_NAME = "retriever.json"
DEFAULT_CANDIDATES = 128
#: Below this many images an images-only hasher fit falls back to LSH: ITQ's PCA of 64 dims from a
#: few dozen points would be noise.
MIN_IMAGES_TO_FIT = 256
#: Stage 1 takes this many Hamming neighbours per searched gallery and rescores them with the float
#: vectors down to ``candidates`` (the reranker's depth); None: Hamming top-``candidates`` only.
#: Chosen on the lite trainer's 500 held-out train images, galleries padded to 1,000 images / 5,000
#: captions (scripts/choose_hamming_candidates.py, runs/hamming_candidates.json): the smallest N
#: keeping >= 0.97 of the float top-10. Text queries already keep 0.982 at 128 images; image queries
#: need 384 captions (0.904 at 128).
DEFAULT_HAMMING_CANDIDATES: dict[str, int | None] = {"image": None, "text": 384}
SHIPPED_HASHERS = {"lite": Path(__file__).parent / "weights" / "lite" / "hasher"}


@dataclass(frozen=True)
class Hit:
    """One result: ``score`` is the final score (higher is better), ``hamming`` the stage-1 distance."""

    id: int
    score: float
    hamming: int
    payload: Any = None
    modality: str = "image"
    #: the raw content: an image's path (None for an in-memory image) or a caption
    item: Any = None


class ReadWriteLock:
    """Many readers or one writer; writers wait for readers to leave."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._readers:
                self._cond.wait()
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class Timings:
    """Adds each timed block's wall milliseconds to a caller's dict (or to nothing)."""

    def __init__(self, out: dict[str, float] | None) -> None:
        self.out = out

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.out is not None:
                self.out[name] = self.out.get(name, 0.0) + 1e3 * (time.perf_counter() - start)


def query_modality(query: Any) -> str:
    """A string is a text query; paths must be given as ``pathlib.Path`` to be read as images."""
    if isinstance(query, str):
        return "text"
    return "image"


def check_hamming_candidates(value: int | dict[str, int | None] | None) -> dict[str, int | None]:
    """An int for both galleries, or {"image": N, "text": M} (keys: the gallery searched)."""
    if value is None or isinstance(value, (int, np.integer)):
        value = {"image": value, "text": value}
    if not isinstance(value, dict) or set(value) - {"image", "text"}:
        raise ValueError(f"hamming_candidates must be an int, None or a dict with keys 'image'/'text', got {value!r}")
    return {m: check_optional_int(f"hamming_candidates[{m!r}]", value.get(m)) for m in ("image", "text")}


def shipped_hasher(encoder: Encoder, method: str, bits: int) -> Hasher | None:
    """The fitted hasher that ships with ``encoder`` for (method, bits), if any."""
    path = SHIPPED_HASHERS.get(encoder.model_id)
    if path is None or not (path / "config.json").is_file():
        return None
    config = json.loads((path / "config.json").read_text())
    if (config.get("method"), config.get("bits")) != (method, bits):
        return None
    return Hasher.from_pretrained(path)


def fit_on_images(hasher: Hasher, image_vectors: np.ndarray,
                  captions: tuple[np.ndarray, np.ndarray] | None = None) -> Hasher:
    """Fits ``hasher`` on a folder's images; see the module docstring (LSH below MIN_IMAGES_TO_FIT).

    ``captions = (image_rows, text_vectors)``: caption ``j`` describes image ``image_rows[j]``; the fit
    is then on those real (image, caption) pairs, as a cross-modal hasher expects, instead of on
    images standing in for their own captions.
    """
    n = len(image_vectors)
    if n == 0:
        raise ValueError("cannot fit a hasher on 0 images")
    if n < MIN_IMAGES_TO_FIT and hasher.method != "lsh":
        warnings.warn(f"only {n} images to fit a {hasher.method} hasher on (at least {MIN_IMAGES_TO_FIT} needed); "
                      f"using LSH (random hyperplanes) instead", stacklevel=3)
        hasher = create_hasher("lsh", hasher.bits, seed=hasher.seed)
    if captions is None:
        return hasher.fit(image_vectors, image_vectors)
    rows, text_vectors = captions
    return hasher.fit(image_vectors[np.asarray(rows, dtype=np.int64)], text_vectors)


class Retriever:
    """See the module docstring. ``hasher`` must be fitted before adding items (:meth:`build` fits it)."""

    def __init__(
        self,
        encoder: Encoder | str = "lite",
        hasher: Hasher | str = "itq",
        *,
        bits: int = 64,
        index: str = "flat",
        index_params: dict[str, Any] | None = None,
        store_vectors: bool = True,
        reranker: Reranker | str | None = None,
        fusion_weight: float = 0.0,
        candidates: int = DEFAULT_CANDIDATES,
        device: str | None = None,
        vector_dtype: str = "fp16",
        hamming_candidates: int | dict[str, int | None] | None = DEFAULT_HAMMING_CANDIDATES,
    ) -> None:
        self.encoder = load_encoder(encoder, device=device) if isinstance(encoder, str) else encoder
        self.hasher = create_hasher(hasher, bits) if isinstance(hasher, str) else hasher
        self.index_kind, self.index_params = index, dict(index_params or {})
        create_index(index, self.hasher.bits, **self.index_params)  # a bad kind or setting fails here, before any save
        self.store_vectors = store_vectors
        #: how saved vectors are stored (fp16, int8, fp32); in memory they are float32
        self.vector_dtype = check_vector_dtype(vector_dtype) if store_vectors else "none"
        self.store: Store | None = None
        self.fusion_weight = float(fusion_weight)
        if candidates < 1:
            raise ValueError(f"candidates must be >= 1, got {candidates}")
        self.candidates = int(candidates)
        self.hamming_candidates = check_hamming_candidates(hamming_candidates)
        self._rerankers: dict[str, Reranker] = {}
        self.reranker: Reranker | None = None
        self.reranker = self._resolve_reranker(reranker) if reranker not in (None, "none") else None
        self.galleries: dict[str, Gallery | StoredGallery] = {}
        self._lock = ReadWriteLock()
        self._model_lock = threading.RLock()

    # -- building ---------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        images: Sequence[Any] = (),
        texts: Sequence[str] = (),
        *,
        image_payloads: Sequence[Any] | None = None,
        text_payloads: Sequence[Any] | None = None,
        fit_pairs: tuple[Sequence[int], Sequence[int]] | None = None,
        image_vectors: np.ndarray | None = None,
        text_vectors: np.ndarray | None = None,
        batch_size: int = 64,
        progress: bool | None = None,
        **kwargs: Any,
    ) -> "Retriever":
        """Encodes ``images`` and ``texts``, fits the hasher on paired rows, indexes both.

        ``fit_pairs = (image_rows, text_rows)`` names which image goes with which text; without it
        ``images[i]`` and ``texts[i]`` are taken as pairs (they must then be equally many).
        ``image_vectors`` / ``text_vectors``: embeddings already computed by the same encoder (they
        are then not recomputed). ``kwargs`` go to the constructor (encoder, hasher, bits, index...).
        """
        retriever = cls(**kwargs)
        image_vecs, text_vecs = image_vectors, text_vectors
        if image_vecs is None and len(images):
            image_vecs = retriever.encoder.encode_images(list(images), batch_size, progress)
        if text_vecs is None and len(texts):
            text_vecs = retriever.encoder.encode_texts(list(texts), 4 * batch_size, progress)
        if not retriever.is_fitted and text_vecs is None:
            if image_vecs is None:
                raise ValueError("nothing to build from: pass images and/or texts")
            retriever.hasher = (shipped_hasher(retriever.encoder, retriever.hasher.method, retriever.hasher.bits)
                                or fit_on_images(retriever.hasher, image_vecs))
        if not retriever.is_fitted:
            if image_vecs is None:
                raise ValueError("fitting the hasher on texts alone is not supported: pass images too "
                                 "(or a fitted hasher)")
            if fit_pairs is None:
                if len(images) != len(texts):
                    raise ValueError(f"{len(images)} images and {len(texts)} texts: pass fit_pairs=(image_rows, "
                                     f"text_rows) to say which go together")
                fit_pairs = (np.arange(len(images)), np.arange(len(texts)))
            image_rows, text_rows = (np.asarray(p, dtype=np.int64) for p in fit_pairs)
            if image_rows.shape != text_rows.shape or image_rows.ndim != 1:
                raise ValueError(f"fit_pairs must be two equally long 1-D index arrays, got shapes "
                                 f"{image_rows.shape} and {text_rows.shape}")
            retriever.hasher.fit(image_vecs[image_rows], text_vecs[text_rows])
        if image_vecs is not None:
            retriever.add_vectors("image", image_vecs, list(images), image_payloads)
        if text_vecs is not None:
            retriever.add_vectors("text", text_vecs, list(texts), text_payloads)
        return retriever

    @classmethod
    def from_dataset(cls, dataset: Any, **kwargs: Any) -> "Retriever":
        """A Karpathy-style caption dataset (``eval.karpathy.CaptionDataset``): every image and caption
        indexed, the hasher fitted on all (image, caption) pairs; payloads name the path / owner image."""
        n_images = dataset.n_images
        images = [str(p) if isinstance(p, (str, Path)) else p for p in dataset.images]  # paths, or PIL (HF datasets)
        return cls.build(
            images=images,
            texts=list(dataset.captions),
            image_payloads=[{"path": p} if isinstance(p, str) else {"row": i} for i, p in enumerate(images)],
            text_payloads=[{"caption": c, "image_id": int(i)} for c, i in zip(dataset.captions, dataset.caption_image)],
            fit_pairs=(np.asarray(dataset.caption_image), np.arange(len(dataset.captions))),
            **kwargs,
        ) if n_images else cls(**kwargs)

    @property
    def is_fitted(self) -> bool:
        return bool(self.hasher.input_dims)

    def _gallery(self, modality: str) -> Gallery | StoredGallery:
        if modality not in self.galleries:
            if self.store is not None:  # the store's own gallery: chunk files + faiss, or Milvus
                self.galleries[modality] = self.store.gallery(modality, self.hasher.bits, self.index_kind,
                                                              self.index_params)
            else:
                self.galleries[modality] = Gallery.create(modality, self.hasher.bits, self.encoder.dim,
                                                          self.index_kind, self.index_params, self.store_vectors)
        return self.galleries[modality]

    def get_item(self, modality: str, id: int) -> tuple[Any, Any]:
        """(item, payload) of one indexed item: its path or caption, and what was attached to it."""
        gallery = self.galleries.get(modality)
        if gallery is None:
            raise KeyError(f"this retriever has no {modality} gallery")
        with self._lock.read():
            items, _, payloads = gallery.fetch([int(id)], vectors=False)
        return items[0], payloads[0]

    def remove(self, modality: str, ids: Sequence[int]) -> int:
        """Drops items by id (committed at once for a retriever on disk); returns how many existed."""
        gallery = self.galleries.get(modality)
        if gallery is None:
            return 0
        with self._lock.write():
            return gallery.remove(ids)

    def add_vectors(self, modality: str, vectors: np.ndarray, items: Sequence[Any],
                    payloads: Sequence[Any] | None = None, ids: np.ndarray | None = None) -> np.ndarray:
        """Indexes precomputed embeddings (from this retriever's encoder); returns their ids."""
        if not self.is_fitted:
            raise RuntimeError("the hasher is not fitted: use Retriever.build(...) or pass a fitted hasher")
        codes = self.hasher.encode(vectors, modality)
        with self._lock.write():
            return self._gallery(modality).add(codes, vectors, items, payloads, ids)

    def add_images(self, images: Sequence[Any], payloads: Sequence[Any] | None = None,
                   ids: np.ndarray | None = None, batch_size: int = 64, progress: bool | None = None) -> np.ndarray:
        with self._model_lock:
            vectors = self.encoder.encode_images(list(images), batch_size, progress)
        return self.add_vectors("image", vectors, list(images), payloads, ids)

    def add_texts(self, texts: Sequence[str], payloads: Sequence[Any] | None = None,
                  ids: np.ndarray | None = None, batch_size: int = 256, progress: bool | None = None) -> np.ndarray:
        with self._model_lock:
            vectors = self.encoder.encode_texts(list(texts), batch_size, progress)
        return self.add_vectors("text", vectors, list(texts), payloads, ids)

    def __len__(self) -> int:
        return sum(len(g) for g in self.galleries.values())

    # -- searching ----------------------------------------------------------------------------------
    def _resolve_reranker(self, rerank: Reranker | str | bool | None) -> Reranker | None:
        if rerank is None:
            return self.reranker
        if rerank is False or rerank == "none":
            return None
        if isinstance(rerank, Reranker):
            rerank.attach(self.encoder)
            return rerank
        if isinstance(rerank, str):
            if self.reranker is not None and self.reranker.method == rerank:
                return self.reranker
            if rerank not in self._rerankers:
                reranker = create_reranker(rerank)
                reranker.attach(self.encoder)
                self._rerankers[rerank] = reranker
            return self._rerankers[rerank]
        raise TypeError(f"rerank must be None, False, a reranker name or a Reranker, got {type(rerank).__name__}")

    def search(self, query: Any, k: int = 10, candidates: int | None = None,
               rerank: Reranker | str | bool | None = None, target: str | None = None,
               timings: dict[str, float] | None = None) -> list[Hit]:
        """Top-``k`` hits for a text or an image query.

        ``rerank``: None uses the retriever's reranker (if any), False/"none" stage 1 only, a name
        (``"float"``, ``"cross"``, ``"blip2"``, ``"rewrite"``) or a Reranker instance.
        ``target``: the gallery searched; None takes the other modality's when it holds items,
        else the query's own (an images-only photo index answers image queries with images).
        ``timings``: a dict to fill with ``encode_ms``, ``stage1_ms`` and ``stage2_ms``.
        """
        return self.search_batch([query], k, candidates, rerank, target, timings)[0]

    def search_batch(self, queries: Sequence[Any], k: int = 10, candidates: int | None = None,
                     rerank: Reranker | str | bool | None = None, target: str | None = None,
                     timings: dict[str, float] | None = None) -> list[list[Hit]]:
        """Many queries at once: one encoder batch and one index search per modality."""
        if isinstance(queries, str) or not hasattr(queries, "__len__"):
            raise TypeError("queries must be a sequence (a list of strings and/or images)")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        candidates = max(int(candidates or self.candidates), k)
        reranker = self._resolve_reranker(rerank)
        clock = Timings(timings)
        out: list[list[Hit]] = [[] for _ in queries]
        for modality in ("text", "image"):
            positions = [i for i, q in enumerate(queries) if query_modality(q) == modality]
            if positions:
                batch = [queries[i] for i in positions]
                with clock("encode_ms"), self._model_lock:
                    vectors = (self.encoder.encode_texts(batch, progress=False) if modality == "text"
                               else self.encoder.encode_images(batch, progress=False))
                hits = self._search_vectors(vectors, modality, batch, k, candidates, reranker, target, clock)
                for i, h in zip(positions, hits):
                    out[i] = h
        return out

    def search_embeddings(self, vectors: np.ndarray, modality: str, queries: Sequence[Any] | None = None,
                          k: int = 10, candidates: int | None = None,
                          rerank: Reranker | str | bool | None = None, target: str | None = None,
                          timings: dict[str, float] | None = None) -> list[list[Hit]]:
        """Like :meth:`search_batch` for queries already embedded by this retriever's encoder.

        ``modality`` is the queries' ("text" searches images). ``queries`` (their raw content) is
        needed only by rerankers that read it (cross-encoder, BLIP-2, query rewriting).
        """
        if modality not in ("text", "image"):
            raise ValueError(f"modality must be 'text' or 'image', got {modality!r}")
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.encoder.dim:
            raise ValueError(f"query vectors must be (n, {self.encoder.dim}), got shape {vectors.shape}")
        if queries is not None and len(queries) != len(vectors):
            raise ValueError(f"{len(vectors)} query vectors but {len(queries)} queries")
        return self._search_vectors(vectors, modality, queries, k, max(int(candidates or self.candidates), k),
                                    self._resolve_reranker(rerank), target, Timings(timings))

    def target_of(self, modality: str, target: str | None = None) -> str:
        """The gallery a query of ``modality`` searches (see :meth:`search`)."""
        if target is not None:
            if target not in ("image", "text"):
                raise ValueError(f"target must be 'image', 'text' or None, got {target!r}")
            return target
        other = "image" if modality == "text" else "text"
        return other if len(self.galleries.get(other, ())) or not len(self.galleries.get(modality, ())) else modality

    def _search_vectors(self, vectors: np.ndarray, modality: str, queries: Sequence[Any] | None, k: int,
                        candidates: int, reranker: Reranker | None, target: str | None,
                        clock: "Timings") -> list[list[Hit]]:
        target = self.target_of(modality, target)
        if target == modality and reranker is not None and not reranker.same_modality:
            raise ValueError(f"reranker {reranker.method!r} scores across modalities; a {modality} query "
                             f"searching {target}s can be reranked with 'float' or not at all")
        with clock("stage1_ms"):
            codes = self.hasher.encode(vectors, modality)
            with self._lock.read():
                gallery = self.galleries.get(target)
                if gallery is None or len(gallery) == 0:
                    return [[] for _ in vectors]
                depth = self.hamming_depth(target, candidates, gallery)
                ids, distances = gallery.index.search(codes, depth)
                lists = [self._candidates(gallery, target, ids[row], distances[row], vectors[row], candidates)
                         for row in range(len(vectors))]
        with clock("stage2_ms"):
            if reranker is not None:
                contents = queries if queries is not None else [None] * len(vectors)
                qs = [Query(modality, q, v) for q, v in zip(contents, vectors)]
                with self._model_lock:
                    stage2 = reranker.score_batch(qs, lists)
                finals = [fuse(c.stage1_scores, s, self.fusion_weight) for c, s in zip(lists, stage2)]
            else:
                finals = [c.stage1_scores for c in lists]
        results = []
        for cands, final in zip(lists, finals):
            order = np.argsort(-np.asarray(final), kind="stable")[:k]
            results.append([Hit(int(cands.ids[j]), float(final[j]), int(cands.extra["hamming"][j]),
                                cands.extra["payloads"][j], target, cands.items[j]) for j in order])
        return results

    def hamming_depth(self, target: str, candidates: int, gallery: Any) -> int:
        """How many Hamming neighbours stage 1 takes: ``hamming_candidates`` when float vectors can
        rescore them down to ``candidates``, else ``candidates`` itself."""
        depth = self.hamming_candidates.get(target)
        if depth is None or depth <= candidates or not gallery.store_vectors:
            return candidates
        return depth

    def _candidates(self, gallery: Any, target: str, ids: np.ndarray, distances: np.ndarray, query: np.ndarray,
                    candidates: int) -> Candidates:
        """One query's stage-1 output: Hamming top-depth, float-rescored down to ``candidates`` if deeper.

        With the cascade, the stage-1 score is the float cosine (the Hamming distance stays in
        ``extra``); without it, the Hamming similarity ``1 - 2 d / bits``.
        """
        valid = ids >= 0
        cid, dist = ids[valid], distances[valid]
        if len(cid) > candidates:
            vectors = gallery.fetch_vectors(cid)
            cosine = vectors @ query
            keep = np.sort(np.argsort(-cosine, kind="stable")[:candidates])  # keep Hamming order among them
            cid, dist, scores, embeddings = cid[keep], dist[keep], cosine[keep].astype(np.float32), vectors[keep]
            items, _, payloads = gallery.fetch(cid, vectors=False)
        else:
            scores = (1.0 - 2.0 * dist / self.hasher.bits).astype(np.float32)
            items, embeddings, payloads = gallery.fetch(cid, vectors=True)
        return Candidates(target, cid, items=items, embeddings=embeddings, stage1_scores=scores,
                          extra={"hamming": dist, "payloads": payloads})

    # -- persistence ------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "encoder": {"id": self.encoder.model_id, "class": type(self.encoder).__name__, "dim": self.encoder.dim,
                        "preprocess": self.encoder.preprocess_config, "weights": self.encoder.weights_id},
            "hasher": {"method": self.hasher.method, "bits": self.hasher.bits, "path": "hasher"},
            "index": {"kind": self.index_kind, "params": self.index_params},
            "store_vectors": self.store_vectors,
            "vector_dtype": self.vector_dtype,
            "reranker": self.reranker.config() if self.reranker is not None else None,
            "fusion_weight": self.fusion_weight,
            "candidates": self.candidates,
            "hamming_candidates": self.hamming_candidates,
        }

    def _check_saveable(self) -> None:
        if not self.is_fitted:
            raise RuntimeError("refusing to save a retriever whose hasher is not fitted")
        if not self.encoder.model_id:
            raise ValueError(f"{type(self.encoder).__name__} has no model_id, so a loader could not rebuild it")

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Writes the whole retriever into a temporary sibling, then swaps it in (never half-written).

        A retriever that lives in ``save_directory`` already (opened writable there) has every item
        committed; only its settings are rewritten.
        """
        from common.atomic import write_json

        self._check_saveable()
        config = self.config()
        if self.store is not None and Path(save_directory).resolve() == self.store.directory.resolve():
            return write_json(Path(save_directory) / CONFIG_NAME, config).parent

        def write(tmp: Path) -> None:
            self.hasher.save_pretrained(tmp / "hasher")
            with Store.create(tmp, self.encoder.dim, self.hasher.bits, self.vector_dtype) as store:
                for modality, gallery in self.galleries.items():
                    for ids, codes, vectors, items, payloads in gallery.export():
                        with store.transaction() as tx:
                            tx.append(modality, codes, vectors, items, payloads, ids)
            (tmp / LOCK_NAME).unlink(missing_ok=True)  # a saved copy has no writer: no lock file to ship
            (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2))  # last: marks a complete save

        with self._lock.read():
            return atomic_write_dir(save_directory, write)

    @classmethod
    def create(cls, directory: str | os.PathLike, *, store: str = "local", milvus_uri: str | None = None,
               collection: str | None = None, **kwargs: Any) -> "Retriever":
        """A new, empty retriever living in ``directory``: every ``add_*`` is committed there.

        ``kwargs`` go to the constructor; the hasher must be fitted (or ship with the encoder).
        ``store="milvus"`` keeps the items in a Milvus collection (``retrieval/milvus_store.py``)
        at ``milvus_uri`` (a Milvus Lite ``.db`` file or ``http://host:19530``), named
        ``collection`` (default ``crossmodal``); ``directory`` then keeps the config, the hasher
        and the ledger.
        """
        if store not in ("local", "milvus"):
            raise ValueError(f"store must be 'local' or 'milvus', got {store!r}")
        if store == "milvus" and not milvus_uri:
            raise ValueError("store='milvus' needs milvus_uri (a Milvus Lite .db file or http://host:19530)")
        if store == "local" and (milvus_uri or collection):
            raise ValueError("milvus_uri and collection are settings of store='milvus'")
        directory = Path(directory)
        if (directory / CONFIG_NAME).exists():
            raise FileExistsError(f"{directory} already holds a retriever; open it with Retriever.open")
        if directory.exists() and any(directory.iterdir()):
            raise FileExistsError(f"{directory} is not empty; a new retriever needs a new or empty folder")
        retriever = cls(**kwargs)
        if not retriever.is_fitted:
            shipped = shipped_hasher(retriever.encoder, retriever.hasher.method, retriever.hasher.bits)
            if shipped is None:
                raise ValueError(f"the hasher is not fitted and none ships with encoder {retriever.encoder.model_id!r}"
                                 f" for {retriever.hasher.method}-{retriever.hasher.bits}: pass a fitted hasher")
            retriever.hasher = shipped
        retriever._check_saveable()

        if store == "milvus":
            from .milvus_store import DEFAULT_COLLECTION, MilvusStore, milvus_index, normalise_uri

            milvus_uri = normalise_uri(milvus_uri)
            milvus_index(retriever.index_kind, retriever.index_params, milvus_uri.endswith(".db"))  # fails before any write

        def write(tmp: Path) -> None:  # all or nothing: a kill leaves no half-made index
            retriever.hasher.save_pretrained(tmp / "hasher")
            if store == "milvus":
                MilvusStore.create(tmp, retriever.encoder.dim, retriever.hasher.bits, retriever.vector_dtype,
                                   uri=milvus_uri, collection=collection or DEFAULT_COLLECTION,
                                   index=retriever.index_kind, index_params=retriever.index_params).close()
            else:
                Store.create(tmp, retriever.encoder.dim, retriever.hasher.bits, retriever.vector_dtype).close()
            (tmp / CONFIG_NAME).write_text(json.dumps(retriever.config(), indent=2))

        atomic_write_dir(directory, write)
        retriever.store = open_store(directory, writable=True)
        return retriever

    @classmethod
    def open(cls, directory: str | os.PathLike, *, writable: bool = False, **kwargs: Any) -> "Retriever":
        """A saved retriever in a local directory; ``writable`` commits ``add_*`` calls there."""
        return cls.from_pretrained(directory, writable=writable, **kwargs)

    def close(self) -> None:
        """Releases the store (files, the writer lock); the retriever is unusable afterwards."""
        if self.store is not None:
            self.store.close()

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, *, encoder: Encoder | str | None = None,
                        device: str | None = None, check_preprocess: bool = True, check_weights: bool = True,
                        writable: bool = False, **hub_kwargs: Any) -> "Retriever":
        """Loads from a directory or a Hub repo id (``HF_HUB_OFFLINE`` and the cache respected).

        The encoder is rebuilt from the saved id (or ``encoder`` overrides it); its preprocessing
        must equal the saved one unless ``check_preprocess=False``, and so must its weights'
        fingerprint (:attr:`Encoder.weights_id`, where both the index and the encoder have one) unless
        ``check_weights=False``. Format 1 directories (one
        safetensors and one JSON per gallery) load into memory; format 2 opens the store.
        """
        from common.hub import resolve_pretrained_dir

        directory = resolve_pretrained_dir(path_or_repo_id, [CONFIG_NAME], **hub_kwargs)
        config_file = directory / CONFIG_NAME
        try:
            config = json.loads(config_file.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read {config_file}: {e}") from e
        version = config.get("format_version")
        if version not in READABLE_FORMATS:
            raise ValueError(f"{config_file}: format_version {version!r} is not supported "
                             f"(expected one of {READABLE_FORMATS})")
        saved = config["encoder"]
        if encoder is None:
            encoder = saved["id"]
        if isinstance(encoder, str):
            encoder = load_encoder(encoder, device=device)
        if encoder.dim != saved["dim"]:
            raise ValueError(f"{config_file}: the index was built with a {saved['dim']}-d encoder "
                             f"({saved['id']}), got {encoder.dim}-d {encoder.model_id}")
        if check_preprocess and json.loads(json.dumps(encoder.preprocess_config)) != saved["preprocess"]:
            raise ValueError(f"{config_file}: encoder {encoder.model_id!r} preprocesses images as "
                             f"{encoder.preprocess_config}, but the index was built with {saved['preprocess']}; "
                             f"pass check_preprocess=False to load anyway")
        if check_weights and saved.get("weights") and encoder.weights_id and encoder.weights_id != saved["weights"]:
            raise ValueError(f"{config_file}: the index was built with other weights than encoder "
                             f"{encoder.model_id!r} has now (weights {saved['weights'][:12]}, now "
                             f"{encoder.weights_id[:12]}), so its vectors and codes do not match new queries; "
                             f"index into a new folder, or pass check_weights=False to load anyway")
        if check_weights and not saved.get("weights") and encoder.weights_id:
            # saved before retrievers recorded it (session 10): nothing to compare, so say what can go wrong
            warnings.warn(f"{config_file} records no weights fingerprint (saved before they were recorded), so "
                          f"whether its vectors come from the weights encoder {encoder.model_id!r} has now cannot be "
                          f"checked. The lite encoder's image vectors changed with issue 23 (ImageNet concepts): "
                          f"an index built before then matches encoder 'lite:heads'; adding to it with 'lite' "
                          f"would mix two kinds of vectors. Rebuild it, or open it with the encoder it was built with",
                          stacklevel=2)
        hasher = Hasher.from_pretrained(directory / config["hasher"]["path"])
        reranker = reranker_from_config(config["reranker"]) if config.get("reranker") else None
        retriever = cls(encoder, hasher, index=config["index"]["kind"], index_params=config["index"]["params"],
                        store_vectors=config["store_vectors"], reranker=reranker,
                        fusion_weight=config["fusion_weight"], candidates=config["candidates"],
                        hamming_candidates=config.get("hamming_candidates"),
                        vector_dtype=config.get("vector_dtype", "fp16"))
        if version == 1:
            for modality in config["galleries"]:
                gallery = Gallery.load(directory / modality, modality, encoder.dim)
                if gallery.vectors is not None:  # format 1 kept no codes; they are a function of the vectors
                    gallery.codes = hasher.encode(gallery.vectors, modality)
                retriever.galleries[modality] = gallery
            return retriever
        retriever.store = open_store(directory, writable=writable)
        if retriever.store.dim != encoder.dim or retriever.store.code_bytes != hasher.code_bytes:
            raise ValueError(f"{directory}: the store holds {retriever.store.dim}-d vectors and "
                             f"{retriever.store.code_bytes * 8}-bit codes, the config says {encoder.dim}-d, "
                             f"{hasher.bits} bits")
        for modality in ("image", "text"):
            if retriever.store.chunks(modality):
                retriever._gallery(modality)
        return retriever

    def push_to_hub(self, repo_id: str, *, private: bool = False, token: str | None = None,
                    commit_message: str = "Upload retriever") -> str:
        from common.hub import push_folder

        return push_folder(self.save_pretrained, repo_id, private=private, token=token,
                           commit_message=commit_message)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{m}={len(g)}" for m, g in self.galleries.items())
        return (f"Retriever(encoder={self.encoder.model_id!r}, hasher={self.hasher!r}, index={self.index_kind!r}, "
                f"reranker={self.reranker!r}, {sizes})")
