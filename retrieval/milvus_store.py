"""The store with its items in Milvus: same interface as :class:`retrieval.store.Store`.

For a collection past one machine (issue 25): Milvus serves binary codes natively
(``BINARY_VECTOR`` with ``HAMMING``), keeps float16 vectors beside them, shards and replicates.
The index folder keeps what is small and local: the retriever's config, its hasher and a SQLite
*ledger* (``store.sqlite``: meta, which ids exist with their item and payload, and the folder
indexer's file and caption records, so dedup by SHA-256 and resume work as on the local store).
The items themselves live in Milvus, one collection per modality, ``NAME_image`` and
``NAME_text`` (Milvus Lite 2.5.1 has no partitions, and two collections keep stage 1 a plain
unfiltered Hamming search)::

    pk       INT64 primary key: the item id
    code     BINARY_VECTOR (bits), index BIN_FLAT (Lite) or BIN_IVF_FLAT (server), metric HAMMING
    vector   FLOAT16_VECTOR (dim), index FLAT, metric IP   (absent for vector_dtype "none")
    item     VARCHAR: the image path or the caption
    payload  JSON
    sha256   VARCHAR: the file fingerprint of an image indexed from a folder ("" otherwise)

A URI ending in ``.db`` is Milvus Lite (a local server process per file, one process at a time);
``http://host:19530`` is a Milvus server or cluster.

Atomicity across two systems. SQLite stays the one truth of what is committed; Milvus follows it:

* an append inserts its rows into Milvus *before* the SQLite commit, after writing their ids to
  ``milvus_pending.json`` (atomic); the commit removes that file. A kill in between leaves rows in
  Milvus that the ledger does not know: the next writer deletes them (the ids in the file that
  the ledger lacks). So a folder indexed, killed and rerun holds every image once.
* removals and payload updates are recorded in the ledger's ``milvus_pending`` table inside the
  commit and applied to Milvus after it; a writer that finds rows there applies them again
  (deletes and upserts are idempotent).

A reader never sees such rows: while ``milvus_pending.json`` exists (a commit in flight, or a
killed one), search results are checked against the ledger, and exports always are. (A reader
that searched just before a writer wrote that file may see the rows of a commit that lands a
moment later.)

Reads use ``Strong`` consistency, so a search sees every committed add (Milvus' default,
``Bounded``, may lag by a few hundred milliseconds; a server deployment that can accept that
may change it on the collection).
"""

from __future__ import annotations

import json
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from common.atomic import atomic_write_file

from .store import (DB_NAME, MODALITIES, SCHEMA, STORE_VERSION, Store, StoreError, Transaction, VectorCodec,
                    check_append)

BACKEND = "milvus"
DEFAULT_COLLECTION = "crossmodal"
PENDING_FILE = "milvus_pending.json"
#: What Milvus stores for each vector_dtype; int8 has no Milvus type we can use in Lite 2.5.1.
MILVUS_VECTOR_DTYPES = ("fp16", "fp32", "none")
#: Milvus' largest ``limit`` (topk) for one search.
MAX_TOPK = 16384
#: Rows per insert call: pymilvus 2.6 is linear in the batch (2.5.x grew quadratically), and
#: gRPC's default 64 MB message limit holds ~100K rows of 256-d fp16 + codes.
INSERT_BATCH = 8192
MAX_ITEM_CHARS = 65535
PENDING_SCHEMA = "CREATE TABLE IF NOT EXISTS milvus_pending (modality TEXT NOT NULL, id INTEGER NOT NULL, op TEXT NOT NULL)"

_lite_lock = threading.Lock()
_lite_users: dict[str, int] = {}


def is_lite(uri: str) -> bool:
    return uri.endswith(".db")


def normalise_uri(uri: str) -> str:
    """A Lite file as an absolute path (the index may be opened from another working directory)."""
    if not isinstance(uri, str) or not uri:
        raise ValueError(f"milvus_uri must be a non-empty string, got {uri!r}")
    if is_lite(uri) and "://" not in uri:
        return os.path.abspath(os.path.expanduser(uri))
    if not uri.startswith(("http://", "https://", "tcp://", "unix:")):
        raise ValueError(f"milvus_uri must be a Milvus Lite file ending in .db or http(s)://host:port, got {uri!r}")
    return uri


def check_collection_name(name: str) -> str:
    if not isinstance(name, str) or not name or not (name[0].isalpha() or name[0] == "_") \
            or not all(c.isalnum() or c == "_" for c in name) or len(name) > 200:
        raise ValueError(f"collection must be letters, digits and underscores, starting with a letter, got {name!r}")
    return name


def connect(uri: str, timeout: float = 10.0) -> Any:
    """A ``MilvusClient``; an unreachable Milvus or a missing extra is a StoreError naming the URI."""
    try:
        from pymilvus import MilvusClient
    except ImportError as e:
        raise StoreError(f"a Milvus store needs pymilvus (pip install 'crossmodal-retrieval[milvus]'): {e}") from None
    if is_lite(uri):
        if not Path(uri).parent.is_dir():
            raise StoreError(f"Milvus Lite file {uri}: folder {Path(uri).parent} does not exist")
        with _lite_lock:
            _lite_users[uri] = _lite_users.get(uri, 0) + 1
    try:
        return MilvusClient(uri=uri, timeout=timeout)
    except Exception as e:  # pymilvus raises MilvusException, grpc errors or a bare Exception
        release(uri)
        hint = " (Milvus Lite serves one process at a time: is another process using this file?)" if is_lite(uri) else ""
        raise StoreError(f"cannot reach Milvus at {uri}: {type(e).__name__}: {e}{hint}") from None


def release(uri: str) -> None:
    """Stops this process' Milvus Lite server for ``uri`` once its last client is closed."""
    if not is_lite(uri):
        return
    with _lite_lock:
        users = _lite_users.get(uri, 0) - 1
        if users > 0:
            _lite_users[uri] = users
            return
        _lite_users.pop(uri, None)
        try:
            from milvus_lite.server_manager import server_manager_instance
        except ImportError:
            return
        if uri in getattr(server_manager_instance, "_servers", {}):
            server_manager_instance.release_server(uri)


def create_collection(client: Any, name: str, dim: int, bits: int, vector_dtype: str,
                      index_params: dict[str, Any] | None = None) -> None:
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("pk", DataType.INT64, is_primary=True)
    schema.add_field("code", DataType.BINARY_VECTOR, dim=bits)
    if vector_dtype != "none":
        schema.add_field("vector", DataType.FLOAT16_VECTOR if vector_dtype == "fp16" else DataType.FLOAT_VECTOR,
                         dim=dim)
    schema.add_field("item", DataType.VARCHAR, max_length=MAX_ITEM_CHARS)
    schema.add_field("payload", DataType.JSON)
    schema.add_field("sha256", DataType.VARCHAR, max_length=64)
    params = client.prepare_index_params()
    code_index = dict(index_params or {})
    kind = code_index.pop("index_type", "BIN_FLAT")
    params.add_index("code", index_type=kind, metric_type="HAMMING", params=code_index)
    if vector_dtype != "none":  # Milvus loads a collection only when every vector field is indexed
        params.add_index("vector", index_type="FLAT", metric_type="IP")
    client.create_collection(name, schema=schema, index_params=params, consistency_level="Strong")


def milvus_index(kind: str, params: dict[str, Any], lite: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The retriever's index kind as Milvus' (index params, search params).

    ``flat`` is ``BIN_FLAT`` (exact, what Milvus Lite supports); ``ivf`` is ``BIN_IVF_FLAT`` with
    ``nlist`` cells (default 1024) searched ``nprobe`` at a time (default 64), a server's choice
    past ~10M items per shard. hnsw and buckets have no binary counterpart in Milvus.
    """
    from common.checks import check_int

    if kind == "flat":
        if params:
            raise ValueError(f"index flat takes no settings, got {sorted(params)}")
        return {"index_type": "BIN_FLAT"}, {}
    if kind == "ivf":
        if lite:
            raise ValueError("Milvus Lite has BIN_FLAT only: use index flat with a .db URI (ivf needs a Milvus server)")
        unknown = set(params) - {"nlist", "nprobe"}
        if unknown:
            raise ValueError(f"index ivf on Milvus takes nlist and nprobe, got {sorted(unknown)}")
        nlist = check_int("nlist", params.get("nlist", 1024))
        nprobe = check_int("nprobe", params.get("nprobe", 64))
        return {"index_type": "BIN_IVF_FLAT", "nlist": nlist}, {"nprobe": nprobe}
    raise ValueError(f"a Milvus store takes index flat (BIN_FLAT) or ivf (BIN_IVF_FLAT), got {kind!r}")


class MilvusStore(Store):
    """See the module docstring. :meth:`create` a new one; :meth:`Store.open` opens either kind."""

    def __init__(self, directory: Path, writable: bool) -> None:
        super().__init__(directory, writable)
        meta = self._read_meta()
        self.uri = meta["milvus_uri"]
        self.collection = meta["milvus_collection"]
        self.search_params = {"metric_type": "HAMMING", "params": json.loads(meta.get("milvus_search_params", "{}"))}
        self.client = connect(self.uri)
        try:
            for m in MODALITIES:
                if not self.client.has_collection(self.collection_of(m)):
                    raise StoreError(f"{directory}: Milvus at {self.uri} has no collection "
                                     f"{self.collection_of(m)!r} (dropped, or another URI?)")
        except StoreError:
            self._release_client()
            raise
        except Exception as e:
            self._release_client()
            raise StoreError(f"cannot reach Milvus at {self.uri}: {type(e).__name__}: {e}") from None

    def collection_of(self, modality: str) -> str:
        return f"{self.collection}_{modality}"

    @classmethod
    def create(cls, directory: str | os.PathLike, dim: int, bits: int, vector_dtype: str = "fp16", *,
               uri: str, collection: str = DEFAULT_COLLECTION, index: str = "flat",
               index_params: dict[str, Any] | None = None) -> "MilvusStore":
        """A new ledger in ``directory`` and a new, empty collection pair in Milvus.

        A collection of that name holding items is refused (another index owns it); an empty one
        (left by a ``create`` killed before its folder was committed) is made anew.
        """
        directory = Path(directory)
        if vector_dtype not in MILVUS_VECTOR_DTYPES:
            raise ValueError(f"a Milvus store keeps vectors as {', '.join(MILVUS_VECTOR_DTYPES)}, got {vector_dtype!r}")
        if bits <= 0 or bits % 8:
            raise ValueError(f"bits must be a positive multiple of 8, got {bits!r}")
        uri, collection = normalise_uri(uri), check_collection_name(collection)
        code_index, search_params = milvus_index(index, index_params or {}, is_lite(uri))
        if (directory / DB_NAME).exists():
            raise StoreError(f"{directory} already holds a store")
        client = connect(uri)
        try:
            for m in MODALITIES:
                name = f"{collection}_{m}"
                if client.has_collection(name):
                    rows = client.query(name, filter="", output_fields=["count(*)"])[0]["count(*)"]
                    if rows:
                        raise StoreError(f"Milvus at {uri} already has a collection {name!r} with {rows} items; "
                                         f"choose another collection name (or drop it)")
                    client.drop_collection(name)
                create_collection(client, name, int(dim), int(bits), vector_dtype, code_index)
        except StoreError:
            raise
        except Exception as e:
            raise StoreError(f"Milvus at {uri}: cannot create collection {collection!r}: {e}") from None
        finally:
            client.close()
            release(uri)
        directory.mkdir(parents=True, exist_ok=True)
        import sqlite3

        db = sqlite3.connect(directory / DB_NAME)
        try:
            db.executescript(SCHEMA + PENDING_SCHEMA + ";")
            meta = {"store_version": STORE_VERSION, "dim": int(dim), "code_bytes": bits // 8, "backend": BACKEND,
                    "milvus_uri": uri, "milvus_collection": collection, "milvus_index": json.dumps(code_index),
                    "milvus_search_params": json.dumps(search_params),
                    **{f"codec:{m}": json.dumps(VectorCodec(vector_dtype).to_meta()) for m in MODALITIES},
                    **{f"next_id:{m}": 0 for m in MODALITIES}}
            db.executemany("INSERT INTO meta VALUES (?, ?)", [(k, str(v)) for k, v in meta.items()])
            db.commit()
        finally:
            db.close()
        return cls.open(directory, writable=True)

    @classmethod
    def open(cls, directory: str | os.PathLike, writable: bool = False) -> "MilvusStore":
        directory = Path(directory)
        if not (directory / DB_NAME).is_file():
            raise StoreError(f"{directory} holds no store ({DB_NAME} is missing)")
        store = cls(directory, writable)
        if writable:
            try:
                store._take_lock()
                store._remove_orphans()
            except BaseException:
                store.close()
                raise
        return store

    def _release_client(self) -> None:
        client, self.client = getattr(self, "client", None), None
        if client is not None:
            try:
                client.close()
            finally:
                release(self.uri)

    def close(self) -> None:
        """Closes the ledger and the Milvus client (and this process' Lite server with its last client)."""
        super().close()
        self._release_client()

    # -- crash recovery ---------------------------------------------------------------------------
    def _remove_orphans(self) -> None:
        """Makes Milvus equal the ledger after a kill (see the module docstring)."""
        self.db.execute(PENDING_SCHEMA)
        pending = self.directory / PENDING_FILE
        if pending.is_file():
            for modality, ids in json.loads(pending.read_text()).items():
                known = {row[0] for row in self.select_ids(modality, ids)}
                stale = [int(i) for i in ids if int(i) not in known]
                if stale:
                    self._milvus_delete(modality, stale)
            pending.unlink()
        self._apply_pending()

    def _apply_pending(self) -> None:
        rows = list(self.db.execute("SELECT modality, id, op FROM milvus_pending"))
        if not rows:
            return
        for modality in MODALITIES:
            deletes = [i for m, i, op in rows if m == modality and op == "delete"]
            if deletes:
                self._milvus_delete(modality, deletes)
            updates = sorted({i for m, i, op in rows if m == modality and op == "payload"} - set(deletes))
            if updates:
                self._milvus_update_payloads(modality, updates)
        self.db.execute("DELETE FROM milvus_pending")

    def _milvus_delete(self, modality: str, ids: Sequence[int]) -> None:
        for start in range(0, len(ids), INSERT_BATCH):
            self.client.delete(self.collection_of(modality), ids=[int(i) for i in ids[start:start + INSERT_BATCH]])

    def _milvus_update_payloads(self, modality: str, ids: Sequence[int]) -> None:
        """Rewrites the payloads of ``ids`` from the ledger (an upsert rewrites whole rows)."""
        payloads = {row[0]: row[3] for row in self.select_ids(modality, ids, ", payload")}
        rows = self._get(modality, list(payloads), ["*"])
        for row in rows:
            text = payloads[row["pk"]]
            row["payload"] = {"v": json.loads(text) if text is not None else None}
            if "vector" in row and isinstance(row["vector"], list):  # fp16 comes back as [bytes]
                row["vector"] = np.frombuffer(row["vector"][0], dtype=np.float16)
            if isinstance(row.get("code"), list):
                row["code"] = row["code"][0]
        if rows:
            self.client.upsert(self.collection_of(modality), rows)

    def check_files(self) -> None:
        """Nothing to stat: Milvus keeps the rows, and the ledger's pending file covers a cut commit."""

    # -- reading ----------------------------------------------------------------------------------
    def chunks(self, modality: str) -> list[tuple[int, int]]:
        """One logical chunk holding every live item: Milvus, not chunk files, keeps the rows."""
        n = self.count(modality)
        return [(0, n)] if n else []

    def _get(self, modality: str, ids: Sequence[int], fields: list[str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        ids = [int(i) for i in ids]
        for start in range(0, len(ids), MAX_TOPK):
            out.extend(self.client.get(self.collection_of(modality), ids=ids[start:start + MAX_TOPK],
                                       output_fields=fields))
        return out

    def _rows_in_order(self, modality: str, ids: Sequence[int], fields: list[str]) -> list[dict[str, Any]]:
        """Milvus' ``get`` answers in its own order: rows put back in the order of ``ids``."""
        by_pk = {row["pk"]: row for row in self._get(modality, ids, fields)}
        try:
            return [by_pk[int(i)] for i in ids]
        except KeyError as e:
            raise KeyError(f"no {modality} with id {e.args[0]} in this store") from None

    def decode_vectors(self, modality: str, rows: list[dict[str, Any]]) -> np.ndarray:
        if not rows:
            return np.empty((0, self.dim), np.float32)
        first = rows[0]["vector"]
        if isinstance(first, list) and first and isinstance(first[0], (bytes, bytearray)):  # fp16: [bytes]
            raw = b"".join(r["vector"][0] for r in rows)
            return np.frombuffer(raw, dtype=np.float16).reshape(len(rows), self.dim).astype(np.float32)
        return np.asarray([r["vector"] for r in rows], dtype=np.float32).reshape(len(rows), self.dim)

    def fetch(self, modality: str, ids: Sequence[int], vectors: bool = True
              ) -> tuple[list[Any], np.ndarray | None, list[Any]]:
        has_vectors = vectors and self.codecs[modality].dtype != "none"
        fields = ["item", "payload"] + (["vector"] if has_vectors else [])
        rows = self._rows_in_order(modality, ids, fields)
        items = [r["item"] or None for r in rows]
        payloads = [self._payload(r) for r in rows]
        return items, self.decode_vectors(modality, rows) if has_vectors else None, payloads

    @staticmethod
    def _payload(row: dict[str, Any]) -> Any:
        """Payloads are stored as ``{"v": value}`` (Lite has no nullable fields; a bare null would not fit)."""
        value = row["payload"]
        return value.get("v") if isinstance(value, dict) else value

    def fetch_vectors(self, modality: str, ids: Sequence[int]) -> np.ndarray:
        return self.decode_vectors(modality, self._rows_in_order(modality, ids, ["vector"]))

    def live_codes(self, modality: str, batch: int = 16384) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, codes) of every live item, ``batch`` at a time in id order (Milvus' query iterator)."""
        for ids, rows in self._iterate(modality, ["code"], batch):
            known = self._committed(modality, ids)
            ids, rows = ids[known], [r for r, k in zip(rows, known) if k]
            if not len(ids):
                continue
            yield ids, np.frombuffer(b"".join(r["code"][0] if isinstance(r["code"], list) else r["code"]
                                              for r in rows), np.uint8).reshape(len(rows), self.code_bytes)

    def _iterate(self, modality: str, fields: list[str], batch: int) -> Iterator[tuple[np.ndarray, list[dict]]]:
        iterator = self.client.query_iterator(self.collection_of(modality), batch_size=batch, filter="",
                                              output_fields=fields)
        try:
            while rows := iterator.next():
                rows = sorted(rows, key=lambda r: r["pk"])
                yield np.asarray([r["pk"] for r in rows], dtype=np.int64), rows
        finally:
            iterator.close()

    def search_codes(self, modality: str, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Hamming top-``k`` of each packed code: (ids, distances), padded with -1 as faiss does."""
        if k > MAX_TOPK:
            raise ValueError(f"Milvus answers at most {MAX_TOPK} neighbours per query, asked for {k}")
        ids = np.full((len(codes), k), -1, dtype=np.int64)
        distances = np.full((len(codes), k), -1, dtype=np.int32)
        if not len(codes):
            return ids, distances
        results = self.client.search(self.collection_of(modality), data=[bytes(c) for c in np.asarray(codes)],
                                     anns_field="code", limit=k, output_fields=[],
                                     search_params=self.search_params)
        check = (self.directory / PENDING_FILE).exists()  # a commit in flight or killed: rows unknown to the ledger
        for row, hits in enumerate(results):
            found = np.asarray([h["id"] for h in hits], dtype=np.int64)
            dist = np.asarray([int(round(h["distance"])) for h in hits], dtype=np.int32)
            if check and len(found):
                keep = self._committed(modality, found)
                found, dist = found[keep], dist[keep]
            ids[row, :len(found)], distances[row, :len(found)] = found, dist
        return ids, distances

    def _committed(self, modality: str, ids: np.ndarray) -> np.ndarray:
        """Which of ``ids`` the ledger has committed (Milvus may hold rows of a killed commit)."""
        known = {row[0] for row in self.select_ids(modality, ids)}
        return np.fromiter((int(i) in known for i in ids), dtype=bool, count=len(ids))

    def disk_bytes(self) -> int:
        """The local folder's bytes (the ledger, config, hasher); the items' bytes are Milvus'."""
        return super().disk_bytes()

    def describe(self) -> dict[str, Any]:
        return {"backend": BACKEND, "milvus_uri": self.uri, "collection": self.collection}

    def gallery(self, modality: str, bits: int, index: str = "flat", index_params: dict | None = None) -> Any:
        from .milvus_gallery import MilvusGallery

        return MilvusGallery(self, modality, bits)

    # -- writing ----------------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator["MilvusTransaction"]:
        if not self.writable:
            raise PermissionError(f"{self.directory} was opened read-only")
        with self._write_lock:
            db = self.db
            tx = MilvusTransaction(self)
            db.execute("BEGIN IMMEDIATE")
            try:
                yield tx
                tx.insert_into_milvus()
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                tx.undo_inserts()
                self.codecs = tx.codecs_before
                raise
            (self.directory / PENDING_FILE).unlink(missing_ok=True)
            self._apply_pending()


class MilvusTransaction(Transaction):
    """Appends (buffered, inserted at commit), removals and payload updates of one transaction."""

    def __init__(self, store: MilvusStore) -> None:
        super().__init__(store)
        self.store: MilvusStore = store
        self.rows: dict[str, list[dict[str, Any]]] = {m: [] for m in MODALITIES}
        self.inserted: dict[str, list[int]] = {m: [] for m in MODALITIES}

    def append(self, modality: str, codes: np.ndarray, vectors: np.ndarray | None, items: Sequence[str | None],
               payloads: Sequence[Any], ids: np.ndarray | None = None) -> np.ndarray:
        store = self.store
        n = check_append(store, modality, codes, vectors, items, payloads)
        codec = store.codecs[modality]
        for i, item in enumerate(items):
            if item is not None and len(item) > MAX_ITEM_CHARS:
                raise ValueError(f"items[{i}] has {len(item)} characters; Milvus keeps at most {MAX_ITEM_CHARS}")
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
        stored = codec.encode(vectors) if codec.dtype != "none" else None
        for r, (i, item, p) in enumerate(zip(ids, items, payloads)):
            row = {"pk": int(i), "code": codes[r].tobytes(), "item": item or "", "payload": {"v": p}, "sha256": ""}
            if stored is not None:
                row["vector"] = stored[r]
            self.rows[modality].append(row)
        self.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?)", (
            (modality, int(i), -1, -1, item, json.dumps(p) if p is not None else None)
            for i, item, p in zip(ids, items, payloads)))
        self.execute("UPDATE meta SET value = ? WHERE key = ?",
                     (str(max(start, int(ids.max()) + 1)), f"next_id:{modality}"))
        return ids

    def remove(self, modality: str, ids: Sequence[int]) -> int:
        removed = super().remove(modality, ids)
        self.executemany("INSERT INTO milvus_pending VALUES (?, ?, 'delete')", ((modality, int(i)) for i in ids))
        # rows appended earlier in this same transaction are not in Milvus yet: drop them here
        gone = {int(i) for i in ids}
        self.rows[modality] = [r for r in self.rows[modality] if r["pk"] not in gone]
        return removed

    def set_payload(self, modality: str, id: int, payload: Any) -> None:
        super().set_payload(modality, id, payload)
        for row in self.rows[modality]:
            if row["pk"] == int(id):
                row["payload"] = {"v": payload}
                return
        self.execute("INSERT INTO milvus_pending VALUES (?, ?, 'payload')", (modality, int(id)))

    def _fingerprints(self, modality: str) -> None:
        """Fills ``sha256`` of images recorded by the folder indexer in this transaction."""
        if modality != "image" or not self.rows[modality]:
            return
        has_files = self.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'files'").fetchone()
        if not has_files:
            return
        ids = [r["pk"] for r in self.rows[modality]]
        sha = {}
        for start in range(0, len(ids), 500):
            part = ids[start:start + 500]
            sha.update(self.execute(f"SELECT image_id, sha256 FROM files WHERE image_id IN "
                                    f"({','.join('?' * len(part))})", part).fetchall())
        for row in self.rows[modality]:
            row["sha256"] = sha.get(row["pk"], "")[:64]

    def insert_into_milvus(self) -> None:
        """Before the ledger commits: note the ids (for a crash), then insert every buffered row."""
        if not any(self.rows.values()):
            return
        atomic_write_file(self.store.directory / PENDING_FILE,
                          lambda fh: fh.write(json.dumps({m: [r["pk"] for r in rows]
                                                          for m, rows in self.rows.items() if rows})), mode="w")
        for modality, rows in self.rows.items():
            self._fingerprints(modality)
            for start in range(0, len(rows), INSERT_BATCH):
                part = rows[start:start + INSERT_BATCH]
                self.store.client.insert(self.store.collection_of(modality), part)
                self.inserted[modality].extend(r["pk"] for r in part)

    def undo_inserts(self) -> None:
        """After a failed commit: the rows inserted so far leave Milvus (else the next writer does it)."""
        try:
            for modality, ids in self.inserted.items():
                if ids:
                    self.store._milvus_delete(modality, ids)
            (self.store.directory / PENDING_FILE).unlink(missing_ok=True)
        except Exception:  # Milvus unreachable now: milvus_pending.json stays for the next writer
            pass
