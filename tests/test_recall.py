import itertools

import numpy as np
import pytest
import torch

from eval.recall import expected_hits, retrieval_recall


def clip_benchmark_recall(similarity: np.ndarray, caption_image: np.ndarray, k: int) -> tuple[float, float]:
    """CLIP_benchmark's own computation (zeroshot_retrieval.py) on the same matrix."""
    from clip_benchmark.metrics.zeroshot_retrieval import batchify, recall_at_k

    scores = torch.from_numpy(similarity)
    positives = torch.zeros(similarity.shape, dtype=torch.bool)
    positives[torch.arange(len(caption_image)), torch.from_numpy(caption_image)] = True
    t2i = (batchify(recall_at_k, scores, positives, 64, "cpu", k=k) > 0).float().mean().item()
    i2t = (batchify(recall_at_k, scores.T, positives.T, 64, "cpu", k=k) > 0).float().mean().item()
    return t2i, i2t


def test_matches_clip_benchmark_on_random_scores():
    rng = np.random.default_rng(0)
    n_images = 60
    caption_image = np.repeat(np.arange(n_images), 5)
    similarity = rng.standard_normal((len(caption_image), n_images)).astype(np.float32)
    similarity[np.arange(len(caption_image)), caption_image] += 1.5  # make it non-trivial
    ours = retrieval_recall(similarity, caption_image, ks=(1, 5, 10))
    for k in (1, 5, 10):
        t2i, i2t = clip_benchmark_recall(similarity, caption_image, k)
        assert ours[f"image_retrieval_recall@{k}"] == pytest.approx(t2i, abs=1e-6)
        assert ours[f"text_retrieval_recall@{k}"] == pytest.approx(i2t, abs=1e-6)
    assert 0 < ours["image_retrieval_recall@1"] < ours["image_retrieval_recall@10"] < 1
    expected_rsum = 100 * sum(ours[f"{d}_retrieval_recall@{k}"] for d in ("image", "text") for k in (1, 5, 10))
    assert ours["rsum"] == pytest.approx(expected_rsum)


def brute_force_hit_rate(scores: np.ndarray, relevant: np.ndarray, k: int) -> float:
    """Average over every order of the items of whether a relevant item is in the top k."""
    n = scores.shape[1]
    hits = []
    for perm in itertools.permutations(range(n)):
        perm = np.array(perm)
        # stable sort by score descending after the permutation = a random tie-break
        order = perm[np.argsort(-scores[0, perm], kind="stable")]
        hits.append(relevant[0, order[:k]].any())
    return float(np.mean(hits))


@pytest.mark.parametrize("seed", range(8))
def test_tie_aware_equals_average_over_tie_orders(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 3, size=(1, 7)).astype(float)  # heavy ties, like Hamming distances
    relevant = rng.random((1, 7)) < 0.35
    relevant[0, rng.integers(7)] = True
    for k in (1, 2, 3, 5):
        assert expected_hits(scores, relevant, [k])[k][0] == pytest.approx(brute_force_hit_rate(scores, relevant, k))


def test_all_tied_gives_chance_level():
    scores = np.zeros((4, 100))
    relevant = np.zeros((4, 100), dtype=bool)
    relevant[:, 0] = True
    assert expected_hits(scores, relevant, [10])[10] == pytest.approx(np.full(4, 0.10))


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="no relevant"):
        expected_hits(np.zeros((2, 3)), np.array([[1, 0, 0], [0, 0, 0]], bool), [1])
    with pytest.raises(ValueError, match="n_captions"):
        retrieval_recall(np.zeros((4, 3)), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="outside"):
        retrieval_recall(np.zeros((3, 3)), np.array([0, 1, 5]))


def test_two_way_recall_on_a_subset_of_text_queries():
    from eval.recall import two_way_recall

    rng = np.random.default_rng(3)
    caption_image = np.repeat(np.arange(6), 3)
    sim = rng.normal(size=(18, 6))
    full = two_way_recall(sim, sim.T, caption_image)
    rows = np.array([1, 5, 6, 11, 12, 17])
    subset = two_way_recall(sim[rows], sim.T, caption_image, text_query_rows=rows)
    # text->image: the same per-query hits averaged over the chosen rows only; image->text unchanged
    positives = caption_image[:, None] == np.arange(6)[None]
    hits = expected_hits(sim, positives, [1, 5])
    assert subset["image_retrieval_recall@1"] == pytest.approx(hits[1][rows].mean())
    assert subset["image_retrieval_recall@5"] == pytest.approx(hits[5][rows].mean())
    assert subset["text_retrieval_recall@1"] == full["text_retrieval_recall@1"]
    with pytest.raises(ValueError, match="len.text_query_rows"):
        two_way_recall(sim, sim.T, caption_image, text_query_rows=rows)
    with pytest.raises(ValueError, match="caption indices"):
        two_way_recall(sim[:2], sim.T, caption_image, text_query_rows=np.array([0, 18]))
