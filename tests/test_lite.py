"""The embedded lite encoder: shipped weights, preprocessing, the training script's fast path."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FLICKR8K
from retrieval import load_encoder
from common.lite_model import WEIGHTS_DIR
from retrieval.encoders.lite import LiteEncoder


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
    """The trainer runs the tower tops on cached trunk outputs; at any cut that must be the same network."""
    model = lite.model
    pixels = torch.stack([lite.preprocess_image(Image.new("RGB", (224, 224), c)) for c in [(10, 200, 90), (250, 250, 0)]])
    tokens = lite.tokenize(["a dog runs on the beach", "two people"])
    mask = tokens["attention_mask"]
    with torch.inference_mode():
        full_image = model.image_head_features(pixels)  # the trained part; concepts are added on top (issue 23)
        full_text = model.text_features(tokens["input_ids"], mask)
        for stage in (model.image_split, 5):
            fast = model.image_top(model.image_trunk(pixels, stage), stage)
            torch.testing.assert_close(fast, full_image, atol=1e-4, rtol=1e-4)
        for layer in (model.text_split, 2):
            fast = model.text_top(model.text_trunk(tokens["input_ids"], mask, layer), mask, layer)
            torch.testing.assert_close(fast, full_text, atol=1e-4, rtol=1e-4)
        # the trunk ends where the top begins: its channels are what the cross-encoder reads
        assert model.image_trunk(pixels).shape[1] == model.image_trunk_channels
        last = model.image_stages(model.image_trunk(pixels), model.image_split)
        assert last.shape[1] == model.image_stage_channels
        torch.testing.assert_close(model.image_embedding_from_stages(last), full_image, atol=1e-4, rtol=1e-4)


def test_caches_below_the_split_are_advanced_to_the_same_embeddings(lite):
    """advance_frozen runs cached activations through the frozen stages once; the embedding must not change."""
    from common.lite_model import IMAGE_STAGES
    from eval.lite_training import advance_frozen

    model = lite.model
    pixels = torch.stack([lite.preprocess_image(Image.new("RGB", (224, 224), c)) for c in [(10, 200, 90), (250, 250, 0)]])
    hidden, mask = torch.zeros(2, 3, 384).half(), torch.ones(2, 3, dtype=torch.long)
    with torch.inference_mode():
        expected = model.image_head_features(pixels)
        trunk = model.image_trunk(pixels, 5)[None].half()  # one view, cached at stage 5 (below the split)
        advanced, stage, _ = advance_frozen(model, trunk, 5, hidden, mask, model.text_split)
        assert stage == model.image_split and advanced.shape[2] == model.image_trunk_channels
        torch.testing.assert_close(model.image_top(advanced[0], stage), expected, atol=2e-2, rtol=2e-2)
        saved = model.config["image_trainable_stages"]
        model.config["image_trainable_stages"] = 0  # nothing of the image tower trains: pooled once
        try:
            pooled, stage, _ = advance_frozen(model, trunk, 5, hidden, mask, model.text_split)
            assert stage == IMAGE_STAGES + 1 and pooled.shape[-2:] == (1, 1)
            torch.testing.assert_close(model.image_top(pooled[0], stage), expected, atol=2e-2, rtol=2e-2)
        finally:
            model.config["image_trainable_stages"] = saved


def test_split_follows_the_config_and_selects_what_ships(lite):
    model = lite.model
    assert (model.image_split, model.text_split) == (7 - model.config["image_trainable_stages"],
                                                      6 - model.config["text_trainable_layers"])
    shipped = model.trainable_state_dict()
    assert any(k.startswith(f"image_tower.blocks.{model.image_split}.") for k in shipped)
    assert not any(k.startswith(f"image_tower.blocks.{model.image_split - 1}.") for k in shipped)
    assert any(k.startswith(f"text_tower.encoder.layer.{model.text_split}.") for k in shipped)
    assert not any(k.startswith(f"text_tower.encoder.layer.{model.text_split - 1}.") for k in shipped)


def test_cached_trunk_training_advances_frozen_layers_and_learns(tmp_path):
    """train() on a tiny synthetic cache: caches below the split are advanced, loss falls, the best state is kept."""
    from common.lite_model import LiteModel
    from eval.lite_training import TrainOptions, contrastive_loss, train

    torch.manual_seed(0)
    model = LiteModel({"image_trainable_stages": 0, "text_trainable_layers": 1, "dropout": 0.0})
    g = torch.Generator().manual_seed(0)
    n = 48
    trunk = torch.randn(2, n, 192, 7, 7, generator=g).half()  # 2 views of Lite0 stage-6 outputs
    owner = np.repeat(np.arange(n), 2)  # 2 captions per image, whose layer-4 states share a per-image part
    hidden = (torch.randn(n, 1, 384, generator=g)[owner] + 0.3 * torch.randn(n * 2, 6, 384, generator=g)).half()
    mask = torch.ones(n * 2, 6, dtype=torch.long)
    ids = np.arange(n)
    options = TrainOptions(epochs=12, batch_size=16, captions_per_image=2, lr=1e-3, warmup_steps=1, hard_weight=0.0,
                           progress=False)
    state, history = train(model, trunk, hidden, mask, owner, ids[:16], ids[16:], options, image_from=6, text_from=4)
    assert [h["epoch"] for h in history] == list(range(1, 13))
    assert set(state) == set(model.trainable_state_dict())
    losses = [h["loss"] for h in history]
    assert np.mean(losses[-3:]) < np.mean(losses[1:4]) - 0.2  # the 32 fit images' captions are memorised
    best = max(history, key=lambda h: h["rsum"])
    head = model.image_head.proj.weight
    assert torch.equal(state["image_head.proj.weight"], head.detach()) == (best["epoch"] == 12)
    # the multi-positive loss: two captions of one image both count as positives
    img = torch.eye(2, 4)
    txt = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    one = contrastive_loss(img, txt, torch.tensor([0, 0, 1]), torch.tensor(math.log(10)))
    wrong = contrastive_loss(img, txt, torch.tensor([0, 1, 1]), torch.tensor(math.log(10)))
    assert one < wrong
    # VSE++'s hinge only adds: zero when every positive beats the hardest negative by the margin
    owner = torch.tensor([0, 0, 1])
    plain = contrastive_loss(img, txt, owner, torch.tensor(math.log(10)))
    assert contrastive_loss(img, txt, owner, torch.tensor(math.log(10)), hard_weight=1.0) == plain
    close = torch.tensor([[1.0, 0.9, 0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    assert contrastive_loss(img, close, owner, torch.tensor(math.log(10)), hard_weight=1.0) > \
        contrastive_loss(img, close, owner, torch.tensor(math.log(10)))


def test_step_captions_and_schedule():
    """What both lite trainers draw a step from and scale its rates by (eval.contrastive)."""
    from eval.contrastive import captions_by_image, sample_captions, warmup_cosine

    grouped = captions_by_image(np.array([2, 0, 2, 1, 0, 2]), 4)
    assert [g.tolist() for g in grouped] == [[1, 4], [3], [0, 2, 5], []]  # ascending, empty for an image without any

    caps_of = [np.array([0, 1, 2, 3, 4]), np.array([5, 6]), np.array([7, 8, 9, 10, 11])]
    caps, owner = sample_captions(np.array([2, 1]), caps_of, 3, np.random.default_rng(0))
    assert len(caps) == 5 and owner == [0, 0, 0, 1, 1]  # image 1 has two captions only
    assert set(caps[:3]) <= {7, 8, 9, 10, 11} and len(set(caps[:3])) == 3 and set(caps[3:]) == {5, 6}
    assert warmup_cosine(0, 10, 100) == pytest.approx(0.1)  # warm-up from 1/10
    assert warmup_cosine(9, 10, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi * 9 / 100)))
    assert warmup_cosine(50, 10, 100) == pytest.approx(0.5) and warmup_cosine(99, 10, 100) < 0.001


def test_class_distill_loss_is_kl_to_the_teacher_and_pulls_class_prompts_to_their_images():
    """KL(teacher || softmax(cos / tau)): zero when the joint space already classifies as the teacher
    does; a gradient step on the class-prompt embeddings moves each class towards its images."""
    from eval.lite_training import class_distill_loss

    g = torch.Generator().manual_seed(0)
    image, classes = torch.randn(6, 8, generator=g), torch.randn(5, 8, generator=g)
    same = (torch.nn.functional.normalize(image, dim=-1) @ torch.nn.functional.normalize(classes, dim=-1).T / 0.1).softmax(-1)
    assert class_distill_loss(image, classes, same, 0.1).abs() < 1e-6
    teacher = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 3, 4, 0]), 5).float() * 0.9 + 0.02  # rows sum to 1
    classes.requires_grad_(True)
    before = class_distill_loss(image, classes, teacher, 0.1)
    before.backward()
    moved = (classes - 0.05 * classes.grad).detach()
    assert class_distill_loss(image, moved, teacher, 0.1) < before
    target = torch.tensor([0, 1, 2, 3, 4, 0])  # each image's teacher class

    def own_class_cos(c: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cosine_similarity(image, c[target]).mean()

    assert own_class_cos(moved) > own_class_cos(classes.detach()) + 1e-3
    with pytest.raises(ValueError, match="teacher must be"):
        class_distill_loss(image, classes, teacher[:, :4], 0.1)


def test_class_distillation_is_off_at_weight_0_and_moves_the_joint_space_towards_the_teacher():
    """train() with the ImageNet class prompts: weight 0 is the plain recipe to the bit (state, history,
    record); weight > 0 brings the joint space's zero-shot classifier towards the tower's own."""
    from common.lite_model import LiteModel
    from eval.lite_training import (ClassPrompts, TrainOptions, advance_text, class_distill_loss, options_record,
                                    teacher_logits, train)

    g = torch.Generator().manual_seed(0)
    n = 32
    trunk = torch.randn(1, n, 192, 7, 7, generator=g).half()  # Lite0 stage-6 outputs
    owner = np.repeat(np.arange(n), 2)
    hidden = (torch.randn(n, 1, 384, generator=g)[owner] + 0.3 * torch.randn(n * 2, 5, 384, generator=g)).half()
    mask = torch.ones(n * 2, 5, dtype=torch.long)
    classes = ClassPrompts(torch.randn(1000, 3, 384, generator=g).half(), torch.ones(1000, 3, dtype=torch.long),
                           torch.arange(1000), 4)  # one synthetic layer-4 "prompt" per ImageNet class
    ids = np.arange(n)

    def run(weight: float, prompts: ClassPrompts | None, text_only: bool = False):
        torch.manual_seed(0)
        model = LiteModel({"image_trainable_stages": 0, "text_trainable_layers": 1, "dropout": 0.0})
        options = TrainOptions(epochs=4, batch_size=8, lr=1e-3, warmup_steps=1, progress=False,
                               class_distill_weight=weight, class_distill_classes=64,
                               class_distill_text_only=text_only)
        state, history = train(model, trunk, hidden, mask, owner, ids[:8], ids[8:], options, 6, 4, prompts)
        model.load_state_dict(state, strict=False)
        model.eval()
        with torch.inference_mode():  # the student over all 1000 classes, on the fit images
            image = model.image_top(trunk[0, 8:].float(), 6)
            text = model.text_top(advance_text(model, classes.hidden, classes.mask, 4)[:, :3].float(), classes.mask)
            teacher = teacher_logits(model, trunk[:, 8:], 6)[0].softmax(-1)  # the tower top never trains here
            kl = float(class_distill_loss(image, text, teacher, options.class_distill_tau))
        return state, history, options, kl

    plain, plain_history, plain_options, plain_kl = run(0.0, None)
    off, off_history, _, off_kl = run(0.0, classes)
    timeless = lambda history: [{k: v for k, v in h.items() if k != "seconds"} for h in history]  # noqa: E731
    assert all(torch.equal(plain[k], off[k]) for k in plain) and timeless(plain_history) == timeless(off_history)
    assert not any(k.startswith("class_distill") for k in options_record(plain_options))
    on, on_history, on_options, on_kl = run(1.0, classes)
    assert "class_kl" in on_history[-1] and options_record(on_options)["class_distill_weight"] == 1.0
    assert not torch.equal(on["text_head.proj.weight"], plain["text_head.proj.weight"])
    assert on_kl < plain_kl - 0.05, (on_kl, plain_kl)
    text_only, _, _, text_only_kl = run(1.0, classes, text_only=True)  # the class prompts move, not the images
    assert text_only_kl < plain_kl - 0.05, (text_only_kl, plain_kl)
    assert not torch.equal(text_only["text_head.proj.weight"], on["text_head.proj.weight"])
    with pytest.raises(ValueError, match="needs the class prompts"):
        train(LiteModel({"image_trainable_stages": 0, "text_trainable_layers": 1}), trunk, hidden, mask, owner,
              ids[:8], ids[8:], TrainOptions(epochs=1, batch_size=8, progress=False, class_distill_weight=1.0), 6, 4)


def test_weights_that_do_not_match_the_config_are_rejected(tmp_path):
    import shutil

    shutil.copytree(WEIGHTS_DIR, tmp_path / "lite")
    config = json.loads((tmp_path / "lite" / "config.json").read_text())
    config["text_trainable_layers"] = config["text_trainable_layers"] + 1
    (tmp_path / "lite" / "config.json").write_text(json.dumps(config))
    lazy = LiteEncoder(tmp_path / "lite", device="cpu")  # reads config.json only; the towers load on first use
    with pytest.raises(ValueError, match="does not match its config"):
        lazy.load(["text"])
    with pytest.raises(FileNotFoundError, match="train_lite"):
        LiteEncoder(tmp_path / "nothing-here", device="cpu")


#: Regression floors, a few points under the measured Flickr8K-1K test numbers in README / model card.
#: Measured (python -m eval.retrieval --model lite ... --split test): I->T 25.2 / 64.0, T->I 19.9 / 59.8 (the
#: default since issue 23's gated concepts; the heads alone, concept_weight 0, measured 22.9 / 65.4, 19.2 / 60.2).
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


def test_weights_id_follows_the_heads_and_the_vector_settings_only(tmp_path):
    import shutil

    shutil.copytree(WEIGHTS_DIR, tmp_path / "lite")
    shipped = LiteEncoder(tmp_path / "lite", device="cpu").weights_id
    assert shipped == LiteEncoder(WEIGHTS_DIR, device="cpu").weights_id  # same bytes, same id (not the path)
    heads_only = LiteEncoder(tmp_path / "lite", device="cpu", heads=True).weights_id
    assert heads_only != shipped  # issue 23: the default has the concepts on, lite:heads has them off
    assert LiteEncoder(tmp_path / "lite", device="cpu", concepts=True).weights_id == shipped  # the same vectors
    config_file = tmp_path / "lite" / "config.json"
    config = json.loads(config_file.read_text())
    config["training"]["note"] = "a retraining record is not a vector setting"
    config_file.write_text(json.dumps(config))
    assert LiteEncoder(tmp_path / "lite", device="cpu").weights_id == shipped
    config["concept_gate"] = config["concept_gate"] - 0.05  # shapes the default's vectors, not the heads'
    config_file.write_text(json.dumps(config))
    assert LiteEncoder(tmp_path / "lite", device="cpu").weights_id != shipped
    assert LiteEncoder(tmp_path / "lite", device="cpu", heads=True).weights_id == heads_only
    config["concept_gate"] = config["concept_gate"] + 0.05
    config_file.write_text(json.dumps(config))
    heads = tmp_path / "lite" / "model.safetensors"
    data = bytearray(heads.read_bytes())
    data[-1] ^= 1
    heads.write_bytes(bytes(data))
    assert LiteEncoder(tmp_path / "lite", device="cpu").weights_id != shipped


def torchvision_lite_transform(config):
    """The lite tower's preprocessing as torchvision v2 writes it (what common.lite_pixels reproduces)."""
    from torchvision.transforms import v2 as T

    return T.Compose([T.ToImage(), T.Resize(config["image_size"], interpolation=T.InterpolationMode.BICUBIC,
                                            antialias=True),
                      T.CenterCrop(config["image_size"]), T.ToDtype(torch.float32, scale=True),
                      T.Normalize(config["image_mean"], config["image_std"])])


def varied_photos() -> list[Image.Image]:
    """Real Flickr8K photos, odd sizes either way round, a tiny one upscaled, a panorama, one exactly 224."""
    from common.images import load_image

    photos = [load_image(p) for p in sorted((FLICKR8K / "images").glob("*.jpg"))[:12]]
    rng = np.random.default_rng(0)
    odd = [(301, 225), (225, 301), (223, 999), (31, 17), (224, 224), (1024, 128), (641, 480)]
    photos += [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in odd]
    photos.append(photos[0].resize((333, 250)).rotate(90, expand=True))
    return photos


def test_pixels_match_torchvision_and_so_do_the_embeddings(lite):
    """PIL/numpy preprocessing (no torch on the ONNX path) against torchvision's transform: same shape and
    crop, at most two of 255 levels apart on a few pixels (the two round fixed-point sums differently),
    and the same embeddings."""
    from common.lite_pixels import LitePixels

    config = lite.config
    ours, reference = LitePixels(config), torchvision_lite_transform(config)
    photos = varied_photos()
    step = np.asarray(config["image_std"], np.float32)[:, None, None] * 255  # one level in normalised units
    identical = 0
    for photo in photos:
        a, b = ours(photo), reference(photo).numpy()
        assert a.shape == b.shape == (3, config["image_size"], config["image_size"]) and a.dtype == np.float32
        levels = np.abs(a - b) * step
        assert levels.max() < 2.01 and (levels > 0.5).mean() < 0.01, photo.size
        identical += levels.max() < 0.5
    assert identical >= len(photos) // 2  # mostly bit-identical, not merely close
    assert lite.onnx is not None  # the default on CPU: these vectors are the numpy path's
    with torch.inference_mode():
        expected = torch.nn.functional.normalize(
            lite.onnx.image_features(torch.stack([reference(p) for p in photos])), dim=-1).numpy()
    cosines = (lite.encode_images(photos) * expected).sum(axis=1)
    assert cosines.min() > 0.9999, cosines


def test_pixels_refuse_what_they_cannot_reproduce():
    from common.lite_pixels import LitePixels

    config = json.loads((WEIGHTS_DIR / "config.json").read_text())
    with pytest.raises(ValueError, match="image_interpolation"):
        LitePixels({**config, "image_interpolation": "bilinear"})
    with pytest.raises(ValueError, match="image_std"):
        LitePixels({**config, "image_std": [0.5, 0.0, 0.5]})
    with pytest.raises(ValueError, match="mode 'L'"):
        LitePixels(config)(Image.new("L", (10, 10)))
