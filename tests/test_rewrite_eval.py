"""eval/rewrite_eval.py (behind scripts/eval_rewrite.py) without an LLM: the split, the queries and the rows."""

import json

import numpy as np
import pytest

from eval import rewrite_eval


@pytest.fixture
def flickr(tmp_path):
    """4 train images then 2 test images, 5 captions each; embeddings: caption j of image i points at image i."""
    entries = [{"filename": f"i{i}.jpg", "split": "train" if i < 4 else "test",
                "sentences": [{"raw": f"A red dog number {i} and cat {j} .", "tokens": []} for j in range(5)]}
               for i in range(6)]
    (tmp_path / "images").mkdir()
    ann = tmp_path / "dataset_flickr8k.json"
    ann.write_text(json.dumps({"dataset": "flickr8k", "images": entries}))
    eye = np.eye(8, dtype=np.float32)
    np.savez(tmp_path / "emb.npz", train_image=eye[:4], train_text=np.repeat(eye[:4], 5, axis=0),
             test_image=eye[4:6], test_text=np.repeat(eye[4:6], 5, axis=0))
    return ann, tmp_path / "emb.npz"


def test_holdout_is_the_last_train_images_renumbered_from_zero(flickr):
    ann, emb = flickr
    captions, caption_image, image_emb, text_emb = rewrite_eval.load_split(ann, emb, "holdout", holdout_images=3,
                                                                           max_images=2)
    assert caption_image.tolist() == [0] * 5 + [1] * 5 and captions[0] == "A red dog number 1 and cat 0 ."
    np.testing.assert_array_equal(image_emb, np.eye(8, dtype=np.float32)[1:3])
    assert len(text_emb) == 10
    with pytest.raises(ValueError, match="split_name"):
        rewrite_eval.load_split(ann, emb, "val", holdout_images=3)


def test_mismatched_embeddings_are_a_clear_error(flickr, tmp_path):
    ann, _ = flickr
    np.savez(tmp_path / "bad.npz", test_image=np.zeros((3, 8)), test_text=np.zeros((10, 8)))
    with pytest.raises(ValueError, match="re-encode the cache"):
        rewrite_eval.load_split(ann, tmp_path / "bad.npz", "test", holdout_images=0)


def test_recall_is_tie_aware_with_one_image_per_query():
    scores = np.array([[0.9, 0.1, 0.0], [0.5, 0.5, 0.5]])
    r = rewrite_eval.recall(scores, np.array([0, 2]))
    assert r["image_retrieval_recall@1"] == pytest.approx((1 + 1 / 3) / 2), "a three-way tie: 1/3 expected at rank 1"
    assert r["image_retrieval_recall@5"] == 1.0


def test_memo_encoder_encodes_each_text_once():
    calls = []

    class Counting:
        def encode_texts(self, texts, progress=False):
            calls.append(list(texts))
            return np.array([[len(t)] for t in texts], dtype=np.float32)

    memo = rewrite_eval.MemoEncoder(Counting())
    assert memo.encode_texts(["ab", "c", "ab"]).ravel().tolist() == [2, 1, 2]
    assert memo.encode_texts(["c", "def"]).ravel().tolist() == [1, 3]
    assert calls == [["ab", "c"], ["def"]]


def test_without_rewriters_the_rows_are_caption_and_raw_keywords(flickr, monkeypatch):
    import retrieval

    ann, emb = flickr

    class Keywords:  # keyword queries "red dog number i cat j": embed on image i's axis (test images are 4 and 5)
        def encode_texts(self, texts, progress=False):
            return np.stack([np.eye(8, dtype=np.float32)[int(t.split()[3])] for t in texts])

    monkeypatch.setattr(retrieval, "load_encoder", lambda name: Keywords())
    out = rewrite_eval.evaluate_rewrites(ann, emb, "test", systems=[], seed=3)
    assert out["n_images"] == 2 and len(out["queries"]) == 2
    assert all(q.startswith("red dog number") for q in out["queries"])
    assert out["recall"] == {"caption": {f"image_retrieval_recall@{k}": 1.0 for k in (1, 5, 10)},
                             "raw": {f"image_retrieval_recall@{k}": 1.0 for k in (1, 5, 10)}}
    with pytest.raises(ValueError, match="systems must be among"):
        rewrite_eval.evaluate_rewrites(ann, emb, "test", systems=["gpt"])
