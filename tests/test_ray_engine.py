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
            while len(list(shard_folder(out).glob("shard-*.npz"))) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        index(out, photos, engine="ray", on_chunk=stop)
    written = len(list(shard_folder(out).glob("shard-*.npz")))  # whole shards: a kill can leave a temp file beside them
    assert written >= 2
    report = index(out, photos, engine="ray")
    assert report.shards_reused == written - 1  # every written shard but the committed one
    index(tmp_path / "local", photos)
    same_index(out, tmp_path / "local")


#: Indexes ``photos`` into ``out`` with the Ray engine on the cluster at ``address``, then kills
#: itself with SIGKILL (no handler, no cleanup: kill -9) once the first chunk is committed and a
#: second shard is on disk. It joins the cluster first with the PYTHONPATH its actors need (a job's
#: runtime_env is its own), so the engine finds Ray started and uses it.
KILLED_RUN = r"""
import os, signal, sys, time
from pathlib import Path
import ray
ray.init(address=sys.argv[3], log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}})
from retrieval.collection import FolderIndexer
from retrieval.ray_engine import shard_folder
from toy_encoder import ToyEncoder

out, photos = Path(sys.argv[1]), Path(sys.argv[2])

def kill(position):
    if position >= 4:
        deadline = time.monotonic() + 120
        while len(list(shard_folder(out).glob("shard-*.npz"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGKILL)

FolderIndexer(out, encoder=ToyEncoder(), progress=False, chunk_size=4, fit_chunk_size=4, engine="ray",
              on_chunk=kill).run([photos])
"""


def test_a_rerun_after_kill_9_holds_every_image_once_and_searches(photos, tmp_path):
    import signal
    import subprocess
    import sys

    out = tmp_path / "ray"
    tests = Path(toy_encoder.__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests), str(tests.parent), os.environ.get("PYTHONPATH", "")])}
    address = ray.get_runtime_context().gcs_address
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN, str(out), str(photos), address], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    written = len(list(shard_folder(out).glob("shard-*.npz")))  # whole shards: a kill can leave a temp file beside them
    assert written >= 2
    assert 0 < len(stored(out)) < len(COLORS), "killed part way: some images committed, not all"
    report = index(out, photos, engine="ray")  # the rerun, on this process's Ray
    assert report.shards_reused == written - 1  # every shard written but not committed; the committed one is skipped
    index(tmp_path / "local", photos)
    same_index(out, tmp_path / "local")  # every image once, same ids, codes and vectors
    r = Retriever.open(out, encoder=ToyEncoder())
    try:
        assert Path(r.search("navy", k=1, rerank="float")[0].payload["path"]).name == "navy.png"
    finally:
        r.close()
