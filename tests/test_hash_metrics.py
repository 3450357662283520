import itertools

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from eval import hash_metrics as hm


def ap_of_order(rel_in_rank_order, k=None, norm="in_top_k"):
    """Textbook AP of one fixed ranking (no ties left)."""
    rel = np.asarray(rel_in_rank_order, dtype=float)
    n, total = len(rel), rel.sum()
    k = n if k is None else min(k, n)
    hits_so_far = np.cumsum(rel)
    s = (rel * hits_so_far / np.arange(1, n + 1))[:k].sum()
    if k == n:
        denom = total
    elif norm == "in_top_k":
        denom = rel[:k].sum()
    else:
        denom = min(k, total)
    return s / denom if denom else 0.0


def all_tie_orders(d):
    """Every ranking of the items consistent with the distances (each tie order once per permutation)."""
    for perm in itertools.permutations(range(len(d))):
        yield np.lexsort((np.array(perm), d))


def brute_force(rankings, metric):
    return np.mean([metric(r) for r in rankings])


# ---------------------------------------------------------------------------------------------
def test_ap_matches_sklearn_on_continuous_scores():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((20, 300))
    relevant = rng.random((20, 300)) < 0.2
    expected = [average_precision_score(relevant[i], scores[i]) for i in range(20)]
    for ties in ("random", "index"):
        ours = hm.average_precision(-scores, relevant, ties=ties)
        np.testing.assert_allclose(ours, expected, rtol=1e-10)


@pytest.mark.parametrize("seed", range(12))
def test_tie_aware_metrics_equal_mean_over_all_tie_orders(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 7))
    d = rng.integers(0, 3, size=n)  # Hamming-like: few distinct values, many ties
    rel = rng.random(n) < 0.5
    rel[rng.integers(n)] = True
    rankings = [rel[order] for order in all_tie_orders(d)]
    for k in (None, 1, 2, 3, 5):
        for norm in ("in_top_k", "min_k_r"):
            expected = brute_force(rankings, lambda r: ap_of_order(r, k, norm))
            for dist in (d, d.astype(np.float64) / 3):  # histogram path and sort path
                got = hm.average_precision(dist[None], rel[None], k, map_k_norm=norm)[0]
                assert got == pytest.approx(expected, abs=1e-12), (d, rel, k, norm)
    for k in (1, 2, 4):
        expected = brute_force(rankings, lambda r: r[:k].mean())
        for dist in (d, d.astype(np.float64) / 3):
            assert hm.precision_at_k(dist[None], rel[None], k)[0] == pytest.approx(expected, abs=1e-12)


def test_tie_aware_map_at_k_vectorised_over_queries():
    rng = np.random.default_rng(42)
    d = rng.integers(0, 3, size=(6, 6))
    rel = rng.random((6, 6)) < 0.5
    for norm in ("in_top_k", "min_k_r"):
        got = hm.average_precision(d, rel, 3, map_k_norm=norm)
        expected = [brute_force([rel[i][o] for o in all_tie_orders(d[i])], lambda r: ap_of_order(r, 3, norm))
                    for i in range(6)]
        np.testing.assert_allclose(got, expected, atol=1e-12)


def test_index_order_breaks_ties_by_item_index():
    d = np.array([[1, 0, 0, 1, 0]])
    rel = np.array([[1, 0, 1, 0, 1]], dtype=bool)
    # stable order: items 1, 2, 4, 0, 3 -> relevance 0 1 1 1 0
    expected = ap_of_order([0, 1, 1, 1, 0])
    assert hm.average_precision(d, rel, ties="index")[0] == pytest.approx(expected)
    assert hm.average_precision(d, rel, ties="random")[0] != pytest.approx(expected)


def test_index_order_map_at_k_is_deephash_calc_top_map_with_a_stable_sort():
    """DeepHash-pytorch CalcTopMap / DJSRH calculate_top_map, restated loop by loop."""
    rng = np.random.default_rng(5)
    qb, rb = rng.random((30, 16)) < 0.5, rng.random((200, 16)) < 0.5
    ql, rl = rng.integers(0, 2, (30, 4)), rng.integers(0, 2, (200, 4))
    topk, total = 50, 0.0
    for i in range(30):
        gnd = (ql[i] @ rl.T > 0).astype(float)
        hamm = (qb[i] != rb).sum(1)
        tgnd = gnd[np.argsort(hamm, kind="stable")][:topk]
        if tgnd.sum() == 0:
            continue
        count = np.arange(1, tgnd.sum() + 1)
        total += np.mean(count / (np.flatnonzero(tgnd) + 1.0))
    d = hm.HammingDistances(np.packbits(qb, axis=1), np.packbits(rb, axis=1))
    ours = hm.mean_average_precision(d, hm.label_relevance(ql, rl), topk, ties="index")
    assert ours == pytest.approx(total / 30)


def test_map_at_k_and_p_at_k_by_hand():
    d = np.array([[0, 1, 2, 3, 4]])
    rel = np.array([[1, 0, 1, 0, 0]], dtype=bool)
    assert hm.average_precision(d, rel)[0] == pytest.approx((1 + 2 / 3) / 2)
    assert hm.average_precision(d, rel, 2)[0] == pytest.approx(1.0)  # one relevant in top 2, at rank 1
    assert hm.average_precision(d, rel, 2, map_k_norm="min_k_r")[0] == pytest.approx(0.5)
    assert hm.average_precision(d, rel, 3)[0] == pytest.approx((1 + 2 / 3) / 2)
    assert hm.precision_at_k(d, rel, 2)[0] == pytest.approx(0.5)
    assert hm.precision_at_k(d, rel, 10)[0] == pytest.approx(2 / 5)  # K beyond n uses n

    # a tie of a relevant and an irrelevant item at the top: each order with probability 1/2
    d = np.array([[0, 0, 1]])
    rel = np.array([[1, 0, 1]], dtype=bool)
    assert hm.average_precision(d, rel)[0] == pytest.approx(((1 + 2 / 3) / 2 + (1 / 2 + 2 / 3) / 2) / 2)
    assert hm.average_precision(d, rel, 1)[0] == pytest.approx(0.5)  # AP@1 is 1 or 0 (nothing retrieved)
    assert hm.precision_at_k(d, rel, 1)[0] == pytest.approx(0.5)
    assert hm.average_precision(d, rel, ties="index")[0] == pytest.approx((1 + 2 / 3) / 2)


def test_queries_without_relevant_items_count_zero():
    d = np.array([[0, 1, 2], [0, 1, 2]])
    rel = np.array([[0, 0, 0], [1, 0, 0]], dtype=bool)
    np.testing.assert_allclose(hm.average_precision(d, rel), [0.0, 1.0])
    assert hm.mean_average_precision(d, rel) == pytest.approx(0.5)


def test_hamming_from_packed_codes_equals_brute_force():
    rng = np.random.default_rng(1)
    for bits in (8, 16, 24, 64, 72, 128):
        a = rng.random((13, bits)) < 0.5
        b = rng.random((31, bits)) < 0.5
        expected = (a[:, None, :] != b[None, :, :]).sum(axis=2)
        got = hm.hamming_distances(np.packbits(a, axis=1), np.packbits(b, axis=1))
        np.testing.assert_array_equal(got, expected)
        assert hm.HammingDistances(np.packbits(a, axis=1), np.packbits(b, axis=1)).bits == bits


def test_distances_at_chosen_rows_are_the_full_matrix_gathered_and_padding_gets_its_value():
    from hashing.hamming import hamming_distances_at

    rng = np.random.default_rng(3)
    for bits in (8, 24, 72):
        q, db = (np.packbits(rng.random((n, bits)) < 0.5, axis=1) for n in (9, 40))
        rows = rng.integers(-1, 40, size=(9, 6))
        got = hamming_distances_at(q, db, rows, pad_distance=10_000)
        full = hm.hamming_distances(q, db).astype(np.int64)
        expected = np.where(rows >= 0, np.take_along_axis(full, np.maximum(rows, 0), axis=1), 10_000)
        np.testing.assert_array_equal(got, expected)
        assert got.dtype == np.int64
    with pytest.raises(ValueError, match="rows must be < the 40 items"):
        hamming_distances_at(q, db, np.full((9, 1), 40), pad_distance=0)
    with pytest.raises(ValueError, match="n_queries=9"):
        hamming_distances_at(q, db, np.zeros((8, 1), np.int64), pad_distance=0)


def test_codes_and_dense_distances_give_the_same_metrics_in_any_chunking():
    rng = np.random.default_rng(2)
    q, db = np.packbits(rng.random((40, 16)) < 0.5, axis=1), np.packbits(rng.random((90, 16)) < 0.5, axis=1)
    qlab, dblab = rng.integers(0, 4, 40), rng.integers(0, 4, 90)
    rel = hm.label_relevance(qlab, dblab)
    kwargs = dict(map_at=(None, 10), p_at=(5,), topk=(1, 10, 50))
    from_codes = hm.evaluate(hm.HammingDistances(q, db), rel, chunk_size=7, pr_radii="auto", **kwargs)
    assert from_codes["pr_curve"]["radius"] == list(range(17))  # 0..bits
    dense = hm.evaluate(hm.hamming_distances(q, db).astype(np.int64), rel.block(0, 40),
                        pr_radii=np.arange(17), **kwargs)
    as_float = hm.evaluate(hm.hamming_distances(q, db).astype(np.float64), rel, pr_radii=np.arange(17), **kwargs)
    for other in (dense, as_float):
        for key in ("map@all", "map@10", "p@5", "p@h<=2"):
            assert from_codes[key] == pytest.approx(other[key], abs=1e-12)
        np.testing.assert_allclose(from_codes["pr_curve"]["precision"], other["pr_curve"]["precision"])
        np.testing.assert_allclose(from_codes["topk_curve"]["precision"], other["topk_curve"]["precision"])
    assert from_codes["map@all"] == pytest.approx(
        hm.mean_average_precision(hm.HammingDistances(q, db), rel))


def test_pr_curve_recall_is_monotone_and_ends_at_one():
    rng = np.random.default_rng(3)
    q, db = np.packbits(rng.random((25, 32)) < 0.5, axis=1), np.packbits(rng.random((200, 32)) < 0.5, axis=1)
    rel = hm.label_relevance(rng.integers(0, 5, 25), rng.integers(0, 5, 200))
    curve = hm.pr_curve(hm.HammingDistances(q, db), rel)
    np.testing.assert_array_equal(curve["radius"], np.arange(33))
    assert np.all(np.diff(curve["recall"]) >= 0)
    assert curve["recall"][-1] == pytest.approx(1.0)
    # radius = bits retrieves everything: precision is the share of relevant items
    assert curve["precision"][-1] == pytest.approx(rel.block(0, 25).mean())


def test_precision_within_radius_empty_queries():
    d = np.array([[0, 3, 5], [3, 4, 5]])
    rel = np.array([[1, 0, 1], [1, 1, 1]], dtype=bool)
    p = hm.precision_at_radius(d, rel, 2)
    assert p[0] == 1.0 and np.isnan(p[1])
    assert hm.evaluate(d, rel, map_at=(), p_at=())["p@h<=2"] == pytest.approx(0.5)  # empty counts 0
    assert hm.evaluate(d, rel, map_at=(), p_at=(), empty="skip")["p@h<=2"] == pytest.approx(1.0)


def test_precision_topk_curve_matches_p_at_k():
    rng = np.random.default_rng(4)
    d, rel = rng.integers(0, 5, (10, 60)), rng.random((10, 60)) < 0.3
    curve = hm.precision_topk_curve(d, rel, ks=[1, 7, 60])
    for k, p in zip(curve["k"], curve["precision"]):
        assert p == pytest.approx(hm.precision_at_k(d, rel, int(k)).mean())


def test_label_and_paired_relevance():
    single = hm.label_relevance([0, 1], np.array([[1], [0], [1]]))  # (n, 1) column = class ids
    np.testing.assert_array_equal(single.block(0, 2), [[False, True, False], [True, False, True]])
    multi = hm.label_relevance([[1, 1, 0], [0, 0, 1]], [[0, 1, 0], [0, 0, 1], [1, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(multi.block(0, 2), [[True, False, True, False], [False, True, False, False]])

    # Flickr8K-style: image i is relevant to captions 5i .. 5i+4 only
    captions = hm.captions_per_image_ids(3)
    i2t = hm.paired_relevance(np.arange(3), captions).block(0, 3)
    np.testing.assert_array_equal(i2t, np.kron(np.eye(3, dtype=bool), np.ones((1, 5), dtype=bool)))
    t2i = hm.paired_relevance(captions, np.arange(3)).block(0, 15)
    np.testing.assert_array_equal(t2i, i2t.T)
    # the same ids read as class labels would not give the per-pair answer for shared classes
    classes = np.array([0, 0, 1])
    assert hm.label_relevance(classes, classes[captions]).block(0, 3).sum() == 25


def test_bad_inputs_fail_early():
    d, rel = np.zeros((2, 3)), np.zeros((2, 3), dtype=bool)
    with pytest.raises(ValueError, match="relevance is"):
        hm.average_precision(d, np.zeros((2, 4), dtype=bool))
    with pytest.raises(ValueError, match="ties"):
        hm.average_precision(d, rel, ties="first")
    with pytest.raises(ValueError, match="map_k_norm"):
        hm.average_precision(d, rel, 2, map_k_norm="dcmh")
    with pytest.raises(ValueError, match="k must be"):
        hm.average_precision(d, rel, 0)
    with pytest.raises(ValueError, match="NaN"):
        hm.average_precision(np.full((2, 3), np.nan), rel)
    with pytest.raises(ValueError, match="bits"):
        hm.HammingDistances(np.zeros((2, 2), np.uint8), np.zeros((3, 4), np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        hm.HammingDistances(np.zeros((2, 2), np.int64), np.zeros((3, 2), np.int64))
    with pytest.raises(ValueError, match="multi-hot"):
        hm.label_relevance(np.full((2, 3), 2), np.ones((2, 3)))
