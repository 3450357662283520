import json

import numpy as np
import pytest

from eval.karpathy import load_karpathy


@pytest.fixture
def karpathy(tmp_path):
    images = tmp_path / "images"
    (images / "val2014").mkdir(parents=True)
    entries = []
    for i, split in enumerate(["train", "test", "restval", "val", "test"]):
        name = f"img{i}.jpg"
        (images / "val2014" / name).write_bytes(b"x")
        sentences = [{"raw": f"caption {i}.{j}", "tokens": ["caption"]} for j in range(5 + (i == 4))]
        entries.append({"filename": name, "filepath": "val2014", "split": split, "sentences": sentences, "imgid": i})
    ann = tmp_path / "dataset_coco.json"
    ann.write_text(json.dumps({"dataset": "coco", "images": entries}))
    return ann, images


def test_reads_any_split_with_coco_filepath(karpathy):
    ann, images = karpathy
    test = load_karpathy(ann, images, "test")
    assert test.name == "coco" and test.n_images == 2
    assert [p.name for p in test.image_paths] == ["img1.jpg", "img4.jpg"]
    assert len(test.captions) == 11  # all captions kept: the second image has 6
    assert test.caption_image.tolist() == [0] * 5 + [1] * 6
    assert [c.tolist() for c in test.image_captions()] == [list(range(5)), list(range(5, 11))]
    assert load_karpathy(ann, images, "test", max_captions_per_image=5).caption_image.tolist() == [0] * 5 + [1] * 5
    for split in ("train", "val", "restval"):
        assert load_karpathy(ann, images, split).n_images == 1


def test_unknown_split_lists_the_available_ones(karpathy):
    ann, images = karpathy
    with pytest.raises(ValueError, match=r"no split 'dev'.*restval \(1\).*test \(2\)"):
        load_karpathy(ann, images, "dev")


def test_missing_image_file_is_named(karpathy):
    ann, images = karpathy
    (images / "val2014" / "img4.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="img4.jpg"):
        load_karpathy(ann, images, "test")


def test_bad_annotations(tmp_path, karpathy):
    _, images = karpathy
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_karpathy(bad, images)
    bad.write_text(json.dumps({"images": [{"filename": "a.jpg", "split": "test", "sentences": [{"raw": " "}]}]}))
    with pytest.raises(ValueError, match=r"images\[0\]\.sentences\[0\]"):
        load_karpathy(bad, images, check_files=False)


@pytest.mark.data
def test_flickr8k_karpathy_file():
    from conftest import FLICKR8K

    test = load_karpathy(FLICKR8K / "dataset_flickr8k.json", FLICKR8K / "images", "test")
    train = load_karpathy(FLICKR8K / "dataset_flickr8k.json", FLICKR8K / "images", "train")
    assert (test.n_images, len(test.captions)) == (1000, 5000)
    assert train.n_images == 6000
    assert np.bincount(test.caption_image).tolist() == [5] * 1000
    assert not set(test.image_paths) & set(train.image_paths)


def test_dataset_coco_json_layout_with_train_and_val_folders(tmp_path):
    """dataset_coco.json: filepath (train2014 / val2014) + filename below the COCO root, four splits."""
    from PIL import Image

    root = tmp_path / "coco"
    entries = []
    layout = [("val2014", "test"), ("train2014", "restval"), ("val2014", "val"), ("train2014", "train"),
              ("val2014", "test"), ("val2014", "restval")]
    for i, (folder, split) in enumerate(layout):
        (root / folder).mkdir(parents=True, exist_ok=True)
        name = f"COCO_{folder}_{i:012d}.jpg"
        Image.new("RGB", (4, 4), (i, i, i)).save(root / folder / name)
        entries.append({"filepath": folder, "filename": name, "split": split, "cocoid": i, "imgid": i,
                        "sentences": [{"raw": f"c{i}.{j}", "tokens": ["c"]} for j in range(5)]})
    ann = tmp_path / "dataset_coco.json"
    ann.write_text(json.dumps({"dataset": "coco", "images": entries}))
    sizes = {s: load_karpathy(ann, root, s).n_images for s in ("train", "restval", "val", "test")}
    assert sizes == {"train": 1, "restval": 2, "val": 1, "test": 2}
    restval = load_karpathy(ann, root, "restval")
    assert [p.relative_to(root).as_posix() for p in restval.image_paths] == [
        "train2014/COCO_train2014_000000000001.jpg", "val2014/COCO_val2014_000000000005.jpg"]
    assert restval.captions[5] == "c5.0"


def test_dataset_flickr30k_json_layout(tmp_path):
    """dataset_flickr30k.json: no filepath, images directly in the folder."""
    from PIL import Image

    images = tmp_path / "flickr30k-images"
    images.mkdir()
    entries = []
    for i, split in enumerate(["train", "val", "test", "test"]):
        Image.new("RGB", (4, 4)).save(images / f"{1000 + i}.jpg")
        entries.append({"filename": f"{1000 + i}.jpg", "split": split, "imgid": i,
                        "sentences": [{"tokens": ["a", "dog", str(i)], "raw": ""}] * 5})
    ann = tmp_path / "dataset_flickr30k.json"
    ann.write_text(json.dumps({"dataset": "flickr30k", "images": entries}))
    test = load_karpathy(ann, images, "test")
    assert test.name == "flickr30k" and [p.name for p in test.image_paths] == ["1002.jpg", "1003.jpg"]
    assert test.captions[0] == "a dog 2"  # empty raw falls back to the tokens
    assert test.caption_image.tolist() == [0] * 5 + [1] * 5


def test_select_and_validation(karpathy):
    ann, images = karpathy
    test = load_karpathy(ann, images, "test")
    swapped = test.select([1, 0])
    assert [p.name for p in swapped.image_paths] == ["img4.jpg", "img1.jpg"]
    assert swapped.captions[:6] == [f"caption 4.{j}" for j in range(6)]
    assert swapped.caption_image.tolist() == [0] * 6 + [1] * 5
    assert test.selected_captions([1]).tolist() == list(range(5, 11))
    with pytest.raises(ValueError, match="repeat"):
        test.select([0, 0])
    with pytest.raises(ValueError, match="0..1"):
        test.select([2])
    with pytest.raises(ValueError, match="outside"):
        type(test)("x", "test", test.image_paths, test.captions, test.caption_image + 1)
    with pytest.raises(ValueError, match="one entry per caption"):
        type(test)("x", "test", test.image_paths, test.captions[:-1], test.caption_image)


def test_one_caption_per_image_is_seeded_and_owned_by_each_image():
    from eval.karpathy import one_caption_per_image

    caption_image = np.array([0, 1, 0, 2, 1, 0, 2, 2])
    picks = one_caption_per_image(caption_image, 3, seed=0)
    assert picks.dtype == np.int64 and list(caption_image[picks]) == [0, 1, 2]
    np.testing.assert_array_equal(picks, one_caption_per_image(caption_image, 3, seed=0))
    draws = {tuple(one_caption_per_image(caption_image, 3, seed=s)) for s in range(20)}
    assert len(draws) > 1  # the seed chooses among each image's captions
    with pytest.raises(ValueError, match="image 3 has no caption"):
        one_caption_per_image(caption_image, 4)
