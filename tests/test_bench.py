"""The stage benchmark's machinery: data generator, query scaling, tuning, a tiny end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from eval import bench, bench_index


def test_mixture_is_chunk_prefix_stable_and_unit_norm() -> None:
    data = bench.Mixture(dim=16, clusters=5, seed=3)
    small = np.concatenate(list(data.database(700, chunk=256)))
    large = np.concatenate(list(data.database(1500, chunk=256)))
    assert small.shape == (700, 16) and small.dtype == np.float32
    np.testing.assert_array_equal(small, large[:700])  # each size is a prefix of the next
    np.testing.assert_allclose(np.linalg.norm(large, axis=1), 1, atol=1e-5)
    assert not np.array_equal(data.queries(10), large[:10]), "queries come from their own stream"
    images, texts = data.pairs(200)
    paired = np.sum(images * texts, axis=1).mean()
    unpaired = np.sum(images * texts[::-1], axis=1).mean()
    assert paired > 0.8 and paired > unpaired + 0.3


def test_query_counts_shrink_with_size_within_bounds() -> None:
    assert bench.queries_for(10_000, 1000, 1_000_000, 100) == 1000
    assert bench.queries_for(10_000_000, 1000, 1_000_000, 100) == 100
    assert bench.queries_for(4_000_000, 1000, 1_000_000, 100) == 250
    assert bench.queries_for(10**9, 1000, 1_000_000, 100) == 100
    assert bench.queries_for(10**9, 50, 1_000_000, 100) == 50, "never more than asked for"


def test_index_plan_scales_cells_and_skips_slow_builds() -> None:
    args = bench.parse_args(["--max-nlist", "1024", "--hnsw-max-n", "100000"])
    plans = {n: dict(bench.index_plan(n, args)) for n in (10_000, 1_000_000, 10_000_000)}
    assert plans[10_000]["ivf"] == {"nlist": 128} and plans[10_000]["buckets"] == {"nbuckets": 128}
    assert plans[1_000_000]["ivf"] == {"nlist": 1024} and plans[10_000_000]["ivf"] == {"nlist": 1024}
    assert "hnsw" in plans[10_000] and "hnsw" not in plans[1_000_000]
    assert all("flat" in p for p in plans.values())


def test_tune_takes_the_first_value_reaching_the_target() -> None:
    recalls = {1: 0.5, 2: 0.9, 4: 0.96, 8: 0.99}
    value, trace = bench.tune([1, 2, 4, 8], lambda v: (lambda q: v), lambda v: recalls[v], np.zeros(1), 0.95)
    assert value == 4 and [t["value"] for t in trace] == [1, 2, 4]
    value, trace = bench.tune([1, 2], lambda v: (lambda q: v), lambda v: recalls[v], np.zeros(1), 0.95)
    assert value == 2 and len(trace) == 2, "unreachable target: the last (most thorough) value"
    assert bench.doubling(16, 100) == [16, 32, 64, 100]


def test_build_size_fills_the_baseline_in_place_and_encodes_every_chunk() -> None:
    from hashing import create_hasher

    data = bench.Mixture(dim=32, clusters=8, seed=1)
    hasher = create_hasher("lsh", bits=16).fit(*data.pairs(300))
    db = bench.build_size(1000, data, hasher, chunk=300)
    expected = np.concatenate(list(data.database(1000, chunk=300)))
    assert db.float_index.ntotal == 1000
    np.testing.assert_array_equal(db.vectors, expected)
    np.testing.assert_array_equal(db.codes, hasher.encode(expected, "image"))
    d, i = db.float_index.search(expected[:5], 1)
    assert i[:, 0].tolist() == [0, 1, 2, 3, 4]


def test_peak_rss_is_reset_per_stage() -> None:
    bench.reset_peak_rss()
    before = bench.peak_rss()
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    assert bench.peak_rss() >= before + 60 * 2**20
    del block
    bench.reset_peak_rss()
    assert bench.peak_rss() < before + 60 * 2**20


@pytest.fixture
def restore_threads():
    """bench.main caps torch, faiss and BLAS threads process-wide; later tests get theirs back."""
    import faiss
    import torch

    torch_threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    try:
        from threadpoolctl import threadpool_limits

        blas = threadpool_limits(limits=None)
    except ImportError:
        blas = None
    yield
    torch.set_num_threads(torch_threads)
    faiss.omp_set_num_threads(faiss_threads)
    if blas is not None:
        blas.restore_original_limits()


def test_tiny_run_end_to_end(tmp_path: Path, restore_threads: None) -> None:
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    result = bench.main([
        "--sizes", "1200", "600", "--dim", "32", "--clusters", "12", "--bits", "32", "--k", "16",
        "--nq", "40", "--single", "8", "--nq-ref-n", "600", "--min-nq", "30", "--min-single", "5",
        "--repeats", "1", "--fit-n", "1500", "--encode-n", "500", "--hnsw-max-n", "1000",
        "--rerank-candidates", "16", "--rerank-queries", "10",
        "--encode-images", "0", "--encode-texts", "0", "--output", str(out), "--plot", str(png),
    ])
    saved = json.loads(out.read_text())
    assert saved["complete"] and saved["sizes"] == json.loads(json.dumps(result["sizes"]))
    assert [s["n"] for s in saved["sizes"]] == [600, 1200], "sizes run smallest first"
    small, large = saved["sizes"]
    assert (small["nq"], small["single"]) == (40, 8) and (large["nq"], large["single"]) == (30, 5)
    assert {h["method"] for h in saved["hash"]} == {"itq", "lsh"}
    for size in saved["sizes"]:
        f = size["float"]
        assert f["bytes"] == size["n"] * 32 * 4
        kinds = [r["index"] for r in size["indexes"]]
        assert kinds[:3] == ["flat", "ivf", "buckets"] and ("hnsw" in kinds) == (size["n"] <= 1000)
        for r in size["indexes"]:
            assert r["batch_x_float"] == pytest.approx(r["batch_qps"] / f["batch_qps"])
            assert r["single_x_float"] == pytest.approx(r["single_qps"] / f["single_qps"])
            assert r["memory_x_float"] == pytest.approx(r["bytes"] / f["bytes"])
            assert r["bytes"] >= size["n"] * 4, "an index holds at least its 4-byte codes"
            reached = r["tuning"] is None or r["recall"] >= 0.95 or len(r["tuning"]) > 1
            assert 0 < r["recall"] <= 1 and reached
        assert size["indexes"][0]["recall"] == 1.0, "exact flat search is its own reference"
        assert size["rerank"]["float_reranker_ms_per_query"] > 0 and size["peak_rss_gib"] > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| 1,200 | float IndexFlatIP |" in saved["markdown"]


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(["--index-hasher", "contrastive"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--sizes", "100", "--k", "128"])


def test_bench_index_still_runs(tmp_path: Path, restore_threads: None) -> None:
    out = tmp_path / "bench_index.json"
    result = bench_index.main(["--n", "3000", "--bits", "32", "--k", "8", "--nq", "20", "--single", "5",
                               "--repeats", "1", "--dim", "16", "--clusters", "10", "--nlist", "16",
                               "--nprobe", "4", "--hnsw-M", "0", "--output", str(out)])
    assert json.loads(out.read_text())["rows"][0]["index"] == "float IndexFlatIP"
    assert any(r["index"] == "ivf" for r in result["rows"])


@pytest.mark.data
def test_encode_stage_on_real_files() -> None:
    enc = bench.bench_encode("lite", 4, 8, bench.FLICKR8K / "dataset_flickr8k.json", bench.FLICKR8K / "images",
                             batch_size=2, device="cpu")
    assert enc["n_images"] == 4 and enc["n_texts"] == 8
    assert enc["images_per_s"] > 0 and enc["texts_per_s"] > 0 and enc["device"] == "cpu"
