"""Sharded encoding: a real 2-process ``accelerate launch --cpu`` run equals one process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.tiny_models import save_tiny_transformers_clip

ROOT = Path(__file__).resolve().parents[1]
# Odd counts and batch sizes that do not divide them: uneven shards and a short last batch.
N_TEXTS, TEXT_BATCH = 13, 4
N_IMAGES, IMAGE_BATCH = 11, 3

ITEMS = textwrap.dedent(f"""
    import numpy as np

    def texts():  # lengths vary, so per-batch padding differs between batches
        words = "a dog runs on the beach while two children play with a red ball near the water".split()
        return [" ".join(words[: 2 + (7 * i) % 15]) for i in range({N_TEXTS})]

    def images():
        rng = np.random.default_rng(0)
        return [rng.integers(0, 256, (24 + 8 * (i % 3), 40, 3), dtype=np.uint8) for i in range({N_IMAGES})]
""")

WORKER = textwrap.dedent("""
    import sys
    import torch
    torch.set_num_threads(1)
    from safetensors.numpy import save_file
    from retrieval import load_encoder
    from eval.sharded import encode, encode_sharded, get_state
    from items import images, texts

    model_dir, out_dir, cache_dir = sys.argv[1:4]
    state = get_state()
    encoder = load_encoder(model_dir, device="cpu")
    keys = [f"image-{i}" for i in range(len(images()))]
    out = {
        "texts": encode_sharded(encoder, texts(), "text", batch_size=%(tb)d, progress=False),
        "images": encode_sharded(encoder, images(), "image", batch_size=%(ib)d, progress=False),
        "texts_cached": encode(encoder, texts(), "text", batch_size=%(tb)d, progress=False,
                               cache_dir=cache_dir, chunk_size=%(tb)d),
        "images_cached": encode(encoder, images(), "image", batch_size=%(ib)d, progress=False,
                                cache_dir=cache_dir, chunk_size=%(ib)d, keys=keys),
    }
    save_file(out, f"{out_dir}/rank{state.process_index}.safetensors",
              metadata={"world": str(state.num_processes)})
""") % {"tb": TEXT_BATCH, "ib": IMAGE_BATCH}


def free_port() -> int:
    with socket.socket() as s:  # torchrun's default 29500 may be taken by another run on this machine
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One 2-process CPU launch, shared by the tests below (it is the slow part).

    ``--multi_gpu`` is accelerate's torchrun launcher; with no GPU visible, eval.sharded.get_state
    makes the two processes CPU processes over gloo (``--cpu`` would need MPI for two).
    """
    tmp = tmp_path_factory.mktemp("sharded")
    model_dir = save_tiny_transformers_clip(tmp / "tiny-clip")
    (tmp / "items.py").write_text(ITEMS)
    (tmp / "worker.py").write_text(WORKER)
    out_dir = tmp / "out"
    out_dir.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "HF_HOME": str(tmp / "hf_home"),
           "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(tmp), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()),
           str(tmp / "worker.py"), str(model_dir), str(out_dir), str(tmp / "cache")]
    proc = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"accelerate launch failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    from safetensors import safe_open

    ranks = []
    for r in range(2):
        with safe_open(str(out_dir / f"rank{r}.safetensors"), framework="np") as f:
            assert f.metadata()["world"] == "2", "the launch did not start 2 processes"
            ranks.append({k: f.get_tensor(k) for k in f.keys()})
    return {"model_dir": model_dir, "tmp": tmp, "ranks": ranks}


@pytest.fixture(scope="module")
def single(launched: dict) -> dict:
    """The same encoder in this one process, plain encode_* calls."""
    import torch

    sys.path.insert(0, str(launched["tmp"]))
    try:
        from items import images, texts
    finally:
        sys.path.remove(str(launched["tmp"]))
    from retrieval import load_encoder

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        encoder = load_encoder(str(launched["model_dir"]), device="cpu")
        return {"texts": encoder.encode_texts(texts(), batch_size=TEXT_BATCH, progress=False),
                "images": encoder.encode_images(images(), batch_size=IMAGE_BATCH, progress=False)}
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.parametrize("what", ["texts", "images", "texts_cached", "images_cached"])
def test_two_processes_equal_one(launched: dict, single: dict, what: str) -> None:
    expected = single[what.removesuffix("_cached")]
    assert expected.shape == ((N_TEXTS if what.startswith("texts") else N_IMAGES), 16)
    for rank, out in enumerate(launched["ranks"]):  # every process holds the full, ordered result
        got = out[what]
        assert got.shape == expected.shape, f"rank {rank} {what}"
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6, err_msg=f"rank {rank} {what}")
    # Batches are kept whole across shards, so on CPU the numbers are not merely close but equal.
    np.testing.assert_array_equal(launched["ranks"][0][what], expected)


@pytest.mark.slow
def test_cached_run_wrote_every_chunk_once(launched: dict) -> None:
    entries = sorted(p for p in (launched["tmp"] / "cache").iterdir())
    chunks = {e.name.split("-")[-2]: len(list(e.glob("chunk-*.safetensors"))) for e in entries}
    assert chunks == {"text": -(-N_TEXTS // TEXT_BATCH), "image": -(-N_IMAGES // IMAGE_BATCH)}


def test_one_process_is_the_plain_call() -> None:
    """Without a launcher, PartialState is one process: encode_sharded is encode_texts itself."""
    from eval.sharded import encode_sharded

    class Recorder:
        dim = 3

        def __init__(self) -> None:
            self.calls = []

        def encode_texts(self, texts, batch_size=256, progress=None):
            self.calls.append((list(texts), batch_size))
            return np.arange(3 * len(texts), dtype=np.float32).reshape(len(texts), 3)

    enc = Recorder()
    out = encode_sharded(enc, ["a", "b", "c"], "text", batch_size=2, progress=False)
    assert enc.calls == [(["a", "b", "c"], 2)]
    np.testing.assert_array_equal(out, np.arange(9, dtype=np.float32).reshape(3, 3))
    with pytest.raises(ValueError, match="modality"):
        encode_sharded(enc, ["a"], "audio")
    with pytest.raises(ValueError, match="batch_size"):
        encode_sharded(enc, ["a"], "text", batch_size=0)
