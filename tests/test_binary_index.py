"""Stage-1 binary indexes: exactness against numpy brute force (tie-aware), ids, persistence, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from faiss.contrib.evaluation import check_ref_knn_with_draws

from hashing.index import (
    PAD_DISTANCE,
    BinaryIndex,
    BucketIndex,
    FlatIndex,
    GpuFlatIndex,
    HNSWIndex,
    Rescorer,
    assign_buckets,
    create_index,
    hamming_knn_torch,
    load_index,
    rescore,
)
from hashing.base import pack_signs
from hashing.binary_kmeans import binary_kmeans, kmeanspp_centres
from hashing.index import io as index_io

BITS = 64


@pytest.fixture(autouse=True, scope="module")
def single_faiss_thread():
    """Tiny searches gain nothing from threads, and OpenMP spin-waits crawl on a busy machine."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def clustered_codes(n: int, bits: int = BITS, seed: int = 0, flip: float = 0.15) -> np.ndarray:
    """Codes near a few prototypes: distances concentrate on a few values, so ties are everywhere."""
    rng = np.random.default_rng(seed)
    protos = rng.random((8, bits)) < 0.5
    noise = rng.random((n, bits)) < flip
    return np.packbits(protos[rng.integers(0, 8, n)] ^ noise, axis=1)


def brute_force(queries: np.ndarray, db: np.ndarray, k: int, ids: np.ndarray | None = None):
    """Exact top-k by numpy popcount; ties broken by row (insertion order)."""
    dist = np.unpackbits(queries[:, None, :] ^ db[None, :, :], axis=2).sum(axis=2).astype(np.int32)
    rows = np.argsort(dist, axis=1, kind="stable")[:, :k]
    ids = np.arange(len(db)) if ids is None else ids
    return np.take_along_axis(dist, rows, axis=1), ids[rows]


def assert_knn_equal(ref_d, ref_i, res) -> None:
    """Tie-aware: same distances; same id sets at every distance but the last (tied at the k-th)."""
    check_ref_knn_with_draws(ref_d, ref_i, res.distances, res.ids)


def torch_cpu_index(bits: int = BITS) -> GpuFlatIndex:
    pytest.importorskip("torch")
    return GpuFlatIndex(bits, backend="torch", device="cpu")


# Every kind, configured so that its search is exhaustive (hence exact) on the small test sets.
def make_index(kind: str, bits: int = BITS):
    if kind == "gpu_torch_cpu":
        return torch_cpu_index(bits)
    if kind == "ivf":
        index = create_index("ivf", bits, nlist=8, nprobe=8)
        return index.train(clustered_codes(500, bits, seed=9))
    if kind == "buckets":  # every query scans all 4 buckets
        return create_index("buckets", bits, nbuckets=4, e=4).train(clustered_codes(500, bits, seed=9))
    if kind == "hnsw":
        return create_index("hnsw", bits, M=16, ef_construction=200, ef_search=400)
    return create_index(kind, bits)


ALL_KINDS = ["flat", "hnsw", "ivf", "buckets", "gpu_torch_cpu"]


def add(index, codes, ids=None):
    return index.add(codes, ids)


def search(index, queries, k):
    return index.search(queries, k)


# -- exactness ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [16, 64, 128])
@pytest.mark.parametrize("use_heap", [True, False])
def test_flat_matches_brute_force_tie_aware(bits, use_heap):
    db, q = clustered_codes(3000, bits), clustered_codes(40, bits, seed=1)
    index = create_index("flat", bits, use_heap=use_heap)
    index.add(db)
    res = index.search(q, 50)
    assert res.ids.dtype == np.int64 and res.distances.dtype == np.int32 and res.ids.shape == (40, 50)
    assert_knn_equal(*brute_force(q, db, 50), res)


@pytest.mark.parametrize("use_heap", [True, False])
@pytest.mark.parametrize("nq", [1, 40])
def test_flat_breaks_ties_by_insertion_order(use_heap, nq):
    """The documented tie order, relied on for reproducible stage-1 candidate lists."""
    db, q = clustered_codes(2000, flip=0.05), clustered_codes(nq, seed=1, flip=0.05)
    index = FlatIndex(BITS, use_heap=use_heap)
    index.add(db)
    ref_d, ref_i = brute_force(q, db, 200)
    res = index.search(q, 200)
    assert (ref_d[:, :-1] == ref_d[:, 1:]).any(), "the data must contain ties for this test to mean anything"
    np.testing.assert_array_equal(res.ids, ref_i)


def test_flat_saved_with_the_old_idmap2_still_loads_and_removes(tmp_path):
    """Flat indexes were IndexBinaryIDMap2 before the reverse map was dropped; those files still load."""
    import faiss

    from hashing.index import load_index
    from hashing.index.io import FAISS_NAME

    db, q = clustered_codes(500), clustered_codes(5, seed=1)
    ids = np.arange(500, dtype=np.int64) * 7 + 3
    index = FlatIndex(BITS)
    index.add(db, ids)
    assert type(index._faiss_index()) is faiss.IndexBinaryIDMap, "new indexes keep no reverse map"
    index.save(tmp_path / "flat")
    old = faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(BITS))
    old.add_with_ids(db, ids)
    faiss.write_index_binary(old, str(tmp_path / "flat" / FAISS_NAME))
    loaded = load_index(tmp_path / "flat")
    np.testing.assert_array_equal(loaded.search(q, 20).ids, index.search(q, 20).ids)
    assert loaded.remove(ids[:3]) == 3 and index.remove(ids[:3]) == 3
    np.testing.assert_array_equal(loaded.search(q, 20).ids, index.search(q, 20).ids)
    assert not np.isin(ids[:3], loaded.search(q, 500).ids).any()


@pytest.mark.parametrize("kind", ["ivf", "buckets", "gpu_torch_cpu"])
def test_exhaustive_settings_are_exact(kind):
    db, q = clustered_codes(2000), clustered_codes(30, seed=1)
    index = make_index(kind)
    add(index, db)
    res = search(index, q, 64)
    assert_knn_equal(*brute_force(q, db, 64), res)
    assert res.scanned_fraction == pytest.approx(1.0)


def test_hnsw_recall_is_high_on_small_data():
    db, q = clustered_codes(2000), clustered_codes(30, seed=1)
    index = make_index("hnsw")
    index.add(db)
    ref_d, _ = brute_force(q, db, 32)
    res = index.search(q, 32)
    true_d = np.unpackbits(q[:, None, :] ^ db[res.ids], axis=2).sum(axis=2)
    np.testing.assert_array_equal(true_d, res.distances)  # distances are the items' own
    assert (res.distances <= ref_d[:, -1:]).mean() >= 0.98  # tie-aware recall


def test_torch_kernel_chunking_matches_brute_force():
    torch = pytest.importorskip("torch")
    db, q = clustered_codes(700, 24), clustered_codes(9, 24, seed=1)  # 3 bytes: exercises word padding
    d, rows = hamming_knn_torch(torch.from_numpy(q), torch.from_numpy(db), 100, max_elements=9 * 64)
    ref_d, ref_i = brute_force(q, db, 100)
    np.testing.assert_array_equal(d.numpy(), ref_d)
    np.testing.assert_array_equal(rows.numpy(), ref_i)  # ties by row, like faiss' flat index


def test_popcount_handles_the_sign_bit():
    torch = pytest.importorskip("torch")
    from hashing.index.gpu import _popcount64

    x = torch.tensor([-1, np.iinfo(np.int64).min, 0, 0x5555555555555555, -2], dtype=torch.int64)
    assert _popcount64(x).tolist() == [64, 1, 0, 32, 63]


@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="needs CUDA")
def test_gpu_flat_on_cuda_matches_brute_force():
    db, q = clustered_codes(5000), clustered_codes(50, seed=1)
    index = create_index("gpu_flat", BITS)
    index.add(db)
    assert_knn_equal(*brute_force(q, db, 128), index.search(q, 128))


# -- ids, removal, padding ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_custom_ids_and_removal(kind):
    db, q = clustered_codes(1500), clustered_codes(25, seed=1)
    ids = 10_000 + 7 * np.arange(len(db), dtype=np.int64)
    index = make_index(kind)
    assert list(add(index, db, ids)) == list(ids)
    gone = ids[::3]
    assert index.remove(np.concatenate([gone, [5, -1]])) == len(gone)  # absent ids are ignored
    assert index.ntotal == len(db) - len(gone) == len(index)
    assert index.remove(gone) == 0
    res = search(index, q, 100)
    assert not np.isin(res.ids, gone).any()
    keep = ~np.isin(ids, gone)
    ref_d, ref_i = brute_force(q, db[keep], 100, ids[keep])
    if kind == "hnsw":
        assert (res.distances <= ref_d[:, -1:]).mean() >= 0.95
    else:
        assert_knn_equal(ref_d, ref_i, res)
    # default ids continue after the largest one in use
    new = add(index, db[:2])
    assert list(new) == [ids.max() + 1, ids.max() + 2]


def test_hnsw_readding_a_removed_id_compacts():
    db = clustered_codes(600)
    index = HNSWIndex(BITS, ef_search=300)
    index.add(db)
    index.remove(np.arange(100))
    assert index.n_deleted == 100 and index.ntotal == 500
    index.remove(np.array([599]))
    assert list(index.add(db[1:2])) == [600] and index.n_deleted == 101  # default ids skip tombstones
    index.add(db[:1], np.array([0]))
    assert index.n_deleted == 0 and index.ntotal == 501
    res = index.search(db[:1], 1)
    assert res.ids[0, 0] == 0 and res.distances[0, 0] == 0


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_padding_when_k_exceeds_ntotal(kind):
    db = clustered_codes(5, seed=3)
    index = make_index(kind)
    empty = search(index, db[:2], 4)
    assert (empty.ids == -1).all() and (empty.distances == PAD_DISTANCE).all()
    add(index, db, np.arange(100, 105))
    res = search(index, db[:2], 12)
    assert res.ids.shape == (2, 12)
    assert (res.ids[:, 5:] == -1).all() and (res.distances[:, 5:] == PAD_DISTANCE).all()
    assert sorted(res.ids[0, :5]) == list(range(100, 105))
    assert res.ids[0, 0] == 100 and res.distances[0, 0] == 0


def test_add_rejects_bad_ids():
    index = FlatIndex(BITS)
    index.add(clustered_codes(3), np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="already in the index.*3"):
        index.add(clustered_codes(2), np.array([3, 4]))
    with pytest.raises(ValueError, match="unique"):
        index.add(clustered_codes(2), np.array([7, 7]))
    with pytest.raises(ValueError, match=">= 0"):
        index.add(clustered_codes(1), np.array([-1]))
    with pytest.raises(ValueError, match="2 entries, expected 3"):
        index.add(clustered_codes(3), np.array([8, 9]))
    with pytest.raises(TypeError, match="float64"):
        index.add(clustered_codes(1), np.array([1.5]))
    assert index.ntotal == 3  # nothing partial was added


# -- validation --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", "buckets"])
def test_wrong_dtype_shape_bits_are_clear_errors(kind):
    index = make_index(kind)
    good = clustered_codes(4)
    with pytest.raises(TypeError, match=r"uint8.*float32.*\(4, 8\)"):
        index.add(good.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(4, 16\).*\(n, 8\).*64-bit.*128-bit"):
        index.add(clustered_codes(4, 128))
    with pytest.raises(ValueError, match=r"shape \(8,\)"):
        index.search(good[0], 3)
    with pytest.raises(TypeError, match="numpy"):
        index.search(good.tolist(), 3)
    for bad_k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="k must be"):
            index.search(good, bad_k)


def test_factory_errors():
    with pytest.raises(ValueError, match="multiple of 8"):
        create_index("flat", 12)
    with pytest.raises(ValueError, match="unknown index kind 'lsh'.*flat"):
        create_index("lsh", 64)
    with pytest.raises(RuntimeError, match="not trained"):
        create_index("ivf", 64, nlist=4).add(clustered_codes(10))
    with pytest.raises(ValueError, match="at least 16 codes"):
        create_index("ivf", 64, nlist=16).train(clustered_codes(10))
    with pytest.raises(ValueError, match="nprobe"):
        create_index("ivf", 64, nprobe=0)


def test_gpu_flat_without_cuda_says_so():
    torch = pytest.importorskip("torch")
    from hashing.index.gpu import faiss_gpu_available

    if torch.cuda.is_available() or faiss_gpu_available():
        pytest.skip("a GPU is available")
    with pytest.raises(RuntimeError, match="needs CUDA"):
        create_index("gpu_flat", 64)


# -- buckets -----------------------------------------------------------------------------------
def test_bucket_search_scans_only_query_buckets():
    rng = np.random.default_rng(4)
    db, q = clustered_codes(3000), clustered_codes(40, seed=1)
    item_buckets = rng.integers(0, 10, len(db))
    query_buckets = rng.integers(0, 10, (40, 3))
    query_buckets[::4, 1] = query_buckets[::4, 0]  # repeats are scanned once
    query_buckets[::5, 1] = -1  # -1: no bucket
    query_buckets[1::5, 0] = -1
    index = BucketIndex(BITS, nbuckets=10)
    index.add(db, np.arange(len(db)) * 2, buckets=item_buckets)
    res = index.search(q, 60, buckets=query_buckets)
    bucket_of = dict(zip(np.arange(len(db)) * 2, item_buckets))
    sizes = np.bincount(item_buckets, minlength=10)
    for row in range(len(q)):
        allowed = set(query_buckets[row][query_buckets[row] >= 0])
        assert {bucket_of[i] for i in res.ids[row] if i >= 0} <= allowed
        in_b = np.isin(item_buckets, list(allowed))
        ref_d, ref_i = brute_force(q[row:row + 1], db[in_b], 60, np.flatnonzero(in_b) * 2)
        check_ref_knn_with_draws(ref_d, ref_i, res.distances[row:row + 1], res.ids[row:row + 1])
    expected = np.mean([sizes[list(set(b[b >= 0]))].sum() for b in query_buckets]) / len(db)
    assert res.scanned_fraction == pytest.approx(expected)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        index.search(q, 5, buckets=np.full(len(q), 10))
    with pytest.raises(RuntimeError, match="no centres: train"):
        index.search(q, 5)
    with pytest.raises(RuntimeError, match="not trained"):
        index.add(db[:2])
    with pytest.raises(ValueError, match=r"one id in \[0, 10\)"):
        index.add(db[:2], buckets=[3, 11])


def test_bucket_search_returns_k_hits_by_probing_the_next_nearest_buckets():
    """Issue 22: a query whose own bucket holds fewer than k items used to get fewer than k hits."""
    rng = np.random.default_rng(5)
    db = clustered_codes(3000)
    index = BucketIndex(BITS, nbuckets=64, e=1)
    index.train(db)
    index.add(db, np.arange(len(db)))
    sizes = index.list_sizes()
    q = db[rng.choice(len(db), 200, replace=False)] ^ rng.integers(0, 2, (200, BITS // 8), dtype=np.uint8)
    own = index.assign(q, 1)[:, 0]
    for k in (1, 5, 60, int(sizes.max()) + 1, len(db)):
        res = index.search(q, k)
        assert (res.ids >= 0).all(), f"k={k}: every query gets k hits from a gallery of {len(db)}"
        ranked = index.assign(q, index.nbuckets)
        for row in range(0, len(q), 17):  # the hits come from the nearest buckets holding >= k, in order
            held = np.cumsum(sizes[ranked[row]])
            m = int(np.searchsorted(held, k)) + 1
            allowed = set(ranked[row, :m])
            buckets_of_hits = set(index.assign(db[res.ids[row]], 1)[:, 0])
            assert buckets_of_hits <= allowed and own[row] in allowed
            in_b = np.isin(index.assign(db, 1)[:, 0], list(allowed))
            ref_d, ref_i = brute_force(q[row:row + 1], db[in_b], k, np.flatnonzero(in_b))
            check_ref_knn_with_draws(ref_d, ref_i, res.distances[row:row + 1], res.ids[row:row + 1])
    small = sizes[own] < 5
    assert small.any(), "the test needs queries whose own bucket is short of k=5"
    assert (index.search(q[small], len(db) + 10).ids[:, len(db):] == -1).all(), "more than all: padded"


def test_bucket_index_files_items_and_queries_by_its_own_centres():
    db, q = clustered_codes(3000), clustered_codes(40, seed=1)
    index = create_index("buckets", BITS, nbuckets=16, e=2, kmeans_iters=3, seed=1).train(db)
    signs = np.unpackbits(db, axis=1).astype(np.int8) * 2 - 1  # the one binary k-means, seeded by `seed`
    centres, _ = binary_kmeans(signs, kmeanspp_centres(signs, 16, np.random.default_rng(1)), max_rounds=3)
    np.testing.assert_array_equal(index.centres, pack_signs(centres))
    index.add(db)
    res = index.search(q, 30)  # the same call as every index
    probed = index.probe(q, 30)  # the e=2 nearest centres, then more while they hold < 30 items
    np.testing.assert_array_equal(probed[:, :2], assign_buckets(q, index.centres, 2))
    explicit = index.search(q, 30, buckets=probed)
    np.testing.assert_array_equal(res.distances, explicit.distances)
    item_bucket = assign_buckets(db, index.centres)[:, 0]
    for row, wanted in enumerate(probed):
        inside = np.isin(item_bucket, wanted[wanted >= 0])
        assert set(res.ids[row][res.ids[row] >= 0]) <= set(np.flatnonzero(inside))
        kk = min(30, int(inside.sum()))  # a small bucket pair pads the rest of the row
        check_ref_knn_with_draws(*brute_force(q[row:row + 1], db[inside], kk, np.flatnonzero(inside)),
                                 res.distances[row:row + 1, :kk], res.ids[row:row + 1, :kk])
        assert (res.ids[row, kk:] == -1).all()
    assert 0 < res.scanned_fraction < 1


def test_bucket_index_centres_see_only_the_prefix_bits():
    rng = np.random.default_rng(3)
    prefix = np.packbits(rng.integers(0, 2, (4, 16)), axis=1)  # 4 centres over the first 16 bits
    centres = np.concatenate([prefix, rng.integers(0, 256, (4, 6), dtype=np.uint8)], axis=1)
    index = BucketIndex(BITS, nbuckets=4, prefix_bits=16).set_centres(centres)
    np.testing.assert_array_equal(index.centres[:, 2:], 0)  # the rest of each centre is ignored
    codes = clustered_codes(200)
    expected = assign_buckets(codes[:, :2], prefix)[:, 0]
    np.testing.assert_array_equal(index.assign(codes)[:, 0], expected)
    with pytest.raises(ValueError, match=r"prefix_bits must be an int in \[1, bits=64\]"):
        BucketIndex(BITS, prefix_bits=72)
    with pytest.raises(ValueError, match="centres has 3 rows, expected nbuckets=4"):
        BucketIndex(BITS, nbuckets=4).set_centres(centres[:3])


def test_bucket_index_saved_before_it_had_centres_still_loads(tmp_path):
    db, q = clustered_codes(500), clustered_codes(10, seed=1)
    item_buckets, query_buckets = db[:, 0] % 10, q[:, :2] % 10
    index = BucketIndex(BITS, nbuckets=10)
    index.add(db, buckets=item_buckets)
    path = index.save(tmp_path / "old")
    meta = json.loads((path / "index.json").read_text())
    (path / "index.json").write_text(json.dumps({**meta, "params": {"nbuckets": 10}}))  # the old params
    loaded = load_index(path)
    assert loaded.centres is None and len(loaded) == 500
    np.testing.assert_array_equal(loaded.search(q, 20, buckets=query_buckets).distances,
                                  index.search(q, 20, buckets=query_buckets).distances)


def test_assign_buckets_picks_the_nearest_centres():
    db, centers = clustered_codes(300), clustered_codes(16, seed=7, flip=0.5)
    got = assign_buckets(db, centers, 3)
    got_d = np.take_along_axis(np.unpackbits(db[:, None] ^ centers[None], axis=2).sum(axis=2), got, axis=1)
    check_ref_knn_with_draws(*brute_force(db, centers, 3), got_d, got)


def test_bucket_index_centres_are_member_majorities():
    db = clustered_codes(1000, seed=5)
    index = BucketIndex(BITS, nbuckets=8, kmeans_iters=100).train(db)  # converges well before 100
    assert index.centres.shape == (8, 8) and index.centres.dtype == np.uint8
    assign = index.assign(db)[:, 0]
    assert len(np.unique(assign)) == 8  # no bucket left empty
    centres = np.unpackbits(index.centres, axis=1).astype(np.int64) * 2 - 1
    for c in range(8):
        votes = (np.unpackbits(db[assign == c], axis=1).astype(np.int64) * 2 - 1).sum(0)
        decided = votes != 0  # a tied bit keeps the centre's previous value
        np.testing.assert_array_equal(centres[c][decided], np.sign(votes[decided]))
    again = BucketIndex(BITS, nbuckets=8, kmeans_iters=100).train(db)
    np.testing.assert_array_equal(again.centres, index.centres)  # seeded: deterministic


def test_bucket_index_trains_on_the_prefix_bits_only():
    codes = clustered_codes(600)
    index = BucketIndex(BITS, nbuckets=6, prefix_bits=20, seed=2).train(codes)
    np.testing.assert_array_equal(np.unpackbits(index.centres, axis=1)[:, 20:], 0)
    mask = np.packbits(np.arange(BITS) < 20)
    noise = np.random.default_rng(4).integers(0, 256, codes.shape, dtype=np.uint8) & ~mask
    other = BucketIndex(BITS, nbuckets=6, prefix_bits=20, seed=2).train(codes ^ noise)
    np.testing.assert_array_equal(other.centres, index.centres)  # the rest of each code is ignored


def test_bucket_index_training_needs_enough_distinct_codes():
    with pytest.raises(ValueError, match=r"nbuckets=16 but the codes hold only 10 distinct values \(of 10\)"):
        BucketIndex(BITS, nbuckets=16).train(clustered_codes(10))
    three = np.repeat(np.packbits(np.eye(3, BITS, dtype=bool), axis=1), 50, axis=0)
    with pytest.raises(ValueError, match=r"nbuckets=4 but the codes hold only 3 distinct values \(of 150\)"):
        BucketIndex(BITS, nbuckets=4).train(three)
    same_prefix = clustered_codes(200)
    same_prefix[:, 0] &= 1  # the first 8 bits take two values
    with pytest.raises(ValueError, match="nbuckets=3 but the codes hold only 2 distinct"):
        BucketIndex(BITS, nbuckets=3, prefix_bits=8).train(same_prefix)


# -- persistence -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_save_load_round_trip(kind, tmp_path):
    db, q = clustered_codes(1200), clustered_codes(20, seed=1)
    index = make_index(kind)
    add(index, db, np.arange(len(db)) + 50)
    index.remove(np.arange(50, 250))
    before = search(index, q, 40)
    index.save(tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert meta["format_version"] == index_io.FORMAT_VERSION and meta["ntotal"] == 1000
    for loaded in (load_index(tmp_path / "idx"), BinaryIndex.load(tmp_path / "idx"), type(index).load(tmp_path / "idx")):
        assert type(loaded) is type(index) and loaded.ntotal == 1000 and loaded.bits == BITS
        assert loaded.get_params() == index.get_params()
        after = search(loaded, q, 40)
        np.testing.assert_array_equal(after.ids, before.ids)
        np.testing.assert_array_equal(after.distances, before.distances)
    with pytest.raises(ValueError, match="holds a"):
        (HNSWIndex if kind != "hnsw" else FlatIndex).load(tmp_path / "idx")


def test_failed_save_leaves_the_previous_save(tmp_path, monkeypatch):
    db, q = clustered_codes(800), clustered_codes(10, seed=1)
    index = FlatIndex(BITS)
    index.add(db[:500])
    target = tmp_path / "idx"
    index.save(target)
    saved = index.search(q, 30)
    index.add(db[500:])

    def crash(native, path):  # a writer that dies half-way through its file
        with open(path, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(index_io.faiss, "write_index_binary", crash)
    with pytest.raises(OSError, match="simulated"):
        index.save(target)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no temporary left behind
    loaded = load_index(target)
    assert loaded.ntotal == 500
    np.testing.assert_array_equal(loaded.search(q, 30).ids, saved.ids)


def test_load_checks_version_type_and_bits(tmp_path):
    index = FlatIndex(BITS)
    index.add(clustered_codes(10))
    path = index.save(tmp_path / "idx")
    meta_file = path / "index.json"
    meta = json.loads(meta_file.read_text())
    for change, message in (
        ({"format_version": 99}, "format_version 99"),
        ({"type": "annoy"}, "unknown index kind 'annoy'"),
        ({"bits": 128}, "64-bit codes but index.json says bits=128"),
        ({"ntotal": 11}, "ntotal=11"),
    ):
        meta_file.write_text(json.dumps({**meta, **change}))
        with pytest.raises(ValueError, match=message):
            load_index(path)
    with pytest.raises(FileNotFoundError, match="index.json"):
        load_index(tmp_path / "nothing")


# -- rescoring ---------------------------------------------------------------------------------
def test_rescore_orders_candidates_by_cosine():
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((300, 16)).astype(np.float32) * rng.uniform(0.5, 3, (300, 1)).astype(np.float32)
    ids = rng.permutation(10_000)[:300]
    queries = rng.standard_normal((5, 16)).astype(np.float32)
    cand = np.stack([rng.choice(ids, 20, replace=False) for _ in range(5)])
    cand[:, -3:] = -1  # stage-1 padding
    res = Rescorer(vectors, ids).rescore(queries, cand, k=18)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    row_of = {int(i): r for r, i in enumerate(ids)}
    for q in range(5):
        expected = sorted(cand[q, :17], key=lambda i: -float(unit[row_of[int(i)]] @ queries[q]) / np.linalg.norm(queries[q]))
        assert list(res.ids[q, :17]) == expected
        cos = np.array([unit[row_of[int(i)]] @ queries[q] for i in res.ids[q, :17]]) / np.linalg.norm(queries[q])
        np.testing.assert_allclose(res.scores[q, :17], cos, rtol=1e-5, atol=1e-6)
        assert res.ids[q, 17] == -1 and res.scores[q, 17] == -np.inf
    with pytest.raises(KeyError, match="without a stored vector"):
        rescore(queries, np.full((5, 2), 10_001), vectors, ids)


def test_rescore_keeps_hamming_order_among_equal_scores():
    vectors = np.ones((4, 3), dtype=np.float32)  # all cosines equal
    res = rescore(np.ones((1, 3), np.float32), np.array([[2, 0, 3, 1]]), vectors)
    assert res.ids.tolist() == [[2, 0, 3, 1]]
