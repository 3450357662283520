"""A gallery whose items live in a :class:`retrieval.store.Store` on disk.

Same interface as the in-memory :class:`retrieval.gallery.Gallery` (``index``, ``add``, ``fetch``,
``remove``, ``export``), so the Retriever searches either the same way. Only the binary index is in
memory (it is derived data, rebuilt from the stored codes on open: ``bits / 8`` bytes per item plus
faiss' id map), with a 16-byte-per-item id -> (chunk, row) map so that the float-rescoring cascade
reads vectors without a SQLite round trip; float vectors are memory-mapped and items/payloads are read from SQLite for the
candidates of each query only.
"""

from __future__ import annotations

import ctypes
import warnings
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from hashing.index import BinaryIndex, create_index

from .gallery import check_add, storable_item

if TYPE_CHECKING:
    from .store import Store


def return_free_heap() -> bool:
    """Hands freed heap pages back to the OS (glibc ``malloc_trim``); False where there is none.

    Building the index on open concatenates per-chunk arrays and copies them into faiss; glibc
    keeps the freed temporaries (below its mmap threshold, which grows after large frees) mapped in
    the process, where they would count as the open's memory until reused: at a million items they
    outweigh what the open keeps. Trimming costs milliseconds, once per open.
    """
    try:
        return bool(ctypes.CDLL(None).malloc_trim(0))
    except (AttributeError, OSError):  # not glibc (macOS, musl): nothing to do
        return False


class Locations:
    """id -> (chunk, row) in sorted numpy arrays: 16 bytes an item, looked up by binary search."""

    def __init__(self) -> None:
        self.ids = np.empty(0, dtype=np.int64)
        self.chunks = np.empty(0, dtype=np.int32)
        self.rows = np.empty(0, dtype=np.int32)

    def add(self, ids: np.ndarray, chunks: np.ndarray, rows: np.ndarray) -> None:
        ids, chunks, rows = (np.concatenate(p) for p in ((self.ids, ids), (self.chunks, chunks), (self.rows, rows)))
        order = np.argsort(ids, kind="stable")
        self.ids, self.chunks, self.rows = ids[order], chunks[order], rows[order]

    def remove(self, ids: np.ndarray) -> None:
        keep = ~np.isin(self.ids, ids)
        self.ids, self.chunks, self.rows = self.ids[keep], self.chunks[keep], self.rows[keep]

    def find(self, ids: np.ndarray, modality: str) -> tuple[np.ndarray, np.ndarray]:
        pos = np.searchsorted(self.ids, ids)
        pos = np.minimum(pos, max(len(self.ids) - 1, 0))
        bad = (len(self.ids) == 0) | (self.ids[pos] != ids) if len(self.ids) else np.ones(len(ids), bool)
        if np.any(bad):
            raise KeyError(f"no {modality} with id {int(np.asarray(ids)[bad][0])} in this store")
        return self.chunks[pos], self.rows[pos]


class StoredGallery:
    """A store's items of one modality behind the configured binary index.

    An index that must be trained (IVF, buckets) is trained on every live code once the collection
    holds its :attr:`~hashing.index.BinaryIndex.train_size` (39 codes per list); until then the
    collection is searched exactly by a flat index. So a folder indexed a chunk at a time never
    trains cells on its first chunk alone, and a store smaller than ``nlist`` still opens.
    """

    def __init__(self, store: Store, modality: str, bits: int, index: str = "flat",
                 index_params: dict | None = None) -> None:
        self.store = store
        self.modality = modality
        self.dim = store.dim
        self.store_vectors = store.codecs[modality].dtype != "none"
        self.bits, self.kind, self.params = bits, index, dict(index_params or {})
        self._train_at = create_index(index, bits, **self.params).train_size
        self.index: BinaryIndex
        self._fill_index()

    @property
    def is_standing_in(self) -> bool:
        """True while a flat index serves in place of the configured one (too few codes to train it)."""
        return self.index.kind != self.kind

    def _fill_index(self) -> None:
        ids, codes, chunks, rows = [], [], [], []
        for chunk, chunk_rows, chunk_ids in self.store.live_locations(self.modality):
            ids.append(chunk_ids)
            codes.append(np.ascontiguousarray(self.store.chunk_codes(self.modality, chunk)[chunk_rows]))
            chunks.append(np.full(len(chunk_rows), chunk, dtype=np.int32))
            rows.append(chunk_rows.astype(np.int32))
        self._locate = Locations()
        all_codes = np.concatenate(codes) if codes else np.empty((0, self.bits // 8), np.uint8)
        self.index = self._index_for(all_codes)
        if not ids:
            return
        self.index.add(all_codes, np.concatenate(ids))
        self._locate.add(np.concatenate(ids), np.concatenate(chunks), np.concatenate(rows))
        del ids, codes, chunks, rows, all_codes
        return_free_heap()

    def _index_for(self, training_codes: np.ndarray) -> BinaryIndex:
        """The configured index (trained on ``training_codes`` when it needs training), or the flat
        stand-in while there are too few codes, or when training fails (then retried at twice the size)."""
        index = create_index(self.kind, self.bits, **self.params)
        if index.is_trained:
            return index
        if len(training_codes) < self._train_at:
            return create_index("flat", self.bits)
        try:
            return index.train(training_codes)
        except ValueError as e:  # e.g. fewer distinct codes than buckets: keep serving, exactly
            self._train_at = 2 * len(training_codes)
            warnings.warn(f"{self.modality} {self.kind} index not trained on {len(training_codes)} codes ({e}); "
                          f"searching exactly until the collection holds {self._train_at}", stacklevel=3)
            return create_index("flat", self.bits)

    def __len__(self) -> int:
        return self.index.ntotal

    def add(self, codes: np.ndarray, vectors: np.ndarray, items: Sequence[Any], payloads: Sequence[Any] | None,
            ids: np.ndarray | None = None) -> np.ndarray:
        """Appends one committed chunk, then makes it searchable."""
        vectors, payloads = check_add(self.modality, self.dim, codes, vectors, items, payloads)
        codes = np.ascontiguousarray(codes)
        with self.store.transaction() as tx:
            new_ids = tx.append(self.modality, codes, vectors, [storable_item(i) for i in items], payloads, ids)
        if len(new_ids) and self.is_standing_in and len(self) + len(new_ids) >= self._train_at:
            self._fill_index()  # enough codes now: the configured index, trained on every live code
        elif len(new_ids):
            self.index.add(codes, new_ids)
            chunk = self.store.chunks(self.modality)[-1][0]
            self._locate.add(new_ids, np.full(len(new_ids), chunk, dtype=np.int32),
                             np.arange(len(new_ids), dtype=np.int32))
        return new_ids

    def fetch(self, ids: Sequence[int], vectors: bool = True) -> tuple[list[Any], np.ndarray | None, list[Any]]:
        return self.store.fetch(self.modality, ids, vectors and self.store_vectors)

    def fetch_vectors(self, ids: Sequence[int]) -> np.ndarray:
        """Vectors by id without a SQLite round trip (the cascade reads hundreds per query)."""
        chunks, rows = self._locate.find(np.asarray(ids, dtype=np.int64), self.modality)
        return self.store.vectors_at(self.modality, chunks, rows)

    def remove(self, ids: Sequence[int]) -> int:
        with self.store.transaction() as tx:
            removed = tx.remove(self.modality, ids)
        self.index.remove(np.asarray(ids, dtype=np.int64))
        self._locate.remove(np.asarray(ids, dtype=np.int64))
        return removed

    def export(self, batch: int = 65536) -> Iterator[tuple]:
        """(ids, codes, vectors, items, payloads) of live items, one stored chunk at a time."""
        for chunk_ids, codes in self.store.live_codes(self.modality):
            for start in range(0, len(chunk_ids), batch):
                ids = chunk_ids[start:start + batch]
                items, vectors, payloads = self.fetch(ids)
                yield ids, codes[start:start + batch], vectors, items, payloads
