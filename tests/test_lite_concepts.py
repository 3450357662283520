"""The lite encoder's ImageNet concepts (issue 23) and the open-vocabulary development set."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from common.lite_concepts import (CONCEPTS_FILE, PROMPTS, center_concepts, flickr8k_gate, imagenet_synonyms,
                                  load_class_prior, load_concepts, load_gate_bank, reweight_by_prior, save_concepts)
from common.lite_model import WEIGHTS_DIR, load_lite_model, read_config
from eval.concept_dev import DEV_SET, load_dev_set, ranks_of_right


OPT_IN_WEIGHT = read_config(WEIGHTS_DIR)["concept_weight_opt_in"]


@pytest.fixture(scope="module")
def model():
    """The lite model with the concepts on, as ``load_encoder("lite")`` (and ``"lite:concepts"``) runs it."""
    return load_lite_model(concept_weight=OPT_IN_WEIGHT)


def skimage_photo(name: str) -> Image.Image:
    data = pytest.importorskip("skimage.data")
    return Image.fromarray(getattr(data, name)())


def test_shipped_default_has_the_concepts_on_and_weight_0_turns_them_off(model):
    assert model.concept_weight == OPT_IN_WEIGHT > 0
    assert read_config(WEIGHTS_DIR)["concept_weight"] == OPT_IN_WEIGHT  # the default "lite" since session 10
    assert model.concept_embeddings.shape == (1000, model.config["embed_dim"])
    assert model.concept_gate_bank.shape[1] == model.config["embed_dim"] and model.config["concept_gate"] > 0
    off = load_lite_model(concept_weight=0)
    assert off.concept_weight == 0  # the Flickr8K heads alone: the lite model before issue 23
    assert off.concept_embeddings.shape[0] == 0 and off.concept_gate_bank.shape[0] == 0  # nothing loaded
    pixels = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        head = off.image_features(pixels)
        torch.testing.assert_close(head, model.image_head_features(pixels))
        mixed = F.normalize(model.image_features(pixels), dim=-1)
    assert F.cosine_similarity(mixed, F.normalize(head, dim=-1)).max() < 0.9999


def test_concept_embedding_keeps_only_the_top_k_classes(model):
    """With identity class embeddings the concept vector is the classifier's probabilities, masked to the top k."""
    pooled = torch.randn(3, model.image_tower.num_features)
    saved = model.concept_embeddings, model.concept_top_k
    try:
        model.concept_embeddings = torch.eye(1000)
        with torch.inference_mode():
            probs = model.image_tower.imagenet_classifier(pooled).softmax(-1)
            for k in (1, 3, 10):
                model.concept_top_k = k
                out = model.concept_embedding(pooled)
                assert ((out > 0).sum(-1) == k).all()
                top = probs.topk(k, dim=-1)
                torch.testing.assert_close(out.gather(1, top.indices), top.values)
    finally:
        model.concept_embeddings, model.concept_top_k = saved


def test_gate_keeps_concepts_off_photos_the_head_already_has_captions_for():
    """flickr8k_gate: sigmoid((centre - best cosine to the bank) / temperature), per image."""
    torch.manual_seed(0)
    bank = F.normalize(torch.randn(5, 16), dim=-1)
    far = F.normalize(-bank.sum(0, keepdim=True), dim=-1)  # opposite every bank row on average
    heads = torch.cat([bank[:1], F.normalize(bank[:1] + far, dim=-1), far])
    gate = flickr8k_gate(heads, bank, 0.45, 0.05).ravel()
    torch.testing.assert_close(gate, torch.sigmoid((0.45 - (heads @ bank.T).max(-1).values) / 0.05))
    assert gate[0] < 1e-4  # its caption is in the bank: the head has words for it
    assert gate[2] > 0.99  # nothing in the bank is near: the concepts speak


def test_gated_model_adds_concepts_only_where_the_gate_opens(model, tmp_path):
    """concept_gate > 0: an image whose head sits on a bank caption keeps its head embedding; the bank
    loads from concepts.safetensors and a file without one fails clearly."""
    from common.lite_model import image_transform

    pixels = torch.stack([image_transform(model.config)(skimage_photo(n)) for n in ("chelsea", "coffee")])
    saved_config, saved_bank = model.config, model.concept_gate_bank
    try:
        with torch.inference_mode():
            head = F.normalize(model.image_head_features(pixels), dim=-1)
            model.config = {**saved_config, "concept_gate": 0.5, "concept_gate_temperature": 0.01}
            model.concept_gate_bank = head[:1].clone()  # image 0's head is in the bank, image 1's is not
            out = model.image_features(pixels)
            pooled = model.image_tower.forward_features(pixels).mean((2, 3))
            gate = torch.sigmoid((0.5 - head @ head[0]) / 0.01)[:, None]
            expected = head + model.concept_weight * gate * model.concept_embedding(pooled)
        torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)
        torch.testing.assert_close(out[0], head[0], atol=1e-4, rtol=0)  # on a bank caption: the head alone
        assert gate[1] > 0.5 and (out[1] - head[1]).norm() > 0.05  # the coffee is far from the cat: concepts added
        model.concept_gate_bank = torch.zeros(0, head.shape[1])
        with pytest.raises(RuntimeError, match="caption bank"):
            model.image_features(pixels)
    finally:
        model.config, model.concept_gate_bank = saved_config, saved_bank
    for name in ("config.json", "model.safetensors"):
        shutil.copy(WEIGHTS_DIR / name, tmp_path / name)
    config = json.loads((tmp_path / "config.json").read_text())
    emb = F.normalize(torch.randn(1000, 256), dim=-1)
    save_concepts(tmp_path, emb, prior=torch.full((1000,), 1e-3))
    (tmp_path / "config.json").write_text(json.dumps({**config, "concept_gate": 0.45}))
    with pytest.raises(ValueError, match="gate_bank"):
        load_lite_model(tmp_path, concept_weight=1.0)
    bank = F.normalize(torch.randn(7, 256), dim=-1)
    save_concepts(tmp_path, emb, prior=torch.full((1000,), 1e-3), gate_bank=bank)
    torch.testing.assert_close(load_gate_bank(tmp_path, 256), bank, atol=2e-3, rtol=0)
    torch.testing.assert_close(load_lite_model(tmp_path, concept_weight=1.0).concept_gate_bank, bank, atol=2e-3, rtol=0)
    with pytest.raises(ValueError, match="gate bank"):
        save_concepts(tmp_path, emb, gate_bank=torch.zeros(3, 8))
    for key, bad in (("concept_gate", 1.5), ("concept_gate", True), ("concept_gate_temperature", 0),
                     ("concept_gate_temperature", float("inf"))):
        (tmp_path / "config.json").write_text(json.dumps({**config, key: bad}))
        with pytest.raises(ValueError, match=key):
            load_lite_model(tmp_path)


def test_classifier_and_class_names_share_one_order(model):
    """The pip checkpoint's 1000-way head and timm's names line up: scikit-image's cat photo is a cat."""
    from common.lite_model import image_transform

    pixels = image_transform(model.config)(skimage_photo("chelsea"))[None]
    with torch.inference_mode():
        top = model.image_tower.imagenet_classifier(model.image_tower.forward_features(pixels).mean((2, 3))).argmax()
    assert "cat" in " ".join(imagenet_synonyms()[int(top)])


def test_shipped_concepts_are_the_prompts_of_their_class(model):
    """Row 281 of the shipped matrix is the mean of 'tabby' / 'tabby cat' prompts through this text side."""
    names = imagenet_synonyms()[281]
    assert names == ["tabby", "tabby cat"]
    texts = [p.format(n) for n in names for p in PROMPTS]
    tok = model.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        expected = F.normalize(F.normalize(model.text_features(tok["input_ids"], tok["attention_mask"]), dim=-1).sum(0), dim=0)
    saved = load_concepts(WEIGHTS_DIR, model.config["embed_dim"])  # as built; the model may use them centred
    assert float(saved[281] @ expected) > 0.999
    assert float(saved[504] @ expected) < 0.9  # coffee mug is elsewhere


def test_centred_concepts_keep_what_tells_classes_apart(model):
    """concept_center: the shared direction of the class prompts is taken out, each row stays unit length."""
    saved = load_concepts(WEIGHTS_DIR, model.config["embed_dim"])
    centred = center_concepts(saved)
    torch.testing.assert_close(centred.norm(dim=-1), torch.ones(1000))
    off_diagonal = ~torch.eye(1000, dtype=torch.bool)
    assert (centred @ centred.T)[off_diagonal].mean() < 0.05 < 0.2 < (saved @ saved.T)[off_diagonal].mean()
    # the nearest classes stay the nearest: tabby's neighbours are cats before and after
    assert set((saved @ saved[281]).topk(3).indices.tolist()) == set((centred @ centred[281]).topk(3).indices.tolist())
    expected = centred if model.config["concept_center"] else saved
    if model.config["concept_prior"] > 0:
        expected = reweight_by_prior(expected, load_class_prior(WEIGHTS_DIR), model.config["concept_prior"])
    torch.testing.assert_close(model.concept_embeddings, expected)
    with pytest.raises(ValueError, match="n_classes"):
        center_concepts(torch.ones(1, 8))


def test_classes_flickr8k_shows_often_weigh_less():
    """concept_prior: the shipped prior is a distribution in which Flickr8K's dogs outweigh an espresso,
    and a class's embedding shrinks by 1 / (1 + strength * 1000 * prior)."""
    prior = load_class_prior(WEIGHTS_DIR)
    assert prior.min() >= 0 and abs(float(prior.sum()) - 1) < 1e-4
    border_collie, espresso = 232, 967
    assert imagenet_synonyms()[border_collie] == ["Border collie"] and imagenet_synonyms()[espresso] == ["espresso"]
    assert prior[espresso] < 1e-3 < prior[border_collie]
    emb = F.normalize(torch.randn(1000, 8), dim=-1)
    flat = torch.zeros(1000)
    flat[:2] = torch.tensor([0.0, 1e-3])
    out = reweight_by_prior(emb, flat, 1.0)
    torch.testing.assert_close(out[0], emb[0])  # never seen: kept whole
    torch.testing.assert_close(out[1], emb[1] / 2)  # at the average rate (1 / 1000), halved at strength 1
    torch.testing.assert_close(reweight_by_prior(emb, flat, 0.0), emb)
    for bad in (torch.zeros(999), torch.full((1000,), -1.0), torch.full((1000,), float("nan"))):
        with pytest.raises(ValueError, match="class prior"):
            reweight_by_prior(emb, bad, 1.0)


def test_plain_queries_find_imagenet_objects(model):
    """What the concepts are for: plain queries find ImageNet objects in photos outside Flickr8K."""
    from retrieval import load_encoder

    encoder = load_encoder("lite", device="cpu")  # the default has them since issue 23's gate
    assert encoder.model_id == "lite"
    data = pytest.importorskip("skimage.data")
    photos = [data.chelsea(), data.coffee(), data.stereo_motorcycle()[0], data.astronaut()]
    images = encoder.encode_images([Image.fromarray(p) for p in photos])
    texts = encoder.encode_texts(["a cat", "a cup of coffee", "a motorcycle"])
    assert ((texts @ images.T).argmax(1) == [0, 1, 2]).all()


def test_heads_id_gives_the_vectors_before_the_concepts():
    """``lite:heads``: the Flickr8K heads alone (concept_weight 0), its own id for caches and stores."""
    from retrieval import load_encoder

    heads = load_encoder("lite:heads", device="cpu")
    assert heads.model_id == "lite:heads" and heads.config["concept_weight"] == 0
    assert load_encoder("lite", device="cpu").config["concept_weight"] == OPT_IN_WEIGHT
    from retrieval.encoders import LiteEncoder

    with pytest.raises(ValueError, match="contradict"):
        LiteEncoder(device="cpu", concepts=True, heads=True)


def test_concept_files_fail_clearly(tmp_path):
    for name in ("config.json", "model.safetensors"):
        shutil.copy(WEIGHTS_DIR / name, tmp_path / name)
    with pytest.raises(FileNotFoundError, match=CONCEPTS_FILE):
        load_lite_model(tmp_path, concept_weight=OPT_IN_WEIGHT)
    save_concepts(tmp_path, torch.zeros(1000, 8))
    with pytest.raises(ValueError, match=r"\(1000, 256\)"):
        load_concepts(tmp_path, 256)
    with pytest.raises(ValueError, match=r"\(1000, dim\)"):
        save_concepts(tmp_path, torch.zeros(10, 256))
    emb = F.normalize(torch.randn(1000, 256), dim=-1)
    save_concepts(tmp_path, emb)
    torch.testing.assert_close(load_concepts(tmp_path, 256), emb, atol=1e-3, rtol=0)
    config = json.loads((tmp_path / "config.json").read_text())
    for bad, match in ((-0.5, "concept_weight"), (True, "concept_weight"), (float("nan"), "concept_weight")):
        (tmp_path / "config.json").write_text(json.dumps({**config, "concept_weight": bad}))
        with pytest.raises(ValueError, match=match):
            load_lite_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "concept_top_k": 0}))
    with pytest.raises(ValueError, match="concept_top_k"):
        load_lite_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "concept_center": "yes"}))
    with pytest.raises(ValueError, match="concept_center"):
        load_lite_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "concept_prior": -1}))
    with pytest.raises(ValueError, match="concept_prior"):
        load_lite_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "concept_prior": 1.0}))
    with pytest.raises(ValueError, match="class_prior"):  # the file saved above has no prior
        load_lite_model(tmp_path, concept_weight=OPT_IN_WEIGHT)


def test_rank_of_the_best_right_photo_counts_ties_against_the_query():
    scores = np.array([[0.9, 0.1, 0.5, 0.2],
                       [0.3, 0.8, 0.8, 0.1],
                       [0.1, 0.2, 0.7, 0.9]])
    ranks = ranks_of_right(scores, [[0], [2], [1, 2]])
    assert ranks.tolist() == [1, 2, 2]
    with pytest.raises(ValueError, match="n_queries=2"):
        ranks_of_right(scores, [[0], [1]])


def test_dev_set_names_real_photos_and_fails_clearly(tmp_path):
    spec = json.loads(DEV_SET.read_text())
    named = {r for q in spec["queries"] for r in q["right"]}
    assert named <= set(spec["gallery"]) and len(spec["queries"]) >= 20
    assert all("licence" in s and "package" in s for s in spec["sources"].values())
    elsewhere = {**spec["sources"], "mate": {**spec["sources"]["mate"], "directory": str(tmp_path)}}
    (tmp_path / "missing.json").write_text(json.dumps({**spec, "sources": elsewhere}))
    with pytest.raises(FileNotFoundError, match="mate-backgrounds"):
        load_dev_set(tmp_path / "missing.json")
    pytest.importorskip("skimage")
    if not Path(spec["sources"]["mate"]["directory"]).is_dir():
        pytest.skip("mate-backgrounds (Debian) is not installed")
    (tmp_path / "bad.json").write_text(json.dumps({**spec, "queries": [{"text": "a cat", "right": ["skimage:none.png"]}]}))
    with pytest.raises(ValueError, match="none.png"):
        load_dev_set(tmp_path / "bad.json")
    dev = load_dev_set()
    assert len(dev.paths) == len(spec["gallery"]) and all(p.is_file() for p in dev.paths)


def test_concepts_and_heads_alone_get_different_onnx_graphs():
    """The per-user ONNX cache keys on the concept setting, so lite (concepts on) never runs lite:heads' graphs."""
    from retrieval.encoders.onnx_cache import graphs_key

    config = read_config(WEIGHTS_DIR)
    heads = graphs_key(WEIGHTS_DIR, {**config, "concept_weight": 0.0}, False)
    on = graphs_key(WEIGHTS_DIR, config, False)
    assert heads != on
    assert on == graphs_key(WEIGHTS_DIR, {**config, "concept_weight": OPT_IN_WEIGHT}, False)  # lite:concepts


def test_lite_concepts_refuses_weights_without_a_chosen_weight(tmp_path):
    from retrieval import load_encoder

    for name in ("model.safetensors", "config.json"):
        shutil.copy(WEIGHTS_DIR / name, tmp_path / name)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["concept_weight_opt_in"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    from retrieval.encoders.lite import LiteEncoder

    with pytest.raises(ValueError, match="concept_weight_opt_in"):
        LiteEncoder(tmp_path, device="cpu", concepts=True)
    with pytest.raises(ValueError, match="int8"):
        load_encoder("lite:concepts", int8=True)


def test_padded_held_out_recall_queries_only_the_held_out_images():
    """The sweep's protocol: the first n_val images (and their captions) query; the padding only distracts."""
    from eval.concept_dev import padded_held_out_rsum, softmax_top_k

    images = np.eye(6, dtype=np.float32)[:4]  # 2 held-out images, 2 padding images
    owner = np.array([0, 0, 1, 1, 2, 3])
    texts = images[owner].copy()
    assert padded_held_out_rsum(images, texts, owner, 2)["rsum"] == pytest.approx(600)
    texts[4:] = -images[owner[4:]]  # the padding's captions point away from their images: never queried
    assert padded_held_out_rsum(images, texts, owner, 2)["rsum"] == pytest.approx(600)
    texts[2:4] = images[0]  # image 1's captions now describe image 0
    out = padded_held_out_rsum(images, texts, owner, 2)
    assert out["image_retrieval_recall@1"] == pytest.approx(0.5)  # captions 2, 3 find image 0 first
    # image 0: its 2 captions tie with captions 2, 3 (R@1 1/2); image 1: all 6 captions tie at 0 (2/6)
    assert out["text_retrieval_recall@1"] == pytest.approx((1 / 2 + 2 / 6) / 2)
    p = softmax_top_k(np.array([[3.0, 2.0, 1.0, 0.0]]), 2)
    assert (p[0, 2:] == 0).all() and 0 < p.sum() < 1 and p[0, 0] > p[0, 1]


def test_explain_names_what_the_tower_sees_in_the_right_and_the_first_photo():
    """--explain's per-query view: the right photo's top ImageNet class, its probability and the gate."""
    from eval.concept_dev import explain_concepts

    pytest.importorskip("skimage")
    if not Path(json.loads(DEV_SET.read_text())["sources"]["mate"]["directory"]).is_dir():
        pytest.skip("mate-backgrounds (Debian) is not installed")
    dev = load_dev_set()
    coffee, cat = dev.queries.index("a cup of coffee"), dev.queries.index("a cat")
    first = [0] * len(dev.queries)
    first[cat] = dev.right[coffee][0]  # as if the coffee photo had been ranked first for "a cat"
    explained = explain_concepts(dev, first)
    assert [e["query"] for e in explained] == dev.queries
    right = explained[coffee]["right"]
    assert right["photo"] == dev.names[dev.right[coffee][0]] and right["class"] == "espresso" and right["p"] > 0.5
    assert explained[cat]["first"] == right and 0 < right["gate"] <= 1
