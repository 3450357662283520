"""The ``crossmodal`` command line end to end with the lite encoder on real Flickr8K photos.

Includes the crash tests: a real ``kill -9`` of an indexing process at an arbitrary moment, and
one inside a commit (after a chunk file is written, before its rows are), then a rerun that must
equal an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FLICKR8K
from test_collection import stored

pytestmark = pytest.mark.data
ROOT = Path(__file__).resolve().parents[1]
N_PHOTOS = 48


def crossmodal(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "retrieval", *args], capture_output=True, text=True,
                            cwd=ROOT, env=env, timeout=600, **kwargs)
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def flickr() -> dict:
    data = json.loads((FLICKR8K / "dataset_flickr8k.json").read_text())
    return {im["filename"]: [s["raw"] for s in im["sentences"]] for im in data["images"] if im["split"] == "test"}


@pytest.fixture(scope="module")
def photos(tmp_path_factory, flickr) -> Path:
    """N_PHOTOS test-split photos in two folders, plus an empty and a truncated file."""
    root = tmp_path_factory.mktemp("album")
    for i, name in enumerate(sorted(flickr)[:N_PHOTOS]):
        target = root / ("2019" if i % 2 else "2020") / name
        target.parent.mkdir(exist_ok=True)
        shutil.copy(FLICKR8K / "images" / name, target)
    (root / "2020" / "empty.jpg").write_bytes(b"")
    data = (FLICKR8K / "images" / sorted(flickr)[-1]).read_bytes()
    (root / "2019" / "cut.jpg").write_bytes(data[: len(data) // 3])
    return root


@pytest.fixture(scope="module")
def clean_index(tmp_path_factory, photos) -> Path:
    out = tmp_path_factory.mktemp("clean") / "index"
    crossmodal("index", str(photos), "--out", str(out), "--chunk-size", "4", "--batch-size", "4", "-q")
    return out


def committed_chunks(index: Path) -> int:
    try:
        db = sqlite3.connect(f"file:{index / 'store.sqlite'}?mode=ro", uri=True, timeout=1)
        try:
            return db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return 0


def test_index_search_and_info_end_to_end(clean_index, photos, flickr, tmp_path):
    captions = tmp_path / "captions.jsonl"
    names = sorted(flickr)[:N_PHOTOS]
    with captions.open("w") as fh:
        for i, name in enumerate(names[:10]):
            path = f"{'2019' if i % 2 else '2020'}/{name}"
            for c in flickr[name][:2]:
                fh.write(json.dumps({"path": path, "caption": c}) + "\n")
    out = tmp_path / "captioned"
    run = crossmodal("index", str(photos), "--out", str(out), "--captions", str(captions), "-q")
    assert f"{N_PHOTOS + 2} images found, {N_PHOTOS} encoded" in run.stdout
    assert "captions +20 -0" in run.stdout and "2 skipped" in run.stdout
    assert "empty.jpg: file is empty" in run.stdout and "cut.jpg" in run.stdout
    # text -> images
    query = flickr[names[3]][0]
    result = json.loads(crossmodal("search", str(out), query, "-k", "5", "--json").stdout)
    assert [h["rank"] for h in result["hits"]] == [1, 2, 3, 4, 5]
    assert all(h["modality"] == "image" and Path(h["item"]).is_file() for h in result["hits"])
    assert names[3] in [Path(h["item"]).name for h in result["hits"]]
    assert set(result["timings_ms"]) == {"encode_ms", "stage1_ms", "stage2_ms"}
    # image -> captions (the index has some), and the plain-text listing
    image = next(photos.rglob(names[0]))
    text = crossmodal("search", str(out), "--image", str(image), "-k", "3").stdout.splitlines()
    assert len(text) == 3 and text[0].split()[0] == "1" and "hamming" in text[0]
    hits = json.loads(crossmodal("search", str(out), "--image", str(image), "-k", "20", "--json").stdout)["hits"]
    assert {h["modality"] for h in hits} == {"text"} and any(h["payload"]["path"].endswith(names[0]) for h in hits)
    # image -> images on request
    hits = json.loads(crossmodal("search", str(out), "--image", str(image), "--target", "image", "-k", "1",
                                 "--json").stdout)["hits"]
    assert Path(hits[0]["item"]).name == names[0]
    info = json.loads(crossmodal("info", str(out), "--json").stdout)
    assert (info["images"], info["texts"], info["files"], info["skipped_files"]) == (N_PHOTOS, 20, N_PHOTOS + 2, 2)
    assert (info["encoder"], info["hasher"], info["bits"], info["vectors"]) == ("lite", "itq", 64, "fp16")
    assert "images" in crossmodal("info", str(out)).stdout


def test_user_errors_are_one_line_and_exit_2(tmp_path, clean_index):
    for args, message in [
        (("index", str(tmp_path / "nowhere"), "--out", str(tmp_path / "i")), "no such file or folder"),
        (("search", str(tmp_path / "nothing"), "a dog"), "no such directory"),
        (("search", str(clean_index)), "either a text query or --image"),
        (("search", str(clean_index), "--image", str(tmp_path / "missing.jpg")), "no such file"),
        (("info", str(tmp_path)), "holds no index"),
    ]:
        result = crossmodal(*args, check=False)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr


def test_kill_9_at_any_moment_then_rerun_equals_an_uninterrupted_run(photos, clean_index, tmp_path):
    out = tmp_path / "index"
    cmd = [sys.executable, "-m", "retrieval", "index", str(photos), "--out", str(out), "--chunk-size", "4",
           "--batch-size", "4", "-q"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while committed_chunks(out) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the indexer finished before it could be killed"
    # between the kill and the rerun the index opens, valid, with fewer items
    partial = stored(out)
    assert 0 < len(partial) < N_PHOTOS
    from retrieval import Retriever

    r = Retriever.open(out)
    assert len(r.galleries["image"]) == len(partial) and r.search("a dog", k=3)
    r.close()
    rerun = crossmodal("index", str(photos), "--out", str(out), "--chunk-size", "4", "--batch-size", "4", "-q")
    assert f"{N_PHOTOS - len(partial)} encoded" in rerun.stdout
    assert stored(out) == stored(clean_index)


def test_kill_9_inside_a_commit_leaves_no_trace(photos, clean_index, tmp_path):
    out = tmp_path / "index"
    script = (
        "import os, signal, sys\n"
        "import retrieval.store as s\n"
        "real, calls = s.save_npy, [0]\n"
        "def dying(path, array):\n"
        "    real(path, array); calls[0] += 1\n"
        "    if calls[0] == 5: os.kill(os.getpid(), signal.SIGKILL)  # third chunk's codes written, rows not\n"
        "s.save_npy = dying\n"
        "from retrieval.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    proc = subprocess.run([sys.executable, "-c", script, "index", str(photos), "--out", str(out), "--chunk-size",
                           "4", "--batch-size", "4", "-q"], cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                          capture_output=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL
    assert committed_chunks(out) == 2 and len(list((out / "chunks").iterdir())) == 5  # one orphan on disk
    crossmodal("index", str(photos), "--out", str(out), "--chunk-size", "4", "--batch-size", "4", "-q")
    assert stored(out) == stored(clean_index)
    assert sorted(p.name for p in (out / "chunks").iterdir()) == sorted(p.name for p in (clean_index / "chunks").iterdir())


def test_rerun_with_nothing_changed_encodes_nothing(photos, clean_index, tmp_path):
    out = tmp_path / "index"
    shutil.copytree(clean_index, out)
    result = crossmodal("index", str(photos), "--out", str(out), "-q")
    assert f"0 encoded, {N_PHOTOS + 2} unchanged" in result.stdout
    assert stored(out) == stored(clean_index)


def test_index_takes_an_ivf_index_and_a_bad_setting_leaves_nothing_behind(photos, flickr, tmp_path):
    out = tmp_path / "ivf"
    bad = crossmodal("index", str(photos), "--out", str(out), "--index", "ivf", "--index-param", "nlists=1", "-q",
                     check=False)
    assert bad.returncode == 2 and "index 'ivf' has no setting 'nlists'; it takes nlist, nprobe" in bad.stderr
    assert "Traceback" not in bad.stderr and not (out.exists() and any(out.iterdir()))
    crossmodal("index", str(photos), "--out", str(out), "--index", "ivf", "--index-param", "nlist=1",
               "--index-param", "nprobe=1", "-q")  # 48 photos >= 39 per list: the cells are trained
    info = json.loads(crossmodal("info", str(out), "--json").stdout)
    assert (info["index_kind"], info["images"]) == ("ivf", N_PHOTOS)
    config = json.loads((out / "retriever.json").read_text())["index"]
    assert config == {"kind": "ivf", "params": {"nlist": 1, "nprobe": 1}}
    image = next(photos.rglob(sorted(flickr)[5]))
    hits = json.loads(crossmodal("search", str(out), "--image", str(image), "--target", "image", "-k", "1",
                                 "--json").stdout)["hits"]
    assert Path(hits[0]["item"]).name == image.name


def test_bits_is_any_whole_number_of_bytes_and_nothing_else(capsys):
    from retrieval.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["index", "photos", "--out", "idx", "--bits", "256"]).bits == 256
    for bad, message in (("12", "multiple of 8"), ("0", "multiple of 8"), ("abc", "not an integer: 'abc'")):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(["index", "photos", "--out", "idx", "--bits", bad])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


HEAVY = ("torch", "transformers", "onnxruntime")
#: What a text search needs not import either (issue 22: together about 0.1 s of a 1 s search).
START_UP = ("tqdm", "PIL", "numpy.ma", "asyncio")


def modules_after(*args: str) -> tuple[subprocess.CompletedProcess, dict]:
    """Runs the command line in a fresh interpreter and reports which heavy libraries it imported."""
    script = ("import json, sys\n"
              "from retrieval.cli import main\n"
              "code = main(sys.argv[1:])\n"
              f"print(json.dumps({{m: m in sys.modules for m in {HEAVY + START_UP!r}}}))\n"
              "sys.exit(code)\n")
    result = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert result.returncode == 0, result.stderr
    return result, json.loads(result.stdout.splitlines()[-1])


def test_text_search_runs_without_torch_and_keeps_stderr_empty(clean_index):
    crossmodal("search", str(clean_index), "warm the ONNX cache", "-k", "1")  # a first export may load torch
    result, modules = modules_after("search", str(clean_index), "a dog runs on the grass", "-k", "3")
    assert {m: modules[m] for m in HEAVY} == {"torch": False, "transformers": False, "onnxruntime": True}
    assert not [m for m in START_UP if modules[m]], modules
    assert result.stderr == "" and len(result.stdout.splitlines()) == 4  # 3 hits and the module report


def test_unchanged_rerun_loads_no_model(photos, clean_index, tmp_path):
    out = tmp_path / "index"
    shutil.copytree(clean_index, out)
    result, modules = modules_after("index", str(photos), "--out", str(out), "-q")
    assert "0 encoded" in result.stdout
    assert {m: modules[m] for m in HEAVY} == {"torch": False, "transformers": False, "onnxruntime": False}


def test_library_warnings_are_off_stderr_unless_verbose_ours_stay():
    from retrieval.cli import build_parser

    assert build_parser().parse_args(["search", "idx", "q", "-v"]).verbose
    assert not build_parser().parse_args(["search", "idx", "q"]).verbose
    script = ("import sys, warnings\n"
              "from retrieval.cli import quiet_libraries\n"
              "quiet_libraries()\n"
              "warnings.warn_explicit('from a library', UserWarning, 'm.py', 1, module='transformers.modeling_utils')\n"
              "warnings.warn_explicit('using LSH', UserWarning, 'c.py', 1, module='retrieval.collection')\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "from a library" not in result.stderr and "using LSH" in result.stderr  # ours still reach the user


def test_image_search_runs_without_torch(clean_index, photos):
    """The image graph runs in ONNX Runtime and its preprocessing in PIL and numpy
    (common.lite_pixels): importing torch and torchvision was most of an image search's 3 s."""
    image = sorted(photos.rglob("*.jpg"))[2]
    crossmodal("search", str(clean_index), "--image", str(image), "-k", "1")  # a first export may load torch
    result, modules = modules_after("search", str(clean_index), "--image", str(image), "-k", "3", "--json")
    assert {m: modules[m] for m in HEAVY} == {"torch": False, "transformers": False, "onnxruntime": True}
    hits = json.loads("\n".join(result.stdout.splitlines()[:-1]))["hits"]  # the last line: modules_after's
    assert len(hits) == 3 and result.stderr == ""
