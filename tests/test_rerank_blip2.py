"""BLIP-2 reranker offline: a tiny random checkpoint, scored against the transformers model's own forward."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hub_cache import add_to_hub_cache
from rerank.base import Candidates, Query, create_reranker, reranker_from_config
from rerank.blip2 import Blip2Config, Blip2Reranker, PendingImage, lavis_caption
from common.hub import ModelNotAvailableError
from common.images import ImageLoadError
from tiny_models import save_tiny_blip2, save_tiny_transformers_clip

RNG = np.random.default_rng(0)
IMAGES = [RNG.integers(0, 256, (40 + 3 * i, 30, 3), dtype=np.uint8) for i in range(7)]
CAPTIONS = ["a red square", "a blue square on a long white table", "dark", "two dogs running in the snow",
            "a man rides a bike"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_blip2(tmp_path_factory.mktemp("blip2") / "tiny")


@pytest.fixture(scope="module")
def reranker(tiny_dir):
    return Blip2Reranker(str(tiny_dir), device="cpu", text_preprocess="none", batch_size=3)


def text_query(text, images, ids=None):
    ids = np.arange(len(images)) if ids is None else np.asarray(ids)
    return Query("text", text), Candidates("image", ids, items=list(images))


def image_query(image, captions):
    return Query("image", image), Candidates("text", np.arange(len(captions)), items=list(captions))


def reference(directory, text, images, itm="logit", processor_call=False):
    """ITM + ITC of (text, image) pairs from Blip2ForImageTextRetrieval.forward itself."""
    from transformers import AutoProcessor, Blip2ForImageTextRetrieval

    model = Blip2ForImageTextRetrieval.from_pretrained(directory).eval()
    processor = AutoProcessor.from_pretrained(directory)
    pil = [Image.fromarray(a) for a in images]
    if processor_call:  # the processor prepends <image> placeholders in this layout
        inputs = dict(processor(images=pil, text=[text] * len(pil), return_tensors="pt"))
    else:
        tokens = processor.tokenizer([text] * len(pil), return_tensors="pt")
        inputs = {"pixel_values": processor.image_processor(pil, return_tensors="pt")["pixel_values"],
                  "input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}
    with torch.no_grad():
        logits = model(**inputs, use_image_text_matching_head=True).logits_per_image
        itc = model(**inputs, use_image_text_matching_head=False).logits_per_image[:, 0]
    itm = logits[:, 1] if itm == "logit" else logits.softmax(dim=1)[:, 1]
    return (itm + itc).numpy()


@pytest.mark.parametrize("itm", ["logit", "probability"])
def test_scores_equal_the_models_own_itm_plus_itc(tiny_dir, reranker, itm):
    scorer = reranker if itm == "logit" else Blip2Reranker(tiny_dir, device="cpu", itm=itm, text_preprocess="none")
    got = scorer.score(*text_query(CAPTIONS[1], IMAGES))
    expected = reference(tiny_dir, CAPTIONS[1], IMAGES, itm=itm)
    assert got.dtype == np.float32 and got.shape == (len(IMAGES),)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.ptp(got) > 0.1  # the test model tells candidates apart, so order bugs would show


def test_image_token_layout_scores_the_same_as_its_forward(tmp_path):
    directory = save_tiny_blip2(tmp_path / "tiny", seed=1, image_tokens=True)
    scorer = Blip2Reranker(directory, device="cpu", text_preprocess="none")
    got = scorer.score(*text_query(CAPTIONS[3], IMAGES[:4]))
    np.testing.assert_allclose(got, reference(directory, CAPTIONS[3], IMAGES[:4], processor_call=True), atol=1e-5)


def test_image_query_scores_match_text_query_scores_of_the_same_pairs(reranker):
    by_text = np.stack([reranker.score(*text_query(c, IMAGES)) for c in CAPTIONS])  # (captions, images)
    by_image = np.stack([reranker.score(*image_query(im, CAPTIONS)) for im in IMAGES])  # (images, captions)
    np.testing.assert_allclose(by_image, by_text.T, atol=1e-5)


def test_invariant_to_batch_size_and_candidate_order(tiny_dir, reranker):
    base = reranker.score(*image_query(IMAGES[2], CAPTIONS))
    for batch_size in (1, 2, 16):
        other = Blip2Reranker(tiny_dir, device="cpu", text_preprocess="none", batch_size=batch_size, cache_size=0)
        np.testing.assert_allclose(other.score(*image_query(IMAGES[2], CAPTIONS)), base, atol=1e-5)
    order = np.random.default_rng(1).permutation(len(IMAGES))
    images = reranker.score(*text_query(CAPTIONS[0], IMAGES))
    shuffled = reranker.score(*text_query(CAPTIONS[0], [IMAGES[i] for i in order], ids=order))
    np.testing.assert_allclose(shuffled, images[order], atol=1e-5)
    order = np.random.default_rng(2).permutation(len(CAPTIONS))
    np.testing.assert_allclose(reranker.score(*image_query(IMAGES[2], [CAPTIONS[i] for i in order])), base[order],
                               atol=1e-5)


def count_vit_images(scorer):
    """Records the batch sizes the ViT is run on; returns (sizes, hook handle)."""
    seen = []
    handle = scorer.model.vision_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(len(kwargs["pixel_values"])), with_kwargs=True)
    return seen, handle


def test_score_batch_encodes_each_image_once_and_equals_score(tiny_dir, reranker):
    scorer = Blip2Reranker(tiny_dir, device="cpu", text_preprocess="none", batch_size=2, cache_size=0)
    queries = [text_query(CAPTIONS[0], IMAGES[:5]), text_query(CAPTIONS[2], IMAGES[3:]),
               image_query(IMAGES[0], CAPTIONS), text_query(CAPTIONS[0], IMAGES[:0])]
    seen, handle = count_vit_images(scorer)
    try:
        batched = scorer.score_batch([q for q, _ in queries], [c for _, c in queries])
    finally:
        handle.remove()
    assert sum(seen) == len(IMAGES)  # 7 distinct images; IMAGES[0], [3], [4] appear twice
    assert batched[3].shape == (0,)
    for (query, cands), got in zip(queries, batched):
        np.testing.assert_allclose(got, reranker.score(query, cands), atol=1e-5)
    with pytest.raises(ValueError, match="2 queries but 1"):
        scorer.score_batch([queries[0][0], queries[1][0]], [queries[0][1]])


def test_lru_cache_reuses_features_and_is_bounded(tiny_dir):
    scorer = Blip2Reranker(tiny_dir, device="cpu", text_preprocess="none", cache_size=3, batch_size=2)
    query = text_query(CAPTIONS[4], IMAGES[:3])
    first = scorer.score(*query)
    seen, handle = count_vit_images(scorer)
    try:
        again = scorer.score(*image_query(IMAGES[1], CAPTIONS))
        np.testing.assert_array_equal(scorer.score(*query), first)
        assert seen == []  # every image came from the cache
        assert scorer.cache_info()["hits"] >= 4
        scorer.score(*text_query(CAPTIONS[4], IMAGES))
        assert sum(seen) == 4  # the 4 images not cached yet
    finally:
        handle.remove()
    assert scorer.cache_info()["size"] == 3 and scorer.cache_info()["capacity"] == 3
    uncached = Blip2Reranker(tiny_dir, device="cpu", text_preprocess="none", cache_size=0)
    np.testing.assert_allclose(uncached.score(*image_query(IMAGES[1], CAPTIONS)), again, atol=1e-6)
    assert uncached.cache_info()["size"] == 0


def test_forget_re_encodes_only_the_query_image(tiny_dir):
    scorer = Blip2Reranker(tiny_dir, device="cpu", text_preprocess="none", cache_size=8)
    first = scorer.score(*image_query(IMAGES[0], CAPTIONS))
    scorer.score(*text_query(CAPTIONS[0], IMAGES[:3]))
    seen, handle = count_vit_images(scorer)
    try:
        scorer.forget(Query("image", IMAGES[0]))
        scorer.forget(Query("text", CAPTIONS[0]))  # texts are not cached: a no-op
        np.testing.assert_allclose(scorer.score(*image_query(IMAGES[0], CAPTIONS)), first, atol=1e-6)
        scorer.score(*text_query(CAPTIONS[0], IMAGES[:3]))
        assert seen == [1]  # the query image once; its neighbours stayed cached
    finally:
        handle.remove()


def test_cache_follows_content_not_ids(tmp_path, reranker):
    """Reused ids with other pixels, or a file rewritten in place, must not get stale features."""
    inverted = [255 - image for image in IMAGES[:2]]  # same shapes, other pixels
    a = reranker.score(*text_query(CAPTIONS[0], IMAGES[:2], ids=[10, 11]))
    b = reranker.score(*text_query(CAPTIONS[0], inverted, ids=[10, 11]))
    uncached = Blip2Reranker(reranker.model_id, device="cpu", text_preprocess="none", cache_size=0)
    np.testing.assert_allclose(b, uncached.score(*text_query(CAPTIONS[0], inverted)), atol=1e-6)
    assert not np.allclose(a, b)
    path = tmp_path / "img.png"
    Image.fromarray(IMAGES[0]).save(path)
    from_file = reranker.score(*text_query(CAPTIONS[0], [str(path)]))
    np.testing.assert_allclose(from_file, a[:1], atol=1e-5)
    Image.fromarray(IMAGES[5]).save(path)
    os.utime(path, ns=(1, 1))  # a distinct mtime even on coarse-clock file systems
    rewritten = reranker.score(*text_query(CAPTIONS[0], [path]))
    np.testing.assert_allclose(rewritten, reranker.score(*text_query(CAPTIONS[0], IMAGES[5:6])), atol=1e-5)


def test_lavis_caption_cleaning_is_applied_to_texts(tiny_dir, reranker):
    assert lavis_caption('  A Dog (brown)  runs!!  "fast".\n') == "a dog brown runs fast"
    assert lavis_caption(" ".join(["w"] * 60)) == " ".join(["w"] * 50)
    lavis = Blip2Reranker(tiny_dir, device="cpu")
    np.testing.assert_allclose(lavis.score(*text_query("A Red Square.", IMAGES)),
                               reranker.score(*text_query("a red square", IMAGES)), atol=1e-6)
    np.testing.assert_allclose(lavis.score(*image_query(IMAGES[0], ["Two dogs: running in the snow!"])),
                               reranker.score(*image_query(IMAGES[0], ["two dogs running in the snow"])), atol=1e-6)


def test_hub_cache_id_loads_the_same_model(tiny_dir, reranker, offline_hub):
    add_to_hub_cache(offline_hub, "tiny-org/tiny-blip2", tiny_dir)
    from_cache = Blip2Reranker("tiny-org/tiny-blip2", device="cpu", text_preprocess="none")
    np.testing.assert_allclose(from_cache.score(*text_query(CAPTIONS[1], IMAGES)),
                               reranker.score(*text_query(CAPTIONS[1], IMAGES)), atol=1e-6)


def test_unreachable_hub_id_offline(offline_hub):
    with pytest.raises(ModelNotAvailableError) as info:
        Blip2Reranker("no-such-org/no-such-blip2", device="cpu")
    assert "no-such-org/no-such-blip2" in str(info.value) and "HF_HUB_OFFLINE" in str(info.value)


def test_config_round_trips(tiny_dir, reranker):
    config = json.loads(json.dumps(reranker.config()))
    assert config == {"method": "blip2", "model_id": str(tiny_dir), "batch_size": 3, "itm": "logit",
                      "max_text_length": 35, "text_preprocess": "none", "revision": None}
    rebuilt = reranker_from_config({**config, "device": "cpu"})
    assert isinstance(rebuilt, Blip2Reranker) and rebuilt.config() == config
    np.testing.assert_allclose(rebuilt.score(*image_query(IMAGES[3], CAPTIONS)),
                               reranker.score(*image_query(IMAGES[3], CAPTIONS)), atol=1e-6)
    probability = create_reranker("blip2", model_id=str(tiny_dir), itm="probability", device="cpu")
    assert reranker_from_config(probability.config()).itm == "probability"


def test_bad_inputs_name_what_is_wrong(tmp_path, tiny_dir, reranker):
    query, cands = text_query(CAPTIONS[0], IMAGES[:2])
    with pytest.raises(ValueError, match=r"Candidates\.items"):
        reranker.score(query, Candidates("image", np.arange(2)))
    with pytest.raises(ValueError, match="both text"):
        reranker.score(query, Candidates("text", np.arange(2), items=CAPTIONS[:2]))
    with pytest.raises(ValueError, match=r"Candidates\.items\[1\] must be a non-empty caption"):
        reranker.score(Query("image", IMAGES[0]), Candidates("text", np.arange(2), items=[CAPTIONS[0], IMAGES[1]]))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        reranker.score(query, Candidates("image", np.arange(2), items=[IMAGES[0], str(broken)]))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        reranker.score(query, Candidates("image", np.arange(1), items=[str(tmp_path / "missing.png")]))
    for kwargs, field in [({"itm": "margin"}, "itm"), ({"batch_size": 0}, "batch_size"),
                          ({"text_preprocess": "blip"}, "text_preprocess"),
                          ({"max_text_length": 500}, "max_text_length"),
                          ({"max_text_length": 1}, "max_text_length"), ({"num_workers": 0}, "num_workers"),
                          ({"precision": "int8"}, "precision"), ({"cache_size": -1}, "cache_size")]:
        with pytest.raises(ValueError, match=field):
            Blip2Reranker(tiny_dir, device="cpu", **kwargs)
    with pytest.raises(TypeError, match="temperature"):
        Blip2Reranker(tiny_dir, device="cpu", temperature=2.0)


def test_settings_are_checked_before_anything_loads():
    """A typo in a saved retriever's reranker config fails on the setting, not on a download."""
    with pytest.raises(ValueError, match="itm must be one of"):
        Blip2Reranker("no-such-org/no-such-blip2", device="cpu", itm="margin")
    assert Blip2Config(model_id=Path("some/dir")).model_id == os.fspath(Path("some/dir"))


def test_rejects_checkpoints_that_are_not_blip2_retrieval(tmp_path):
    clip = save_tiny_transformers_clip(tmp_path / "clip")
    with pytest.raises(ValueError, match="'clip' checkpoint"):
        Blip2Reranker(clip, device="cpu")


def test_fp16_runs_under_autocast(tiny_dir, reranker):
    """The CUDA default (fp16 autocast) exercised on CPU: same code, only the device differs."""
    half = Blip2Reranker(tiny_dir, device="cpu", precision="fp16", text_preprocess="none")
    got = half.score(*text_query(CAPTIONS[1], IMAGES))
    assert got.dtype == np.float32
    assert half.cache.get(PendingImage(IMAGES[0], 0).key)[0].dtype == torch.float16  # cached ViT features
    np.testing.assert_allclose(got, reranker.score(*text_query(CAPTIONS[1], IMAGES)), atol=0.02)
