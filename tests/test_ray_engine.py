"""``--engine ray`` (retrieval/ray_engine.py): the same index as the local engine, resumable at shard
granularity. Few and small: one local Ray (2 CPUs, no dashboard) for the whole module."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import toy_encoder
from retrieval import Retriever
from retrieval.collection import FolderIndexer
from retrieval.ray_engine import shard_folder
from test_collection import solid, stored
from toy_encoder import COLORS, ToyEncoder

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    paths = [str(Path(toy_encoder.__file__).parent), str(Path(toy_encoder.__file__).parents[1])]
    paths += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,  # the actors import tests/toy_encoder
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}})
    yield
    ray.shutdown()


@pytest.fixture(autouse=True)
def quiet_lsh_fallback():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="only .* images to fit")
        yield


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    for name in COLORS:
        solid(root / f"{name}.png", name)
    (root / "red-copy.png").write_bytes((root / "red.png").read_bytes())
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    return root


def index(out: Path, photos: Path, **kwargs):
    return FolderIndexer(out, encoder=ToyEncoder(), progress=False, chunk_size=4, fit_chunk_size=4,
                         **kwargs).run([photos])


def same_index(a: Path, b: Path) -> None:
    left, right = stored(a), stored(b)
    assert sorted(left) == sorted(right)
    for name in left:
        assert left[name][:2] == right[name][:2]  # ids and codes equal
        assert np.allclose(np.frombuffer(left[name][2], np.float32), np.frombuffer(right[name][2], np.float32),
                           atol=1e-6)


def test_ray_engine_builds_the_local_engines_index(photos, tmp_path):
    local = index(tmp_path / "local", photos)
    report = index(tmp_path / "ray", photos, engine="ray")
    assert (report.encoded, report.linked, report.skipped) == (local.encoded, local.linked, local.skipped)
    same_index(tmp_path / "ray", tmp_path / "local")
    assert not shard_folder(tmp_path / "ray").exists()  # committed, so cleared
    r = Retriever.open(tmp_path / "ray", encoder=ToyEncoder())
    try:
        assert Path(r.search("navy", k=1, rerank="float")[0].payload["path"]).name == "navy.png"
    finally:
        r.close()


def test_a_rerun_after_an_interruption_reuses_the_written_shards(photos, tmp_path):
    out = tmp_path / "ray"

    def stop(position: int) -> None:
        if position >= 4:  # the first chunk is committed; stop once a later shard is on disk too
            deadline = time.monotonic() + 120
            while len(list(shard_folder(out).iterdir())) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        index(out, photos, engine="ray", on_chunk=stop)
    written = len(list(shard_folder(out).iterdir()))
    assert written >= 2
    report = index(out, photos, engine="ray")
    assert report.shards_reused == written - 1  # every written shard but the committed one
    index(tmp_path / "local", photos)
    same_index(out, tmp_path / "local")
