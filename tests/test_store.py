"""The on-disk store (retrieval/store.py): commits, codecs, crash leftovers, clear errors."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from retrieval.store import Store, StoreError, VectorCodec


def unit(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def codes(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 8), dtype=np.uint8)


@pytest.mark.parametrize("dtype, tolerance", [("fp32", 0.0), ("fp16", 1e-3), ("int8", 1e-2)])
def test_vectors_come_back_within_the_codec_precision(tmp_path, dtype, tolerance):
    vectors = unit(50)
    with Store.create(tmp_path / "s", dim=32, bits=64, vector_dtype=dtype) as store:
        with store.transaction() as tx:
            ids = tx.append("image", codes(50), vectors, [f"{i}.jpg" for i in range(50)], [{"i": i} for i in range(50)])
    with Store.open(tmp_path / "s") as store:
        items, got, payloads = store.fetch("image", ids[::-1])
        assert items == [f"{i}.jpg" for i in range(49, -1, -1)] and payloads[0] == {"i": 49}
        assert np.abs(got - vectors[::-1]).max() <= tolerance
        assert [i.tolist() for i, _ in store.live_codes("image")] == [list(range(50))]


def test_int8_follows_sentence_transformers_ranges_and_clips_outliers():
    calib = unit(100)
    codec = VectorCodec("int8")
    codec.calibrate(calib)
    stored = codec.encode(calib)
    assert stored.dtype == np.int8 and stored.min() == -128 and stored.max() == 127
    outside = codec.encode(calib[:1] * 10)
    assert outside.min() >= -128 and outside.max() <= 127


def test_a_failed_transaction_leaves_nothing_behind(tmp_path):
    store = Store.create(tmp_path / "s", dim=32, bits=64)
    with store.transaction() as tx:
        tx.append("image", codes(4), unit(4), [None] * 4, [None] * 4)
    with pytest.raises(RuntimeError, match="boom"):
        with store.transaction() as tx:
            tx.append("image", codes(4, 1), unit(4, seed=1), [None] * 4, [None] * 4)
            raise RuntimeError("boom")
    assert store.count("image") == 4 and len(store.chunks("image")) == 1
    assert len(list((tmp_path / "s" / "chunks").iterdir())) == 2
    with store.transaction() as tx:  # ids are not reused
        assert tx.append("image", codes(1), unit(1), [None], [None]).tolist() == [4]
    store.close()


def test_orphan_chunk_files_of_a_crash_are_removed_by_the_next_writer(tmp_path):
    with Store.create(tmp_path / "s", dim=32, bits=64) as store:
        with store.transaction() as tx:
            tx.append("text", codes(3), unit(3), ["a", "b", "c"], [None] * 3)
    orphan = tmp_path / "s" / "chunks" / "text-00000001.codes.npy"
    np.save(orphan, codes(2))
    with Store.open(tmp_path / "s") as reader:  # readers ignore it
        assert reader.count("text") == 3
    assert orphan.exists()
    Store.open(tmp_path / "s", writable=True).close()
    assert not orphan.exists()


def test_removed_items_are_neither_fetched_nor_indexed(tmp_path):
    with Store.create(tmp_path / "s", dim=32, bits=64) as store:
        with store.transaction() as tx:
            tx.append("image", codes(5), unit(5), [None] * 5, [None] * 5)
        with store.transaction() as tx:
            assert tx.remove("image", [1, 3, 99]) == 2
        assert [i.tolist() for i, _ in store.live_codes("image")] == [[0, 2, 4]]
        with pytest.raises(KeyError, match="no image with id 3"):
            store.fetch("image", [0, 3])


def test_bad_input_and_bad_stores_are_named(tmp_path):
    with Store.create(tmp_path / "s", dim=32, bits=64) as store:
        with store.transaction() as tx:
            with pytest.raises(ValueError, match=r"codes must be uint8 \(2, 8\)"):
                tx.append("image", codes(2)[:, :4], unit(2), [None] * 2, [None] * 2)
            with pytest.raises(ValueError, match=r"vectors must be \(2, 32\)"):
                tx.append("image", codes(2), unit(2, dim=16), [None] * 2, [None] * 2)
    with pytest.raises(PermissionError, match="read-only"):
        with Store.open(tmp_path / "s") as reader, reader.transaction():
            pass
    with pytest.raises(StoreError, match="holds no store"):
        Store.open(tmp_path / "elsewhere")
    with pytest.raises(StoreError, match="already holds a store"):
        Store.create(tmp_path / "s", dim=32, bits=64)
    db = sqlite3.connect(tmp_path / "s" / "store.sqlite")
    db.execute("UPDATE meta SET value = '99' WHERE key = 'store_version'")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="store_version '99' is not supported"):
        Store.open(tmp_path / "s")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "store.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(StoreError, match="cannot read the store"):
        Store.open(tmp_path / "junk")


def test_given_ids_are_checked_against_every_stored_id(tmp_path):
    with Store.create(tmp_path / "s", dim=32, bits=64) as store:
        with store.transaction() as tx:
            tx.append("image", codes(600), unit(600), [None] * 600, [None] * 600, ids=np.arange(600))
        with pytest.raises(ValueError, match="image id 599 is already in the store"):
            with store.transaction() as tx:  # the clash is past the first 500 ids of the new chunk
                tx.append("image", codes(501), unit(501), [None] * 501, [None] * 501, ids=np.append(np.arange(1000, 1500), 599))
        assert store.count("image") == 600


def test_codes_only_stores_keep_no_vectors(tmp_path):
    with Store.create(tmp_path / "s", dim=32, bits=64, vector_dtype="none") as store:
        with store.transaction() as tx:
            tx.append("image", codes(3), None, [None] * 3, [None] * 3)
        assert store.fetch("image", [0])[1] is None
    assert sorted(p.name for p in (tmp_path / "s" / "chunks").iterdir()) == ["image-00000000.codes.npy"]


def two_chunk_store(path):
    with Store.create(path, dim=32, bits=64) as store:
        for seed in (0, 1):
            with store.transaction() as tx:
                tx.append("text", codes(40, seed), unit(40, seed=seed), [f"t{i}" for i in range(40)], [None] * 40)
    return path


@pytest.mark.parametrize("kind", ["vectors", "codes"])
def test_a_truncated_chunk_file_is_refused_at_open_with_its_name(tmp_path, kind):
    path = two_chunk_store(tmp_path / "s")
    target = path / "chunks" / f"text-00000001.{kind}.npy"
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError, match=rf"text-00000001\.{kind}\.npy: {len(data) // 2:,} bytes on disk, "
                                         rf"its commit recorded {len(data):,}"):
        Store.open(path)
    target.unlink()
    with pytest.raises(StoreError, match=rf"text-00000001\.{kind}\.npy: committed chunk file is missing"):
        Store.open(path)


def test_a_changed_chunk_file_of_the_same_size_fails_its_checksum(tmp_path):
    path = two_chunk_store(tmp_path / "s")
    for kind in ("codes", "vectors"):
        target = path / "chunks" / f"text-00000000.{kind}.npy"
        data = bytearray(target.read_bytes())
        data[-1] ^= 0xFF
        target.write_bytes(bytes(data))
    with Store.open(path) as store:  # sizes agree: opening stays a stat per file
        with pytest.raises(StoreError, match=r"text-00000000\.codes\.npy: its SHA-256 differs"):
            list(store.live_codes("text"))  # codes are checked when first read
        with pytest.raises(StoreError, match=r"text-00000000\.codes\.npy: its SHA-256 differs"):
            store.verify()


def test_stores_from_before_the_size_record_are_checked_against_their_headers(tmp_path):
    path = two_chunk_store(tmp_path / "s")
    db = sqlite3.connect(path / "store.sqlite")
    db.execute("DROP TABLE chunk_files")
    db.commit()
    db.close()
    Store.open(path).close()  # whole files: fine without records
    target = path / "chunks" / "text-00000000.vectors.npy"
    target.write_bytes(target.read_bytes()[:-64])
    with pytest.raises(StoreError, match=r"text-00000000\.vectors\.npy: .* bytes on disk"):
        Store.open(path)
