"""``crossmodal index --store milvus`` end to end on real Flickr8K photos (Milvus Lite): the same
items, codes and vectors as the local store, ``search`` and ``info`` unchanged, and a real
``kill -9`` of the indexing process at an arbitrary moment, then a rerun holding every image once.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_cli import N_PHOTOS, ROOT, clean_index, crossmodal, flickr, photos  # noqa: F401 (fixtures)
from test_collection import stored

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")
pytestmark = pytest.mark.data


def ledger_items(index: Path) -> int:
    try:
        db = sqlite3.connect(f"file:{index / 'store.sqlite'}?mode=ro", uri=True, timeout=1)
        try:
            return db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return 0


def index_args(photos: Path, out: Path, uri: Path) -> list[str]:
    return ["index", str(photos), "--out", str(out), "--store", "milvus", "--milvus-uri", str(uri),
            "--collection", "photos", "--chunk-size", "4", "--batch-size", "4", "-q"]


@pytest.fixture(scope="module")
def milvus_index(photos, tmp_path_factory) -> tuple[Path, Path]:
    """(index folder, Milvus Lite file) of ``crossmodal index --store milvus`` on the photos."""
    root = tmp_path_factory.mktemp("milvus")
    out, uri = root / "index", root / "milvus.db"
    crossmodal(*index_args(photos, out, uri))
    return out, uri


def test_milvus_index_equals_the_local_one_and_searches_the_same(photos, clean_index, milvus_index, tmp_path):
    out, uri = milvus_index
    assert stored(out) == stored(clean_index)
    info = json.loads(crossmodal("info", str(out), "--json").stdout)
    assert (info["store"], info["milvus_uri"], info["collection"]) == ("milvus", str(uri), "photos")
    assert info["images"] == N_PHOTOS and info["skipped_files"] == 2
    for query in ("a dog running on grass", "children playing"):
        got, want = (json.loads(crossmodal("search", str(i), query, "-k", "10", "--json").stdout)["hits"]
                     for i in (out, clean_index))
        assert [(h["item"], round(h["score"], 5)) for h in got] == [(h["item"], round(h["score"], 5)) for h in want]
    bad = crossmodal("index", str(photos), "--out", str(tmp_path / "other"), "--store", "milvus", check=False)
    assert bad.returncode == 2 and "--milvus-uri" in bad.stderr


def test_kill_9_during_a_milvus_backed_index_then_rerun_holds_every_image_once(photos, clean_index, tmp_path):
    out, uri = tmp_path / "index", tmp_path / "milvus.db"
    proc = subprocess.Popen([sys.executable, "-m", "retrieval", *index_args(photos, out, uri)], cwd=ROOT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while ledger_items(out) < 10 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the indexer finished before it could be killed"
    time.sleep(0.5)  # the Lite server notices its parent died and exits, releasing the .db file
    partial = stored(out)
    assert 0 < len(partial) < N_PHOTOS
    rerun = crossmodal(*index_args(photos, out, uri))
    assert f"{N_PHOTOS - len(partial)} encoded" in rerun.stdout
    assert stored(out) == stored(clean_index)
    from retrieval.stores import open_store

    with open_store(out) as store:  # Milvus holds each image once, exactly the ledger's
        name = store.collection_of("image")
        assert store.client.query(name, filter="", output_fields=["count(*)"])[0]["count(*)"] == N_PHOTOS
    hits = json.loads(crossmodal("search", str(out), "a dog", "-k", "3", "--json").stdout)["hits"]
    assert len(hits) == 3


def test_serve_on_a_milvus_index_answers_what_search_answers(milvus_index):
    """``crossmodal serve`` opens a Milvus-backed index unchanged: its /search gives the CLI's top-10.

    The CLI runs first: a Milvus Lite file serves one process at a time."""
    import httpx

    from eval.load_test import free_port
    from test_server import wait_for_health

    out, _ = milvus_index
    queries = ("a dog running on grass", "children playing")
    want = {q: json.loads(crossmodal("search", str(out), q, "-k", "10", "--json").stdout)["hits"] for q in queries}
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "retrieval", "serve", str(out), "--port", str(port),
                               "--log-level", "warning"], cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_for_health(url, server)["items"] == {"image": N_PHOTOS}
        with httpx.Client(base_url=url, timeout=60) as client:
            for q in queries:
                got = client.get("/search", params={"q": q, "k": 10}).json()["hits"]
                assert [(h["path"], round(h["score"], 5)) for h in got] == \
                    [(h["item"], round(h["score"], 5)) for h in want[q]]
    finally:
        server.terminate()
        assert server.wait(30) in (0, -15)
