"""The one benchmark module's machinery: data generator, query scaling, tuning, tiny end-to-end runs of each stage."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from eval import bench


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
        "--stages", "encode", "hash", "sizes",
        "--encode-images", "0", "--encode-texts", "0", "--output", str(out), "--plot", str(png),
    ])
    saved = json.loads(out.read_text())
    assert set(saved["runs"]) == {"hash", "sizes"}, "encode asked for no inputs: not run"
    assert not saved["complete"] and saved["sizes"] == json.loads(json.dumps(result["sizes"]))
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
    assert "| 1,200 | float IndexFlatIP |" in saved["markdown"]["sizes"]


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(["--index-hasher", "contrastive"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--sizes", "100", "--k", "128"])


def test_float_recall_and_our_pipeline_at_full_depth_is_exact() -> None:
    from hashing import create_hasher
    from hashing.index import create_index

    truth = np.array([[1, 2, 3], [4, 5, 6]])
    assert bench.float_recall(np.array([[3, 2, 1], [4, 9, 8]]), truth) == pytest.approx((1 + 1 / 3) / 2)
    data = bench.Mixture(dim=16, clusters=4, seed=2)
    x = np.concatenate(list(data.database(500, chunk=256)))
    q = data.queries(7)
    hasher = create_hasher("itq", bits=16).fit(*data.pairs(400))
    index = create_index("flat", 16)
    index.add(hasher.encode(x, "image"))
    ours = bench.Ours(hasher, index, x.astype(np.float16), k=5)
    ours.depth = 500  # every item is a candidate: rescoring alone decides, so it is exact float search
    exact = np.argsort(-(q @ x.T), axis=1)[:, :5]
    assert bench.float_recall(ours.search(q), exact) == pytest.approx(1.0)
    ours.depth = 5
    assert bench.float_recall(ours.search(q), exact) < 1.0, "Hamming top-5 alone misses some"


def test_asymmetric_cut_takes_its_candidates_from_the_hamming_top_and_reranks_them() -> None:
    from hashing import create_hasher
    from hashing.index import asymmetric_top, create_index

    data = bench.Mixture(dim=16, clusters=4, seed=2)
    x = np.concatenate(list(data.database(500, chunk=256)))
    q = data.queries(20)
    hasher = create_hasher("itq", bits=16).fit(*data.pairs(400))
    codes = hasher.encode(x, "image")
    index = create_index("flat", 16)
    index.add(codes)
    ours = bench.OursAsymmetric(hasher, index, x.astype(np.float16), codes, k=5)
    ours.hamming_depth, ours.depth = 500, 500
    exact = np.argsort(-(q @ x.T), axis=1)[:, :5]
    assert bench.float_recall(ours.search(q), exact) == pytest.approx(1.0), "everything rescored: exact"
    ours.hamming_depth, ours.depth = 40, 10
    cand = ours.candidates(q)
    hamming = index.search(hasher.encode(q, "text"), 40).ids
    assert cand.shape == (20, 10) and all(np.isin(c, h).all() for c, h in zip(cand, hamming))
    np.testing.assert_array_equal(cand, asymmetric_top(hasher.project(q, "text"), hamming, codes, 10))
    assert not np.array_equal(cand, hamming[:, :10]), "the asymmetric order is not the Hamming order"
    assert bench.share_in(np.array([[9, 8, 2, 1]]), np.array([[1, 2]])) == 1.0, "every candidate counts, not the first k"
    shares = bench.top10_shares(ours, q, exact, [16, 128], depths=(8, 64))
    assert [s["hamming_depth"] for s in shares] == [16, 128] and ours.hamming_depth == 128
    assert set(shares[0]) == {"hamming_depth", "hamming_top8", "asymmetric_top8"}, "only depths below D1"
    assert shares[1]["asymmetric_top64"] >= shares[1]["asymmetric_top8"]


def test_recall_at_counts_items_within_the_kth_distance_and_never_padding() -> None:
    from hashing.index import PAD_DISTANCE, PAD_ID, SearchResult

    codes = np.packbits(np.array([[0] * 8, [1] + [0] * 7, [1, 1] + [0] * 6, [1] * 8], dtype=bool), axis=1)
    query = codes[:1]  # distances 0, 1, 2, 8 to the four items
    kth = np.array([[1]])  # exact top-2 reaches distance 1
    res = SearchResult(np.array([[0, 2, PAD_ID]]), np.array([[0, 2, PAD_DISTANCE]], dtype=np.int32))
    assert bench.recall_at(res, query, codes, kth, "probe") == pytest.approx(1 / 3)
    lying = SearchResult(np.array([[0, 2, PAD_ID]]), np.array([[0, 1, PAD_DISTANCE]], dtype=np.int32))
    with pytest.raises(AssertionError, match="probe: returned distances"):
        bench.recall_at(lying, query, codes, kth, "probe")


def test_tune_grid_takes_the_first_setting_reaching_the_target() -> None:
    truth = np.arange(10)[None, :]
    found = {1: np.arange(5), 2: np.arange(9, -1, -1), 3: np.arange(10)}
    setting, trace = bench.tune_grid([{"v": 1}, {"v": 2}, {"v": 3}], lambda s: (lambda q: found[s["v"]][None, :]),
                                     np.zeros(1), truth, 0.95)
    assert setting == {"v": 2} and [t["recall"] for t in trace] == [0.5, 1.0]
    setting, _ = bench.tune_grid([{"v": 1}], lambda s: (lambda q: found[1][None, :]), np.zeros(1), truth, 0.95)
    assert setting == {"v": 1}, "unreachable: the best setting tried"


def test_tune_fastest_times_the_settings_reaching_the_target_and_prunes_deeper_ones() -> None:
    truth = np.arange(10)[None, :]
    # recall(depth, nprobe): the wider scan reaches the target at a smaller depth, and is faster there
    reaches = {(1, 1): 0.2, (2, 1): 0.6, (4, 1): 0.96, (1, 2): 0.3, (2, 2): 0.97, (1, 4): 0.98}
    cost = {(4, 1): 0.002, (2, 2): 0.0, (1, 4): 0.004}
    tried = []

    def apply(s: dict) -> Callable[[np.ndarray], np.ndarray]:
        key = (s["depth"], s["nprobe"])
        tried.append(key)

        def search(q: np.ndarray) -> np.ndarray:
            time.sleep(cost.get(key, 0.0))
            return np.r_[np.arange(round(10 * reaches[key])), np.full(10, -1)][None, :10]
        return search

    chains = [[{"depth": d, "nprobe": p} for d in (1, 2, 4)] for p in (1, 2, 4)]
    setting, trace = bench.tune_fastest(chains, apply, np.zeros((3, 1)), truth, 0.95, timed=3, repeats=1)
    assert setting == {"depth": 2, "nprobe": 2}, "the fastest of the three settings reaching 0.95"
    assert [(t["depth"], t["nprobe"]) for t in trace] == [(1, 1), (2, 1), (4, 1), (1, 2), (2, 2), (1, 4)]
    assert all(("single_qps_tuning" in t) == (t["recall"] >= 0.95) for t in trace)
    setting, _ = bench.tune_fastest([[{"depth": 1, "nprobe": 1}, {"depth": 2, "nprobe": 1}]], apply, np.zeros((1, 1)),
                                    truth, 0.99, timed=1, repeats=1)
    assert setting == {"depth": 2, "nprobe": 1}, "none reaching: the best recall tried"


def test_ann_stage_tiny(restore_threads: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from hashing import create_hasher

    def fixed_clock(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
        return 0.25, fn()  # every timed call "takes" 0.25 s: QPS is then a count divided by it

    monkeypatch.setattr(bench, "best_time", fixed_clock)

    args = bench.parse_args(["--ann-n", "3000", "--dim", "16", "--clusters", "8", "--nq", "30", "--single", "5",
                             "--repeats", "1", "--ann-pq-m", "4", "--ann-bits", "16", "--ann-max-depth", "3000",
                             "--ann-hnsw-M", "8", "--max-nlist", "32", "--train-per-list", "40",
                             "--build-threads", "1", "--ann-ours", "flat", "ivf", "hnsw", "--ann-ours-nlist", "0"])
    data = bench.Mixture(16, 8, seed=0)
    pairs = data.pairs(800)
    ann = bench.bench_ann(3000, data, lambda bits: create_hasher("itq", bits=bits).fit(*pairs), args)
    systems = [r["system"] for r in ann["rows"]]
    assert systems[:4] == ["faiss IndexFlatIP", "faiss IndexHNSWFlat", "faiss IndexIVFPQ",
                           "faiss IndexIVFRaBitQ + fp16 refine"]
    assert systems[4:] == ["ours: flat 16b + fp16 rescoring", "ours: ivf 16b + fp16 rescoring",
                           "ours: ivf 16b + asymmetric + fp16 rescoring", "ours: hnsw 16b + fp16 rescoring"]
    flat, hnsw = ann["rows"][0], ann["rows"][1]
    assert flat["recall"] == 1.0 and flat["ram_bytes"] == 3000 * 16 * 4
    for r in ann["rows"][1:]:
        assert r["recall"] >= 0.95 or len(r["tuning"]) > 1, r
        assert r["ram_bytes"] > 0
    for r in ann["rows"]:
        assert (r["batch_qps"], r["single_qps"]) == (30 / 0.25, 5 / 0.25), "--nq batched, --single one at a time"
        chosen = [t for t in r.get("tuning") or [] if all(r["params"].get(key) == value for key, value in t.items()
                                                           if key not in ("recall", "single_qps_tuning"))]
        assert chosen or "tuning" not in r, r
        assert all(t["recall"] == r["recall"] for t in chosen), "the reported recall is the chosen setting's"
    rabitq = ann["rows"][3]
    assert rabitq["recall"] >= 0.95, "refined RaBitQ reaches the target on easy data"
    assert rabitq["mmap_bytes"] >= 3000 * 16 * 2 and rabitq["rescoring_in_ram"], "its fp16 refine vectors, in RAM"
    assert rabitq["code_bytes_per_item"] == 16 // 8 + 8, "1 bit a dimension plus two float factors"
    assert " in RAM |" in bench.ann_markdown(ann)
    ours = ann["rows"][4]
    assert ours["mmap_bytes"] == 3000 * 16 * 2, "fp16 rescoring vectors, counted apart from RAM"
    assert ours["ram_x_hnsw"] == pytest.approx(ours["ram_bytes"] / hnsw["ram_bytes"])
    assert "| faiss IndexHNSWFlat |" in bench.ann_markdown(ann)
    ivf, asym = ann["rows"][5], ann["rows"][6]
    # the same index plus the codes held for the scorer (the saved config's nprobe may differ by a digit)
    assert abs(asym["ram_bytes"] - (ivf["ram_bytes"] + 3000 * 2)) < 8 and asym["codes_in_ram_bytes"] == 3000 * 2
    assert asym["params"]["depth"] < asym["params"]["hamming_depth"] and "nprobe" in asym["params"]
    shares = asym["top10_shares"]
    assert shares["nprobe"] == 1 and [s["hamming_depth"] for s in shares["shares"]] == [512, 1024, 2048, 4096]
    assert all(0 <= s["asymmetric_top64"] <= 1 for s in shares["shares"])
    bounds = {(b["nprobe"], b["hamming_depth"]): b["recall_bound"] for b in asym["hamming_bounds"]}
    assert all(bounds[t["nprobe"], t["hamming_depth"]] >= 0.95 for t in asym["tuning"]), "no hopeless chain tried"
    assert all(t["recall"] <= bounds[t["nprobe"], t["hamming_depth"]] + 1e-9 for t in asym["tuning"])


def test_scale_stage_tiny_reopens_in_a_fresh_process(tmp_path: Path, restore_threads: None) -> None:
    from hashing import create_hasher

    data = bench.Mixture(256, 8, seed=0)
    hasher = create_hasher("itq", bits=64).fit(*data.pairs(600))
    args = bench.parse_args(["--scale-dir", str(tmp_path), "--scale-queries", "5", "--chunk", "700", "--scale-keep"])
    row = bench.bench_scale(1500, data, hasher, args)
    assert row["n"] == 1500 and row["vector_dtype"] == "fp16"
    assert row["disk_bytes"] >= 1500 * 256 * 2, "fp16 vectors on disk"
    assert row["disk_bytes"] == bench.directory_size(tmp_path / "retriever-1500-fp16")
    assert 0 < row["p50_ms"] <= row["p99_ms"] and row["open_s"] > 0
    assert "identical_top10_lists" not in row and "cascade_p50_ms" not in row, "no reference given: nothing compared"
    from retrieval import Retriever

    reopened = Retriever.open(tmp_path / "retriever-1500-fp16")
    assert len(reopened.galleries["image"]) == 1500
    budget = bench.budget([row])
    assert budget[0]["n"] == 100_000_000 and budget[0]["disk_bytes"] == pytest.approx(row["disk_bytes"] / 1500 * 1e8)
    assert budget[0]["private_open_bytes"] == pytest.approx(row["anon_open_bytes"] / 1500 * 1e8)
    assert 0 < row["anon_open_bytes"] <= row["rss_open_bytes"] + 2**20, "private memory is part of the resident set"
    assert "| 1,500 | fp16 |" in bench.scale_markdown([row])


def test_scale_stage_compares_stored_rankings_with_in_memory_ones(tmp_path: Path, restore_threads: None) -> None:
    from hashing import create_hasher

    data = bench.Mixture(256, 8, seed=0)
    hasher = create_hasher("itq", bits=64).fit(*data.pairs(600))
    args = bench.parse_args(["--scale-dir", str(tmp_path), "--scale-queries", "6", "--chunk", "700"])
    expected = bench.in_memory_hits(1500, data, hasher, data.queries(6), args.chunk)
    exact = bench.bench_scale(1500, data, hasher, args, "fp32", expected)
    assert exact["identical_top10_lists"] == 1.0 and exact["top10_ids_kept"] == 1.0
    assert exact["max_score_diff"] < 1e-5, "fp32 on disk: the same scores"
    assert exact["cascade_p50_ms"] > 0 and exact["float_exhaustive_p50_ms"] > 0
    coarse = bench.bench_scale(1500, data, hasher, args, "int8", expected)
    assert 0 < coarse["max_score_diff"] < 0.05, "int8 scores move, a little"
    assert not (tmp_path / "retriever-1500-int8").exists(), "not kept without --scale-keep"
    shifted = [[[h[0] + 1, h[1]] for h in hits] for hits in expected]
    assert bench.agreement(shifted, expected)["identical_top10_lists"] == 0.0
    table = bench.scale_markdown([exact, bench.bench_scale(1500, data, hasher, args)])
    assert "| 1,500 | fp32 |" in table and table.rstrip().endswith("- | - | - | - |")


def test_stages_not_run_keep_their_previous_results(tmp_path: Path, restore_threads: None) -> None:
    out = tmp_path / "bench.json"
    common = ["--dim", "16", "--clusters", "8", "--bits", "16", "--k", "8", "--nq", "20", "--single", "4",
              "--min-nq", "10", "--min-single", "2", "--repeats", "1", "--fit-n", "300", "--encode-n", "200",
              "--hashers", "itq", "--indexes", "ivf", "--rerank-candidates", "8", "--rerank-queries", "5",
              "--output", str(out)]
    bench.main(["--stages", "hash", "sizes", "--sizes", "500", *common])
    first = json.loads(out.read_text())
    bench.main(["--stages", "hash", *common])
    second = json.loads(out.read_text())
    assert second["sizes"] == first["sizes"], "sizes not rerun: kept"
    assert set(second["runs"]) == {"hash", "sizes"} and not second["complete"]
    assert "| 500 | float IndexFlatIP |" in second["markdown"]["sizes"]


@pytest.mark.data
def test_encode_stage_on_real_files(restore_threads: None, monkeypatch: pytest.MonkeyPatch) -> None:
    seconds = iter([0.5, 0.25, 1.0] * 8)  # per side: decode/tokenize, forward, end to end

    def fixed_clock(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
        return next(seconds), fn()

    monkeypatch.setattr(bench, "best_time", fixed_clock)
    enc = bench.bench_encode("lite", 4, 8, bench.FLICKR8K / "dataset_flickr8k.json", bench.FLICKR8K / "images",
                             batch_size=2, device="cpu", variants=["before", "torch", "onnxruntime", "int8"],
                             threads=1, repeats=1)
    assert enc["n_images"] == 4 and enc["n_texts"] == 8 and enc["threads"] == 1
    assert list(enc["variants"]) == ["before", "torch", "onnxruntime", "int8"]
    for name, row in enc["variants"].items():
        images, texts = row["images"], row["texts"]
        assert row["device"] == "cpu"
        # 4 images and 8 texts over the measured seconds; end to end reaches half the slower of the two stages
        assert (images["decode_per_s"], images["forward_per_s"], images["encode_per_s"]) == (8, 16, 4), name
        assert (texts["tokenize_per_s"], texts["forward_per_s"], texts["encode_per_s"]) == (16, 32, 8), name
        assert images["share_of_bound"] == texts["share_of_bound"] == 0.5
        assert images["min_cosine_to_before"] >= 0.9999, f"{name}: image vectors as before issue 13"
        if name != "int8":
            assert texts["min_cosine_to_before"] >= 0.9999, name
    assert "| int8 |" in bench.encode_markdown(enc)


def write_embedding_cache(tmp_path: Path, n_train: int = 120, n_test: int = 20, dim: int = 16) -> tuple[Path, Path]:
    """A Flickr8K-shaped annotations file and embedding cache: 4 clusters varying in 3 directions,
    each caption its image moved along one shared direction (a modality gap) plus noise."""
    rng = np.random.default_rng(0)
    centres, basis = rng.standard_normal((4, dim)), rng.standard_normal((3, dim))
    gap = 0.8 * rng.standard_normal(dim)
    (tmp_path / "images").mkdir()
    images = [{"filename": f"{i}.jpg", "split": "train" if i < n_train else "test",
               "sentences": [{"raw": f"caption {j} of {i}"} for j in range(5)]} for i in range(n_train + n_test)]
    (tmp_path / "dataset_flickr8k.json").write_text(json.dumps({"dataset": "flickr8k", "images": images}))
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        img = centres[rng.integers(0, 4, n)] + rng.standard_normal((n, 3)) @ basis * 0.5
        img /= np.linalg.norm(img, axis=1, keepdims=True)
        txt = np.repeat(img, 5, axis=0) + gap / np.sqrt(dim) * 4 + 0.05 * rng.standard_normal((5 * n, dim))
        arrays[f"{split}_image"], arrays[f"{split}_text"] = img, txt / np.linalg.norm(txt, axis=1, keepdims=True)
    np.savez(tmp_path / "emb.npz", **arrays)
    return tmp_path / "dataset_flickr8k.json", tmp_path / "emb.npz"


def test_embedding_mixture_draws_like_the_embeddings_it_was_fitted_to(tmp_path: Path) -> None:
    from eval.datasets_hashing import load_flickr8k
    from eval.embedding_mixture import flickr8k_mixture

    annotations, emb = write_embedding_cache(tmp_path)
    data = flickr8k_mixture(emb, annotations, components=4, covariance="full", queries_from="text")
    real = load_flickr8k(emb, annotations)
    db = np.concatenate(list(data.database(700, chunk=256)))
    assert db.shape == (700, 16) and db.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(db, axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(db[:300], np.concatenate(list(data.database(300, chunk=256))))
    # draws lie where the real images lie: their nearest real test image is as close as the real
    # test images' nearest real train image, and much closer than for isotropic vectors
    def nearest(a: np.ndarray, b: np.ndarray) -> float:
        return float((a @ b.T).max(axis=1).mean())
    iso = np.random.default_rng(1).standard_normal((300, 16))
    iso /= np.linalg.norm(iso, axis=1, keepdims=True)
    assert nearest(db[:300], real.query.image) > nearest(iso, real.query.image) + 0.2
    assert abs(nearest(db[:300], real.train.image) - nearest(real.query.image, real.train.image)) < 0.1
    # queries come from the caption side of the gap
    q = data.queries(200)
    assert nearest(q, real.query.text) > nearest(q, real.query.image) + 0.05
    assert data.pairs(10**6)[0].shape == (600, 16), "hasher pairs: every real train (image, caption) pair"
    assert data.description["fit_texts"] == 120, "the caption mixture: one caption a photo"
    assert data.description["held_out_loglik_per_dim"]["image"] > 0


def test_ann_stage_on_fitted_mixture_with_rabitq(tmp_path: Path, restore_threads: None) -> None:
    annotations, emb = write_embedding_cache(tmp_path)
    result = bench.main([
        "--stages", "ann", "--ann-data", "flickr8k-gmm", "--ann-embeddings", str(emb), "--ann-embeddings-model", "",
        "--annotations", str(annotations), "--ann-gmm-components", "4", "--dim", "16", "--ann-n", "3000",
        "--nq", "30", "--single", "5", "--repeats", "1", "--ann-pq-m", "4", "--ann-bits", "16", "32",
        "--ann-max-depth", "3000", "--ann-hnsw-M", "8", "--max-nlist", "32", "--train-per-list", "40",
        "--build-threads", "1", "--ann-ours", "ivf", "--ann-ours-nlist", "32", "--output", str(tmp_path / "b.json")])
    ann = result["ann"]
    assert ann["data"]["kind"] == "flickr8k-gmm" and ann["data"]["components"] == 4 and ann["intrinsic"] is None
    rows = {r["system"]: r for r in ann["rows"]}
    rabitq = rows["faiss IndexIVFRaBitQ + fp16 refine"]
    assert rabitq["params"]["nlist"] == 32 and rabitq["params"]["qb"] == 4
    for name in ("faiss IndexIVFRaBitQ + fp16 refine", "ours: ivf 32b + fp16 rescoring"):
        assert rows[name]["recall"] >= 0.95, rows[name]
    assert rows["ours: ivf 16b + fp16 rescoring"]["recall"] > 0.5
    assert json.loads((tmp_path / "b.json").read_text())["ann"]["data"]["queries_from"] == "text"

    from eval import ann_compare

    text = ann_compare.main([str(tmp_path / "b.json")])
    line = next(x for x in text.splitlines() if x.startswith("| fitted to lite Flickr8K (4 full components, text queries)"))
    ours, rbq = rows["ours: ivf 16b + fp16 rescoring"], rabitq  # the first ours: ivf row is the 16-bit one
    asym = rows["ours: ivf 16b + asymmetric + fp16 rescoring"]
    hnsw = rows["faiss IndexHNSWFlat"]
    assert line.endswith(f"| {ours['single_qps'] / hnsw['single_qps']:.1f}x | {ours['single_qps'] / rbq['single_qps']:.1f}x "
                         f"| {asym['single_qps']:,.0f} ({asym['recall']:.3f}) | {asym['single_qps'] / hnsw['single_qps']:.1f}x "
                         f"| {asym['single_qps'] / rbq['single_qps']:.1f}x |")
    assert "| faiss IndexIVFRaBitQ + fp16 refine |" in text


def test_mixture_selection_table_scores_candidates_beside_the_real_split(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    from eval import embedding_mixture

    annotations, emb = write_embedding_cache(tmp_path)
    rows = embedding_mixture.main(["--embeddings", str(emb), "--annotations", str(annotations),
                                   "--candidates", "4:full", "1:spherical"])
    real, full, spherical = rows
    assert real["components"].startswith("real")
    assert full["image_loglik"] > spherical["image_loglik"], "the clustered low-rank data fits 4 full components better"
    assert abs(full["top1"] - real["top1"]) < abs(spherical["top1"] - real["top1"])
    assert "| 4 | full |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        embedding_mixture.main(["--embeddings", str(emb), "--candidates", "4:round"])
