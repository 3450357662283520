"""Lays out a local directory as the Hugging Face Hub client caches a downloaded repo."""

from __future__ import annotations

import shutil
from pathlib import Path


def add_to_hub_cache(cache: Path, repo_id: str, source: Path, commit: str = "0" * 40) -> Path:
    """``cache/models--org--name/{refs/main, snapshots/<commit>/...}``; returns the snapshot dir."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    shutil.copytree(source, snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot
