"""An append-only on-disk store of items: binary codes, float vectors, raw items and payloads.

Why not one array file rewritten per save: a photo collection grows a chunk at a time, must
survive ``kill -9`` mid-append, and must open in seconds at 1M+ items without reading every
vector. So (rclip's habit: the index is a small database, not a pickle)::

    store.sqlite              meta, chunks, items (id -> chunk/row, item, payload)
    chunks/MOD-NNNNNNNN.codes.npy      packed uint8 codes of one appended chunk
    chunks/MOD-NNNNNNNN.vectors.npy    its float vectors (fp16 by default; int8 or fp32)

An append writes the chunk files (temporary name, fsync, rename) and then commits one SQLite
transaction naming them; a chunk file that no committed row names is an orphan of a crash and is
deleted the next time a writer opens the store. So every state a reader can see is a committed
one: the last transaction, whole. Callers may add their own statements to the same transaction
(the folder indexer records file fingerprints there), which makes "chunk encoded" and "files
done" one atomic fact.

Vectors are memory-mapped and read only for the candidates a query asks about. int8 follows
sentence-transformers' ``quantize_embeddings``: per-dimension ranges from the first chunk,
255 steps; values outside the ranges are clipped.

Integrity: each commit records the size and SHA-256 of the chunk files it names (``chunk_files``).
Opening a store compares every chunk file's size with that record (a ``stat`` each; stores written
before the record existed are checked against the size their ``.npy`` header and row count imply),
and the codes, read whole to build the index anyway, against their checksum; the vectors' checksum,
which would mean reading every vector, is checked by :meth:`Store.verify`. A mismatch is a
:class:`StoreError` naming the file.

Concurrency: any number of readers (one SQLite connection per thread, WAL journal); one writer
at a time per store, enforced by an exclusive ``flock`` on ``.lock``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import mmap
import os
import sqlite3
import threading
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from common.digests import file_sha256
from common.atomic import atomic_write_file, fsync_dir

DB_NAME = "store.sqlite"
CHUNK_DIR = "chunks"
LOCK_NAME = ".lock"
STORE_VERSION = 1
VECTOR_DTYPES = ("fp16", "int8", "fp32", "none")  # none: codes only, no float rescoring
MODALITIES = ("image", "text")
#: Open memory maps kept per store; a chunk beyond that is re-mapped on use (cheap, no reads).
MAX_OPEN_CHUNKS = 256

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    modality TEXT NOT NULL, chunk INTEGER NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (modality, chunk));
CREATE TABLE IF NOT EXISTS items (
    modality TEXT NOT NULL, id INTEGER NOT NULL, chunk INTEGER NOT NULL, row INTEGER NOT NULL,
    item TEXT, payload TEXT,
    PRIMARY KEY (modality, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chunk_files (
    modality TEXT NOT NULL, chunk INTEGER NOT NULL, kind TEXT NOT NULL, bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL, PRIMARY KEY (modality, chunk, kind));
"""


class StoreError(ValueError):
    """A store directory that is missing, of another version, or inconsistent; the message says which."""


class StoreLockedError(RuntimeError):
    """Another process is writing to this store."""


def check_vector_dtype(vector_dtype: str) -> str:
    if vector_dtype not in VECTOR_DTYPES:
        raise ValueError(f"vector_dtype must be one of {', '.join(VECTOR_DTYPES)}, got {vector_dtype!r}")
    return vector_dtype


class VectorCodec:
    """Float32 unit vectors <-> their stored form (fp32, fp16, or int8 with per-dimension ranges)."""

    def __init__(self, dtype: str, low: np.ndarray | None = None, high: np.ndarray | None = None) -> None:
        self.dtype = check_vector_dtype(dtype)
        self.low, self.high = low, high

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype({"fp32": np.float32, "fp16": np.float16, "int8": np.int8}[self.dtype])

    @property
    def calibrated(self) -> bool:
        return self.dtype != "int8" or self.low is not None

    def calibrate(self, vectors: np.ndarray) -> None:
        low, high = vectors.min(0).astype(np.float32), vectors.max(0).astype(np.float32)
        self.low, self.high = low, np.where(high > low, high, low + 1e-6).astype(np.float32)

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        if self.dtype != "int8":
            return vectors.astype(self.numpy_dtype)
        steps = (vectors - self.low) / ((self.high - self.low) / 255.0)
        return (np.clip(np.rint(steps), 0, 255) - 128).astype(np.int8)

    def decode(self, stored: np.ndarray) -> np.ndarray:
        if self.dtype != "int8":
            return np.asarray(stored, dtype=np.float32)
        return ((stored.astype(np.float32) + 128.0) * ((self.high - self.low) / 255.0) + self.low).astype(np.float32)

    def to_meta(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dtype": self.dtype}
        if self.low is not None:
            out["low"], out["high"] = self.low.tolist(), self.high.tolist()
        return out

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> "VectorCodec":
        low = np.asarray(meta["low"], np.float32) if "low" in meta else None
        high = np.asarray(meta["high"], np.float32) if "high" in meta else None
        return cls(meta["dtype"], low, high)


def chunk_path(directory: Path, modality: str, chunk: int, kind: str) -> Path:
    return directory / CHUNK_DIR / f"{modality}-{chunk:08d}.{kind}.npy"


def save_npy(path: Path, array: np.ndarray) -> None:
    atomic_write_file(path, lambda fh: np.save(fh, np.ascontiguousarray(array), allow_pickle=False))


def store_backend(directory: Path) -> str:
    """Where a store keeps its items: "local" (chunk files here) or "milvus" (its meta says so)."""
    try:
        db = sqlite3.connect(f"file:{directory / DB_NAME}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT value FROM meta WHERE key = 'backend'").fetchone()
        finally:
            db.close()
    except sqlite3.Error:  # unreadable: Store() names the problem
        return "local"
    return row[0] if row else "local"



def npy_expected_bytes(path: Path) -> tuple[int, tuple[int, ...]]:
    """(the size the file's own ``.npy`` header implies, the shape it declares)."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(fh)
        return fh.tell() + int(np.prod(shape)) * dtype.itemsize, tuple(shape)


def check_append(store: "Store", modality: str, codes: np.ndarray, vectors: np.ndarray | None,
                 items: Sequence[Any], payloads: Sequence[Any]) -> int:
    """The checks every store's append makes before it writes anything; returns the row count."""
    n = len(codes)
    if codes.dtype != np.uint8 or codes.shape != (n, store.code_bytes):
        raise ValueError(f"codes must be uint8 ({n}, {store.code_bytes}), got {codes.dtype} {codes.shape}")
    if store.codecs[modality].dtype != "none" and (vectors is None or vectors.shape != (n, store.dim)):
        raise ValueError(f"vectors must be ({n}, {store.dim}), got {getattr(vectors, 'shape', None)}")
    if len(items) != n or len(payloads) != n:
        raise ValueError(f"{n} codes but {len(items)} items and {len(payloads)} payloads")
    return n

class Store:
    """See the module docstring. Open with :meth:`create` or :meth:`open`; :meth:`close` when done."""

    def __init__(self, directory: Path, writable: bool) -> None:
        self.directory = directory
        self.writable = writable
        self._local = threading.local()
        self._maps: OrderedDict[tuple[str, int, str], np.ndarray] = OrderedDict()
        self._maps_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._lock_fd: int | None = None
        meta = self._read_meta()
        if int(meta.get("store_version", -1)) != STORE_VERSION:
            raise StoreError(f"{directory / DB_NAME}: store_version {meta.get('store_version')!r} is not supported "
                             f"(expected {STORE_VERSION})")
        self.dim = int(meta["dim"])
        self.code_bytes = int(meta["code_bytes"])
        self.codecs = {m: VectorCodec.from_meta(json.loads(meta[f"codec:{m}"])) for m in MODALITIES}
        self._verified: set[tuple[str, int]] = set()  # codes files whose checksum was compared
        self._file_info = self._file_records()
        self.check_files()

    # -- opening ----------------------------------------------------------------------------------
    @classmethod
    def create(cls, directory: str | os.PathLike, dim: int, bits: int, vector_dtype: str = "fp16") -> "Store":
        """A new empty store in ``directory`` (created; it must not hold a store already)."""
        directory = Path(directory)
        check_vector_dtype(vector_dtype)
        if bits <= 0 or bits % 8:
            raise ValueError(f"bits must be a positive multiple of 8, got {bits!r}")
        if (directory / DB_NAME).exists():
            raise StoreError(f"{directory} already holds a store")
        (directory / CHUNK_DIR).mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(directory / DB_NAME)
        try:
            db.executescript(SCHEMA)
            meta = {"store_version": STORE_VERSION, "dim": int(dim), "code_bytes": bits // 8,
                    **{f"codec:{m}": json.dumps(VectorCodec(vector_dtype).to_meta()) for m in MODALITIES},
                    **{f"next_id:{m}": 0 for m in MODALITIES}}
            db.executemany("INSERT INTO meta VALUES (?, ?)", [(k, str(v)) for k, v in meta.items()])
            db.commit()
        finally:
            db.close()
        fsync_dir(directory)
        return cls.open(directory, writable=True)

    @classmethod
    def open(cls, directory: str | os.PathLike, writable: bool = False) -> "Store":
        """Opens an existing store; ``writable`` takes the writer lock and clears crash leftovers."""
        directory = Path(directory)
        if not (directory / DB_NAME).is_file():
            raise StoreError(f"{directory} holds no store ({DB_NAME} is missing)")
        if cls is Store and store_backend(directory) == "milvus":
            raise StoreError(f"{directory} keeps its items in Milvus: open it with retrieval.stores.open_store")
        store = cls(directory, writable)
        if writable:
            store._take_lock()
            store.db.executescript(SCHEMA)  # a store from before chunk_files gains the table (IF NOT EXISTS)
            store._remove_orphans()
        return store

    def _take_lock(self) -> None:
        fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLockedError(f"{self.directory} is being written by another process; wait for it "
                                   f"to finish (or stop it)") from None
        self._lock_fd = fd

    def close(self) -> None:
        """Closes this thread's connection and releases the writer lock.

        A writer leaves the database in rollback-journal mode, so a finished store is one plain
        file (no -wal/-shm) that read-only copies, such as a Hub snapshot, can open.
        """
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            if self.writable:
                try:
                    conn.execute("PRAGMA journal_mode=DELETE")
                except sqlite3.OperationalError:  # a reader still has it open: stays in WAL, still valid
                    pass
            conn.close()
            self._local.conn = None
        with self._maps_lock:
            self._maps.clear()
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def db(self) -> sqlite3.Connection:
        """This thread's connection (sqlite3 connections must not be shared across threads)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            uri = f"file:{self.directory / DB_NAME}" + ("" if self.writable else "?mode=ro")
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=30)
            if self.writable:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
            self._local.conn = conn
        return conn

    def _read_meta(self) -> dict[str, str]:
        try:
            return dict(self.db.execute("SELECT key, value FROM meta"))
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.directory / DB_NAME}: cannot read the store: {e}") from e

    def _file_records(self) -> dict[tuple[str, int, str], tuple[int, str]]:
        """(modality, chunk, kind) -> (bytes, sha256) as committed; empty for a store older than the record."""
        try:
            rows = self.db.execute("SELECT modality, chunk, kind, bytes, sha256 FROM chunk_files").fetchall()
        except sqlite3.OperationalError:  # no such table: written before records were kept
            return {}
        return {(m, c, k): (b, h) for m, c, k, b, h in rows}

    def _kinds(self, modality: str) -> tuple[str, ...]:
        return ("codes", "vectors") if self.codecs[modality].dtype != "none" else ("codes",)

    def check_files(self) -> None:
        """Every committed chunk file exists with the size its commit recorded (one ``stat`` each).

        Why at open: a truncated or replaced file would otherwise be read as zeros, garbage or an
        ``mmap`` error naming nothing, at a later search (issue 22). Stores written before sizes were
        recorded are checked against the size their ``.npy`` header and row count imply.
        """
        for modality in MODALITIES:
            for chunk, n in self.chunks(modality):
                for kind in self._kinds(modality):
                    path = chunk_path(self.directory, modality, chunk, kind)
                    try:
                        size = path.stat().st_size
                    except FileNotFoundError:
                        raise StoreError(f"{path}: committed chunk file is missing") from None
                    record = self._file_info.get((modality, chunk, kind))
                    if record is not None:
                        expected = record[0]
                    else:
                        expected, shape = npy_expected_bytes(path)
                        if shape[:1] != (n,):
                            raise StoreError(f"{path}: holds {shape[:1]} rows, its commit says {n}")
                    if size != expected:
                        raise StoreError(f"{path}: {size:,} bytes on disk, its commit recorded {expected:,}; "
                                         f"the file was truncated or replaced: restore it or rebuild the index")

    def verify(self) -> None:
        """Also compares every chunk file's SHA-256 with its record (reads every file: slow at scale)."""
        self.check_files()
        for (modality, chunk, kind), (_, sha) in self._file_info.items():
            self._check_sha(modality, chunk, kind, sha)

    def _check_sha(self, modality: str, chunk: int, kind: str, sha: str) -> None:
        path = chunk_path(self.directory, modality, chunk, kind)
        if file_sha256(path) != sha:
            raise StoreError(f"{path}: its SHA-256 differs from the one its commit recorded; the file was "
                             f"changed after it was written: restore it or rebuild the index")

    def _remove_orphans(self) -> None:
        known = {chunk_path(self.directory, m, c, kind).name
                 for m, c in self.db.execute("SELECT modality, chunk FROM chunks") for kind in ("codes", "vectors")}
        for f in (self.directory / CHUNK_DIR).iterdir():
            if f.name not in known:
                f.unlink()

    # -- reading ----------------------------------------------------------------------------------
    def count(self, modality: str) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM items WHERE modality = ?", (modality,)).fetchone()[0])

    def chunks(self, modality: str) -> list[tuple[int, int]]:
        return list(self.db.execute("SELECT chunk, n FROM chunks WHERE modality = ? ORDER BY chunk", (modality,)))

    def _map(self, modality: str, chunk: int, kind: str) -> np.ndarray:
        key = (modality, chunk, kind)
        with self._maps_lock:
            if key in self._maps:
                self._maps.move_to_end(key)
                return self._maps[key]
        array = np.load(chunk_path(self.directory, modality, chunk, kind), mmap_mode="r", allow_pickle=False)
        if kind == "vectors":  # candidates are scattered rows: read-ahead would only fill memory
            with contextlib.suppress(AttributeError, OSError, ValueError):
                array._mmap.madvise(mmap.MADV_RANDOM)
        with self._maps_lock:
            self._maps[key] = array
            while len(self._maps) > MAX_OPEN_CHUNKS:
                self._maps.popitem(last=False)
        return array

    def chunk_codes(self, modality: str, chunk: int) -> np.ndarray:
        """One chunk's codes; the first read compares the file's checksum (cheap: codes are small,
        and building the index reads them whole anyway)."""
        if (modality, chunk) not in self._verified:
            record = self._file_info.get((modality, chunk, "codes"))
            if record is not None:
                self._check_sha(modality, chunk, "codes", record[1])
            self._verified.add((modality, chunk))
        return self._map(modality, chunk, "codes")

    def live_locations(self, modality: str, batch: int = 65536) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(chunk, rows, ids) of every live item, chunk by chunk in append order.

        One pass over the items table, read ``batch`` rows at a time into numpy (a list of Python
        tuples for 1M rows would cost more memory than the index it builds).
        """
        cursor = self.db.execute("SELECT chunk, row, id FROM items WHERE modality = ?", (modality,))
        parts = []
        while rows := cursor.fetchmany(batch):
            parts.append(np.asarray(rows, dtype=np.int64))
        if not parts:
            return
        table = np.concatenate(parts)
        del parts
        table = table[np.lexsort((table[:, 1], table[:, 0]))]
        starts = np.flatnonzero(np.diff(table[:, 0], prepend=-1))
        for s, e in zip(starts, list(starts[1:]) + [len(table)]):
            yield int(table[s, 0]), table[s:e, 1].copy(), table[s:e, 2].copy()

    def live_codes(self, modality: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, codes) of every live item, chunk by chunk in append order (for building an index)."""
        for chunk, rows, ids in self.live_locations(modality):
            yield ids, np.ascontiguousarray(self.chunk_codes(modality, chunk)[rows])

    def vectors_at(self, modality: str, chunks: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Float32 vectors at (chunk, row) locations, in their order: one memory-map read per chunk."""
        codec = self.codecs[modality]
        out = np.empty((len(chunks), self.dim), dtype=np.float32)
        for chunk in sorted(set(chunks.tolist())):  # not np.unique, which imports numpy.ma (15 ms a search)
            where = np.flatnonzero(chunks == chunk)
            out[where] = codec.decode(self._map(modality, int(chunk), "vectors")[rows[where]])
        return out

    def select_ids(self, modality: str, ids: Sequence[int], columns: str = "") -> Iterator[tuple]:
        """Rows ``(id, chunk, row, *columns)`` of those ``ids`` that exist, any order (500 per query:
        SQLite's bound-parameter limit)."""
        ids = [int(i) for i in ids]
        for start in range(0, len(ids), 500):
            part = ids[start:start + 500]
            yield from self.db.execute(f"SELECT id, chunk, row{columns} FROM items WHERE modality = ? AND id IN "
                                       f"({','.join('?' * len(part))})", (modality, *part))

    def _records(self, modality: str, ids: Sequence[int], columns: str) -> list[tuple]:
        """Rows ``(chunk, row, *columns)`` of ``ids`` in their order; KeyError names an unknown id."""
        found = {row[0]: row[1:] for row in self.select_ids(modality, ids, columns)}
        try:
            return [found[int(i)] for i in ids]
        except KeyError as e:
            raise KeyError(f"no {modality} with id {e.args[0]} in this store") from None

    def _vectors(self, modality: str, records: list[tuple]) -> np.ndarray:
        locations = np.asarray([r[:2] for r in records], dtype=np.int64).reshape(-1, 2)
        return self.vectors_at(modality, locations[:, 0], locations[:, 1])

    def fetch(self, modality: str, ids: Sequence[int], vectors: bool = True
              ) -> tuple[list[Any], np.ndarray | None, list[Any]]:
        """Items, float32 vectors (or None) and payloads of ``ids``, in their order; KeyError if unknown."""
        records = self._records(modality, ids, ", item, payload")
        items = [r[2] for r in records]
        payloads = [json.loads(r[3]) if r[3] is not None else None for r in records]
        has_vectors = vectors and self.codecs[modality].dtype != "none"
        return items, self._vectors(modality, records) if has_vectors else None, payloads

    def fetch_vectors(self, modality: str, ids: Sequence[int]) -> np.ndarray:
        """Float32 vectors of ``ids`` only (what the float-rescoring cut of stage 1 reads)."""
        return self._vectors(modality, self._records(modality, ids, ""))

    def disk_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.directory.rglob("*") if f.is_file())

    def describe(self) -> dict[str, Any]:
        """Where the items live (``crossmodal info`` shows it)."""
        return {"backend": "local"}

    def gallery(self, modality: str, bits: int, index: str = "flat", index_params: dict | None = None) -> Any:
        """The searchable gallery of one modality over this store (the Retriever asks the store)."""
        from .stored_gallery import StoredGallery

        return StoredGallery(self, modality, bits, index, index_params)

    # -- writing ----------------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator["Transaction"]:
        """One atomic commit: everything done through the yielded object lands together or not at all."""
        if not self.writable:
            raise PermissionError(f"{self.directory} was opened read-only")
        with self._write_lock:
            db = self.db
            tx = Transaction(self)
            db.execute("BEGIN IMMEDIATE")
            try:
                yield tx
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                for f in tx.written:
                    f.unlink(missing_ok=True)
                self.codecs = tx.codecs_before
                self._file_info = tx.records_before
                raise
            fsync_dir(self.directory / CHUNK_DIR)


class Transaction:
    """Appends, removals and payload updates of one :meth:`Store.transaction`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = store.db
        self.written: list[Path] = []
        self.codecs_before = dict(store.codecs)
        self.records_before = dict(store._file_info)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self.db.execute(sql, params)

    def executemany(self, sql: str, rows: Any) -> sqlite3.Cursor:
        return self.db.executemany(sql, rows)

    def next_id(self, modality: str) -> int:
        return int(self.db.execute("SELECT value FROM meta WHERE key = ?", (f"next_id:{modality}",)).fetchone()[0])

    def append(self, modality: str, codes: np.ndarray, vectors: np.ndarray | None, items: Sequence[str | None],
               payloads: Sequence[Any], ids: np.ndarray | None = None) -> np.ndarray:
        """Writes one chunk; returns its ids (consecutive after every id ever used, unless given)."""
        store = self.store
        n = check_append(store, modality, codes, vectors, items, payloads)
        codec = store.codecs[modality]
        if n == 0:
            return np.empty(0, dtype=np.int64)
        start = self.next_id(modality)
        if ids is None:
            ids = np.arange(start, start + n, dtype=np.int64)
        else:
            ids = np.asarray(ids, dtype=np.int64)
            clash = next(store.select_ids(modality, ids), None)
            if clash:
                raise ValueError(f"{modality} id {clash[0]} is already in the store")
        if not codec.calibrated:
            codec = VectorCodec(codec.dtype)
            codec.calibrate(vectors)
            store.codecs = {**store.codecs, modality: codec}
            self.execute("UPDATE meta SET value = ? WHERE key = ?", (json.dumps(codec.to_meta()), f"codec:{modality}"))
        row = self.db.execute("SELECT MAX(chunk) FROM chunks WHERE modality = ?", (modality,)).fetchone()
        chunk = (row[0] + 1) if row[0] is not None else 0
        files = [("codes", codes)] + ([("vectors", codec.encode(vectors))] if codec.dtype != "none" else [])
        records = []
        for kind, array in files:
            path = chunk_path(store.directory, modality, chunk, kind)
            save_npy(path, array)
            self.written.append(path)
            records.append((modality, chunk, kind, path.stat().st_size, file_sha256(path)))
        self.execute("INSERT INTO chunks VALUES (?, ?, ?)", (modality, chunk, n))
        self.executemany("INSERT INTO chunk_files VALUES (?, ?, ?, ?, ?)", records)
        store._file_info.update({r[:3]: r[3:] for r in records})
        self.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?)", (
            (modality, int(i), chunk, r, item, json.dumps(p) if p is not None else None)
            for r, (i, item, p) in enumerate(zip(ids, items, payloads))))
        self.execute("UPDATE meta SET value = ? WHERE key = ?",
                     (str(max(start, int(ids.max()) + 1)), f"next_id:{modality}"))
        return ids

    def remove(self, modality: str, ids: Sequence[int]) -> int:
        """Drops items (their chunk rows stay on disk, unreferenced); returns how many existed."""
        removed = 0
        for i in ids:
            removed += self.execute("DELETE FROM items WHERE modality = ? AND id = ?", (modality, int(i))).rowcount
        return removed

    def set_payload(self, modality: str, id: int, payload: Any) -> None:
        self.execute("UPDATE items SET payload = ? WHERE modality = ? AND id = ?",
                     (json.dumps(payload) if payload is not None else None, modality, int(id)))

