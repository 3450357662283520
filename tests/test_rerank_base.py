"""The reranker interface, score fusion and float rescoring."""

from __future__ import annotations

import numpy as np
import pytest

from rerank import Candidates, FloatReranker, Query, available_rerankers, create_reranker, fuse, reranker_from_config
from rerank.fusion import standardize


def test_registry_knows_the_built_in_rerankers():
    assert {"float", "cross"} <= set(available_rerankers())
    assert isinstance(reranker_from_config({"method": "float"}), FloatReranker)
    with pytest.raises(ValueError, match="unknown reranker 'nope'"):
        create_reranker("nope")
    with pytest.raises(ValueError, match="no 'method'"):
        reranker_from_config({})


def test_candidates_validate_alignment():
    with pytest.raises(ValueError, match="3 ids but 2 items"):
        Candidates("image", np.arange(3), items=["a", "b"])
    with pytest.raises(ValueError, match=r"embeddings must be \(3, dim\)"):
        Candidates("image", np.arange(3), embeddings=np.zeros((2, 4)))
    with pytest.raises(ValueError, match="integer"):
        Candidates("text", np.array([0.5]))
    with pytest.raises(ValueError, match="modality"):
        Query("audio", "x")
    with pytest.raises(ValueError, match="non-empty"):
        Query("text", "  ")


def test_float_reranker_is_exact_cosine_even_for_unnormalised_vectors():
    rng = np.random.default_rng(0)
    q, vecs = rng.normal(size=8), rng.normal(size=(5, 8)) * rng.uniform(0.1, 10, size=(5, 1))
    scores = FloatReranker().score(Query("text", "q", q), Candidates("image", np.arange(5), embeddings=vecs))
    expected = vecs @ q / np.linalg.norm(vecs, axis=1) / np.linalg.norm(q)
    assert np.allclose(scores, expected, atol=1e-6)
    with pytest.raises(ValueError, match="query's embedding"):
        FloatReranker().score(Query("text", "q"), Candidates("image", np.arange(5), embeddings=vecs))
    with pytest.raises(ValueError, match="dim 8"):
        FloatReranker().score(Query("text", "q", q), Candidates("image", np.arange(5), embeddings=vecs[:, :4]))


def test_fusion_standardises_each_list_and_weights_stage1():
    s1, s2 = np.array([0.5, 0.5, 0.0, 1.0]), np.array([3.0, 1.0, 2.0, 2.0])
    assert np.array_equal(fuse(s1, s2, 0.0), s2.astype(np.float32))
    z = lambda x: (x - x.mean()) / x.std()  # noqa: E731
    assert np.allclose(fuse(s1, s2, 0.7), z(s2) + 0.7 * z(s1), atol=1e-6)
    assert np.array_equal(standardize(np.ones(3)), np.zeros(3))  # constant list: no influence, no NaN
    assert np.isneginf(standardize(np.array([1.0, -np.inf, 3.0]))[1])
    with pytest.raises(ValueError, match="stage-1 scores"):
        fuse(None, s2, 0.5)
    with pytest.raises(ValueError, match=">= 0"):
        fuse(s1, s2, -1.0)
