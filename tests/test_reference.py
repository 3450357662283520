import json

import pytest

from eval.recall import retrieval_recall
from eval.reference import delta_table, deltas, load_reference, split_model_id

# open_clip docs/openclip_retrieval_results.csv: its header verbatim and three of its rows.
HEADER = ("name,pretrained,params (M),FLOPs (B),Average score,Flickr image retr. R@1,Flickr image retr. R@5,"
          "Flickr image retr. R@10,Flickr text retr. R@1,Flickr text retr. R@5,Flickr text retr. R@10,"
          "MSCOCO image retr. R@1,MSCOCO image retr. R@5,MSCOCO image retr. R@10,MSCOCO text retr. R@1,"
          "MSCOCO text retr. R@5,MSCOCO text retr. R@10,WinoGAViL avg jaccard score,WinoGAViL jaccard score 10,"
          "WinoGAViL jaccard score 10-12,WinoGAViL jaccard score 12,WinoGAViL jaccard score 5,"
          "WinoGAViL jaccard score 5-6,WinoGAViL jaccard score 6")
ROWS = [
    "ViT-B-32,laion2b_s34b_b79k,151.28,14.78,0.6750,0.6678,0.8838,0.9310,0.8410,0.9620,0.9830,0.3934,0.6543,"
    "0.7561,0.5632,0.7984,0.8712,0.5254,0.4603,0.4479,0.4356,0.5603,0.5498,0.5398",
    "ViT-B-32-quickgelu,openai,151.28,14.78,0.6321,0.5878,0.8356,0.9002,0.7890,0.9490,0.9820,0.3044,0.5594,"
    "0.6687,0.5012,0.7500,0.8352,0.5054,0.4454,0.4125,0.3798,0.5492,0.5347,0.5210",
    "ViT-B-32,openai,151.28,14.78,0.6321,0.5878,0.8356,0.9002,0.7890,0.9490,0.9820,0.3044,0.5594,0.6687,"
    "0.5012,0.7500,0.8352,0.5054,0.4454,0.4125,0.3798,0.5492,0.5347,0.5210",
]


@pytest.fixture
def openclip_csv(tmp_path):
    path = tmp_path / "openclip_retrieval_results.csv"
    path.write_text("\n".join([HEADER, *ROWS]) + "\n")
    return path


def test_selects_model_pretrained_and_dataset_columns(openclip_csv):
    flickr = load_reference(openclip_csv, "ViT-B-32/laion2b_s34b_b79k", "flickr30k")
    assert flickr.metrics == {
        "image_retrieval_recall@1": 0.6678, "image_retrieval_recall@5": 0.8838, "image_retrieval_recall@10": 0.9310,
        "text_retrieval_recall@1": 0.8410, "text_retrieval_recall@5": 0.9620, "text_retrieval_recall@10": 0.9830,
    }
    coco = load_reference(openclip_csv, "ViT-B-32,openai", "mscoco_captions")
    assert coco.dataset == "coco" and coco.pretrained == "openai"
    assert coco.metrics["image_retrieval_recall@1"] == 0.3044 and coco.metrics["text_retrieval_recall@10"] == 0.8352
    assert load_reference(openclip_csv, "ViT-B-32", "coco", pretrained="openai").metrics == coco.metrics


def test_ambiguous_or_unknown_models_are_explained(openclip_csv):
    with pytest.raises(ValueError, match="several rows for 'ViT-B-32'.*laion2b_s34b_b79k, openai"):
        load_reference(openclip_csv, "ViT-B-32", "flickr30k")
    with pytest.raises(ValueError, match="no row for model 'ViT-B-23'; close: ViT-B-32"):
        load_reference(openclip_csv, "ViT-B-23/openai", "flickr30k")
    with pytest.raises(ValueError, match="pretrained 'laion400m_e32'"):
        load_reference(openclip_csv, "ViT-B-32/laion400m_e32", "flickr30k")
    with pytest.raises(ValueError, match="no reference columns for dataset 'flickr8k'"):
        load_reference(openclip_csv, "ViT-B-32/openai", "flickr8k")


def test_delta_table_is_ours_minus_reference(openclip_csv):
    ref = load_reference(openclip_csv, "ViT-B-32/laion2b_s34b_b79k", "flickr30k")
    ours = {k: v - 0.01 * (i + 1) for i, (k, v) in enumerate(sorted(ref.metrics.items()))}
    ours["rsum"] = 123.0  # ignored: the table recomputes rsum from the six recalls
    d = deltas(ours, ref)
    assert set(d) == set(ref.metrics)
    for k in ref.metrics:
        assert d[k]["delta"] == pytest.approx(ours[k] - ref.metrics[k])
    table = delta_table(ours, ref, label="ViT-B-32 (ours)")
    lines = table.splitlines()
    assert lines[0] == "| run | I→T R@1 | I→T R@5 | I→T R@10 | T→I R@1 | T→I R@5 | T→I R@10 | rsum |"
    assert lines[3].startswith("| reference: ViT-B-32 / laion2b_s34b_b79k | 84.1 | 96.2 | 98.3 | 66.8 | 88.4 | 93.1 |")
    ref_rsum = 100 * sum(ref.metrics.values())
    assert lines[3].endswith(f"| {ref_rsum:.1f} |")
    delta_cells = [c.strip() for c in lines[4].strip("|").split("|")][1:]
    expected = [100 * d[f"{dirn}@{k}"]["delta"] for dirn in ("text_retrieval_recall", "image_retrieval_recall")
                for k in (1, 5, 10)]
    assert delta_cells == [f"{v:+.1f}" for v in expected] + [f"{sum(expected):+.1f}"]


def test_delta_table_accepts_our_retrieval_metrics(openclip_csv):
    import numpy as np

    rng = np.random.default_rng(0)
    owners = np.repeat(np.arange(20), 5)
    sim = rng.standard_normal((100, 20)) + 3 * (owners[:, None] == np.arange(20))
    ours = retrieval_recall(sim, owners)
    table = delta_table(ours, load_reference(openclip_csv, "ViT-B-32/openai", "coco"))
    assert table.count("\n| ") == 3 and "MSCOCO columns" in table  # ours, reference, delta


def test_clip_benchmark_json_and_flat_rows(tmp_path):
    dump = {"dataset": "wds/flickr30k", "model": "ViT-B-32", "pretrained": "openai", "task": "zeroshot_retrieval",
            "metrics": {"image_retrieval_recall@5": 0.83, "text_retrieval_recall@5": 0.95}, "language": "en"}
    path = tmp_path / "cb.json"
    path.write_text(json.dumps(dump))
    ref = load_reference(path, "ViT-B-32/openai", "flickr30k")
    assert ref.metrics == {"image_retrieval_recall@5": 0.83, "text_retrieval_recall@5": 0.95}
    assert "rsum" not in delta_table({"image_retrieval_recall@5": 0.8, "text_retrieval_recall@5": 0.9}, ref,
                                     ks=(5,)).splitlines()[0]
    rows = [{"model": "m", "dataset": "coco", "image_retrieval_recall@1": 0.5},
            {"model": "m", "dataset": "flickr30k", "image_retrieval_recall@1": 0.7}]
    path.write_text(json.dumps(rows))
    assert load_reference(path, "m", "flickr30k").metrics == {"image_retrieval_recall@1": 0.7}
    path.write_text(json.dumps([{"model": "m", "dataset": "coco", "image_retrieval_recall@1": 57.0}]))
    with pytest.raises(ValueError, match=r"57.0; recalls must be fractions"):
        load_reference(path, "m", "coco")
    with pytest.raises(ValueError, match="no metric in common"):
        deltas({"rsum": 1.0}, ref)


def test_split_model_id():
    assert split_model_id("ViT-B-32/laion2b_s34b_b79k") == ("ViT-B-32", "laion2b_s34b_b79k")
    assert split_model_id("ViT-B-32,openai") == ("ViT-B-32", "openai")
    assert split_model_id("lite") == ("lite", None)
    assert split_model_id("hf-hub:org/repo") == ("hf-hub:org/repo", None)
