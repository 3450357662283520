"""The quick MAP@k of the Wiki scripts (eval/wiki_quick.py), on rankings small enough to score by hand."""

import numpy as np
import pytest

from eval.wiki_quick import hamming_map_at_k, load_wiki, ranked_map_at_k, validation_split


def test_ranked_map_normalises_by_the_relevant_hits_in_the_top_k_and_skips_padding():
    item_labels = np.array([0, 1, 0, 1])
    ranks = np.array([[0, 1, 2, 3],    # relevant at 1 and 3: (1 + 2/3) / 2
                      [1, -1, 3, 0],   # padding is never relevant: relevant at 1 and 3: (1 + 2/3) / 2
                      [1, 3, 0, 2]])   # label 2 has no items: AP 0
    q = np.array([0, 1, 2])
    assert ranked_map_at_k(ranks, q, item_labels) == pytest.approx((5 / 6 + 5 / 6 + 0) / 3)
    assert ranked_map_at_k(ranks, q, item_labels, k=2) == pytest.approx((1 + 1 + 0) / 3)


def test_hamming_map_ranks_ties_by_item_index_and_gives_both_normalisations():
    items = np.packbits(np.array([[1, 0], [0, 0], [0, 0], [1, 1]], dtype=bool), axis=1)
    query = np.packbits(np.array([[0, 0]], dtype=bool), axis=1)  # distances 1, 0, 0, 2: order 1, 2, 0, 3
    labels = np.array([0, 1, 0, 0])
    got = hamming_map_at_k(query, items, np.array([0]), labels, k=2)
    # top 2 = items 1, 2: one relevant, at rank 2 -> top50 = 1/2; first 2 relevant at ranks 2, 3 -> (1/2 + 2/3) / 2
    assert got == pytest.approx({"top50": 0.5, "first50": (1 / 2 + 2 / 3) / 2})


def test_validation_split_carves_disjoint_queries_from_the_training_pairs():
    data = {k: np.arange(20)[:, None] * (2 if k[0] == "T" else 1) for k in ("I_tr", "T_tr", "L_tr")}
    split = validation_split(data, n_val=5, seed=1)
    assert len(split["I_te"]) == 5 and len(split["I_tr"]) == 15
    assert not set(split["I_te"].ravel()) & set(split["I_tr"].ravel())
    np.testing.assert_array_equal(split["T_te"], 2 * split["I_te"])


def test_a_missing_file_names_the_expected_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="wikiData.mat"):
        load_wiki(tmp_path / "nope.mat")
