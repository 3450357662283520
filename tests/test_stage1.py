import numpy as np
import pytest

from eval.stage1 import candidate_scores, evaluate_direction
from hashing.base import pack_signs


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_all_candidates_rescored_equals_float_and_overlap_is_one():
    rng = np.random.default_rng(0)
    db = unit(rng.standard_normal((40, 16)))
    q = unit(db[:20] + 0.3 * rng.standard_normal((20, 16)))
    relevant = np.zeros((20, 40), bool)
    relevant[np.arange(20), np.arange(20)] = True
    m = evaluate_direction(q, db, pack_signs(q[:, :8]), pack_signs(db[:, :8]), relevant, bits=8, candidates=40)
    assert m["top10_in_candidates"] == 1.0
    for k in (1, 5, 10):
        assert m[f"rescored_R@{k}"] == m[f"float_R@{k}"]
    assert m["hash_R@1"] <= m["float_R@1"]


def test_few_candidates_lose_float_neighbours():
    rng = np.random.default_rng(1)
    db = unit(rng.standard_normal((300, 32)))
    q = unit(db[:50] + 0.2 * rng.standard_normal((50, 32)))
    relevant = np.zeros((50, 300), bool)
    relevant[np.arange(50), np.arange(50)] = True
    proj = rng.standard_normal((32, 8)).astype(np.float32)
    m = evaluate_direction(q, db, pack_signs(q @ proj), pack_signs(db @ proj), relevant, bits=8, candidates=12)
    assert 0 < m["top10_in_candidates"] < 1
    assert m["rescored_R@10"] <= m["float_R@10"]


def test_candidate_scores_masks_non_candidates():
    scores = np.arange(12, dtype=np.float32).reshape(2, 6)
    out = candidate_scores(np.array([[5, 0, -1], [2, 3, 4]]), scores)
    assert np.isneginf(out[0, [1, 2, 3, 4]]).all() and out[0, 5] == 5 and out[0, 0] == 0
    assert np.isneginf(out[1, [0, 1, 5]]).all() and out[1, 2:5].tolist() == [8, 9, 10]


def test_deeper_hamming_cuts_keep_more_and_asymmetric_rescoring_is_measured():
    rng = np.random.default_rng(2)
    db = unit(rng.standard_normal((300, 32)))
    q = unit(db[:50] + 0.2 * rng.standard_normal((50, 32)))
    relevant = np.zeros((50, 300), bool)
    relevant[np.arange(50), np.arange(50)] = True
    proj = rng.standard_normal((32, 16)).astype(np.float32)
    m = evaluate_direction(q, db, pack_signs(q @ proj), pack_signs(db @ proj), relevant, bits=16, candidates=12,
                           depths=(12, 48, 300), q_projected=q @ proj)
    assert m["top10_in_hamming_top12"] == m["top10_in_candidates"]
    assert m["top10_in_hamming_top12"] <= m["top10_in_hamming_top48"] <= m["top10_in_hamming_top300"] == 1.0
    # asymmetric rescoring of every item: the best 12 by the real-valued projection against the codes
    assert m["top10_in_candidates"] < m["top10_in_asymmetric_top300"] <= 1.0


def test_float_top_kept_counts_the_float_top_among_finite_scores():
    from eval.two_stage import float_top_kept

    gallery = np.eye(4, dtype=np.float32)
    queries = np.array([[1.0, 0.9, 0.1, 0.0]], dtype=np.float32)  # float top-2: items 0 and 1
    candidates_only_0_and_2 = np.array([[0.3, -np.inf, 0.9, -np.inf]])
    assert float_top_kept(candidates_only_0_and_2, queries, gallery, top=2) == 0.5
    assert float_top_kept(np.zeros((1, 4)), queries, gallery, top=2) == 1.0


# -- the fine-branch row: eval.stage1 --fine on a tiny synthetic Flickr8K-shaped cache ------------
def tiny_flickr(tmp_path, n_train=4, n_test=3):
    """(annotations, cache): 2 captions per image; the cache is both the embeddings and the fine cache."""
    from test_fine_features import split_arrays, write_karpathy

    annotations = write_karpathy(tmp_path, n_train, n_test)
    rng = np.random.default_rng(0)
    arrays = {**split_arrays("train", n_train, 2 * n_train), **split_arrays("test", n_test, 2 * n_test)}
    for k in list(arrays):
        if arrays[k].dtype == np.float16:
            arrays[k] = rng.normal(size=arrays[k].shape).astype(np.float16)
    for split, n in (("train", n_train), ("test", n_test)):
        arrays[f"{split}_image"] = unit(rng.normal(size=(n, 6)))
        arrays[f"{split}_text"] = unit(rng.normal(size=(2 * n, 6)))
    cache = tmp_path / "fine.npz"
    np.savez(cache, **arrays)
    return annotations, cache, arrays


def stage1_args(annotations, embeddings, *extra):
    return ["--annotations", str(annotations), "--embeddings", str(embeddings), "--bits", "8",
            "--hasher-arg", "mgsgh.epochs=1", "--hasher-arg", "mgsgh.hidden_dim=8",
            "--hasher-arg", "mgsgh.progress=false", *extra]


def test_a_fine_hasher_gets_each_pairs_grid_and_words_in_fit_and_encode(tmp_path, monkeypatch):
    from eval.stage1 import main
    from hashing.mgsgh import MGSGHHasher

    annotations, cache, arrays = tiny_flickr(tmp_path)
    seen = {}
    fit, encode = MGSGHHasher.fit, MGSGHHasher.encode

    def spy_fit(self, image, text, labels=None, **fine):
        seen["fit"] = fine
        return fit(self, image, text, labels, **fine)

    def spy_encode(self, features, modality, fine=None):
        seen.setdefault("encode", {})[modality] = fine
        return encode(self, features, modality, fine)

    monkeypatch.setattr(MGSGHHasher, "fit", spy_fit)
    monkeypatch.setattr(MGSGHHasher, "encode", spy_encode)
    report = main(stage1_args(annotations, cache, "--method", "itq", "mgsgh", "--fine", str(cache),
                              "--hasher-arg", "mgsgh.fine=true", "--hamming-candidates", "6"))
    assert set(report["results"]) == {"itq", "mgsgh (fine)"}  # itq ignores the fine cache
    owner = np.repeat(np.arange(4), 2)  # write_karpathy: captions in image order, two each
    assert (seen["fit"]["image_fine"] == arrays["train_image_regions"][owner]).all()
    words, offsets = seen["fit"]["text_fine"]
    assert (words == arrays["train_text_words"]).all() and (offsets == arrays["train_text_word_offsets"]).all()
    assert (seen["encode"]["image"] == arrays["test_image_regions"]).all()
    assert (seen["encode"]["text"][1] == arrays["test_text_word_offsets"]).all()
    row = report["results"]["mgsgh (fine)"][8]
    assert 0 <= row["i2t"]["hash_R@1"] <= row["i2t"]["hash_R@10"] <= 1 and "top10_in_asymmetric_top6" in row["t2i"]


def test_a_fine_hasher_without_the_cache_or_with_a_misaligned_one_is_refused(tmp_path):
    from eval.stage1 import main

    annotations, cache, arrays = tiny_flickr(tmp_path)
    with pytest.raises(SystemExit, match="pass --fine CACHE"):
        main(stage1_args(annotations, cache, "--method", "mgsgh", "--hasher-arg", "mgsgh.fine=true"))
    shuffled = dict(arrays, test_text=arrays["test_text"][::-1].copy())  # the captions' rows in another order
    other = tmp_path / "other.npz"
    np.savez(other, **shuffled)
    with pytest.raises(SystemExit, match="test_text is not the embeddings' rows"):
        main(stage1_args(annotations, cache, "--method", "mgsgh", "--hasher-arg", "mgsgh.fine=true",
                         "--fine", str(other)))
