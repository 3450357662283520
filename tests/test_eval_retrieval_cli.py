"""`python -m eval.retrieval` end to end on a tiny Karpathy file and a tiny open_clip checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tiny_models import save_tiny_open_clip

from test_reference import HEADER, ROWS


@pytest.fixture
def flickr30k_like(tmp_path):
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    entries = []
    for i in range(8):
        name = f"{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(images / name)
        entries.append({"filename": name, "split": "test" if i < 6 else "train",
                        "sentences": [{"raw": f"photo {i} caption {j} with words {i * 7 % 5}"} for j in range(2)]})
    path = tmp_path / "dataset_flickr30k.json"
    path.write_text(json.dumps({"dataset": "flickr30k", "images": entries}))
    return path, images


def test_pipelines_folds_and_reference_in_one_run(tmp_path, flickr30k_like):
    from eval.retrieval import main

    annotations, images = flickr30k_like
    model = save_tiny_open_clip(tmp_path / "tiny")
    csv = tmp_path / "ref.csv"
    csv.write_text("\n".join([HEADER, *ROWS]) + "\n")
    out = tmp_path / "out.json"
    result = main([
        "--model", f"local-dir:{model}", "--dataset", str(annotations), "--images", str(images), "--split", "test",
        "--rerank", "none", "float", "--candidates", "12", "--bits", "16", "--fit-split", "test",
        "--latency-queries", "2", "--folds", "2", "--reference", str(csv),
        "--reference-model", "ViT-B-32/laion2b_s34b_b79k", "--output", str(out), "--device", "cpu",
    ])
    saved = json.loads(out.read_text())
    assert saved["n_images"] == 6 and saved["n_captions"] == 12 and saved["processes"] == 1
    by_name = {p["pipeline"]: p for p in saved["pipelines"]}
    assert set(by_name) == {"none", "float"}
    keys = [k for k in result if k.startswith(("image_retrieval", "text_retrieval"))]
    assert len(keys) == 6
    # with every item a candidate, float rescoring is exhaustive float search
    for k in keys:
        assert by_name["float"][k] == pytest.approx(saved[k], abs=1e-9)
    assert {"text_to_image_median_ms", "image_to_text_median_ms"} <= set(by_name["none"]["latency"])
    # folds: the mean is the mean of the per-fold results
    per_fold = saved["folds"]["per_fold"]
    assert len(per_fold) == 2
    for k in keys:
        assert saved["folds"]["mean"][k] == pytest.approx(np.mean([f[k] for f in per_fold]))
    # reference: ours - the csv row (Flickr columns, since the dataset is flickr30k)
    delta = saved["reference"]["deltas"]["image_retrieval_recall@1"]
    assert delta["reference"] == 0.6678 and delta["delta"] == pytest.approx(saved["image_retrieval_recall@1"] - 0.6678)


def test_one_caption_per_image_keyword_queries(tmp_path, flickr30k_like):
    from eval.retrieval import main

    annotations, images = flickr30k_like
    model = save_tiny_open_clip(tmp_path / "tiny")
    common = ["--model", f"local-dir:{model}", "--dataset", str(annotations), "--images", str(images),
              "--split", "test", "--rerank", "float", "--candidates", "12", "--bits", "16", "--fit-split", "test",
              "--latency-queries", "2", "--device", "cpu"]
    every = main(common)["pipelines"][0]
    subset = main([*common, "--one-caption-per-image", "--query-seed", "1", "--queries", "keywords"])["pipelines"][0]
    assert (every["text_queries"], subset["text_queries"]) == (12, 6) and subset["query_seed"] == 1
    assert subset["queries"] == "keywords"
    # image queries still search every caption
    assert subset["text_retrieval_recall@5"] == every["text_retrieval_recall@5"]


def test_unreachable_hub_dataset_is_one_clear_error(offline_hub):
    from eval.retrieval import main

    with pytest.raises(SystemExit, match="nlphuji/flickr_1k_test_image_text_retrieval"):
        main(["--dataset", "nlphuji/flickr_1k_test_image_text_retrieval", "--split", "test"])
