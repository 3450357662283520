"""scripts/mgsgh_ablation.py on a tiny synthetic Flickr8K-shaped cache: the fine variant runs from the
fine-feature cache, runs merge across invocations, the gain is paired by seed, Wiki refuses --fine."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import load_script
from test_fine_features import split_arrays, write_karpathy


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("f8k")
    annotations = write_karpathy(folder, 4, 3)  # 2 captions per image
    rng = np.random.default_rng(0)
    arrays = {**split_arrays("train", 4, 8), **split_arrays("test", 3, 6)}
    for k in list(arrays):
        if arrays[k].dtype == np.float16:
            arrays[k] = rng.normal(size=arrays[k].shape).astype(np.float16)
    for split, n_img, n_txt in (("train", 4, 8), ("test", 3, 6)):
        arrays[f"{split}_image"] = rng.normal(size=(n_img, 6)).astype(np.float32)
        arrays[f"{split}_text"] = rng.normal(size=(n_txt, 6)).astype(np.float32)
    cache = folder / "fine.npz"
    np.savez(cache, **arrays)
    return annotations, cache


def test_variants_merge_and_the_fine_gain_is_paired_by_seed(tiny, tmp_path):
    annotations, cache = tiny
    script = load_script("mgsgh_ablation")
    common = ["--dataset", "flickr8k", "--data", str(annotations), "--fine", str(cache), "--bits", "16",
              "--seeds", "0", "1", "--set", "k=2", "--set", "epochs=1", "--set", "hidden_dim=8",
              "--output", str(tmp_path / "a.json")]
    script.main(common + ["--variants", "Full (with fine branch)"])
    report = script.main(common + ["--variants", "Full (no fine branch)"])
    saved = json.loads((tmp_path / "a.json").read_text())
    assert list(saved["results"]) == ["Full (no fine branch)", "Full (with fine branch)"] and len(saved["commands"]) == 2
    runs = {name: saved["results"][name]["16"]["i2t_R@1"]["runs"] for name in saved["results"]}
    expected = np.subtract(runs["Full (with fine branch)"], runs["Full (no fine branch)"])
    assert np.allclose(report["fine_gain"]["16"]["i2t_R@1"]["runs"], expected)
    with pytest.raises(SystemExit):  # other shared settings: refuses to merge into that file
        script.main([a if a != "epochs=1" else "epochs=2" for a in common] + ["--variants", "Nothing"])


def test_wiki_refuses_the_fine_branch(capsys):
    with pytest.raises(SystemExit):
        load_script("mgsgh_ablation").main(["--dataset", "wiki", "--data", "x.mat", "--fine", "y.npz"])
    assert "only the global branch runs there" in capsys.readouterr().err
