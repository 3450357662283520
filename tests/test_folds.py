from pathlib import Path

import numpy as np
import pytest

from eval.folds import average_metrics, fold_indices, fold_recall, fold_subsets
from eval.karpathy import CaptionDataset
from eval.recall import retrieval_recall


@pytest.fixture
def coco_like():
    """10 images in Karpathy order, 5-7 captions each, noisy embeddings that make folds differ."""
    rng = np.random.default_rng(0)
    counts = rng.integers(5, 8, size=10)
    owners = np.repeat(np.arange(10), counts)
    captions = [f"caption {j} of image {i}" for j, i in enumerate(owners)]
    paths = [Path(f"img{i:02d}.jpg") for i in range(10)]
    image_emb = rng.standard_normal((10, 8)).astype(np.float32)
    text_emb = (image_emb[owners] + 1.3 * rng.standard_normal((len(owners), 8))).astype(np.float32)
    return CaptionDataset("coco", "test", paths, captions, owners), image_emb, text_emb


def test_folds_partition_images_and_captions_in_order(coco_like):
    ds, _, _ = coco_like
    folds = fold_subsets(ds, n_folds=5)
    assert [f.n_images for f in folds] == [2] * 5
    assert [p for f in folds for p in f.image_paths] == list(ds.image_paths)  # consecutive, Karpathy order
    assert [c for f in folds for c in f.captions] == ds.captions  # every caption exactly once
    for f in folds:  # a fold's captions all describe its own images
        assert all(c.endswith(f"image {int(p.stem[3:])}") for c, p in
                   zip(f.captions, (f.image_paths[i] for i in f.caption_image)))
    assert folds[2].split == "test fold 3/5"
    idx = fold_indices(ds, 5)
    assert np.array_equal(np.concatenate([c for _, c in idx]), np.arange(len(ds.captions)))


def test_mean_equals_the_average_of_independent_per_fold_runs(coco_like):
    ds, image_emb, text_emb = coco_like
    by_path = dict(zip(ds.image_paths, image_emb))
    by_text = dict(zip(ds.captions, text_emb))
    independent = []
    for f in fold_subsets(ds, 5):
        sim = np.stack([by_text[c] for c in f.captions]) @ np.stack([by_path[p] for p in f.image_paths]).T
        independent.append(retrieval_recall(sim, f.caption_image))
    got = fold_recall(image_emb, text_emb, ds, n_folds=5)
    assert got["folds"] == independent
    for key in independent[0]:
        assert got["mean"][key] == pytest.approx(sum(m[key] for m in independent) / 5)
    # 1K-style folds are an easier problem than ranking against everything: the numbers must differ
    full = retrieval_recall(text_emb @ image_emb.T, ds.caption_image)
    assert got["mean"]["text_retrieval_recall@1"] > full["text_retrieval_recall@1"]
    assert got["mean"]["rsum"] == pytest.approx(sum(m["rsum"] for m in independent) / 5)


def test_bad_fold_requests(coco_like):
    ds, image_emb, text_emb = coco_like
    with pytest.raises(ValueError, match="10 images, not divisible into 3"):
        fold_subsets(ds, 3)
    with pytest.raises(ValueError, match="n_folds"):
        fold_indices(ds, 0)
    with pytest.raises(ValueError, match=r"text_embeddings must be \(\d+, d\)"):
        fold_recall(image_emb, text_emb[:-1], ds)


def test_average_metrics_checks_its_input():
    assert average_metrics([{"a": 1.0, "b": 2}, {"a": 3.0, "b": 4}]) == {"a": 2.0, "b": 3.0}
    with pytest.raises(ValueError, match="fold 1 reports different metrics.*b"):
        average_metrics([{"a": 1.0, "b": 2.0}, {"a": 1.0}])
    with pytest.raises(TypeError, match="fold 0 metric 'a' is str"):
        average_metrics([{"a": "x"}])
    with pytest.raises(ValueError):
        average_metrics([])
