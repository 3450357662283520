"""One contract, two stores: the local store (SQLite + chunk files + faiss) and the Milvus store
(retrieval/milvus_store.py, on Milvus Lite). Every test here runs against both.

Results are compared with numpy brute force by *distance*, not by id: Hamming distances tie
constantly and two correct indexes may order tied items differently.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

from hashing import create_hasher
from retrieval import Retriever
from retrieval.collection import FolderIndexer
from retrieval.store import Store, StoreError
from retrieval.stores import open_store
from test_collection import solid, stored
from toy_encoder import COLORS, ToyEncoder

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

ROOT = Path(__file__).resolve().parents[1]
DIM, BITS, N = 16, 64, 600
STORES = ["local", "milvus"]


def unit(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def milvus_children() -> list[str]:
    """Command lines of this process' Milvus Lite servers still running."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid() and "milvus" in cmdline:
            out.append(cmdline)
    return out


@pytest.fixture(autouse=True)
def no_server_left_behind():
    yield
    assert milvus_children() == [], "a Milvus Lite server outlived its store"


@pytest.fixture(autouse=True)
def quiet_lsh_fallback():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="only .* images to fit")
        yield


def store_kwargs(kind: str, tmp_path: Path) -> dict:
    return {"store": "milvus", "milvus_uri": str(tmp_path / "milvus.db")} if kind == "milvus" else {}


@pytest.fixture(params=STORES)
def kind(request) -> str:
    return request.param


@pytest.fixture
def gallery_vectors() -> np.ndarray:
    return unit(N)


@pytest.fixture
def retriever(kind, tmp_path, gallery_vectors):
    hasher = create_hasher("lsh", BITS).fit(gallery_vectors, gallery_vectors)
    r = Retriever.create(tmp_path / "index", encoder=ToyEncoder(dim=DIM), hasher=hasher,
                         hamming_candidates=None, **store_kwargs(kind, tmp_path))
    yield r
    r.close()


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.unpackbits(a[:, None, :] ^ b[None, :, :], axis=2).sum(2)


def test_stage_one_equals_brute_force_hamming(retriever, gallery_vectors):
    codes = retriever.hasher.encode(gallery_vectors, "image")
    retriever.add_vectors("image", gallery_vectors, [f"{i}.jpg" for i in range(N)], [{"i": i} for i in range(N)])
    queries = unit(20, seed=1)
    hits = retriever.search_embeddings(queries, "text", k=50, rerank=False)
    truth = np.sort(hamming(retriever.hasher.encode(queries, "text"), codes), axis=1)[:, :50]
    for row, found in enumerate(hits):
        assert [h.hamming for h in found] == truth[row].tolist()
        for h in found:  # every hit is what it claims to be
            assert h.item == f"{h.id}.jpg" and h.payload == {"i": h.id}
            assert hamming(retriever.hasher.encode(queries[row:row + 1], "text"), codes[h.id:h.id + 1])[0, 0] == h.hamming


def test_the_float_cascade_equals_brute_force_cosine(retriever, gallery_vectors):
    """With the Hamming depth past the gallery's size, stage 1 is an exact float16 cosine ranking."""
    retriever.hamming_candidates = {"image": 1000, "text": 1000}
    retriever.add_vectors("image", gallery_vectors, [None] * N)
    queries = unit(10, seed=2)
    stored_vectors = gallery_vectors.astype(np.float16).astype(np.float32)
    truth = np.sort(queries @ stored_vectors.T, axis=1)[:, ::-1][:, :10]
    hits = retriever.search_embeddings(queries, "text", k=10, candidates=20, rerank=False)
    assert np.allclose([[h.score for h in row] for row in hits], truth, atol=1e-5)


def test_incremental_adds_removals_and_reopening(retriever, gallery_vectors, kind, tmp_path):
    first = retriever.add_vectors("image", gallery_vectors[:300], [f"{i}" for i in range(300)])
    second = retriever.add_vectors("image", gallery_vectors[300:], [f"{i}" for i in range(300, N)])
    assert first.tolist() == list(range(300)) and second.tolist() == list(range(300, N))
    assert retriever.remove("image", [5, 305, 10_000]) == 2
    hits = retriever.search_embeddings(gallery_vectors[[5, 305, 7, 307]], "image", k=1, rerank=False,
                                       target="image")
    assert [h[0].hamming for h in hits[2:]] == [0, 0] and {h[0].id for h in hits[:2]}.isdisjoint({5, 305})
    with pytest.raises(KeyError, match="no image with id 5"):
        retriever.galleries["image"].fetch([4, 5])
    directory = retriever.store.directory
    retriever.close()
    reopened = Retriever.open(directory, encoder=ToyEncoder(dim=DIM), writable=True)
    try:
        assert len(reopened.galleries["image"]) == N - 2
        assert reopened.add_vectors("image", gallery_vectors[:1], ["again"]).tolist() == [N]  # ids never reused
        items, vectors, _ = reopened.galleries["image"].fetch([N, 7])
        assert items == ["again", "7"] and np.allclose(vectors, gallery_vectors[[0, 7]], atol=1e-3)
        assert type(reopened.store).__name__ == ("MilvusStore" if kind == "milvus" else "Store")
    finally:
        reopened.close()


def test_concurrent_searches_equal_sequential_ones(retriever, gallery_vectors):
    retriever.hamming_candidates = {"image": 256, "text": 256}
    retriever.add_vectors("image", gallery_vectors, [str(i) for i in range(N)])
    queries = unit(24, seed=3)
    expected = [[(h.id, h.score) for h in r] for r in retriever.search_embeddings(queries, "text", k=10, rerank=False)]
    got: dict[int, list] = {}

    def run(i: int) -> None:
        got[i] = [(h.id, h.score) for h in retriever.search_embeddings(queries[i:i + 1], "text", k=10,
                                                                         rerank=False)[0]]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(queries))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[i] for i in range(len(queries))] == expected


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Every toy colour once, plus two byte-identical copies and one broken file."""
    root = tmp_path / "photos"
    for name in COLORS:
        solid(root / f"{name}.png", name)
    (root / "copies").mkdir()
    for copy in ("red-a.png", "red-b.png"):
        (root / "copies" / copy).write_bytes((root / "red.png").read_bytes())
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    return root


def index(directory: Path, photos: Path, kind: str, tmp_path: Path):
    return FolderIndexer(directory, encoder=ToyEncoder(), progress=False, chunk_size=3, fit_chunk_size=3,
                         **store_kwargs(kind, tmp_path)).run([photos])


def test_folder_index_dedups_by_content_and_skips_broken_files(kind, photos, tmp_path):
    report = index(tmp_path / "index", photos, kind, tmp_path)
    assert report.encoded == len(COLORS) and report.linked == 2 and [Path(p).name for p, _ in report.skipped] == [
        "broken.jpg"]
    items = stored(tmp_path / "index")
    assert len({i for i, _, _ in items.values()}) == len(COLORS)  # the copies share red's item
    assert items["red-a.png"] == items["red-b.png"] == items["red.png"]
    r = Retriever.open(tmp_path / "index", encoder=ToyEncoder())
    try:
        top = r.search("navy", k=1, rerank="float")[0]
        assert Path(top.payload["path"]).name == "navy.png"
        red = r.search("red", k=1, rerank="float")[0]
        assert sorted(Path(p).name for p in red.payload["paths"]) == ["red-a.png", "red-b.png", "red.png"]
    finally:
        r.close()
    again = index(tmp_path / "index", photos, kind, tmp_path)
    assert again.encoded == 0 and again.unchanged == len(COLORS) + 3


KILLER = """
import os, signal, sys, warnings
sys.path.insert(0, {tests!r})
warnings.filterwarnings("ignore")
from toy_encoder import ToyEncoder
from retrieval.collection import FolderIndexer
import retrieval.{module} as m
target = m.{cls}
real, calls = getattr(target, {method!r}), [0]
def dying(*args, **kwargs):
    out = real(*args, **kwargs)
    calls[0] += 1
    if calls[0] == {when}:
        os.kill(os.getpid(), signal.SIGKILL)
    return out
setattr(target, {method!r}, dying)
kw = {kw!r}
FolderIndexer({out!r}, encoder=ToyEncoder(), progress=False, chunk_size=3, fit_chunk_size=3, **kw).run([{photos!r}])
"""

# where a kill lands: local store after the third chunk's codes file is written (rows not committed);
# Milvus after the third chunk's rows are in Milvus and before the ledger commits them
KILL_POINTS = {"local": ("store", "Transaction", "append", 3), "milvus": ("milvus_store", "MilvusTransaction",
                                                                            "insert_into_milvus", 3)}


def test_kill_9_inside_a_commit_then_rerun_holds_every_image_once(kind, photos, tmp_path):
    clean = tmp_path / "clean"
    index(clean, photos, "local", tmp_path)
    out = tmp_path / "index"
    module, cls, method, when = KILL_POINTS[kind]
    script = KILLER.format(tests=str(ROOT / "tests"), module=module, cls=cls, method=method, when=when,
                           kw=store_kwargs(kind, tmp_path), out=str(out), photos=str(photos))
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    partial = stored(out)
    assert 0 < len({i for i, _, _ in partial.values()}) < len(COLORS)
    if kind == "milvus":  # rows of the killed commit are in Milvus, unknown to the ledger, and unseen
        with open_store(out) as store:
            name = store.collection_of("image")
            in_milvus = store.client.query(name, filter="", output_fields=["count(*)"])[0]["count(*)"]
            assert in_milvus > store.count("image")
            probe = np.frombuffer(b"".join(r["code"][0] for r in store.client.query(
                name, filter=f"pk >= {store.count('image')}", output_fields=["code"])), np.uint8)
            found, _ = store.search_codes("image", probe.reshape(-1, store.code_bytes), 50)
            assert 0 < found.max() < store.count("image")
    report = index(out, photos, kind, tmp_path)
    assert report.encoded + len({i for i, _, _ in partial.values()}) == len(COLORS)
    after = stored(out)
    assert sorted(after) == sorted(stored(clean))
    with open_store(out) as store:  # every image once: Milvus holds exactly the ledger's items
        ids = np.concatenate([i for i, _ in store.live_codes("image")])
        assert len(ids) == len(set(ids.tolist())) == store.count("image") == len(COLORS)
    if kind == "milvus":  # the local class never opens a Milvus folder as chunk files
        with pytest.raises(StoreError, match="open_store"):
            Store.open(out)
    r = Retriever.open(out, encoder=ToyEncoder())
    try:
        for name in ("navy", "orange", "pink"):
            assert Path(r.search(name, k=1, rerank="float")[0].payload["path"]).name == f"{name}.png"
    finally:
        r.close()


def test_an_unreachable_milvus_is_a_clear_error_naming_the_uri(tmp_path, gallery_vectors):
    hasher = create_hasher("lsh", BITS).fit(gallery_vectors, gallery_vectors)
    uri = "http://127.0.0.1:9"  # discard port on loopback: nothing listens there
    with pytest.raises(StoreError, match="cannot reach Milvus at http://127.0.0.1:9"):
        Retriever.create(tmp_path / "index", encoder=ToyEncoder(dim=DIM), hasher=hasher, store="milvus",
                         milvus_uri=uri)
    assert not (tmp_path / "index").exists()
    with pytest.raises(ValueError, match="needs milvus_uri"):
        Retriever.create(tmp_path / "index", encoder=ToyEncoder(dim=DIM), hasher=hasher, store="milvus")
    with pytest.raises(ValueError, match="Milvus Lite has BIN_FLAT only"):
        Retriever.create(tmp_path / "index", encoder=ToyEncoder(dim=DIM), hasher=hasher, store="milvus",
                         milvus_uri=str(tmp_path / "m.db"), index="ivf")
