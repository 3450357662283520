"""The encoding speed-ups of issue 13 keep the vectors: ONNX Runtime, channels_last, prefetching.

The reference is the lite model as it ran before them: PyTorch, contiguous (NCHW) image tower,
one batch decoded after the other, computed here from a freshly loaded model. The shipped ITQ
hasher and cross-encoder were fitted on those features, so every fast path must stay within
cosine 0.9999 of it; int8 is the one approximate path, opt-in.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retrieval import load_encoder
from common.lite_model import load_lite_model
from retrieval.encoders.lite import LiteEncoder, onnxruntime_available
from toy_encoder import ToyEncoder, solid_images

needs_ort = pytest.mark.skipif(not onnxruntime_available(), reason="onnxruntime not installed")

TEXTS = ["a dog", "two children in red coats are playing in the snow beside a wooden fence",
         "a black and white dog is running through the tall grass " * 12, "people"]


def textured_images() -> list[Image.Image]:
    """Photo-like inputs (gradients, noise, edges) of several sizes; solid colours would test too little."""
    rng = np.random.default_rng(0)
    out = []
    for i, (h, w) in enumerate([(240, 320), (500, 375), (224, 224), (300, 600), (128, 96)]):
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([x / w, y / h, ((x + y) % 64) / 64], axis=-1) * 200
        noise = rng.normal(0, 25 + 10 * i, (h, w, 3))
        out.append(Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)))
    return out


@pytest.fixture(scope="module")
def reference(torch_lite: LiteEncoder) -> dict[str, np.ndarray]:
    """Today's vectors the old way: a fresh LiteModel, contiguous tower, plain PyTorch forward."""
    model = load_lite_model()
    assert not model.image_tower.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    pixels = torch.stack([torch_lite.preprocess_image(im) for im in textured_images()])  # its preprocessing
    tokens = torch_lite.tokenize(TEXTS)  # and tokenizer only: the forward is the fresh model's
    with torch.inference_mode():
        images = torch.nn.functional.normalize(model.image_features(pixels), dim=-1).numpy()
        texts = torch.nn.functional.normalize(model.text_features(tokens["input_ids"], tokens["attention_mask"]),
                                              dim=-1).numpy()
    return {"images": images, "texts": texts}


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def torch_lite() -> LiteEncoder:
    return LiteEncoder(runtime="torch", device="cpu")


@pytest.fixture(scope="module")
def ort_lite() -> LiteEncoder:
    if not onnxruntime_available():
        pytest.skip("onnxruntime not installed")
    return load_encoder("lite", device="cpu")


def test_torch_runtime_runs_channels_last_with_the_same_vectors(torch_lite, reference) -> None:
    assert torch_lite.model.image_tower.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch_lite.onnx is None
    images = torch_lite.encode_images(textured_images(), batch_size=2)
    assert cosines(images, reference["images"]).min() >= 0.9999
    assert cosines(torch_lite.encode_texts(TEXTS), reference["texts"]).min() >= 0.9999


@needs_ort
def test_onnxruntime_is_the_cpu_default_with_the_same_vectors(ort_lite, reference) -> None:
    assert ort_lite.runtime == "onnxruntime" and "onnxruntime" in repr(ort_lite)
    assert not ort_lite.onnx.int8 and ort_lite.model_id == "lite", "int8 is opt-in, never the default"
    for batch_size in (1, 3, 64):  # dynamic batch axis; a last partial batch
        images = ort_lite.encode_images(textured_images(), batch_size=batch_size)
        assert cosines(images, reference["images"]).min() >= 0.9999, batch_size
    for batch_size in (1, 2, 256):  # dynamic length axis: padded to 4, 18, 64 tokens
        texts = ort_lite.encode_texts(TEXTS, batch_size=batch_size)
        assert cosines(texts, reference["texts"]).min() >= 0.9999, batch_size


@needs_ort
def test_int8_is_opt_in_close_but_not_identical(reference) -> None:
    int8 = load_encoder("lite:int8", device="cpu")  # LiteEncoder(int8=True): one export + quantisation
    assert isinstance(int8, LiteEncoder) and int8.onnx.int8 and int8.runtime == "onnxruntime"
    texts = int8.encode_texts(TEXTS)
    c = cosines(texts, reference["texts"])
    assert c.min() > 0.9 and c.min() < 0.99999, "quantised: close to fp32, not equal to it"
    assert "int8" in repr(int8) and int8.model_id == "lite:int8"
    assert cosines(int8.encode_images(textured_images()), reference["images"]).min() >= 0.9999, "images stay fp32"


def test_runtime_choices_are_checked() -> None:
    with pytest.raises(ValueError, match="runtime must be one of"):
        LiteEncoder(runtime="tensorrt", device="cpu")
    with pytest.raises(ValueError, match="int8=True needs runtime='onnxruntime'"):
        LiteEncoder(runtime="torch", int8=True, device="cpu")
    with pytest.raises(ValueError, match="runs fp32 on CPU"):
        LiteEncoder(runtime="onnxruntime", precision="bf16", device="cpu")


def test_prefetching_keeps_order_and_raises_for_a_later_batch(tmp_path: Path) -> None:
    encoder = ToyEncoder()
    paths = solid_images(tmp_path)
    expected = np.concatenate([encoder.encode_images([p], batch_size=1) for p in paths])
    for batch_size in (1, 3, len(paths), 100):
        np.testing.assert_allclose(encoder.encode_images(paths, batch_size=batch_size), expected, atol=1e-6)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=rf"images\[7\] \({broken}\)"):  # batch 3 of 3-image batches
        encoder.encode_images(paths[:7] + [str(broken)] + paths[7:], batch_size=3)
    with pytest.raises(TypeError, match="must be a sequence"):
        encoder.encode_images("a.jpg")
    with pytest.raises(TypeError, match="must be a sequence"):
        encoder.encode_images(p for p in paths)


def test_skipping_shares_the_loop_and_reports_positions(tmp_path: Path) -> None:
    encoder = ToyEncoder()
    paths = solid_images(tmp_path)[:6]
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG but not really")
    items = [paths[0], str(tmp_path / "empty.jpg"), paths[1], paths[2], str(tmp_path / "junk.png"),
             str(tmp_path / "missing.jpg"), paths[3], paths[4], paths[5]]
    for batch_size in (1, 2, 4, 64):
        vectors, kept, failed = encoder.encode_images_skipping(items, batch_size=batch_size)
        assert kept == [0, 2, 3, 6, 7, 8]
        assert [p for p, _ in failed] == [1, 4, 5]
        reasons = dict(failed)
        assert "empty" in reasons[1] and "not an image" in reasons[4] and "no such file" in reasons[5]
        assert not any(r.startswith("images[") for r in reasons.values()), "reasons do not repeat the name"
        np.testing.assert_allclose(vectors, encoder.encode_images(paths, batch_size=batch_size), atol=1e-6)
    vectors, kept, failed = encoder.encode_images_skipping([str(tmp_path / "empty.jpg")])
    assert vectors.shape == (0, encoder.dim) and kept == [] and len(failed) == 1
    vectors, kept, failed = encoder.encode_images_skipping([])
    assert vectors.shape == (0, encoder.dim) and kept == [] and failed == []


def test_tokenizers_library_gives_transformers_ids_and_masks() -> None:
    """The lite encoder tokenizes with ``tokenizers`` alone (no transformers import on a search)."""
    from transformers import AutoTokenizer

    from common.lite_files import minilm_dir

    texts = TEXTS + ["Ünïcödé CAFÉ, naïve:  tabs\tand\nnewlines", "x"]
    lite = LiteEncoder(device="cpu", runtime="torch")
    expected = AutoTokenizer.from_pretrained(minilm_dir())(texts, padding=True, truncation=True, max_length=64,
                                                           return_tensors="np")
    ids, mask = lite.token_arrays(texts)
    assert ids.shape == (len(texts), 64), "the long text is truncated to text_max_length"
    np.testing.assert_array_equal(ids, expected["input_ids"])
    np.testing.assert_array_equal(mask, expected["attention_mask"])


@needs_ort
def test_onnx_graphs_are_exported_once_then_only_read_per_tower(tmp_path, monkeypatch, reference) -> None:
    import retrieval.encoders.lite as lite_module

    monkeypatch.setenv("CROSSMODAL_CACHE", str(tmp_path))
    first = LiteEncoder(device="cpu")
    assert first.is_loaded == {"model": False, "image": False, "text": False}, "construction loads nothing"
    texts = first.encode_texts(TEXTS)
    assert cosines(texts, reference["texts"]).min() >= 0.9999
    assert first.is_loaded == {"model": False, "image": False, "text": True}, "the towers exported from are let go"
    files = sorted(p.name for p in (tmp_path / "onnx").iterdir())
    graphs = [f for f in files if f.endswith(".onnx")]
    assert len(graphs) == 2 and graphs[0].endswith("-image.onnx") and graphs[1].endswith("-text.onnx")
    optimised = [f for f in files if (tmp_path / "onnx" / f).is_dir()]
    assert len(optimised) == 1 and optimised[0].startswith(graphs[1][:-len(".onnx")]), "the text tower's, made on use"
    assert sorted(p.name for p in (tmp_path / "onnx" / optimised[0]).iterdir()) == ["graph.onnx", "weights.data"]

    def no_export(*args, **kwargs):
        raise AssertionError("the graphs are cached: nothing may be exported again")

    monkeypatch.setattr(lite_module, "export_graphs", no_export)
    second = LiteEncoder(device="cpu")
    np.testing.assert_allclose(second.encode_texts(TEXTS), texts, atol=1e-6)
    assert second.is_loaded == {"model": False, "image": False, "text": True}, "a text query: the text graph only"
    images = second.encode_images(textured_images(), batch_size=3)
    assert cosines(images, reference["images"]).min() >= 0.9999
    assert second.is_loaded == {"model": False, "image": True, "text": True}
    after = sorted(p.name for p in (tmp_path / "onnx").iterdir())
    assert set(files) < set(after) and len(after) == len(files) + 1, "the image tower's optimised form, nothing else"
    assert not [f for f in after if f.startswith(".")], "no temporary files left behind"


@needs_ort
def test_optimised_graph_runs_like_the_exported_one_and_is_made_once(tmp_path, monkeypatch) -> None:
    """ORT's offline-optimised form (external weights, issue 22) gives the exported graph's numbers."""
    import onnxruntime as ort

    import retrieval.encoders.onnx_cache as onnx_cache

    monkeypatch.setenv("CROSSMODAL_CACHE", str(tmp_path))
    lite = LiteEncoder(device="cpu")
    texts = lite.encode_texts(TEXTS)
    exported = onnx_cache.graph_paths(onnx_cache.remembered_key(lite.path, lite.config, False))["text"]
    target = onnx_cache.optimised_path(exported, ort.__version__)
    assert target.is_file() and (target.parent / "weights.data").stat().st_size > 80e6, "the weights live outside"
    assert target.stat().st_size < 1e6
    plain = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    ids, mask = lite.token_arrays(TEXTS)
    features = plain.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    np.testing.assert_allclose(texts, features / np.linalg.norm(features, axis=1, keepdims=True), atol=1e-5)
    stamp = target.stat().st_mtime_ns

    def no_save(*args, **kwargs):
        raise AssertionError("the optimised graph exists: it is only read")

    monkeypatch.setattr(onnx_cache, "save_optimised", no_save)
    np.testing.assert_allclose(LiteEncoder(device="cpu").encode_texts(TEXTS), texts, atol=1e-6)
    assert target.stat().st_mtime_ns == stamp


def test_publish_dir_keeps_what_another_process_published(tmp_path) -> None:
    from retrieval.encoders.onnx_cache import publish_dir

    target = tmp_path / "folder"
    publish_dir(target, lambda d: (d / "a").write_text("first"))
    publish_dir(target, lambda d: (d / "a").write_text("second"))
    assert (target / "a").read_text() == "first", "the first complete folder wins; nothing is swapped under a reader"

    def fails(d: Path) -> None:
        (d / "half").write_text("x")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        publish_dir(tmp_path / "other", fails)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"], "no temporary folder, no half target"


def test_remembered_key_is_the_key_and_follows_rewritten_files(tmp_path, monkeypatch) -> None:
    import json
    import shutil

    from common.lite_files import WEIGHTS_DIR, read_config
    from retrieval.encoders import onnx_cache

    monkeypatch.setenv("CROSSMODAL_CACHE", str(tmp_path / "cache"))
    copy = shutil.copytree(WEIGHTS_DIR, tmp_path / "lite")
    config = read_config(copy)
    key = onnx_cache.remembered_key(copy, config, False)
    assert key == onnx_cache.graphs_key(copy, config, False)
    memo = tmp_path / "cache" / "onnx" / "keys.json"
    assert list(json.loads(memo.read_text()).values()) == [key]

    def not_again(*args, **kwargs):
        raise AssertionError("a remembered key is not computed again")

    with monkeypatch.context() as m:
        m.setattr(onnx_cache, "graphs_key", not_again)
        assert onnx_cache.remembered_key(copy, config, False) == key
    concepts = onnx_cache.remembered_key(copy, {**config, "concept_weight": 0.7}, False)
    assert concepts == onnx_cache.graphs_key(copy, {**config, "concept_weight": 0.7}, False) != key
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (copy / "model.safetensors").write_bytes(bytes(data))  # same size, same inode: a new modification time
    changed = onnx_cache.remembered_key(copy, config, False)
    assert changed != key and changed == onnx_cache.graphs_key(copy, config, False)
    assert onnx_cache.remembered_key(copy, config, True) == onnx_cache.graphs_key(copy, config, True) != changed
    memo.write_text("{not json")
    assert onnx_cache.remembered_key(copy, config, False) == changed, "a damaged memo is recomputed, not an error"


def test_onnx_cache_key_follows_the_weights_and_int8(tmp_path, monkeypatch) -> None:
    import shutil

    from common.lite_files import WEIGHTS_DIR, read_config
    from retrieval.encoders.onnx_cache import cache_dir, graphs_key

    config = read_config(WEIGHTS_DIR)
    key = graphs_key(WEIGHTS_DIR, config, int8=False)
    assert key == graphs_key(WEIGHTS_DIR, config, int8=False) != graphs_key(WEIGHTS_DIR, config, int8=True)
    copy = shutil.copytree(WEIGHTS_DIR, tmp_path / "lite")
    assert graphs_key(copy, config, int8=False) == key, "the key is the content, not the path"
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (copy / "model.safetensors").write_bytes(bytes(data))
    assert graphs_key(copy, config, int8=False) != key, "other weights, other graphs"
    monkeypatch.delenv("CROSSMODAL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "crossmodal"
