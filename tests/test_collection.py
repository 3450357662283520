"""Folder indexing (retrieval/collection.py) with the toy encoder: walking, skipping, resuming, updating."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval import Retriever
from retrieval.collection import SKIPPED_REPORT, FolderIndexer, find_images, read_captions
from retrieval.store import Store
from retrieval.stores import open_store
from toy_encoder import COLORS, ToyEncoder

NAMES = list(COLORS)


@pytest.fixture(autouse=True)
def quiet_lsh_fallback():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="only .* images to fit")
        yield


def solid(path: Path, name: str, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), tuple(int(255 * c) for c in COLORS[name])).save(path)
    return path


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Twelve colours in nested folders, with the mess a real photo folder has."""
    root = tmp_path / "photos"
    for i, name in enumerate(NAMES):
        ext = [".png", ".PNG", ".jpg", ".JPEG", ".bmp", ".webp"][i % 6]
        solid(root / ("sub" if i % 2 else "") / ("deeper" if i % 3 == 0 else "") / f"{name}{ext}", name)
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.png").write_text("this is not an image")
    good = root / "sub" / "red-copy.jpg"
    solid(good, "red", size=64)
    data = good.read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    good.unlink()
    solid(root / ".hidden.png", "white")
    solid(root / ".cache" / "thumb.png", "white")
    (root / "readme.txt").write_text("not an image extension")
    os.symlink(root, root / "sub" / "loop")  # a symlink loop must not be walked forever
    return root


def index(directory: Path, roots, **kwargs):
    kwargs.setdefault("chunk_size", 4)
    kwargs.setdefault("fit_chunk_size", 4)
    return FolderIndexer(directory, encoder=ToyEncoder(), progress=False, **kwargs).run(roots)


def stored(directory: Path) -> dict[str, tuple]:
    """path -> (id, codes, vectors) of every image in the index at ``directory``."""
    with open_store(directory) as store:
        out = {}
        for ids, codes in store.live_codes("image"):
            items, vectors, payloads = store.fetch("image", ids)
            for i, c, v, p in zip(ids, codes, vectors, payloads):
                for path in p.get("paths", [p["path"]]):
                    out[Path(path).name] = (int(i), c.tobytes(), v.tobytes())
        return out


def test_find_images_walks_recursively_case_insensitively_and_skips_hidden_files_and_loops(photos):
    names = sorted(Path(p).name for p in find_images([photos]))
    expected = sorted([f"{n}{[ '.png', '.PNG', '.jpg', '.JPEG', '.bmp', '.webp'][i % 6]}" for i, n in enumerate(NAMES)]
                      + ["empty.jpg", "notes.png", "truncated.jpg"])
    assert names == expected
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        find_images([photos / "missing"])


def test_index_skips_and_reports_every_broken_file_and_searches_both_ways(photos, tmp_path):
    out = tmp_path / "index"
    report = index(out, [photos])
    assert report.found == 15 and report.encoded == 12
    reasons = dict((Path(p).name, r) for p, r in report.skipped)
    assert sorted(reasons) == ["empty.jpg", "notes.png", "truncated.jpg"]
    assert "empty" in reasons["empty.jpg"] and "not an image" in reasons["notes.png"]
    assert "decode" in reasons["truncated.jpg"] or "truncated" in reasons["truncated.jpg"]
    lines = (out / SKIPPED_REPORT).read_text().splitlines()
    assert lines[0] == "path\treason" and sorted(Path(l.split("\t")[0]).name for l in lines[1:]) == sorted(reasons)
    r = Retriever.open(out, encoder=ToyEncoder())
    assert len(r.galleries["image"]) == 12 and "text" not in r.galleries
    for name in ("red", "navy", "green"):
        hit = r.search(name, k=1, rerank="float")[0]
        assert Path(hit.payload["path"]).stem == name and hit.modality == "image" and hit.item == hit.payload["path"]
    # an images-only index answers an image query with images (more like this)
    query = next(p for p in find_images([photos]) if Path(p).stem == "cyan")
    hit = r.search(Path(query), k=1, rerank="float")[0]
    assert hit.modality == "image" and Path(hit.item).stem == "cyan"
    with pytest.raises(ValueError, match="scores across modalities"):
        r.search(Path(query), k=1, rerank="cross")


def test_a_rerun_with_nothing_changed_encodes_nothing(photos, tmp_path):
    out = tmp_path / "index"
    index(out, [photos])
    before = stored(out)
    again = index(out, [photos])
    assert (again.encoded, again.unchanged, again.linked) == (0, 15, 0)
    assert stored(out) == before


def test_interrupted_run_resumes_to_the_same_index_as_an_uninterrupted_one(photos, tmp_path):
    clean = tmp_path / "clean"
    index(clean, [photos])

    def stop_after_two_chunks(done: int) -> None:
        if done >= 8:
            raise KeyboardInterrupt

    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        index(out, [photos], on_chunk=stop_after_two_chunks)
    partial = stored(out)
    assert 0 < len(partial) < 12  # a valid index with fewer items, openable while interrupted
    report = index(out, [photos])
    assert report.encoded == 12 - len(partial)
    assert stored(out) == stored(clean)


def test_a_failure_inside_a_commit_leaves_the_last_committed_state(photos, tmp_path, monkeypatch):
    import retrieval.store as store_module

    out = tmp_path / "index"
    calls = {"n": 0}
    real = store_module.save_npy

    def fail_on_third_chunk(path, array):
        calls["n"] += 1
        real(path, array)
        if calls["n"] == 6:  # the vectors file of the third chunk is on disk, its rows are not committed
            raise OSError("disk full")

    monkeypatch.setattr(store_module, "save_npy", fail_on_third_chunk)
    with pytest.raises(OSError, match="disk full"):
        index(out, [photos])
    first_two_chunks = {Path(p).name for p in find_images([photos])[:8]}
    assert set(stored(out)) == first_two_chunks - {"empty.jpg", "notes.png", "truncated.jpg"}
    monkeypatch.setattr(store_module, "save_npy", real)
    index(out, [photos])
    clean = tmp_path / "clean"
    index(clean, [photos])
    assert stored(out) == stored(clean)
    chunk_files = sorted(p.name for p in (out / "chunks").iterdir())
    assert chunk_files == sorted(p.name for p in (clean / "chunks").iterdir())  # no orphan left behind


def test_incremental_updates_keep_ids_of_unchanged_files(photos, tmp_path):
    out = tmp_path / "index"
    index(out, [photos])
    before = stored(out)
    files = {Path(p).name: Path(p) for p in find_images([photos])}
    # delete one, add one, touch one (same content, new mtime), duplicate one, change one's content
    files["green.PNG"].unlink()
    solid(photos / "new" / "purple-again.png", "purple")  # same colour as purple.jpg, other bytes: a new item
    os.utime(files["blue.jpg"], ns=(10**18, 10**18))
    shutil.copy(files["red.png"], photos / "red-duplicate.png")
    solid(files["grey.bmp"], "pink")
    report = index(out, [photos])
    after = stored(out)
    assert "green.PNG" not in after
    assert after["blue.jpg"] == before["blue.jpg"]  # touched: same id, nothing re-encoded
    assert after["red-duplicate.png"][0] == after["red.png"][0] == before["red.png"][0]  # stored once
    grey = "grey.bmp"
    assert after[grey][0] not in {v[0] for v in before.values()}  # new content, new id
    for name in set(before) - {"green.PNG", grey}:
        assert after[name][0] == before[name][0]
    assert (report.encoded, report.linked, report.removed_files, report.removed_items) == (2, 2, 1, 2)
    r = Retriever.open(out, encoder=ToyEncoder())
    hit = r.search("red", k=1, rerank="float")[0]
    assert sorted(Path(p).name for p in hit.payload["paths"]) == ["red-duplicate.png", "red.png"]
    assert len(r.galleries["image"]) == 12 - 1 - 1 + 2  # green and old grey gone; purple-again and new grey
    assert r.search("green", k=1, rerank="float")[0].payload["path"] != str(files["green.PNG"])


def test_a_rerun_on_one_subfolder_keeps_the_rest_of_the_index(photos, tmp_path):
    (photos / "sub" / "loop").unlink()  # walked from sub/, the loop would reach the parent's files
    out = tmp_path / "index"
    index(out, [photos])
    before = stored(out)
    report = index(out, [photos / "sub"])
    assert report.removed_files == 0 and stored(out) == before
    gone = next(p for p in find_images([photos]) if "/sub/" not in p)
    os.unlink(gone)
    assert index(out, [photos / "sub"]).removed_files == 1  # deleted files go wherever they were
    assert Path(gone).name not in stored(out)


def test_captions_index_the_text_side_and_follow_their_images(photos, tmp_path):
    files = {Path(p).stem: p for p in find_images([photos])}
    captions = tmp_path / "captions.csv"
    captions.write_text("path,caption\n" + "".join(f"{os.path.relpath(files[n], photos)},a {n} square\n"
                                                    for n in ("red", "blue", "green")) + "missing.jpg,a ghost\n")
    out = tmp_path / "index"
    report = FolderIndexer(out, encoder=ToyEncoder(), chunk_size=4, fit_chunk_size=4, progress=False).run(
        [photos], captions=captions)
    assert report.captions_added == 3 and len(report.captions_unmatched) == 1
    r = Retriever.open(out, encoder=ToyEncoder())
    hit = r.search(Path(files["blue"]), k=1, rerank="float")[0]  # image -> captions now that there are some
    assert hit.modality == "text" and hit.item == "a blue square" and hit.payload["path"] == files["blue"]
    assert r.get_item("image", hit.payload["image_id"])[0] == files["blue"]
    r.close()
    Path(files["blue"]).unlink()
    report = FolderIndexer(out, encoder=ToyEncoder(), chunk_size=4, progress=False).run([photos], captions=captions)
    assert report.removed_items == 1
    with Store.open(out) as store:
        assert store.count("text") == 2  # the deleted image's caption went with it


def test_read_captions_jsonl_and_errors_name_the_line(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    good = tmp_path / "c.jsonl"
    good.write_text('{"path": "a.jpg", "caption": "a cat"}\n\n{"path": "a.jpg", "caption": "a cat"}\n')
    assert read_captions(good, [tmp_path]) == [(str(tmp_path / "a.jpg"), "a cat")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"path": "a.jpg"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: .*'caption'"):
        read_captions(bad, [tmp_path])
    csv_bad = tmp_path / "bad.csv"
    csv_bad.write_text("a.jpg\n")
    with pytest.raises(ValueError, match=r"bad.csv:1: expected two columns"):
        read_captions(csv_bad, [tmp_path])


def test_an_existing_index_refuses_another_encoder_and_a_second_writer(photos, tmp_path):
    out = tmp_path / "index"
    index(out, [photos])
    with pytest.raises(ValueError, match="was built with encoder 'toy'"):
        FolderIndexer(out, encoder="lite", progress=False).run([photos])
    from retrieval.store import StoreLockedError

    with Store.open(out, writable=True):
        with pytest.raises(StoreLockedError, match="another process"):
            index(out, [photos])
    with pytest.raises(FileExistsError, match="not empty"):
        index(photos, [photos])  # a folder of photos is not an index


def test_a_hasher_fitted_at_creation_fits_on_the_captions_of_the_first_chunk(photos, tmp_path, monkeypatch):
    """With a captions file, the first chunk's (image, caption) pairs fit the hasher, not images standing
    in for their own captions (ITQ on images alone ignores what the text side looks like)."""
    import retrieval.retriever as retriever_module
    from hashing.itq import ITQHasher

    monkeypatch.setattr(retriever_module, "MIN_IMAGES_TO_FIT", 2)  # a toy folder is enough to fit ITQ here
    seen = []
    real_fit = ITQHasher.fit
    monkeypatch.setattr(ITQHasher, "fit", lambda self, images, texts, labels=None:
                        seen.append((images.copy(), texts.copy())) or real_fit(self, images, texts, labels))
    files = {Path(p).stem: p for p in find_images([photos])}
    named = ("red", "blue", "green")
    captions = tmp_path / "captions.csv"
    captions.write_text("path,caption\n" + "".join(f"{files[n]},a {n} square\n{files[n]},{n}\n" for n in named))
    encoded = []

    class CountingEncoder(ToyEncoder):
        def encode_texts(self, texts, *args, **kwargs):
            encoded.extend(texts)
            return super().encode_texts(texts, *args, **kwargs)

    report = FolderIndexer(tmp_path / "index", encoder=CountingEncoder(), chunk_size=64, progress=False).run(
        [photos], captions=captions)
    (images, texts), = seen
    assert report.captions_added == 6
    assert sorted(encoded) == sorted(t for n in named for t in (f"a {n} square", n))  # each caption once
    encoder = ToyEncoder()
    expected_texts = encoder.encode_texts([t for n in named for t in (f"a {n} square", n)])
    expected_images = encoder.encode_images([files[n] for n in named for _ in range(2)])
    np.testing.assert_allclose(texts, expected_texts, atol=1e-6)
    np.testing.assert_allclose(images, expected_images, atol=1e-6)
