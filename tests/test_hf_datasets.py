import json

import numpy as np
import pytest
from PIL import Image

datasets = pytest.importorskip("datasets")

from eval import hf_datasets as hf  # noqa: E402
from eval.hf_datasets import DatasetUnavailableError, ImageColumn, load_caption_dataset, load_hf  # noqa: E402


def colour(i):
    return Image.new("RGB", (8, 6), color=(10 * i, 255 - 10 * i, 3 * i))


@pytest.fixture
def saved(tmp_path):
    """A tiny nlphuji/flickr30k-like table: PIL images, caption lists, Karpathy split in a column."""
    splits = ["train", "test", "val", "test", "test"]
    ds = datasets.Dataset.from_dict(
        {
            "image": [colour(i) for i in range(5)],
            "caption": [[f"photo {i} caption {j}" for j in range(5 + (i == 3))] for i in range(5)],
            "split": splits,
            "filename": [f"{i}.jpg" for i in range(5)],
        },
        features=datasets.Features({
            "image": datasets.Image(),
            "caption": datasets.Sequence(datasets.Value("string")),
            "split": datasets.Value("string"),
            "filename": datasets.Value("string"),
        }),
    )
    path = tmp_path / "flickr_tiny"
    datasets.DatasetDict({"test": ds}).save_to_disk(str(path))
    return path


def test_save_to_disk_folder_becomes_a_caption_dataset(saved):
    test = load_hf(saved, "test", name="flickr30k")
    assert (test.name, test.split, test.n_images) == ("flickr30k", "test", 3)
    # rows 1, 3, 4 are test; row 3 has six captions, all kept
    assert test.captions[:2] == ["photo 1 caption 0", "photo 1 caption 1"]
    assert np.bincount(test.caption_image).tolist() == [5, 6, 5]
    assert test.captions[5] == "photo 3 caption 0"
    assert isinstance(test.images, ImageColumn)
    img = test.images[1]
    assert isinstance(img, Image.Image) and img.convert("RGB").getpixel((0, 0)) == colour(3).getpixel((0, 0))
    # slicing stays lazy and keeps the mapping
    assert isinstance(test.images[1:], ImageColumn) and len(test.images[1:]) == 2
    assert np.asarray(test.images[2:][0]).tolist() == np.asarray(colour(4)).tolist()
    assert load_hf(saved, "test", max_captions_per_image=5).caption_image.tolist() == [0] * 5 + [1] * 5 + [2] * 5


def test_subset_and_select_keep_images_and_captions_aligned(saved):
    test = load_hf(saved, "test")
    pick = test.select(np.array([2, 0]))
    assert pick.n_images == 2
    assert pick.captions[0] == "photo 4 caption 0" and pick.captions[5] == "photo 1 caption 0"
    assert pick.caption_image.tolist() == [0] * 5 + [1] * 5
    assert np.asarray(pick.images[0]).tolist() == np.asarray(colour(4)).tolist()
    assert test.subset(1).captions == [f"photo 1 caption {j}" for j in range(5)]


def test_lite_encoder_reads_the_lazy_images(saved):
    from common.images import load_image

    test = load_hf(saved, "test")
    batch = test.images[0:2]
    assert [load_image(x, i).size for i, x in enumerate(batch)] == [(8, 6), (8, 6)]


def test_unknown_split_and_columns_are_named(saved, tmp_path):
    with pytest.raises(ValueError, match=r"no row has split == 'dev'.*test \(3\).*train \(1\)"):
        load_hf(saved, "dev")
    with pytest.raises(ValueError, match="no caption column 'captions_x'.*image, caption, split"):
        load_hf(saved, "test", caption_column="captions_x")
    plain = tmp_path / "plain"
    datasets.Dataset.from_dict({"a": [1], "b": ["x"]}).save_to_disk(str(plain))
    with pytest.raises(ValueError, match="no caption column among a, b"):
        load_hf(plain, "test")


def test_path_based_rows_need_an_image_root(tmp_path):
    root = tmp_path / "coco"
    (root / "val2014").mkdir(parents=True)
    colour(1).save(root / "val2014" / "a.jpg")
    ds = datasets.Dataset.from_dict({"filepath": ["val2014"], "filename": ["a.jpg"], "sentences": [["one", "two"]]})
    path = tmp_path / "karpathy_coco"
    datasets.DatasetDict({"test": ds}).save_to_disk(str(path))
    with pytest.raises(ValueError, match="pass images="):
        load_hf(path, "test")
    test = load_hf(path, "test", images=root)
    assert test.image_paths == [root / "val2014" / "a.jpg"] and test.captions == ["one", "two"]
    (root / "val2014" / "a.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="a.jpg"):
        load_hf(path, "test", images=root)


def test_webdataset_style_newline_captions():
    assert hf.row_captions("a dog\nA cat \n\n", "\n", "x") == ["a dog", "A cat"]
    assert hf.row_captions([{"raw": "r", "tokens": ["r"]}], None, "x") == ["r"]
    with pytest.raises(ValueError, match=r"x\[1\]"):
        hf.row_captions(["ok", ""], None, "x")


@pytest.mark.parametrize("hub_id", sorted(hf.HUB_DATASETS))
def test_every_hub_id_fails_offline_with_one_clear_message(hub_id, offline_hub, tmp_path, monkeypatch):
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    split = "test"
    with pytest.raises(DatasetUnavailableError) as info:
        load_hf(hub_id, split, cache_dir=tmp_path / "datasets_cache")
    message = str(info.value)
    assert hub_id in message and "offline or unreachable" in message
    assert "save_to_disk" in message and "Karpathy JSON" in message and "HF_HOME" in message
    assert "\n" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_unknown_id_lists_the_supported_ones():
    with pytest.raises(ValueError, match="nlphuji/flickr30k.*clip-benchmark/wds_mscoco_captions"):
        load_hf("someone/not-a-dataset", "test")
    with pytest.raises(ValueError, match="has no split 'val'"):
        load_hf("clip-benchmark/wds_flickr30k", "val")


def test_one_entry_dispatches_json_and_folders(tmp_path, saved):
    images = tmp_path / "imgs"
    images.mkdir()
    colour(0).save(images / "x.jpg")
    ann = tmp_path / "dataset_flickr30k.json"
    ann.write_text(json.dumps({"dataset": "flickr30k", "images": [
        {"filename": "x.jpg", "split": "test", "sentences": [{"raw": "a"}, {"raw": "b"}]}]}))
    assert load_caption_dataset(ann, "test", images).captions == ["a", "b"]
    with pytest.raises(ValueError, match="pass images="):
        load_caption_dataset(ann, "test")
    with pytest.raises(TypeError, match="revision"):
        load_caption_dataset(ann, "test", images, revision="x")
    assert load_caption_dataset(saved, "val").n_images == 1


def test_retrieval_pipeline_encodes_the_lazy_column(saved):
    """eval.retrieval's embed_dataset hands dataset.image_paths to the encoder unchanged."""
    from eval.retrieval import embed_dataset
    from retrieval import load_encoder

    test = load_hf(saved, "test")
    emb = embed_dataset(load_encoder("lite"), test, batch_size=2, progress=False)
    assert emb.images.shape[0] == 3 and emb.texts.shape[0] == 16
    assert np.allclose(np.linalg.norm(emb.images, axis=1), 1, atol=1e-4)
    assert not np.allclose(emb.images[0], emb.images[1])  # different pixels, different vectors
