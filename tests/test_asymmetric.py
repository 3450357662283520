"""Asymmetric scores (real-valued query against packed binary codes): the look-up tables must give
the definition's scores, the cut must keep ties in stage-1 order, and bad input must say what is wrong."""

from __future__ import annotations

import numpy as np
import pytest

from hashing import create_hasher
from hashing.base import pack_signs, unpack_codes
from hashing.index import asymmetric_scores, asymmetric_top, create_index
from hashing.index.asymmetric import asymmetric_scores_reference, byte_tables


def dyadic(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Multiples of 1/8 below 16 in magnitude: every partial sum is exact in float32, in any order."""
    return (rng.integers(-128, 128, shape) / 8).astype(np.float32)


@pytest.mark.parametrize("bits", [8, 24, 256])
def test_tables_equal_the_unpacked_dot_product_exactly(bits):
    rng = np.random.default_rng(bits)
    p = dyadic(rng, (3, bits))
    codes = rng.integers(0, 256, (3, 50, bits // 8), dtype=np.uint8)
    expected = np.einsum("qmb,qb->qm", unpack_codes(codes.reshape(-1, bits // 8), bits).reshape(3, 50, bits), p)
    np.testing.assert_array_equal(asymmetric_scores(p, codes), expected)
    np.testing.assert_array_equal(asymmetric_scores_reference(p, codes), expected)


def test_tables_match_the_reference_on_real_valued_queries():
    rng = np.random.default_rng(0)
    p = rng.standard_normal((4, 256)).astype(np.float32)
    codes = rng.integers(0, 256, (4, 300, 32), dtype=np.uint8)
    np.testing.assert_allclose(asymmetric_scores(p, codes), asymmetric_scores_reference(p, codes), atol=1e-4)


def test_byte_tables_follow_numpy_bit_order():
    """Bit 0 of a code is the most significant bit of byte 0 (np.packbits, pack_signs)."""
    p = np.zeros((1, 16), np.float32)
    p[0, 0] = 1.0  # only the first coordinate counts
    t = byte_tables(p)
    assert t[0, 0, 0b1000_0000] == 1.0 and t[0, 0, 0b0000_0001] == -1.0 and (t[0, 1] == 0).all()


def test_the_own_code_of_a_projection_scores_highest():
    """<p, sign(p)> = |p|_1 is the largest score any code can get: the query's own code wins."""
    rng = np.random.default_rng(1)
    p = rng.standard_normal((5, 64)).astype(np.float32)
    own = pack_signs(p)
    others = rng.integers(0, 256, (5, 20, 8), dtype=np.uint8)
    scores = asymmetric_scores(p, np.concatenate([others, own[:, None]], axis=1))
    assert (scores.argmax(axis=1) == 20).all()
    np.testing.assert_allclose(scores[:, 20], np.abs(p).sum(axis=1), rtol=1e-5)


def test_asymmetric_ranking_differs_from_hamming_where_it_should():
    """Two codes at the same Hamming distance from the query's code: the one that flips the
    query's weaker coordinate scores higher (what symmetric Hamming cannot see)."""
    p = np.array([[4.0, 0.5, 1, 1, 1, 1, 1, 1]], np.float32)
    flip_strong = np.packbits(np.array([[0, 1, 1, 1, 1, 1, 1, 1]], np.uint8), axis=1)
    flip_weak = np.packbits(np.array([[1, 0, 1, 1, 1, 1, 1, 1]], np.uint8), axis=1)
    codes = np.concatenate([flip_strong, flip_weak])
    assert asymmetric_top(p, np.array([[0, 1]]), codes, 2).tolist() == [[1, 0]]


def test_top_keeps_ties_in_candidate_order_and_pads():
    p = np.ones((2, 8), np.float32)
    codes = np.array([[0b1111_0000], [0b1111_0000], [0b1111_1111], [0b0000_0000]], np.uint8)
    cand = np.array([[1, 0, 3, 2], [0, 1, -1, -1]])
    top = asymmetric_top(p, cand, codes, 3)
    assert top.tolist() == [[2, 1, 0], [0, 1, -1]]  # 1 and 0 tie: stage-1 order kept; padding last
    assert asymmetric_top(p, cand, codes, 6).tolist()[1] == [0, 1, -1, -1, -1, -1]


def test_top_maps_ids_to_rows():
    p = np.ones((1, 8), np.float32)
    codes = np.array([[0], [255]], np.uint8)
    assert asymmetric_top(p, np.array([[70, 90]]), codes, 1, rows=np.array([[0, 1]])).tolist() == [[90]]


def test_cascade_on_itq_codes_keeps_more_of_the_float_top10_than_hamming():
    """On correlated data, re-ranking the Hamming top-200 by asymmetric score keeps more of the
    float top-10 in its top-20 than the Hamming top-20 does: the point of the scorer."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4000, 32)) @ rng.standard_normal((32, 32))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    q = (x[:100] + 0.3 * rng.standard_normal((100, 32))).astype(np.float32)
    hasher = create_hasher("itq", 32).fit(x, x)
    index = create_index("flat", 32)
    index.add(hasher.encode(x, "image"))
    truth = np.argsort(-(q @ x.T), axis=1)[:, :10]
    deep = index.search(hasher.encode(q, "text"), 200).ids
    asym = asymmetric_top(hasher.project(q, "text"), deep, hasher.encode(x, "image"), 20)
    share = lambda c: np.mean([np.isin(t, r).mean() for t, r in zip(truth, c)])  # noqa: E731
    assert share(asym) > share(deep[:, :20]) + 0.05


@pytest.mark.parametrize(
    "projected, codes, message",
    [
        (np.ones((2, 12)), np.zeros((2, 3, 2), np.uint8), "12 columns.*multiple of 8"),
        (np.ones((2, 16)), np.zeros((2, 3, 2), np.int64), "packed uint8.*2 bytes for 16 bits.*int64"),
        (np.ones((2, 16)), np.zeros((2, 3, 4), np.uint8), r"\(nq=2, m, 2\) for 16-bit.*\(2, 3, 4\)"),
        (np.ones((2, 16)), np.zeros((3, 3, 2), np.uint8), r"\(nq=2, m, 2\).*\(3, 3, 2\)"),
        (np.ones((2, 16)), np.zeros((6, 2), np.uint8), r"\(nq=2, m, 2\).*\(6, 2\)"),
        (np.ones(16), np.zeros((1, 3, 2), np.uint8), "2-D array"),
        (np.full((1, 16), np.nan), np.zeros((1, 3, 2), np.uint8), "NaN"),
    ],
)
def test_bad_input_is_a_clear_value_error(projected, codes, message):
    with pytest.raises(ValueError, match=message):
        asymmetric_scores(projected, codes)


def test_top_rejects_bad_candidates():
    p = np.ones((1, 8), np.float32)
    codes = np.zeros((4, 1), np.uint8)
    with pytest.raises(ValueError, match="only 4 codes are stored"):
        asymmetric_top(p, np.array([[0, 4]]), codes, 1)
    with pytest.raises(ValueError, match="2-D integer array"):
        asymmetric_top(p, np.array([0.0, 1.0]), codes, 1)
    with pytest.raises(ValueError, match="stored .n, bytes. code table"):
        asymmetric_top(p, np.array([[0]]), codes[None], 1)
    with pytest.raises(ValueError, match="k"):
        asymmetric_top(p, np.array([[0]]), codes, 0)
