"""The OpenAPI document says what the server does: schemathesis ``--checks all`` finds nothing.

A real ``crossmodal serve`` (``python -m retrieval serve``) on a loopback port, over a small index
of generated images built in a temporary folder, fuzzed by schemathesis' command line with and
without ``--token``; bounded (``--max-examples``), about a minute on two cores. One expectation is
configured: an upload that is not an image is a 415, which the document declares but cannot
predict (the bytes' meaning is beyond a schema), so 415 counts as an accepted answer to a
schema-valid request.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCHEMATHESIS = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(SCHEMATHESIS is None, reason="schemathesis not installed "
                                                   "(the dev extra)")]
CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "415", "429", "5xx"]
"""


def env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (64 + 8 * i, 96, 3), dtype=np.uint8)).save(root / f"{i:02d}.png")
    out = root / "index"
    result = subprocess.run([sys.executable, "-m", "retrieval", "index", str(root), "--out", str(out), "-q"],
                            cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("token", [None, "s3cret-token"])
def test_schemathesis_finds_no_contract_failure(index, tmp_path, token):
    port = free_port()
    cmd = [sys.executable, "-m", "retrieval", "serve", str(index), "--host", "127.0.0.1", "--port", str(port),
           "--no-access-log", "--log-level", "warning"] + (["--token", token] if token else [])
    server = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stderr.read()
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)
        document = httpx.get(url + "/openapi.json").json()
        schemes = document.get("components", {}).get("securitySchemes", {})
        assert bool(schemes) == bool(token), "a bearer scheme is declared exactly when the server enforces one"
        (tmp_path / "schemathesis.toml").write_text(CONFIG)
        args = [SCHEMATHESIS, "--config-file", str(tmp_path / "schemathesis.toml"), "run", url + "/openapi.json",
                "--checks", "all", "--max-examples", "15", "--seed", "22", "--workers", "1"]
        if token:
            args += ["-H", f"Authorization: Bearer {token}"]
        fuzz = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert fuzz.returncode == 0, fuzz.stdout[-6000:] + fuzz.stderr[-2000:]
        assert " passed" in fuzz.stdout and "failed" not in fuzz.stdout.lower().replace("0 failed", "")
    finally:
        server.terminate()
        server.wait(timeout=30)
