"""Index a folder of photos: walk, fingerprint, encode in committed chunks, skip what is broken.

What a person indexing 50,000 photos on a laptop needs, and how:

* **Resumable.** Work goes in chunks of ``chunk_size`` images; each chunk's vectors, codes and file
  records are one store transaction (``retrieval/store.py``). After Ctrl-C or ``kill -9`` the next
  run finds the committed files unchanged and encodes only the rest: at most one chunk is encoded
  twice. Files are taken in sorted order and chunk boundaries count from the first file left to
  do, so a resumed run makes the same chunks, ids and vectors as an uninterrupted one.
* **Incremental.** A file whose size and modification time are unchanged is not read. A changed
  one is hashed (SHA-256); the same content keeps its id (a ``touch``), new content replaces the
  old item. Files gone from disk are dropped, and so is their item once no path points at it.
* **Deduplicated.** Identical files (same SHA-256) are one item whose payload lists every path.
* **Never dies on a bad file.** Empty, truncated, unreadable or non-image files are recorded with
  the reason, reported at the end and in ``skipped.tsv`` inside the index, and retried only when
  they change.

Captions (optional, CSV or JSONL of ``path, caption``) index the text side too; each caption item
names its image's path and id.
"""

from __future__ import annotations

import csv
import json
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from common.digests import file_sha256

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"})
SKIPPED_REPORT = "skipped.tsv"
#: Images per committed chunk: at most this many are encoded again after a kill (about 5 s of work
#: on 2 cores), and per-chunk costs (commit, fsync, pipeline start) are amortised over them.
DEFAULT_CHUNK_SIZE = 1024
#: With no hasher shipped for the encoder, the first chunk is this large and fits the hasher.
FIT_CHUNK_SIZE = 2048

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL,
    image_id INTEGER, error TEXT);
CREATE INDEX IF NOT EXISTS files_by_sha ON files (sha256);
CREATE INDEX IF NOT EXISTS files_by_image ON files (image_id);
CREATE TABLE IF NOT EXISTS captions (
    path TEXT NOT NULL, caption TEXT NOT NULL, text_id INTEGER NOT NULL, image_id INTEGER NOT NULL,
    PRIMARY KEY (path, caption));
CREATE INDEX IF NOT EXISTS captions_by_image ON captions (image_id);
"""


# -- finding files ------------------------------------------------------------------------------------
def is_hidden(name: str) -> bool:
    return name.startswith(".")


def find_images(roots: Iterable[str | os.PathLike]) -> list[str]:
    """Absolute paths of every image file under ``roots`` (files or folders), sorted.

    Recursive; extensions are matched case-insensitively; hidden files and folders are skipped;
    symlinked folders are followed once each (a loop is not walked twice).
    """
    found: set[str] = set()
    seen_dirs: set[tuple[int, int]] = set()
    for root in roots:
        root = Path(os.path.abspath(os.path.expanduser(root)))
        if root.is_file():
            if root.suffix.lower() in IMAGE_EXTENSIONS:
                found.add(str(root))
            continue
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such file or folder")
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            st = os.stat(dirpath)
            if (st.st_dev, st.st_ino) in seen_dirs:
                dirnames[:] = []
                continue
            seen_dirs.add((st.st_dev, st.st_ino))
            dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
            for name in filenames:
                if not is_hidden(name) and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                    found.add(os.path.join(dirpath, name))
    return sorted(found)



@dataclass(frozen=True)
class FileState:
    size: int
    mtime_ns: int


def file_state(path: str) -> FileState | None:
    """Size and modification time, or None for what is not a readable regular file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return FileState(st.st_size, st.st_mtime_ns) if stat.S_ISREG(st.st_mode) else None


# -- captions -------------------------------------------------------------------------------------------
def read_captions(file: str | os.PathLike, roots: Sequence[str | os.PathLike]) -> list[tuple[str, str]]:
    """(absolute image path, caption) rows from a CSV (``path,caption``; header optional) or JSONL file.

    Relative paths are taken against each indexed folder, then against the captions file's folder.
    """
    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"captions file {file}: no such file")
    rows: list[tuple[str, str, int]] = []
    if file.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        for line_no, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                rows.append((str(record["path"]), str(record["caption"]), line_no))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{file}:{line_no}: expected a JSON object with 'path' and 'caption' ({e})") from None
    else:
        with open(file, newline="", encoding="utf-8") as fh:
            for line_no, record in enumerate(csv.reader(fh), 1):
                if not record or (line_no == 1 and [c.strip().lower() for c in record[:2]] == ["path", "caption"]):
                    continue
                if len(record) < 2:
                    raise ValueError(f"{file}:{line_no}: expected two columns, path and caption; got {record}")
                rows.append((record[0], ",".join(record[1:]), line_no))
    bases = [Path(os.path.abspath(r)) for r in roots if Path(r).is_dir()] + [file.parent.resolve()]
    out = []
    for path, caption, line_no in rows:
        if not caption.strip():
            raise ValueError(f"{file}:{line_no}: empty caption for {path}")
        candidates = [Path(path)] if os.path.isabs(path) else [b / path for b in bases]
        resolved = next((c for c in candidates if c.is_file()), candidates[0])
        out.append((os.path.abspath(resolved), caption.strip()))
    return list(dict.fromkeys(out))  # repeated rows count once


# -- the indexer ----------------------------------------------------------------------------------------
@dataclass
class IndexReport:
    """What one run did; ``skipped`` lists (path, reason) of every unreadable file in the index."""

    found: int = 0
    unchanged: int = 0
    encoded: int = 0
    linked: int = 0
    removed_files: int = 0
    removed_items: int = 0
    captions_added: int = 0
    captions_removed: int = 0
    captions_unmatched: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    #: of ``seconds``, loading the encoder (a fixed cost whatever the collection's size)
    load_seconds: float = 0.0
    #: engine ray: chunks whose embeddings a killed run had already written (not embedded again)
    shards_reused: int = 0

    def summary(self) -> str:
        parts = [f"{self.found} images found", f"{self.encoded} encoded", f"{self.unchanged} unchanged"]
        if self.linked:
            parts.append(f"{self.linked} duplicates or touched files linked without encoding")
        if self.removed_files:
            parts.append(f"{self.removed_files} files gone ({self.removed_items} items dropped)")
        if self.captions_added or self.captions_removed:
            parts.append(f"captions +{self.captions_added} -{self.captions_removed}")
        if self.captions_unmatched:
            parts.append(f"{len(self.captions_unmatched)} captions name no indexed image")
        parts.append(f"{len(self.skipped)} skipped")
        return ", ".join(parts) + f" ({self.seconds:.1f} s, of which {self.load_seconds:.1f} s loading the model)"


def image_payload(paths: Sequence[str]) -> dict[str, Any]:
    paths = sorted(paths)
    return {"path": paths[0], "paths": paths} if len(paths) > 1 else {"path": paths[0]}


class FolderIndexer:
    """Brings the index at ``directory`` up to date with the image files under ``roots``.

    ``encoder`` is an id or an Encoder; for an existing index it must be the one it was built with
    (None reuses it). ``hasher``, ``bits``, ``vector_dtype``, ``index``, ``index_params`` and
    ``store``/``milvus_uri``/``collection`` (see :meth:`Retriever.create`) shape a new index only
    (an existing one keeps its own). ``progress``: a tqdm bar with images/s and ETA.
    """

    def __init__(self, directory: str | os.PathLike, encoder: Any = None, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 batch_size: int = 64, progress: bool | None = None, hasher: str = "itq", bits: int = 64,
                 vector_dtype: str = "fp16", index: str = "flat", index_params: dict[str, Any] | None = None,
                 fit_chunk_size: int = FIT_CHUNK_SIZE, on_chunk: Callable[[int], None] | None = None,
                 store: str = "local", milvus_uri: str | None = None, collection: str | None = None,
                 engine: str = "local", ray_address: str | None = None) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.directory = Path(directory)
        self.encoder_arg = encoder
        self.chunk_size = int(chunk_size)
        self.batch_size = int(batch_size)
        self.progress = progress
        self.hasher_method, self.bits, self.vector_dtype = hasher, int(bits), vector_dtype
        self.index_kind, self.index_params = index, dict(index_params or {})
        self.fit_chunk_size = max(int(fit_chunk_size), self.chunk_size)
        self.on_chunk = on_chunk  # called after each committed chunk (tests interrupt there)
        # where a new index keeps its items (Retriever.create); an existing one keeps its own
        self.store_settings = {"store": store, "milvus_uri": milvus_uri, "collection": collection}
        if engine not in ("local", "ray"):
            raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
        if ray_address and engine != "ray":
            raise ValueError("ray_address is a setting of engine='ray'")
        self.engine, self.ray_address = engine, ray_address  # ray: retrieval/ray_engine.py embeds the chunks
        self.retriever: Any = None
        self.load_seconds = 0.0
        self._caption_rows: list[tuple[str, str]] | None = None
        # (path, caption) -> text vector encoded to fit the hasher at creation; indexing the captions
        # afterwards takes them from here instead of encoding the first chunk's captions twice
        self._fit_caption_vectors: dict[tuple[str, str], np.ndarray] = {}

    # -- opening ----------------------------------------------------------------------------------
    def _open(self) -> None:
        from .retriever import CONFIG_NAME, Retriever

        config_file = self.directory / CONFIG_NAME
        if config_file.is_file():
            saved = json.loads(config_file.read_text())["encoder"]["id"]
            if isinstance(self.encoder_arg, str) and self.encoder_arg != saved:
                raise ValueError(f"{self.directory} was built with encoder {saved!r}, not {self.encoder_arg!r}; "
                                 f"index into a new folder to change encoders")
            start = time.perf_counter()
            self.retriever = Retriever.open(self.directory, writable=True,
                                            encoder=None if isinstance(self.encoder_arg, str) else self.encoder_arg)
            self.load_seconds += time.perf_counter() - start
            self._ensure_schema()
        elif self.directory.exists() and any(self.directory.iterdir()):
            raise FileExistsError(f"{self.directory} is not empty and holds no index; choose a new folder")

    def _ensure_schema(self) -> None:
        with self.retriever.store.transaction() as tx:
            for statement in SCHEMA.strip().split(";"):
                if statement.strip():
                    tx.execute(statement)

    def _create(self, first_vectors: np.ndarray | None, first_paths: Sequence[Sequence[str]] = ()) -> None:
        """Creates the index, with the shipped hasher or one fitted on the first chunk: on its images'
        captions when a captions file names some of them, else on the images alone.
        ``first_paths[i]``: the files holding ``first_vectors[i]`` (duplicates share a row)."""
        from hashing import create_hasher

        from .retriever import Retriever, fit_on_images, shipped_hasher

        encoder = self._encoder()
        hasher = shipped_hasher(encoder, self.hasher_method, self.bits)
        if hasher is None:
            if first_vectors is None or not len(first_vectors):
                raise ValueError("no readable image to fit the hasher on")
            row_of = {path: row for row, paths in enumerate(first_paths) for path in paths}
            pairs = [(path, caption) for path, caption in self._caption_rows or () if path in row_of]
            captions = None
            if pairs:
                self._load(encoder, "text")
                vectors = encoder.encode_texts([caption for _, caption in pairs], progress=False)
                captions = ([row_of[path] for path, _ in pairs], vectors)
                self._fit_caption_vectors = dict(zip(pairs, vectors))
            hasher = fit_on_images(create_hasher(self.hasher_method, self.bits), first_vectors, captions)
        self.retriever = Retriever.create(self.directory, encoder=encoder, hasher=hasher,
                                          vector_dtype=self.vector_dtype, index=self.index_kind,
                                          index_params=self.index_params, **self.store_settings)
        self._ensure_schema()

    def _encoder(self) -> Any:
        from .encoders import load_encoder

        if self.retriever is not None:
            return self.retriever.encoder
        if not hasattr(self, "_loaded_encoder"):
            start = time.perf_counter()
            arg = self.encoder_arg if self.encoder_arg is not None else "lite"
            self._loaded_encoder = load_encoder(arg) if isinstance(arg, str) else arg
            self.load_seconds += time.perf_counter() - start
        return self._loaded_encoder

    def _load(self, encoder: Any, modality: str) -> None:
        """Loads the tower ``modality`` needs (a lazy encoder's load counts as loading, not indexing)."""
        start = time.perf_counter()
        encoder.load((modality,))
        self.load_seconds += time.perf_counter() - start

    def _needs_fit(self) -> bool:
        from .retriever import shipped_hasher

        return self.retriever is None and shipped_hasher(self._encoder(), self.hasher_method, self.bits) is None

    # -- the run ----------------------------------------------------------------------------------
    def run(self, roots: Sequence[str | os.PathLike], captions: str | os.PathLike | None = None) -> IndexReport:
        from tqdm.auto import tqdm

        start = time.perf_counter()
        report = IndexReport()
        self._open()
        try:
            paths = find_images(roots)
            caption_rows = read_captions(captions, roots) if captions else None
            self._caption_rows = caption_rows  # a hasher fitted on the first chunk fits on its captions
            report.found = len(paths)
            known = self._known_files()
            on_disk = set(paths)
            # gone: under the folders walked now and not found, or deleted wherever they were; a
            # rerun on one subfolder leaves the rest of the index alone
            walked = tuple(os.path.join(os.path.abspath(r), "") for r in roots if os.path.isdir(r))
            gone = [p for p in known if p not in on_disk and (p.startswith(walked) or not os.path.exists(p))]
            todo: list[tuple[str, FileState]] = []
            for p in paths:
                state = file_state(p)
                if state is None:
                    continue
                record = known.get(p)
                if record is not None and (record[0], record[1]) == (state.size, state.mtime_ns):
                    report.unchanged += 1
                else:
                    todo.append((p, state))
            if gone:
                self._remove_files(gone, report)
            if not paths and self.retriever is None:
                raise ValueError(f"no image files found under {', '.join(map(str, roots))}")
            bar = tqdm(total=len(todo), desc="index images", unit="img",
                       disable=self.progress is False or (self.progress is None and len(todo) <= self.chunk_size))
            first = self.fit_chunk_size if todo and self._needs_fit() else self.chunk_size
            chunks = [todo[:first]] + [todo[i:i + self.chunk_size] for i in range(first, len(todo), self.chunk_size)]
            shards = self._ray_shards(chunks) if self.engine == "ray" and todo else None
            encoded = shards.run(chunks) if shards is not None else None
            position = 0
            for chunk in chunks if todo else []:
                self._index_chunk(chunk, report, next(encoded) if encoded is not None else None)
                position += len(chunk)
                bar.update(len(chunk))
                if self.on_chunk is not None:
                    self.on_chunk(position)
            bar.close()
            if self.retriever is None:
                raise ValueError(f"none of the {len(paths)} image files under {', '.join(map(str, roots))} "
                                 f"could be read")
            if shards is not None:
                report.shards_reused = shards.reused
                shards.clear()
            if caption_rows is not None:
                self._index_captions(caption_rows, report)
            report.skipped = self.skipped()
            self._write_skipped_report(report.skipped)
        finally:
            report.seconds = time.perf_counter() - start
            report.load_seconds = self.load_seconds
            if self.retriever is not None:
                self.retriever.close()
        return report

    def _known_files(self) -> dict[str, tuple[int, int, str, int | None]]:
        if self.retriever is None:
            return {}
        return {r[0]: tuple(r[1:]) for r in self.retriever.store.db.execute(
            "SELECT path, size, mtime_ns, sha256, image_id FROM files")}

    def _remove_files(self, paths: list[str], report: IndexReport) -> None:
        with self.retriever.store.transaction() as tx:
            affected = set()
            for p in paths:
                row = tx.execute("SELECT image_id FROM files WHERE path = ?", (p,)).fetchone()
                tx.execute("DELETE FROM files WHERE path = ?", (p,))
                if row and row[0] is not None:
                    affected.add(row[0])
            for image_id in sorted(affected):
                report.removed_items += self._relink(tx, image_id)
        report.removed_files += len(paths)

    def _relink(self, tx: Any, image_id: int) -> int:
        """After paths of ``image_id`` changed: drop it when no path is left, else rewrite its payload."""
        remaining = [r[0] for r in tx.execute("SELECT path FROM files WHERE image_id = ?", (image_id,))]
        if remaining:
            tx.set_payload("image", image_id, image_payload(remaining))
            return 0
        tx.remove("image", [image_id])
        text_ids = [r[0] for r in tx.execute("SELECT text_id FROM captions WHERE image_id = ?", (image_id,))]
        if text_ids:
            tx.remove("text", text_ids)
            tx.execute("DELETE FROM captions WHERE image_id = ?", (image_id,))
        return 1

    def _ray_shards(self, chunks: list[list[tuple[str, FileState]]]) -> Any:
        from .ray_engine import RayShards

        encoder = self._encoder()
        sendable = self.encoder_arg if not isinstance(self.encoder_arg, (str, type(None))) else encoder.model_id
        return RayShards(self.directory, sendable, encoder.dim, self.batch_size, address=self.ray_address)

    def _encode_new(self, chunk: list[tuple[str, FileState]], firsts: list[int], encoded: Any
                    ) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
        """(vectors, kept, failed) of the chunk's new content at ``firsts``: encoded here, or picked
        from the Ray engine's shard of the whole chunk (same order, same skip reasons)."""
        if encoded is None:
            encoder = self._encoder()
            self._load(encoder, "image")
            return encoder.encode_images_skipping([chunk[p][0] for p in firsts], self.batch_size)
        paths, vectors, kept, failed = encoded
        if paths != [p for p, _ in chunk]:
            raise RuntimeError("a Ray shard does not hold its chunk's files (files changed during the run?)")
        row_of = {pos: row for row, pos in enumerate(kept)}
        reason_of = dict(failed)
        new_kept = [i for i, p in enumerate(firsts) if p in row_of]
        rows = [row_of[firsts[i]] for i in new_kept]
        out = vectors[rows] if rows else np.empty((0, vectors.shape[1]), np.float32)
        return out, new_kept, [(i, reason_of.get(p, "unreadable file")) for i, p in enumerate(firsts) if p not in row_of]

    def _index_chunk(self, chunk: list[tuple[str, FileState]], report: IndexReport, encoded: Any = None) -> None:
        """Hash, link duplicates, encode the new content, and commit it all as one transaction."""
        hashes = []
        for path, _ in chunk:
            try:
                hashes.append(file_sha256(path))
            except OSError as e:
                hashes.append(f"unreadable:{path}:{e}")
        existing: dict[str, int] = {}
        if self.retriever is not None:
            for digest in set(hashes):
                row = self.retriever.store.db.execute(
                    "SELECT image_id FROM files WHERE sha256 = ? AND image_id IS NOT NULL LIMIT 1", (digest,)).fetchone()
                if row:
                    existing[digest] = row[0]
        new_content: dict[str, list[int]] = {}  # sha -> positions in chunk
        for pos, digest in enumerate(hashes):
            if digest not in existing:
                new_content.setdefault(digest, []).append(pos)
        firsts = [positions[0] for positions in new_content.values()]
        vectors, kept, failed = self._encode_new(chunk, firsts, encoded)
        if self.retriever is None:
            self._create(vectors, [[chunk[p][0] for p in new_content[hashes[firsts[i]]]] for i in kept])
        failed_reason = {firsts[i]: reason for i, reason in failed}
        kept_positions = [firsts[i] for i in kept]
        codes = self.retriever.hasher.encode(vectors, "image") if len(vectors) else None
        with self.retriever.store.transaction() as tx:
            ids: dict[str, int] = dict(existing)
            if len(kept_positions):
                payloads = [image_payload([chunk[p][0] for p in new_content[hashes[p]]]) for p in kept_positions]
                new_ids = tx.append("image", codes, vectors, [chunk[p][0] for p in kept_positions], payloads)
                ids.update((hashes[p], int(i)) for p, i in zip(kept_positions, new_ids))
            relink = set()
            for pos, ((path, state), digest) in enumerate(zip(chunk, hashes)):
                old = tx.execute("SELECT image_id FROM files WHERE path = ?", (path,)).fetchone()
                image_id = ids.get(digest)
                error = None
                if image_id is None:
                    error = failed_reason.get(new_content.get(digest, [pos])[0], "unreadable file")
                tx.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)",
                           (path, state.size, state.mtime_ns, digest, image_id, error))
                if old and old[0] is not None and old[0] != image_id:
                    relink.add(old[0])  # the path's old content may now be unreferenced
                if image_id is not None and digest in existing:
                    relink.add(image_id)
                    report.linked += 1
            for image_id in sorted(relink):
                report.removed_items += self._relink(tx, image_id)
        report.encoded += len(kept_positions)
        self.retriever.galleries.pop("image", None)  # the in-memory index is rebuilt on next open

    def _index_captions(self, rows: list[tuple[str, str]], report: IndexReport) -> None:
        db = self.retriever.store.db
        image_of = {r[0]: r[1] for r in db.execute("SELECT path, image_id FROM files WHERE image_id IS NOT NULL")}
        wanted = {}
        for path, caption in rows:
            if path in image_of:
                wanted[(path, caption)] = image_of[path]
            else:
                report.captions_unmatched.append(path)
        have = {(r[0], r[1]): r[2] for r in db.execute("SELECT path, caption, text_id FROM captions")}
        stale = [text_id for key, text_id in have.items() if key not in wanted]
        new = [key for key in wanted if key not in have]
        if stale:
            with self.retriever.store.transaction() as tx:
                tx.remove("text", stale)
                tx.execute(f"DELETE FROM captions WHERE text_id IN ({','.join('?' * len(stale))})", stale)
            report.captions_removed += len(stale)
        step = 4 * self.chunk_size
        for start in range(0, len(new), step):
            part = new[start:start + step]
            missing = [key for key in part if key not in self._fit_caption_vectors]
            if missing:
                self._load(self.retriever.encoder, "text")
                encoded = self.retriever.encoder.encode_texts([c for _, c in missing], progress=False)
                self._fit_caption_vectors.update(zip(missing, encoded))
            vectors = np.stack([self._fit_caption_vectors.pop(key) for key in part])
            codes = self.retriever.hasher.encode(vectors, "text")
            with self.retriever.store.transaction() as tx:
                ids = tx.append("text", codes, vectors, [c for _, c in part],
                                [{"caption": c, "path": p, "image_id": int(wanted[(p, c)])} for p, c in part])
                tx.executemany("INSERT INTO captions VALUES (?, ?, ?, ?)",
                               [(p, c, int(i), int(wanted[(p, c)])) for (p, c), i in zip(part, ids)])
            report.captions_added += len(part)
        self._fit_caption_vectors.clear()

    def skipped(self) -> list[tuple[str, str]]:
        return [(r[0], r[1]) for r in self.retriever.store.db.execute(
            "SELECT path, error FROM files WHERE error IS NOT NULL ORDER BY path")]

    def _write_skipped_report(self, skipped: list[tuple[str, str]]) -> None:
        from common.atomic import atomic_write_file

        text = "path\treason\n" + "".join(f"{p}\t{r}\n" for p, r in skipped)
        atomic_write_file(self.directory / SKIPPED_REPORT, lambda fh: fh.write(text), mode="w")
