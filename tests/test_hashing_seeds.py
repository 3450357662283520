"""eval.hashing_seeds: MAP@50 mean ± sd over seeded eval.hashing reports, paired against the
baseline seed by seed, the goal's tolerance counted per seed and on the mean, and runs that differ
in more than the seed refused. Synthetic reports: no hasher is fitted."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eval.hashing_seeds import main


def report(seed, base_map, mgsgh_map, **changes):
    def row(m):
        return {"i2t": {"map@50": m, "map@all": m, "p@10": m}, "t2i": {"map@50": 3 * m, "map@all": m, "p@10": m}}
    out = {"dataset": {"name": "wiki"}, "data": "wikiData.mat", "supervised": True,
           "hasher_args": {"mgsgh": {"k": 0}}, "conventions": {"ties": "expected"}, "seed": seed,
           "results": {"contrastive": {"64": row(base_map)}, "mgsgh": {"64": row(mgsgh_map)}}}
    return {**out, **changes}


def write(tmp_path, reports):
    paths = []
    for i, r in enumerate(reports):
        paths.append(tmp_path / f"s{i}.json")
        paths[-1].write_text(json.dumps(r))
    return [str(p) for p in paths]


def test_paired_map_difference_and_the_tolerance_per_seed_and_on_the_mean(tmp_path, capsys):
    # i2t differences -.03, -.01, +.01: within .02 in two seeds, mean -.01 within
    paths = write(tmp_path, [report(0, .30, .27), report(1, .30, .29), report(2, .28, .29)])
    s = main(paths + ["--output", str(tmp_path / "out.json")])
    diff = s["map@50_minus_baseline"]["mgsgh"]["64"]["i2t"]
    assert np.allclose(diff["runs"], [-.03, -.01, .01]) and diff["ahead_in"] == 1
    assert np.isclose(s["results"]["mgsgh"]["64"]["i2t"]["map@50"]["sd"], np.std([.27, .29, .29]))
    out = capsys.readouterr().out
    assert "mgsgh 64 bits i2t" in out and "within 0.02 in 2 of 3; mean within: yes" in out
    assert "within 0.02 in 1 of 3; mean within: no" in out  # t2i triples every gap: -.09, -.03, +.03
    assert json.loads((tmp_path / "out.json").read_text())["within"] == 0.02


def test_runs_that_differ_in_more_than_the_seed_or_bad_files_are_refused(tmp_path):
    paths = write(tmp_path, [report(0, .3, .3), report(1, .3, .3, hasher_args={"mgsgh": {"k": 5}})])
    with pytest.raises(SystemExit, match="differ in 'hasher_args'"):
        main(paths)
    (tmp_path / "old.json").write_text(json.dumps({"results": {}}))
    with pytest.raises(SystemExit, match="old.json: not an eval.hashing report with a seed"):
        main([paths[0], str(tmp_path / "old.json")])
