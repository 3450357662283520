"""eval.images_only's text->image recall: one relevant image per query, ties averaged."""

import numpy as np
import pytest

from eval.images_only import text_to_image_recall


def test_recall_counts_the_owner_image_and_averages_ties():
    scores = np.array([[0.9, 0.1, 0.0],    # query 0 -> image 0 ranked first
                       [0.5, 0.5, -np.inf],  # query 1 -> image 1 tied first with image 0
                       [0.9, 0.8, 0.1]])   # query 2 -> image 2 ranked last
    r = text_to_image_recall(scores, np.array([0, 1, 2]), ks=(1, 2))
    assert r["image_retrieval_recall@1"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert r["image_retrieval_recall@2"] == pytest.approx((1 + 1 + 0) / 3)
