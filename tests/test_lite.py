"""The embedded lite encoder: shipped weights, preprocessing, the training script's fast path."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FLICKR8K, load_script
from retrieval import load_encoder
from retrieval.encoders.lite import WEIGHTS_DIR, LiteEncoder


@pytest.fixture(scope="module")
def lite():
    return load_encoder("lite", device="cpu")


def test_shipped_weights_are_small_and_carry_preprocessing():
    config = json.loads((WEIGHTS_DIR / "config.json").read_text())
    assert config["image_mean"] == [0.5, 0.5, 0.5] and config["image_std"] == [0.5, 0.5, 0.5]
    assert (WEIGHTS_DIR / "model.safetensors").stat().st_size < 10 * 2**20
    assert (WEIGHTS_DIR / "README.md").is_file()


def test_embeddings_are_unit_vectors_and_deterministic(lite):
    images = [Image.new("RGB", (300, 200), (200, 30, 30)), np.zeros((64, 64), np.uint8)]
    a, b = lite.encode_images(images), lite.encode_images(images)
    assert a.shape == (2, lite.dim) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(a, b)
    t = lite.encode_texts(["a red picture", "word " * 1000])
    assert t.shape == (2, lite.dim)
    with pytest.raises(ValueError, match=r"texts\[0\] is empty"):
        lite.encode_texts([""])


def test_training_fast_path_equals_full_forward(lite):
    """The trainer runs the tower tops on cached trunk outputs; that must be the same network."""
    train = load_script("train_lite")
    model = lite.model
    pixels = torch.stack([lite.preprocess_image(Image.new("RGB", (224, 224), c)) for c in [(10, 200, 90), (250, 250, 0)]])
    tokens = lite.tokenize(["a dog runs on the beach", "two people"])
    with torch.inference_mode():
        tower = model.image_tower
        trunk = tower.blocks[: 7 - train.IMAGE_CACHED_STAGES](tower.bn1(tower.conv_stem(pixels)))
        fast_image = train.image_top(model, trunk)
        out = model.text_tower(**tokens, output_hidden_states=True)
        hidden = out.hidden_states[6 - train.TEXT_CACHED_LAYERS]
        fast_text = train.text_top(model, hidden, tokens["attention_mask"])
        torch.testing.assert_close(fast_image, model.image_features(pixels), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(fast_text, model.text_features(tokens["input_ids"], tokens["attention_mask"]),
                                   atol=1e-4, rtol=1e-4)


def test_weights_that_do_not_match_the_config_are_rejected(tmp_path):
    import shutil

    shutil.copytree(WEIGHTS_DIR, tmp_path / "lite")
    config = json.loads((tmp_path / "lite" / "config.json").read_text())
    config["text_trainable_layers"] = config["text_trainable_layers"] + 1
    (tmp_path / "lite" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not match its config"):
        LiteEncoder(tmp_path / "lite", device="cpu")
    with pytest.raises(FileNotFoundError, match="train_lite"):
        LiteEncoder(tmp_path / "nothing-here", device="cpu")


#: Regression floors, a few points under the measured Flickr8K-1K test numbers in README / model card.
#: Measured (python -m eval.retrieval --model lite ... --split test): I->T 22.9 / 65.4, T->I 19.2 / 60.2.
FLOORS = {"text_retrieval_recall@1": 0.20, "image_retrieval_recall@1": 0.16,
          "text_retrieval_recall@10": 0.61, "image_retrieval_recall@10": 0.57}


@pytest.mark.data
@pytest.mark.slow
def test_flickr8k_recall_floor(tmp_path):
    from eval.retrieval import main

    result = main(["--model", "lite", "--annotations", str(FLICKR8K / "dataset_flickr8k.json"),
                   "--images", str(FLICKR8K / "images"), "--split", "test", "--output", str(tmp_path / "r.json")])
    assert json.loads((tmp_path / "r.json").read_text())["n_captions"] == 5000
    for key, floor in FLOORS.items():
        assert result[key] >= floor, f"{key} = {result[key]:.3f} fell under {floor}"
