"""The end-to-end fine-tuning route (eval.lite_end_to_end): its pack is the shipped model, its run trains
every layer on the fit images alone, and selection reads held-out numbers only. On a 13-image
Flickr8K pack, on CPU; the real run is on an accelerator machine (the model card says which)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import FLICKR8K

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def tiny_pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from eval.lite_end_to_end import build_pack

    full = json.loads((FLICKR8K / "dataset_flickr8k.json").read_text())
    train = [im for im in full["images"] if im["split"] == "train"][:10]
    test = [im for im in full["images"] if im["split"] == "test"][:3]
    root = tmp_path_factory.mktemp("e2e")
    annotations = root / "tiny.json"
    annotations.write_text(json.dumps({"dataset": "flickr8k", "images": train + test}))
    build_pack(root / "pack", annotations, FLICKR8K / "images", n_val=3, fit_part_mib=0.03)
    return root / "pack"


def test_pack_splits_and_parts(tiny_pack: Path) -> None:
    meta = json.loads((tiny_pack / "pack.json").read_text())
    val, fit, test = set(meta["val_ids"]), set(meta["fit_ids"]), set(meta["test_ids"])
    assert len(val) == 3 and len(fit) == 7 and test == {10, 11, 12}
    assert not val & fit and not (val | fit) & test
    assert len([p for p in meta["parts"] if p.startswith("images-fit-")]) >= 2  # the part budget splits them
    held = []
    for name in meta["parts"]:
        held.extend(np.load(tiny_pack / f"{name}.npz")["ids"].tolist())
    assert sorted(held) == list(range(13))
    # the held-out and test images travel as their original bytes, so the start reproduces the CPU's
    index = np.load(tiny_pack / "images-val.npz")
    data = (tiny_pack / "images-val.bin").read_bytes()
    full = json.loads((FLICKR8K / "dataset_flickr8k.json").read_text())
    names = [im["filename"] for im in full["images"] if im["split"] == "train"][:10]
    first = int(index["ids"][0])
    assert data[:index["offsets"][1]] == (FLICKR8K / "images" / names[first]).read_bytes()


def test_pack_model_is_the_shipped_lite(tiny_pack: Path) -> None:
    """The merged towers and the cut vocabulary give the shipped encoder's vectors (heads, no concepts)."""
    from PIL import Image

    from common.lite_model import image_transform, load_lite_model
    from eval.lite_end_to_end import EndToEndLite, PackData

    shipped = load_lite_model(concept_weight=0.0)
    model, meta = EndToEndLite.from_pack(tiny_pack)
    model.eval()
    data = PackData(tiny_pack, meta, torch.device("cpu"))
    ids = np.array(meta["val_ids"] + meta["test_ids"])
    pil = []
    for part in ("images-val", "images-test"):  # original bytes: what the CPU encoder reads
        index, blob = np.load(tiny_pack / f"{part}.npz"), (tiny_pack / f"{part}.bin").read_bytes()
        pil += [Image.open(io.BytesIO(blob[a:b])).convert("RGB") for a, b in zip(index["offsets"], index["offsets"][1:])]
    with torch.no_grad():
        ours = model.image_embedding(data.images(ids))
        theirs = shipped.image_head_features(torch.stack([image_transform(shipped.config)(im) for im in pil]))
        assert F.cosine_similarity(ours, theirs).min() > 0.999

        caps = np.concatenate([data.caps_of[i] for i in ids])
        full = json.loads((FLICKR8K / "dataset_flickr8k.json").read_text())
        images = [im for im in full["images"] if im["split"] == "train"][:10] + \
                 [im for im in full["images"] if im["split"] == "test"][:3]
        texts = [s["raw"] for im in images for s in im["sentences"]]
        tokens = shipped.tokenizer([texts[c] for c in caps], padding=True, truncation=True, max_length=64,
                                   return_tensors="pt")
        theirs_t = shipped.text_features(tokens["input_ids"], tokens["attention_mask"])
        length = int(data.mask[caps].sum(1).max())
        ours_t = model.text_embedding(data.ids[caps, :length], data.mask[caps, :length])
        assert F.cosine_similarity(ours_t, theirs_t).min() > 0.999


def test_random_resized_crops() -> None:
    from eval.lite_end_to_end import random_resized_crops

    pixels = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)
    same = random_resized_crops(pixels, 16, gen, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False)
    assert torch.allclose(same, pixels.float(), atol=1e-3)  # the whole image at its own size: identity
    out = random_resized_crops(pixels, 8, gen)
    assert out.shape == (3, 3, 8, 8) and out.min() >= 0 and out.max() <= 255
    flips = [random_resized_crops(pixels[:1], 16, gen, scale=(1.0, 1.0), ratio=(1.0, 1.0)) for _ in range(20)]
    flipped = [bool(torch.allclose(f, pixels[:1].float().flip(-1), atol=1e-3)) for f in flips]
    assert any(flipped) and not all(flipped)


def test_run_trains_every_layer_and_select_reads_held_out_only(tiny_pack: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from eval.lite_end_to_end import EndToEndOptions, run, select_and_test

    start = load_file(str(tiny_pack / "model.safetensors"))
    report = run(tiny_pack, EndToEndOptions(epochs=2, batch_size=4, warmup_steps=1, image_lr=1e-3, text_lr=1e-3),
                 tmp_path / "a", device="cpu", log=lambda _: None)
    assert [h["epoch"] for h in report["history"]] == [1, 2] and 0 <= report["best_val"]["rsum"] <= 600
    best = load_file(str(tmp_path / "a" / "best.safetensors"))
    for lowest in ("image_tower.conv_stem.weight", "text_tower.embeddings.word_embeddings.weight",
                   "text_tower.encoder.layer.0.attention.self.query.weight"):
        assert not torch.equal(best[lowest], start[lowest]), f"{lowest} did not train"

    # a second 'setting' whose held-out rsum is higher is chosen, whatever test would say
    other = tmp_path / "b"
    other.mkdir()
    (other / "best.safetensors").write_bytes((tiny_pack / "model.safetensors").read_bytes())
    (other / "report.json").write_text(json.dumps({**report, "best_val": {**report["best_val"], "rsum": 601.0}}))
    summary = select_and_test(tiny_pack, [tmp_path / "a", other], device="cpu", log=lambda _: None,
                              export=tmp_path / "export")
    assert summary["chosen"] == str(other) and summary["test_images"] == 3
    assert summary["chosen_test"] == summary["start_test"]  # b holds the starting weights

    # the chosen weights leave in shards the device tool returns (16 MiB a file at most), whole
    shards = sorted((tmp_path / "export").glob("*.safetensors"))
    assert len(shards) >= 2 and all(f.stat().st_size <= 16 * 2**20 for f in shards)
    exported = {k: v for f in shards for k, v in load_file(str(f)).items()}
    assert exported.keys() == start.keys() and all(torch.equal(exported[k], start[k]) for k in start)
    assert json.loads((tmp_path / "export" / "export.json").read_text())["summary"]["chosen"] == str(other)


def test_pack_refuses_an_image_of_another_size_and_writes_nothing(tmp_path: Path) -> None:
    from PIL import Image

    from eval.lite_end_to_end import build_pack

    full = json.loads((FLICKR8K / "dataset_flickr8k.json").read_text())
    items = [next(im for im in full["images"] if im["split"] == s) for s in ("train", "test")]
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (300, 200), "white").save(folder / items[0]["filename"])
    Image.new("RGB", (224, 224), "white").save(folder / items[1]["filename"])
    annotations = tmp_path / "two.json"
    annotations.write_text(json.dumps({"dataset": "flickr8k", "images": items}))
    with pytest.raises(ValueError, match=rf"{items[0]['filename']}: 300x200, the pack needs images stored at 224x224"):
        build_pack(tmp_path / "pack", annotations, folder, n_val=1)
    assert not (tmp_path / "pack").exists() and not list(tmp_path.glob(".pack.*"))
