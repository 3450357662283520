"""UDDH (hashing/uddh.py): semantic index (hashing/binary_kmeans.py), CCA start (hashing/cca.py),
content codes, bucket search, persistence, errors."""

from __future__ import annotations

import numpy as np
import pytest

import hashing.binary_kmeans as bkm
from hashing.base import Hasher, hasher_class, unpack_codes
from hashing.binary_kmeans import (
    binary_kmeans,
    kmeanspp_centres,
    lloyd_round,
    majority_vote_centres,
    nearest_centres,
    reseed_empty,
)
from hashing.cca import fit_cca
from eval.wiki_quick import bucket_hamming_rank
from hashing.uddh import UDDHHasher, cluster_affinity_product

K = 4


def sign_hamming(codes: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(n, k) Hamming distances of {-1, +1} rows by their dot product, (l - b.c) / 2: the reference."""
    return (codes.shape[1] - codes.astype(np.int64) @ centres.astype(np.int64).T) // 2


def clustered_pairs(n: int = 160, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paired image/text features generated from K shared latent clusters plus modality noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(K, size=n)
    means = rng.standard_normal((K, 8)) * 3.0
    latent = means[labels] + rng.standard_normal((n, 8))
    img = latent @ rng.standard_normal((8, 24)) + 0.5 * rng.standard_normal((n, 24))
    txt = np.tanh(latent @ rng.standard_normal((8, 12))) + 0.2 * rng.standard_normal((n, 12))
    return img.astype(np.float32), txt.astype(np.float32), labels


def small(**kw) -> UDDHHasher:
    base = dict(bits=16, n_buckets=K, n_iter=4, epochs_per_iter=2, batch_size=40, hidden_dim=16, progress=False)
    base.update(kw)
    return UDDHHasher(**base)


@pytest.fixture(scope="module")
def fitted() -> tuple[UDDHHasher, np.ndarray, np.ndarray]:
    img, txt, _ = clustered_pairs()
    return small().fit(img, txt), img, txt


def test_registered_and_split() -> None:
    assert hasher_class("uddh") is UDDHHasher
    h = UDDHHasher(bits=64)
    assert (h.content_bits, h.specific_bits, h.n_buckets) == (32, 32, 10)
    assert UDDHHasher(bits=32, content_bits=8).specific_bits == 24


def test_majority_vote_with_ties_keeping_previous_bit() -> None:
    codes = np.array([[1, 1, -1], [1, -1, -1], [-1, -1, 1], [1, 1, 1]], dtype=np.int8)
    assign = np.array([[0], [0], [0], [1]])
    prev = np.array([[-1, 1, 1], [-1, -1, -1], [1, 1, 1]], dtype=np.int8)
    c = majority_vote_centres(codes, assign, prev)
    np.testing.assert_array_equal(c[0], [1, -1, -1])  # 2-1 votes on every bit
    np.testing.assert_array_equal(c[1], [1, 1, 1])  # single member
    np.testing.assert_array_equal(c[2], prev[2])  # empty cluster keeps its centre
    tie = majority_vote_centres(codes[:2], assign[:2], prev)
    np.testing.assert_array_equal(tie[0], [1, 1, -1])  # bit 1 is a 1-1 tie: keeps previous +1


def random_signs(n: int, l: int, seed: int) -> np.ndarray:
    return np.where(np.random.default_rng(seed).standard_normal((n, l)) >= 0, 1, -1).astype(np.int8)


def test_reseed_empty_takes_the_farthest_code_that_is_not_yet_a_centre() -> None:
    codes = np.array([[1, 1, 1, 1], [1, 1, 1, -1], [-1, -1, 1, 1], [-1, -1, -1, -1], [1, -1, -1, -1]], np.int8)
    centres = np.array([[1, 1, 1, 1], [-1, -1, -1, -1], [1, -1, -1, -1], [-1, 1, -1, 1]], np.int8)
    assign = np.array([[0], [0], [0], [1], [0]])  # clusters 2 and 3 are empty
    new = reseed_empty(codes, assign, centres)
    np.testing.assert_array_equal(new[:2], centres[:2])  # clusters with members keep their centres
    # own distances 0, 1, 2, 0, 3: code 4 is farthest but already centre 2, so 2 gets code 2, 3 code 1
    np.testing.assert_array_equal(new[2], codes[2])
    np.testing.assert_array_equal(new[3], codes[1])
    assert reseed_empty(codes, np.array([[0], [1], [2], [3], [0]]), centres) is centres  # none empty


@pytest.mark.parametrize("top_e", [1, 3])
def test_nearest_centres_blockwise_is_the_stable_argsort(monkeypatch, top_e) -> None:
    codes, centres = random_signs(300, 10, 0), random_signs(7, 10, 1)  # 10 bits: ties everywhere
    full = np.argsort(sign_hamming(codes, centres), axis=1, kind="stable")[:, :top_e]
    monkeypatch.setattr(bkm, "_BLOCK_PAIRS", 50)  # 7 codes per block
    np.testing.assert_array_equal(nearest_centres(codes, centres, top_e), full)
    with pytest.raises(ValueError, match="top_e"):
        nearest_centres(codes, centres, 8)


def test_binary_kmeans_stops_at_a_fixed_point_of_member_majorities() -> None:
    codes = np.repeat(random_signs(12, 16, 2), 5, axis=0)
    codes[::7] *= -1  # some noise
    seeds = kmeanspp_centres(codes, 5, np.random.default_rng(0))
    assert len(np.unique(seeds, axis=0)) == 5 and all((codes == c).all(1).any() for c in seeds)
    centres, assign = binary_kmeans(codes, seeds, max_rounds=100)
    again, same = lloyd_round(codes, centres, assign)
    np.testing.assert_array_equal(same, assign)  # converged: one more round changes nothing
    np.testing.assert_array_equal(again, centres)
    for r in range(5):
        votes = codes[assign[:, 0] == r].astype(np.int64).sum(0)
        assert (np.sign(votes)[votes != 0] == centres[r][votes != 0]).all()
    np.testing.assert_array_equal(assign, nearest_centres(codes, centres))
    one, _ = binary_kmeans(codes, seeds, max_rounds=1)
    np.testing.assert_array_equal(one, lloyd_round(codes, seeds, nearest_centres(codes, seeds))[0])


def test_binary_kmeans_errors_name_the_argument() -> None:
    codes = np.repeat(random_signs(3, 8, 3), 10, axis=0)  # 30 rows, 3 distinct
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"n_buckets=4 but the codes hold only 3 distinct values \(of 30\)"):
        kmeanspp_centres(codes, 4, rng, name="n_buckets")
    with pytest.raises(ValueError, match="k=40 but"):
        kmeanspp_centres(codes, 40, rng)
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        kmeanspp_centres(codes, 0, rng)
    with pytest.raises(ValueError, match="codes must be int8 -1/\\+1 signs"):
        kmeanspp_centres((codes > 0).astype(np.int8), 2, rng)
    with pytest.raises(ValueError, match="centres has 4 bits per row, expected 8"):
        binary_kmeans(codes, codes[:2, :4])
    with pytest.raises(ValueError, match="max_rounds"):
        binary_kmeans(codes, codes[:2], max_rounds=0)


def test_too_few_distinct_initial_content_codes_name_n_buckets() -> None:
    img, txt, _ = clustered_pairs(n=60)
    with pytest.raises(ValueError, match="n_buckets=3 but the codes hold only 2 distinct.*content_bits"):
        small(bits=8, content_bits=1, n_buckets=3).fit(img, txt)


def test_cca_start_is_scale_free_canonical_variates() -> None:
    """UDDH starts from fit_cca's variates: unit variance (over n - 1), decorrelated across
    directions, paired columns correlated by the returned correlations."""
    img, txt, _ = clustered_pairs(n=200)
    x, y = img - img.mean(0), txt - txt.mean(0)
    a, b, corr = fit_cca(x, y, 12, reg=0.0)
    zx, zy = x @ a, y @ b
    np.testing.assert_allclose(zx.T @ zx / 199, np.eye(12), atol=1e-8)
    np.testing.assert_allclose(zy.T @ zy / 199, np.eye(12), atol=1e-8)
    np.testing.assert_allclose(zx.T @ zy / 199, np.diag(corr), atol=1e-8)
    assert np.all(np.diff(corr) <= 1e-12) and corr[0] > 0.9
    with pytest.raises(ValueError, match=r"k must be an int in \[1, min\(dx, dy\)=12\]"):
        fit_cca(x, y, 13)
    with pytest.raises(ValueError, match="paired"):
        fit_cca(x, y[:-1], 2)


def test_fitted_centres_are_majority_vote_of_members(fitted) -> None:
    h, _, _ = fitted
    codes, assign = h.train_content_codes_, h.train_buckets_[:, 0]
    for r in range(h.n_buckets):
        members = codes[assign == r].astype(np.int64)
        assert len(members), "no bucket should be empty on clustered data"
        votes = members.sum(axis=0)
        decided = votes != 0
        np.testing.assert_array_equal(h.centres[r][decided], np.sign(votes[decided]))
    # and every training code sits in its nearest bucket
    dist = sign_hamming(codes, h.centres)
    np.testing.assert_array_equal(dist[np.arange(len(codes)), assign], dist.min(axis=1))


def test_assign_buckets_is_nearest_centre_by_hamming(fitted) -> None:
    h, img, txt = fitted
    for x, mod in ((img, "image"), (txt, "text")):
        content = unpack_codes(h.encode(x, mod), h.bits)[:, : h.content_bits]
        dist = ((content[:, None, :] != h.centres[None, :, :].astype(np.float32)).sum(-1))
        got = h.assign_buckets(x, mod, top_e=2)
        assert got.dtype == np.int64 and got.shape == (len(x), 2)
        np.testing.assert_array_equal(dist[np.arange(len(x)), got[:, 0]], dist.min(axis=1))
        assert np.all(dist[np.arange(len(x)), got[:, 0]] <= dist[np.arange(len(x)), got[:, 1]])
        assert np.all(got[:, 0] != got[:, 1])


def test_pair_agreement_and_objective_improve_over_iterations() -> None:
    img, txt, _ = clustered_pairs(seed=1)
    h = small(n_iter=5).fit(img, txt)
    hist = h.history_
    assert len(hist) == 5
    assert hist[-1]["content_agreement"] > hist[0]["content_agreement"]
    assert hist[-1]["objective"] < hist[0]["objective"]


def test_graph_mode_changes_only_the_graph_term() -> None:
    img, txt, _ = clustered_pairs(seed=2)
    codes = {}
    for weight in (0.0, 1.0):
        for mode in ("paper", "aligned"):
            h = small(graph_mode=mode, graph_weight=weight, n_iter=2).fit(img, txt)
            codes[mode, weight] = h.encode(img, "image")
            assert h.history_[-1]["graph"] == 0.0 if weight == 0 else h.history_[-1]["graph"] != 0.0
    # without the graph term the two modes are the same training run; with it, they are not
    np.testing.assert_array_equal(codes["paper", 0.0], codes["aligned", 0.0])
    assert not np.array_equal(codes["paper", 1.0], codes["aligned", 1.0])


def test_affinity_is_blockwise_and_matches_dense() -> None:
    rng = np.random.default_rng(0)
    n = 30
    f1, f2 = rng.standard_normal((n, 5)), rng.standard_normal((n, 3))
    codes = np.where(rng.standard_normal((n, 6)) >= 0, 1, -1).astype(np.int8)
    primary = rng.integers(3, size=n)
    members = [np.flatnonzero(primary == r) for r in range(3)]
    prod, deg = cluster_affinity_product((f1, f2), (2.0, 0.5), codes, members)
    same = primary[:, None] == primary[None, :]
    d1 = ((f1[:, None] - f1[None]) ** 2).sum(-1)
    d2 = ((f2[:, None] - f2[None]) ** 2).sum(-1)
    a = np.where(same, np.exp(-d1 / 4.0) + np.exp(-d2 / 1.0), 0.0)
    np.testing.assert_allclose(prod, a @ codes, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(deg, a.sum(1), rtol=1e-4)


@pytest.mark.parametrize("e", [1, 2])
def test_bucket_index_is_uddh_search_through_the_index_interface(fitted, e) -> None:
    from faiss.contrib.evaluation import check_ref_knn_with_draws

    h, img, txt = fitted
    qc, dc = h.encode(img[:50], "image"), h.encode(txt, "text")
    index = h.bucket_index(e=e)
    index.add(dc)
    item_b = h.assign_buckets(txt, "text")[:, 0]
    np.testing.assert_array_equal(index.assign(dc)[:, 0], item_b)  # items filed as the hasher does
    qb = h.assign_buckets(img[:50], "image", top_e=e)
    assert [set(r) for r in index.assign(qc, e)] == [set(r) for r in qb]
    assert (index.search(qc, 20).ids >= 0).all(), "by default k hits: the next buckets are probed (issue 22)"
    res = index.search(qc, 20, buckets=qb)  # UDDH's own rule: only the query's top-e buckets
    ranks, scanned = bucket_hamming_rank(qc, qb, dc, item_b, topk=20, outside="exclude")
    assert res.scanned_fraction == pytest.approx(scanned.mean())
    dist = (unpack_codes(qc, 16)[:, None] != unpack_codes(dc, 16)[None]).sum(-1)
    for q in range(50):
        kk = int((ranks[q] >= 0).sum())
        ref_d = dist[q, ranks[q, :kk]][None].astype(np.int32)
        check_ref_knn_with_draws(ref_d, ranks[q:q + 1, :kk], res.distances[q:q + 1, :kk], res.ids[q:q + 1, :kk])
        assert (res.ids[q, kk:] == -1).all()
    with pytest.raises(ValueError, match="e must be an int in"):
        h.bucket_index(e=h.n_buckets + 1)


def test_bucket_search_scans_only_top_e_buckets(fitted) -> None:
    h, img, txt = fitted
    qc, dc = h.encode(img[:50], "image"), h.encode(txt, "text")
    item_b = h.assign_buckets(txt, "text")[:, 0]
    sizes = np.bincount(item_b, minlength=h.n_buckets)
    for e in (1, 2, h.n_buckets):
        qb = h.assign_buckets(img[:50], "image", top_e=e)
        ranks, scanned = bucket_hamming_rank(qc, qb, dc, item_b, topk=len(txt), outside="exclude")
        np.testing.assert_allclose(scanned, sizes[qb].sum(axis=1) / len(txt))
        for q in range(50):
            got = ranks[q][ranks[q] >= 0]
            assert len(got) == sizes[qb[q]].sum()
            assert set(item_b[got]) <= set(qb[q])
        if e == h.n_buckets:
            np.testing.assert_allclose(scanned, 1.0)
    # "after": the scanned items come first, in Hamming order, then the rest
    qb = h.assign_buckets(img[:5], "image", top_e=1)
    ranks, _ = bucket_hamming_rank(qc[:5], qb, dc, item_b, topk=len(txt), outside="after")
    dist = (unpack_codes(qc[:5], 16)[:, None] != unpack_codes(dc, 16)[None]).sum(-1)
    for q in range(5):
        m = sizes[qb[q, 0]]
        assert np.all(item_b[ranks[q, :m]] == qb[q, 0]) and np.all(item_b[ranks[q, m:]] != qb[q, 0])
        assert np.all(np.diff(dist[q, ranks[q, :m]]) >= 0)


def test_save_load_round_trip(fitted, tmp_path) -> None:
    h, img, txt = fitted
    h.save_pretrained(tmp_path / "uddh")
    g = Hasher.from_pretrained(tmp_path / "uddh")
    assert isinstance(g, UDDHHasher) and g.get_config() == h.get_config()
    for x, mod in ((img, "image"), (txt, "text")):
        np.testing.assert_array_equal(g.encode(x, mod), h.encode(x, mod))
        np.testing.assert_array_equal(g.assign_buckets(x, mod, 3), h.assign_buckets(x, mod, 3))
    assert set(h.state_dict()) == set(g.state_dict())


def test_seeded_fit_is_deterministic() -> None:
    img, txt, _ = clustered_pairs(n=120, seed=3)
    a = small(n_iter=2).fit(img, txt)
    b = small(n_iter=2).fit(img, txt)
    np.testing.assert_array_equal(a.encode(txt, "text"), b.encode(txt, "text"))
    np.testing.assert_array_equal(a.centres, b.centres)


def test_encode_shape_and_packing(fitted) -> None:
    h, img, _ = fitted
    codes = h.encode(img, "image")
    assert codes.dtype == np.uint8 and codes.shape == (len(img), 2)
    bits = unpack_codes(codes, 16)
    np.testing.assert_array_equal(bits > 0, h._project(img, "image") >= 0)  # [content | specific]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(bits=12), "bits"),
        (dict(bits=16, content_bits=17), "content_bits"),
        (dict(bits=16, content_bits=0), "content_bits"),
        (dict(n_buckets=0), "n_buckets"),
        (dict(graph_mode="dense"), "graph_mode"),
        (dict(sigma=-1.0), "sigma"),
        (dict(n_buckets=3, train_top_e=4), "train_top_e"),
    ],
)
def test_bad_constructor_arguments(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        UDDHHasher(**kwargs)


def test_bad_inputs(fitted) -> None:
    h, img, txt = fitted
    with pytest.raises(RuntimeError, match="not fitted"):
        small().assign_buckets(img, "image")
    with pytest.raises(RuntimeError, match="not fitted"):
        small().encode(img, "image")
    with pytest.raises(ValueError, match="rows must be pairs"):
        small().fit(img, txt[:-1])
    with pytest.raises(ValueError, match="NaN"):
        bad = img.copy()
        bad[3, 2] = np.nan
        small().fit(bad, txt)
    with pytest.raises(ValueError, match="at least"):
        small(n_buckets=10).fit(img[:5], txt[:5])
    with pytest.raises(ValueError, match="dimension"):
        h.assign_buckets(txt, "image")
    with pytest.raises(ValueError, match="modality"):
        h.assign_buckets(img, "audio")
    with pytest.raises(ValueError, match="top_e"):
        h.assign_buckets(img, "image", top_e=h.n_buckets + 1)
    with pytest.raises(ValueError, match="2-D"):
        h.encode(img[0], "image")
    with pytest.raises(ValueError, match="outside"):
        bucket_hamming_rank(h.encode(img, "image"), np.zeros((len(img), 1)), h.encode(txt, "text"),
                            np.zeros(len(txt)), 5, outside="skip")


def test_load_state_dict_rejects_bad_arrays(fitted) -> None:
    h, _, _ = fitted
    state = h.state_dict()
    g = small()
    g.input_dims = dict(h.input_dims)
    with pytest.raises(ValueError, match="centres"):
        g.load_state_dict({k: v for k, v in state.items() if k != "centres"})
    bad = dict(state)
    key = next(k for k in state if k.startswith("image.encoder"))
    bad[key] = bad[key][:1]
    with pytest.raises(ValueError, match="shape"):
        g.load_state_dict(bad)


def test_multi_hot_centre_update_does_not_increase_kmeans_error() -> None:
    rng = np.random.default_rng(5)
    codes = np.where(rng.standard_normal((60, 12)) >= 0, 1, -1).astype(np.int8)
    prev = np.where(rng.standard_normal((5, 12)) >= 0, 1, -1).astype(np.int8)
    assign = nearest_centres(codes, prev, top_e=2)

    def err(c: np.ndarray) -> float:
        ch = c[assign[:, 0]].astype(np.int64) + c[assign[:, 1]]
        return float(((codes - ch) ** 2).sum())

    new = majority_vote_centres(codes, assign, prev)
    assert err(new) <= err(prev)
    h = small(train_top_e=2, n_iter=1).fit(*clustered_pairs(n=80, seed=6)[:2])
    assert h.train_buckets_.shape == (80, 2) and np.all(h.train_buckets_[:, 0] != h.train_buckets_[:, 1])


def test_settings_are_one_config_saved_as_declared(fitted, tmp_path) -> None:
    import json
    from dataclasses import asdict, fields

    from hashing.uddh import UDDHConfig

    h, img, _ = fitted
    saved = json.loads((h.save_pretrained(tmp_path / "u") / "config.json").read_text())
    declared = {f.name for f in fields(UDDHConfig)} - {"bits"}
    assert {k: saved[k] for k in declared} == {k: v for k, v in asdict(h.config).items() if k != "bits"}
    assert saved["content_bits"] == 8  # None resolved to bits // 2 before saving
    loaded = UDDHHasher.from_pretrained(tmp_path / "u")
    assert loaded.config == h.config
    np.testing.assert_array_equal(loaded.encode(img, "image"), h.encode(img, "image"))
    with pytest.raises(TypeError, match="n_bucket"):
        UDDHHasher(n_bucket=4)  # a misspelt setting is not silently ignored
