"""The offline cross-encoder: head algebra, reranker behaviour, loading, the shipped weights."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from common.hub import ModelNotAvailableError
from conftest import FLICKR8K
from hub_cache import add_to_hub_cache
from rerank import Candidates, Query, create_reranker, reranker_from_config
from rerank.cross_encoder import (
    CONFIG_NAME, FORMAT_VERSION, WEIGHTS_DIR, WEIGHTS_NAME, CrossEncoderHead, CrossEncoderReranker, HeadConfig,
    HeadEnsemble, cat_states,
)
from eval.cross_encoder_training import (
    TrainOptions, ensemble_heads, hard_fraction_at, prepare, recall_from, rerank_scores, sample_groups, save_model,
    subset, train, training_record, validation_images,
)

TINY = {"features": "tuned", "image_dim": 320, "text_dim": 384, "dim": 16, "heads": 2, "mlp_ratio": 2, "dropout": 0.0}


def on_shipped_lite(config: dict) -> dict:
    """A tiny head config whose image tokens fit the shipped lite model (tuned-feature channels, token count)."""
    from common.lite_model import load_lite_model
    from rerank.cross_encoder import LiteTokenFeatures

    lite = load_lite_model()
    side = -(-lite.config["image_size"] // 32)  # EfficientNet's output stride
    return {**config, "image_dim": LiteTokenFeatures(lite, torch.device("cpu"), "tuned").image_dim,
            "image_tokens": side * side}


def tiny_head(seed: int = 0, attention: str = "t2i", config: dict | None = None) -> CrossEncoderHead:
    torch.manual_seed(seed)
    head = CrossEncoderHead(**(config or TINY), attention=attention)
    for p in head.parameters():  # the default init leaves positions at zero; make every part matter
        torch.nn.init.normal_(p, std=0.3)
    return head.eval()


def save_head(head: CrossEncoderHead, directory: Path) -> Path:
    from safetensors.torch import save_file

    directory.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(directory / WEIGHTS_NAME))
    config = {"format_version": FORMAT_VERSION, "model_type": "lite-cross-encoder", "head": head.config,
              "encoder": None}
    (directory / CONFIG_NAME).write_text(json.dumps(config))
    return directory


@pytest.mark.parametrize("attention", ["t2i", "i2t"])
@torch.no_grad()
def test_pair_scores_do_not_depend_on_padding_or_batch_mates(attention):
    head = tiny_head(attention=attention)
    tokens, img_tokens = torch.randn(3, 6, 384), torch.randn(3, 49, 320)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
    t_emb, i_emb = torch.randn(3, 256), torch.randn(3, 256)
    texts, images = head.prepare_texts(tokens, mask, t_emb), head.prepare_images(img_tokens, i_emb)
    together = head.pair_scores(texts, images)
    for j in range(3):
        n = int(mask[j].sum())
        alone = head.pair_scores(head.prepare_texts(tokens[j:j + 1, :n], mask[j:j + 1, :n], t_emb[j:j + 1]),
                                 images[[j]])
        assert torch.allclose(alone, together[j:j + 1], atol=1e-5)
    # cat_states pads shorter captions back to a common length without changing scores
    parts = [head.prepare_texts(tokens[j:j + 1, :int(mask[j].sum())], mask[j:j + 1, :int(mask[j].sum())],
                                t_emb[j:j + 1]) for j in range(3)]
    assert torch.allclose(head.pair_scores(cat_states(parts), images), together, atol=1e-5)
    # padded caption tokens change nothing, whichever side attends
    noisy = tokens.clone()
    noisy[mask == 0] = 100.0
    assert torch.allclose(head.pair_scores(head.prepare_texts(noisy, mask, t_emb), images), together, atol=1e-4)
    # the ITC term is exactly itc_scale * cosine
    cos = torch.nn.functional.cosine_similarity(t_emb, i_emb)
    head.itc_scale.add_(5.0)
    assert torch.allclose(head.pair_scores(texts, images) - together, 5.0 * cos, atol=1e-4)


@torch.no_grad()
def test_ensemble_is_the_sum_of_member_logits_plus_one_itc_term(tmp_path, images):
    t2i, i2t = tiny_head(0, "t2i"), tiny_head(1, "i2t")
    ensemble = HeadEnsemble([t2i, i2t], itc_scale=3.0).eval()
    tokens, img_tokens = torch.randn(3, 5, 384), torch.randn(3, 49, 320)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    t_emb, i_emb = torch.randn(3, 256), torch.randn(3, 256)
    texts, imgs = ensemble.prepare_texts(tokens, mask, t_emb), ensemble.prepare_images(img_tokens, i_emb)
    expected = sum(h.match_logits(h.prepare_texts(tokens, mask, t_emb), h.prepare_images(img_tokens, i_emb))
                   for h in (t2i, i2t)) + 3.0 * torch.nn.functional.cosine_similarity(t_emb, i_emb)
    scores = ensemble.pair_scores(texts, imgs)
    assert torch.allclose(scores, expected, atol=1e-4)
    parts = [ensemble.prepare_texts(tokens[j:j + 1], mask[j:j + 1], t_emb[j:j + 1]).trim(int(mask[j].sum()))
             for j in range(3)]
    assert torch.allclose(ensemble.pair_scores(cat_states(parts), imgs), scores, atol=1e-4)
    # saved and loaded as one reranker; its cache and batching keep scores unchanged
    reranker = CrossEncoderReranker(save_head(ensemble, tmp_path / "ensemble"), device="cpu", batch_size=2)
    assert isinstance(reranker.head, HeadEnsemble) and len(reranker.head.members) == 2
    query = Query("text", "a dog in a park")
    first = reranker.score(query, Candidates("image", np.arange(4), items=images))
    reranker.forget(query)
    batch = reranker.score_batch([Query("text", "two children play"), query],
                                 [Candidates("image", np.arange(4), items=images)] * 2)
    assert np.allclose(batch[1], first, atol=1e-5)
    with pytest.raises(ValueError, match="same features"):
        HeadEnsemble([t2i, CrossEncoderHead(**{**TINY, "features": "frozen", "image_dim": 192})], 1.0)


def test_attention_direction_is_checked():
    with pytest.raises(ValueError, match="attention must be one of"):
        CrossEncoderHead(**TINY, attention="both")


@pytest.mark.parametrize("hard_fraction", [0.0, 0.5, 1.0])
def test_training_groups_put_the_positive_first_and_draw_the_hard_share_from_stage1(hard_fraction):
    rng = np.random.default_rng(0)
    n_items, group, negatives_from = 200, 9, 12
    positives = [np.array([q, (q + 1) % n_items]) for q in range(n_items)]
    ranked = np.stack([rng.permutation(n_items) for _ in range(n_items)])
    queries = np.arange(0, n_items, 7)
    groups = sample_groups(rng, queries, positives, ranked, group, negatives_from, n_items, hard_fraction)
    n_hard = round((group - 1) * hard_fraction)
    for row, q in zip(groups, queries):
        assert row[0] in positives[q] and not np.isin(row[1:], positives[q]).any()
        assert np.isin(row[1:1 + n_hard], ranked[q, :negatives_from]).all()


@torch.no_grad()
def test_validation_scores_fuse_like_the_head_and_recall_follows_the_fused_ranking():
    """Heads and ensembles are chosen on these numbers, so they must be what the reranker would score."""
    head = tiny_head(2, "i2t")
    n_img, caps_per_img, k = 6, 2, 3
    owner = np.repeat(np.arange(n_img), caps_per_img)
    mask = torch.ones(n_img * caps_per_img, 4, dtype=torch.long)
    mask[::3, 2:] = 0
    feats = {"image_tokens": torch.randn(n_img, 49, 320), "image_embedding": torch.randn(n_img, 256),
             "text_tokens": torch.randn(len(owner), 4, 384), "text_mask": mask,
             "text_embedding": torch.randn(len(owner), 256)}
    rng = np.random.default_rng(0)
    t2i = np.stack([rng.permutation(n_img)[:k] for _ in owner])
    i2t = np.stack([rng.permutation(len(owner))[:k] for _ in range(n_img)])
    parts = rerank_scores(head, feats, np.arange(n_img), np.arange(len(owner)), t2i, i2t)
    images, texts = prepare(head, feats, np.arange(n_img), np.arange(len(owner)))
    head.itc_scale.fill_(4.0)
    match, cosine = parts["t2i"]
    for q in (0, 5):
        expected = head.pair_scores(texts[[q] * k], images[t2i[q]]).numpy()
        np.testing.assert_allclose(match[q] + 4.0 * cosine[q], expected, atol=1e-4)
    # R@1 is the share of captions whose best fused candidate is their own image
    recall = recall_from(parts, t2i, i2t, len(owner), n_img, owner, 4.0)
    top = t2i[np.arange(len(owner)), np.argmax(match + 4.0 * cosine, axis=1)]
    assert 0 < recall["image_retrieval_recall@1"] == pytest.approx(np.mean(top == owner))


def test_hard_fraction_ramps_linearly_to_its_end_value():
    ramp = hard_fraction_at
    assert [ramp(s, 100, 0.5, None) for s in (1, 100)] == [0.5, 0.5]
    assert ramp(50, 100, 0.5, 0.9) == pytest.approx(0.7) and ramp(100, 100, 0.5, 0.9) == pytest.approx(0.9)


@pytest.mark.parametrize("bad, match", [({"warmup_steps": 0}, "warmup_steps"), ({"group": 1}, "group"),
                                        ({"hard_fraction_end": 1.5}, "hard_fraction_end"),
                                        ({"attention": "both"}, "attention"), ({"features": "raw"}, "features")])
def test_training_options_name_a_bad_setting(bad, match):
    with pytest.raises(ValueError, match=match):
        TrainOptions(**bad)


def test_head_config_defaults_are_the_shipped_members_architecture_and_bad_values_are_named():
    shipped = json.loads((WEIGHTS_DIR / CONFIG_NAME).read_text())["head"]["members"]
    default = asdict(HeadConfig())
    for member in shipped:  # everything but what training chose (direction, ITC start) is the default
        assert {k: v for k, v in member.items() if k not in ("attention", "init_itc_scale")} == \
            {k: v for k, v in default.items() if k not in ("attention", "init_itc_scale")}
    assert HeadConfig(features="tuned").image_dim == 320
    for bad, match in [({"dim": 10, "heads": 4}, "divisible"), ({"dropout": 1.0}, "dropout"),
                       ({"image_tokens": 0}, "image_tokens"), ({"features": "raw"}, "features")]:
        with pytest.raises(ValueError, match=match):
            HeadConfig(**bad)
    with pytest.raises(ValueError, match="unknown cross-encoder settings"):
        CrossEncoderHead(width=3)


def test_training_keeps_the_best_validation_checkpoint_and_an_ensemble_of_saved_heads_reloads(tmp_path):
    """The whole loop on random features: a few steps, two evaluations, the saved head and ensemble load back."""
    from rerank.cross_encoder import load_head

    torch.manual_seed(0)
    n_img, caps_per_img = 24, 2
    owner = np.repeat(np.arange(n_img), caps_per_img)
    feats = {"image_tokens": torch.randn(n_img, 49, 320), "image_embedding": torch.randn(n_img, 256),
             "text_tokens": torch.randn(len(owner), 5, 384), "text_mask": torch.ones(len(owner), 5, dtype=torch.long),
             "text_embedding": torch.randn(len(owner), 256)}
    options = TrainOptions(val_images=8, bits=8, candidates=6, negatives_from=4, group=4, batch_size=4, steps=3,
                           warmup_steps=1, eval_every=2, dim=16, heads=2, dropout=0.0, progress=False)
    val_images, fit_images = validation_images(n_img, options.val_images)
    assert len(val_images) == 8 and not np.isin(val_images, fit_images).any()
    val = subset(feats, owner, val_images, options, float_sorted=False)
    fit = subset(feats, owner, fit_images, options, float_sorted=True)
    assert (owner[val.captions] == val.images[val.owner]).all() and fit.t2i.shape == (len(fit.captions), 6)
    head = CrossEncoderHead(**{**TINY, "dim": 16, "heads": 2})
    result = train(head, feats, fit, val, options)
    assert [h["step"] for h in result.history] == [2, 3]
    best = max(result.history, key=lambda h: h["image_retrieval_recall@1"] + h["text_retrieval_recall@1"])
    assert result.best == best and float(result.state["itc_scale"]) == best["itc_scale"]
    record = training_record(options, result)
    assert record["steps"] == 3 and record["best"] == best
    for name in ("a", "b"):
        save_model(tmp_path / name, result.state, {**head.config, "init_itc_scale": best["itc_scale"]}, record, {})
    loaded, config = load_head(tmp_path / "a")
    assert float(loaded.itc_scale.detach()) == best["itc_scale"] and config["training"]["history"] == result.history
    ensemble = ensemble_heads([tmp_path / "a", tmp_path / "b"], feats, val)
    assert len(ensemble.ensemble.members) == 2 and len(ensemble.training["members"]) == 2
    assert float(ensemble.ensemble.itc_scale) == ensemble.itc_scale


@pytest.fixture(scope="module")
def reranker(tmp_path_factory) -> CrossEncoderReranker:
    directory = save_head(tiny_head(config=on_shipped_lite(TINY)), tmp_path_factory.mktemp("head") / "cross")
    torch.set_num_threads(1)
    return CrossEncoderReranker(directory, device="cpu", batch_size=2)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for i in range(4):
        path = tmp_path_factory.mktemp("img") / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(path)
        out.append(str(path))
    return out


CAPTIONS = ["a dog runs on the grass", "two children play football", "a red car", "a man climbs a rock"]


def test_scores_are_invariant_to_order_batching_and_caching(reranker, images):
    query = Query("text", "a dog in a park")
    first = reranker.score(query, Candidates("image", np.arange(4), items=images))
    assert first.shape == (4,) and first.dtype == np.float32 and np.isfinite(first).all()
    perm = np.array([2, 0, 3, 1])
    again = reranker.score(query, Candidates("image", perm, items=[images[i] for i in perm]))
    assert np.allclose(again, first[perm], atol=1e-5)  # cached states, other order
    reranker.cache = type(reranker.cache)(0)  # no cache at all
    reranker.batch_size = 3
    assert np.allclose(reranker.score(query, Candidates("image", np.arange(4), items=images)), first, atol=1e-5)
    reranker.cache = type(reranker.cache)(100)
    reranker.batch_size = 2


def test_forget_drops_the_query_features_only(reranker, images):
    query = Query("text", "a cat on a sofa")
    reranker.score(query, Candidates("image", np.arange(4), items=images))
    size = len(reranker.cache)
    reranker.forget(query)
    assert len(reranker.cache) == size - 1  # the gallery images stay cached
    assert reranker.cache.get(("text", "a cat on a sofa")) is None


def test_image_query_scores_captions_consistently_with_text_queries(reranker, images):
    by_image = reranker.score(Query("image", images[1]), Candidates("text", np.arange(4), items=CAPTIONS))
    by_text = [reranker.score(Query("text", c), Candidates("image", np.array([7]), items=[images[1]]))[0]
               for c in CAPTIONS]
    assert np.allclose(by_image, by_text, atol=1e-4)  # one pair, one score, whichever side asks
    batch = reranker.score_batch([Query("image", images[1]), Query("text", CAPTIONS[0])],
                                 [Candidates("text", np.arange(4), items=CAPTIONS),
                                  Candidates("image", np.arange(4), items=images)])
    assert np.allclose(batch[0], by_image, atol=1e-5)


def test_bad_input_names_what_is_missing(reranker, images):
    with pytest.raises(ValueError, match="items"):
        reranker.score(Query("text", "a dog"), Candidates("image", np.arange(2)))
    with pytest.raises(ValueError, match="both text"):
        reranker.score(Query("text", "a dog"), Candidates("text", np.arange(1), items=["x"]))
    with pytest.raises(ValueError, match="query itself"):
        reranker.score(Query("text", None, np.ones(256)), Candidates("image", np.arange(1), items=images[:1]))
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        reranker.score(Query("image", images[0]), Candidates("text", np.arange(2), items=["ok", " "]))


def test_loads_from_a_dir_and_a_local_hub_cache(tmp_path, offline_hub):
    directory = save_head(tiny_head(1, config=on_shipped_lite(TINY)), tmp_path / "cross")
    add_to_hub_cache(offline_hub, "someone/lite-cross", directory)
    a = CrossEncoderReranker("someone/lite-cross", device="cpu")
    assert a.config()["model_id"] == "someone/lite-cross"
    b = reranker_from_config(a.config())
    for pa, pb in zip(a.head.state_dict().values(), b.head.state_dict().values()):
        assert torch.equal(pa, pb)
    with pytest.raises(ModelNotAvailableError):
        CrossEncoderReranker("someone/not-cached", device="cpu")
    (directory / CONFIG_NAME).write_text(json.dumps({"format_version": 99}))
    with pytest.raises(ValueError, match="format_version"):
        CrossEncoderReranker(directory, device="cpu")


@pytest.mark.data
def test_shipped_cross_encoder_prefers_the_true_caption():
    """On a few Flickr8K test images, the trained head ranks each image's own caption first among 8."""
    from eval.karpathy import load_karpathy

    assert (WEIGHTS_DIR / WEIGHTS_NAME).is_file()
    ds = load_karpathy(FLICKR8K / "dataset_flickr8k.json", FLICKR8K / "images", "test").subset(8)
    reranker = create_reranker("cross", device="cpu")
    captions = [ds.captions[int(np.flatnonzero(ds.caption_image == i)[0])] for i in range(8)]
    top = [int(np.argmax(reranker.score(Query("image", str(ds.image_paths[i])),
                                        Candidates("text", np.arange(8), items=captions)))) for i in range(8)]
    assert np.mean(np.array(top) == np.arange(8)) >= 0.75


def test_a_head_refuses_lite_features_it_was_not_trained_on(tmp_path):
    """A frozen-feature head reads one tower's trunk at one split; another lite model must be an error, not noise."""
    from common.lite_model import load_lite_model
    from rerank.cross_encoder import LEGACY_FEATURE_SOURCE, lite_feature_source

    lite = load_lite_model()
    head = CrossEncoderHead(**{**on_shipped_lite(TINY), "features": "frozen", "image_dim": lite.image_trunk_channels})
    directory = save_head(head, tmp_path / "cross")
    config = json.loads((directory / CONFIG_NAME).read_text())
    for source, ok in ((lite_feature_source(lite), True), ({**lite_feature_source(lite), "text_split": 3}, False),
                       ({**LEGACY_FEATURE_SOURCE, "image_tower": "efficientnet_lite2"}, False)):
        (directory / CONFIG_NAME).write_text(json.dumps({**config, "lite_features": source}))
        if ok:
            CrossEncoderReranker(directory, device="cpu", lite_model=lite)
        else:
            with pytest.raises(ValueError, match="retrain it"):
                CrossEncoderReranker(directory, device="cpu", lite_model=lite)
