"""The fine-feature cache's reader and its ragged word rows (eval/fine_features.py), on a tiny
synthetic Karpathy file: no model is run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eval.fine_features import FineSplit, _pca, load_flickr8k_fine
from hashing.mgsgh_fine import as_fine


def test_text_rows_take_the_captions_words_in_the_asked_order():
    words = np.arange(12, dtype=np.float16).reshape(6, 2)
    split = FineSplit(np.zeros((1, 2, 2, 2), np.float16), words, np.array([0, 1, 4, 6]))
    got_words, got_offsets = split.text_rows(np.array([2, 0]))
    assert got_offsets.tolist() == [0, 2, 3]
    assert (got_words == words[[4, 5, 0]]).all()
    assert as_fine((got_words, got_offsets), "text", 2).dim == 2


def test_pca_keeps_the_top_directions_and_reports_the_variance_kept():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 3)) * np.array([5.0, 1.0, 0.1])
    mean, components, kept = _pca([x[:200], x[200:]], 1)
    assert np.allclose(mean, x.mean(0), atol=1e-5)
    assert abs(abs(components[0, 0]) - 1) < 1e-2
    assert 0.9 < kept < 1.0


def write_karpathy(folder, n_train, n_test):
    (folder / "images").mkdir()
    entries = [{"filename": f"{s}{i}.jpg", "split": s, "sentences": [{"raw": "a dog runs", "tokens": []}] * 2}
               for s, n in (("train", n_train), ("test", n_test)) for i in range(n)]
    path = folder / "dataset_flickr8k.json"
    path.write_text(json.dumps({"dataset": "flickr8k", "images": entries}))
    return path


def split_arrays(name, n_images, n_captions):
    return {f"{name}_image_regions": np.zeros((n_images, 2, 2, 3), np.float16),
            f"{name}_text_words": np.zeros((2 * n_captions, 3), np.float16),
            f"{name}_text_word_offsets": np.arange(0, 2 * n_captions + 1, 2)}


def test_the_reader_checks_the_split_sizes_and_names_missing_keys(tmp_path):
    annotations = write_karpathy(tmp_path, 3, 2)
    good = tmp_path / "fine.npz"
    np.savez(good, **split_arrays("train", 3, 6), **split_arrays("test", 2, 4))
    fine = load_flickr8k_fine(good, annotations)
    assert fine["train"].regions.shape == (3, 2, 2, 3) and len(fine["query"].offsets) == 5
    short = tmp_path / "short.npz"
    np.savez(short, **split_arrays("train", 2, 6), **split_arrays("test", 2, 4))
    with pytest.raises(ValueError, match="split 'train' has 2 region grids"):
        load_flickr8k_fine(short, annotations)
    lacking = tmp_path / "lacking.npz"
    np.savez(lacking, **split_arrays("train", 3, 6))
    with pytest.raises(ValueError, match="lacks test_image_regions"):
        load_flickr8k_fine(lacking, annotations)
    with pytest.raises(FileNotFoundError, match="eval.fine_features"):
        load_flickr8k_fine(tmp_path / "none.npz", annotations)


def test_parts_of_another_encoder_or_version_are_refused_not_mixed(tmp_path):
    """Version-1 parts (the heads alone, before issue 23) must not be completed with the default
    encoder's parts: the stamp names the encoder, and a differing stamp stops the run."""
    from eval.fine_features import _part_dir, encode_flickr8k_fine

    annotations = write_karpathy(tmp_path, 1, 1)
    out = tmp_path / "fine.npz"
    _part_dir(out).mkdir()
    (_part_dir(out) / "stamp.json").write_text(json.dumps({"version": 1, "weights_sha256": "x"}))
    with pytest.raises(ValueError, match="parts of another encoder"):
        encode_flickr8k_fine(annotations, out, progress=False)
    with pytest.raises(ValueError, match="need a lite encoder"):
        encode_flickr8k_fine(annotations, tmp_path / "other.npz", progress=False, model_id="open_clip:RN50")


@pytest.mark.data
@pytest.mark.parametrize("model_id", ["lite", "lite:heads"])
def test_lite_regions_and_words_average_to_the_encoders_embeddings(model_id):
    """The nodes live in the encoder's space: the mean region is the head's image embedding, the
    global vector is the encoder's (with ImageNet concepts for the default ``lite``), and the
    words are the caption's words (pre-tokenised), each in the text head's space."""
    import torch
    from PIL import Image

    from common.lite_fine import region_features, word_features
    from conftest import FLICKR8K
    from retrieval.encoders import load_encoder
    from retrieval.encoders.lite import text_tokenizer

    encoder = load_encoder(model_id, runtime="torch")
    paths = sorted((FLICKR8K / "images").glob("*.jpg"))[:2]
    pixels = torch.stack([encoder.preprocess_image(Image.open(p).convert("RGB")) for p in paths])
    regions, image = region_features(encoder.model, pixels)
    assert regions.shape == (2, 7, 7, encoder.dim)
    head = encoder.model.image_head_features(pixels)
    assert torch.allclose(regions.mean((1, 2)), head, atol=1e-4)
    expected = encoder.encode_images([str(p) for p in paths], progress=False)
    assert np.allclose(torch.nn.functional.normalize(image, dim=1).numpy(), expected, atol=1e-4)
    assert torch.allclose(image, encoder.model.image_features(pixels), atol=1e-4)
    texts = ["A dog runs on the beach .", "Two kids, playing football"]
    words, text = word_features(encoder.model, text_tokenizer(64), texts)
    assert [len(w) for w in words] == [7, 5]  # punctuation marks are words of the pre-tokeniser
    assert np.allclose(torch.nn.functional.normalize(text, dim=1).numpy(),
                       encoder.encode_texts(texts, progress=False), atol=1e-4)
