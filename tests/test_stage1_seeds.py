"""eval.stage1_seeds: mean ± sd over seeded eval.stage1 reports, paired against the baseline, and
refusing runs that differ in more than the seed. Synthetic reports: no hasher is fitted."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eval.stage1_seeds import main, summarise


def report(seed, itq_r1, mgsgh_r1, **changes):
    def row(r1):
        d = {"hash_R@1": r1, "hash_R@5": 2 * r1, "hash_R@10": 3 * r1, "top10_in_candidates": 0.9,
             "fit_seconds": 4.0, "encode_items_per_s": 1000.0}
        return {"i2t": d, "t2i": {**d, "hash_R@1": r1 / 2}}
    base = {"dataset": "flickr8k-1k test", "embeddings": "e.npz", "model": "lite", "candidates": 128,
            "hamming_candidates": [], "fit_pairs": 30000, "multi_positive": False,
            "hasher_args": {"mgsgh": {"k": 0}}, "fine": None, "seed": seed,
            "results": {"itq": {"64": row(itq_r1)}, "mgsgh": {"64": row(mgsgh_r1)}}}
    return {**base, **changes}


def test_mean_sd_and_the_paired_difference_per_seed():
    s = summarise([report(0, 0.10, 0.12), report(1, 0.12, 0.11), report(2, 0.11, 0.13)])
    r1 = s["results"]["mgsgh"]["64"]["i2t"]["hash_R@1"]
    assert np.isclose(r1["mean"], 0.12) and np.isclose(r1["sd"], np.std([0.12, 0.11, 0.13]))
    diff = s["hash_R@1_minus_baseline"]["mgsgh"]["64"]["i2t"]
    assert np.allclose(diff["runs"], [0.02, -0.01, 0.02]) and diff["ahead_in"] == 2 and diff["of"] == 3
    assert np.isclose(s["hash_R@1_minus_baseline"]["mgsgh"]["64"]["t2i"]["mean"], 0.005)


def test_runs_that_differ_in_more_than_the_seed_are_refused():
    with pytest.raises(ValueError, match="differ in 'hasher_args'"):
        summarise([report(0, .1, .1), report(1, .1, .1, hasher_args={"mgsgh": {"k": 5}})])
    with pytest.raises(ValueError, match="repeat a seed"):
        summarise([report(0, .1, .1), report(0, .1, .1)])
    with pytest.raises(ValueError, match="at least 2"):
        summarise([report(0, .1, .1)])


def test_the_command_reads_the_files_and_names_a_bad_one(tmp_path, capsys):
    paths = []
    for seed in (0, 1):
        paths.append(tmp_path / f"s{seed}.json")
        paths[-1].write_text(json.dumps(report(seed, 0.10, 0.12 + seed / 100)))
    main([str(p) for p in paths] + ["--output", str(tmp_path / "out.json")])
    assert "ahead in 2 of 2" in capsys.readouterr().out
    assert json.loads((tmp_path / "out.json").read_text())["seeds"] == [0, 1]
    (tmp_path / "old.json").write_text(json.dumps({"results": {}}))  # a report from before --seed was saved
    with pytest.raises(SystemExit, match="old.json: not an eval.stage1 report with a seed"):
        main([str(paths[0]), str(tmp_path / "old.json")])
