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
