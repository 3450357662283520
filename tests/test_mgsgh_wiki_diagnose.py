"""scripts/mgsgh_wiki_diagnose.py on a tiny Wiki-layout file: folds, MAP@50 and class-hit columns."""

from __future__ import annotations

from conftest import load_script
from test_eval_hashing import write_wiki_like


def test_diagnosis_scores_folds_and_finds_separable_classes(tmp_path):
    write_wiki_like(tmp_path / "w.mat")  # three well-separated classes: codes must find their class
    report = load_script("mgsgh_wiki_diagnose").main([
        "--data", str(tmp_path / "w.mat"), "--bits", "16", "--seeds", "0", "1",
        "--set", "epochs=20", "--set", "hidden_dim=16", "--output", str(tmp_path / "d.json")])
    assert [f["seed"] for f in report["folds"]] == [0, 1]
    for key in ("i2t", "t2i", "image_class_fitted", "image_class_held", "text_class_held"):
        assert 0 <= report["mean"][key] <= 1
    assert report["mean"]["image_class_held"] > 0.9 and report["mean"]["text_class_held"] > 0.9
    assert (tmp_path / "d.json").exists()
