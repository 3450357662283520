"""Encoder backends offline: tiny checkpoints saved from configs, a local Hub cache, clear errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from hub_cache import add_to_hub_cache
from retrieval import load_encoder
from retrieval.encoders import OpenClipEncoder, TransformersEncoder
from common.hub import ModelNotAvailableError
from tiny_models import TINY_PREPROCESS, save_tiny_open_clip, save_tiny_transformers_clip

IMAGES = [Image.new("RGB", (40, 30), c) for c in [(255, 0, 0), (0, 128, 255), (20, 20, 20)]]
TEXTS = ["a red square", "a blue square", "a very dark picture"]


def check_embeddings(x: np.ndarray, n: int, dim: int) -> None:
    assert x.shape == (n, dim) and x.dtype == np.float32
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


@pytest.fixture(scope="module")
def open_clip_dir(tmp_path_factory):
    return save_tiny_open_clip(tmp_path_factory.mktemp("oc") / "tiny")


@pytest.fixture(scope="module")
def hf_clip_dir(tmp_path_factory):
    return save_tiny_transformers_clip(tmp_path_factory.mktemp("hf") / "tiny")


def test_open_clip_local_dir_with_its_own_preprocessing(open_clip_dir):
    encoder = load_encoder(str(open_clip_dir), device="cpu")
    assert isinstance(encoder, OpenClipEncoder) and encoder.dim == 16
    check_embeddings(encoder.encode_images(IMAGES), 3, 16)
    check_embeddings(encoder.encode_texts(TEXTS), 3, 16)
    assert encoder.preprocess_config["mean"] == tuple(TINY_PREPROCESS["mean"]) or \
        list(encoder.preprocess_config["mean"]) == TINY_PREPROCESS["mean"]
    pixels = encoder.preprocess_image(Image.new("RGB", (50, 40), (0, 0, 0)))
    assert pixels.shape == (3, 32, 32)
    expected = -torch.tensor(TINY_PREPROCESS["mean"]) / torch.tensor(TINY_PREPROCESS["std"])
    assert torch.allclose(pixels[:, 0, 0], expected, atol=1e-4)  # black pixel -> (0 - mean) / std


def test_open_clip_reload_is_identical_and_hub_cache_resolves(open_clip_dir, offline_hub):
    first = load_encoder(f"local-dir:{open_clip_dir}", device="cpu").encode_texts(TEXTS)
    add_to_hub_cache(offline_hub, "tiny-org/tiny-open-clip", open_clip_dir)
    from_cache = load_encoder("hf-hub:tiny-org/tiny-open-clip", device="cpu")
    np.testing.assert_allclose(from_cache.encode_texts(TEXTS), first, atol=1e-6)


def test_transformers_clip_local_dir_and_hub_cache(hf_clip_dir, offline_hub):
    encoder = load_encoder(str(hf_clip_dir), device="cpu")
    assert isinstance(encoder, TransformersEncoder) and encoder.dim == 16
    images, texts = encoder.encode_images(IMAGES), encoder.encode_texts(TEXTS)
    check_embeddings(images, 3, 16)
    check_embeddings(texts, 3, 16)
    add_to_hub_cache(offline_hub, "tiny-org/tiny-clip", hf_clip_dir)
    cached = load_encoder("tiny-org/tiny-clip", device="cpu")
    np.testing.assert_allclose(cached.encode_images(IMAGES), images, atol=1e-6)
    np.testing.assert_allclose(load_encoder("transformers:tiny-org/tiny-clip", device="cpu").encode_texts(TEXTS),
                               texts, atol=1e-6)


@pytest.mark.parametrize("model_id", ["no-such-org/no-such-model", "hf-hub:no-such-org/no-such-model"])
def test_unreachable_id_says_what_to_do(model_id, offline_hub):
    with pytest.raises(ModelNotAvailableError) as info:
        load_encoder(model_id, device="cpu")
    message = str(info.value)
    assert "no-such-org/no-such-model" in message
    for hint in ("local directory", "HF_HUB_OFFLINE", "HF_TOKEN", "cache"):
        assert hint in message


def test_unknown_open_clip_tag_and_missing_dir():
    with pytest.raises(ValueError, match="ViT-B-32/not-a-tag"):
        load_encoder("ViT-B-32/not-a-tag", device="cpu")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_encoder("local-dir:/nowhere/at/all", device="cpu")


def test_text_input_errors_name_the_index(open_clip_dir):
    encoder = load_encoder(str(open_clip_dir), device="cpu")
    with pytest.raises(ValueError, match=r"texts\[1\] is empty"):
        encoder.encode_texts(["fine", "  "])
    with pytest.raises(TypeError, match=r"texts\[0\] is int"):
        encoder.encode_texts([3])
    with pytest.raises(TypeError, match="single string"):
        encoder.encode_texts("a caption")
    long = encoder.encode_texts(["word " * 5000])  # truncated to the context length, not an error
    check_embeddings(long, 1, 16)


def test_image_input_errors_name_the_index(open_clip_dir, tmp_path):
    encoder = load_encoder(str(open_clip_dir), device="cpu")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ValueError, match=r"images\[1\] \(.*broken.jpg\)"):
        encoder.encode_images([IMAGES[0], broken])
    mixed = [IMAGES[0], np.zeros((20, 300, 3), np.uint8), Image.new("LA", (8, 8)), Image.new("CMYK", (9, 9))]
    check_embeddings(encoder.encode_images(mixed, batch_size=2), 4, 16)


def test_is_lite_id_agrees_with_load_encoder_without_loading(open_clip_dir, hf_clip_dir, tmp_path):
    """``is_lite_id`` lets a caller refuse a non-lite encoder before a load or a Hub look-up; it must
    say lite exactly where ``load_encoder`` would build a LiteEncoder."""
    from retrieval.encoders import LiteEncoder, is_lite_id
    from common.lite_files import WEIGHTS_DIR as LITE_DIR

    for model_id in ("lite", "lite:int8", "lite:concepts", "lite:heads", str(LITE_DIR)):
        assert is_lite_id(model_id), model_id
    assert isinstance(load_encoder(str(LITE_DIR)), LiteEncoder)
    for model_id in (str(open_clip_dir), str(hf_clip_dir), "open_clip:RN50", "org/not-lite", "lite:unknown",
                     str(tmp_path / "missing")):
        assert not is_lite_id(model_id), model_id
    assert isinstance(load_encoder(str(hf_clip_dir)), TransformersEncoder)
