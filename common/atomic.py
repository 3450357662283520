"""Atomic saves: a reader sees the old file or directory or the new one, never half of either.

Write into a temporary sibling, fsync it, then rename over the target (and fsync the parent so
the rename itself survives a power loss).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Callable


def fsync_tree(root: Path) -> None:
    for f in sorted(root.rglob("*")):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(root)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_dir(target: str | os.PathLike, write: Any) -> Path:
    """Calls ``write(tmp_dir)`` then swaps the result into ``target`` by rename.

    A crash or exception inside ``write`` leaves any previous ``target`` untouched. Replacing an
    existing directory takes two renames (POSIX has no atomic directory swap); between them the
    previous version survives as ``.NAME.old-PID`` beside the target.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(tmp)
        fsync_tree(tmp)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def atomic_write_file(target: str | os.PathLike, write: Callable[[IO[Any]], None], mode: str = "wb") -> Path:
    """Calls ``write(file_object)`` on a temporary sibling, then renames it over ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def write_json(target: str | os.PathLike, obj: Any) -> Path:
    """Results and configs: indented JSON, written atomically."""
    import json

    return atomic_write_file(target, lambda fh: json.dump(obj, fh, indent=2), mode="w")
