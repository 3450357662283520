"""Feature sets for cross-modal hashing benchmarks: precomputed image/text features plus labels.

Every loader returns a :class:`HashingData`: a ``train`` set of paired rows that hashers fit on,
a ``query`` set and a ``retrieval`` set, each with image and text features and per-modality
labels. Image and text rows of the query / retrieval sets need not be paired (Flickr8K has five
captions per image), so relevance is always taken between a query's labels and an item's labels:
shared class label (``relevance="label"``) or same pair id (``relevance="paired"``).

``.mat`` benchmarks differ only in key names and which split is which, so a new one (MIRFlickr-25K,
NUS-WIDE in the DJSRH/UDDH releases) is a :class:`MatLayout` entry in ``MAT_LAYOUTS``. MATLAB v7.3
files are HDF5 and need h5py (not a dependency yet); scipy reads v5, which is what Wiki ships as.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .hash_metrics import Relevance
from .karpathy import load_karpathy


@dataclass(frozen=True)
class FeatureSet:
    """Image and text features with their labels: (n, c) multi-hot, (n,) class ids, or pair ids."""

    image: np.ndarray
    text: np.ndarray
    image_labels: np.ndarray
    text_labels: np.ndarray


@dataclass(frozen=True)
class HashingData:
    name: str
    train: FeatureSet  # row i of image and text describe the same item; hashers fit on this
    query: FeatureSet
    retrieval: FeatureSet
    relevance: Literal["label", "paired"]
    has_class_labels: bool  # False where labels are only pair ids (no supervised fitting)

    def relevance_for(self, direction: Literal["i2t", "t2i"]) -> Relevance:
        """Image queries against text items (``i2t``) or text queries against image items."""
        if direction == "i2t":
            return Relevance(self.query.image_labels, self.retrieval.text_labels, self.relevance)
        if direction == "t2i":
            return Relevance(self.query.text_labels, self.retrieval.image_labels, self.relevance)
        raise ValueError(f"direction must be 'i2t' or 't2i', got {direction!r}")

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "relevance": self.relevance,
            "train_pairs": len(self.train.image),
            "query": {"image": len(self.query.image), "text": len(self.query.text)},
            "retrieval": {"image": len(self.retrieval.image), "text": len(self.retrieval.text)},
            "image_dim": int(self.train.image.shape[1]),
            "text_dim": int(self.train.text.shape[1]),
        }


@dataclass(frozen=True)
class MatLayout:
    """Key names of one ``.mat`` benchmark. ``train_*`` left ``None``: fit on the retrieval set."""

    query: tuple[str, str, str]  # image, text, labels
    retrieval: tuple[str, str, str]
    train: tuple[str, str, str] | None = None


# Wiki (Rasiwasia et al. 2010, ../shared/data/wiki/README.md): 2,173 training pairs are also the
# retrieval set, 693 test pairs are the queries.
MAT_LAYOUTS: dict[str, MatLayout] = {
    "wiki": MatLayout(query=("I_te", "T_te", "L_te"), retrieval=("I_tr", "T_tr", "L_tr")),
}


def read_mat(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a MATLAB v5 ``.mat`` file by key."""
    from scipy.io import loadmat

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature file not found: {path}")
    try:
        return {k: v for k, v in loadmat(str(path)).items() if not k.startswith("__")}
    except NotImplementedError as e:  # scipy: "Please use HDF reader for matlab v7.3 files"
        raise ValueError(f"{path} is a MATLAB v7.3 (HDF5) file; reading it needs h5py: {e}") from e
    except ValueError as e:
        raise ValueError(f"{path} is not a readable .mat file: {e}") from e


def _features(arrays: dict[str, np.ndarray], key: str, path: Path) -> np.ndarray:
    if key not in arrays:
        raise ValueError(f"{path} has no key {key!r}; it has: {', '.join(sorted(arrays))}")
    x = np.asarray(arrays[key])
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{path}:{key} must be a 2-D numeric (n, d) matrix, got shape {x.shape} dtype {x.dtype}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"{path}:{key} contains NaN or infinite values")
    return x


def _labels(arrays: dict[str, np.ndarray], key: str, path: Path, n: int) -> np.ndarray:
    if key not in arrays:
        raise ValueError(f"{path} has no key {key!r}; it has: {', '.join(sorted(arrays))}")
    y = np.asarray(arrays[key])
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]  # class ids stored as a column
    if y.ndim == 1:
        if not np.issubdtype(y.dtype, np.number) or not np.array_equal(y, np.round(y)):
            raise ValueError(f"{path}:{key} must hold integer class ids, got dtype {y.dtype}")
        y = y.astype(np.int64)
    elif y.ndim == 2:
        if not np.isin(y, (0, 1)).all():
            raise ValueError(f"{path}:{key} of shape {y.shape} must be multi-hot with values in {{0, 1}}")
        y = y.astype(np.uint8)
    else:
        raise ValueError(f"{path}:{key} must be (n,), (n, 1) or (n, c), got shape {y.shape}")
    if len(y) != n:
        raise ValueError(f"{path}:{key} has {len(y)} rows, expected {n} like its features")
    return y


def _mat_split(arrays: dict[str, np.ndarray], keys: tuple[str, str, str], path: Path) -> FeatureSet:
    image, text = _features(arrays, keys[0], path), _features(arrays, keys[1], path)
    if len(image) != len(text):
        raise ValueError(f"{path}: {keys[0]} has {len(image)} rows but {keys[1]} has {len(text)}; rows must be pairs")
    labels = _labels(arrays, keys[2], path, len(image))
    return FeatureSet(image, text, labels, labels)


def load_mat_dataset(path: str | Path, layout: MatLayout | str, name: str | None = None) -> HashingData:
    """A label-relevance benchmark from one ``.mat`` file laid out as ``layout``."""
    path = Path(path)
    if isinstance(layout, str):
        if layout not in MAT_LAYOUTS:
            raise ValueError(f"unknown .mat layout {layout!r}; known: {', '.join(MAT_LAYOUTS)}")
        name, layout = name or layout, MAT_LAYOUTS[layout]
    arrays = read_mat(path)
    query = _mat_split(arrays, layout.query, path)
    retrieval = _mat_split(arrays, layout.retrieval, path)
    train = retrieval if layout.train is None else _mat_split(arrays, layout.train, path)
    for split, fs in (("query", query), ("train", train)):
        if fs.image.shape[1] != retrieval.image.shape[1] or fs.text.shape[1] != retrieval.text.shape[1]:
            raise ValueError(f"{path}: {split} feature dims differ from the retrieval set's")
    return HashingData(name or path.stem, train, query, retrieval, "label", has_class_labels=True)


def load_wiki(path: str | Path) -> HashingData:
    """Wiki: 693 query pairs, 2,173 retrieval (= training) pairs, 10 classes (``wikiData.mat``)."""
    return load_mat_dataset(path, "wiki")


# --------------------------------------------------------------------------------------------
# Flickr8K: encoder embeddings of Karpathy splits, paired relevance
# --------------------------------------------------------------------------------------------
FLICKR8K_SPLITS = {"train": "train", "query": "test"}


def load_flickr8k(
    embeddings: str | Path, annotations: str | Path, images: str | Path | None = None
) -> HashingData:
    """Flickr8K from an ``.npz`` of encoder embeddings aligned with :func:`eval.karpathy.load_karpathy`.

    The cache holds ``train_image`` (6000, d), ``train_text`` (30000, d), ``test_image`` (1000, d)
    and ``test_text`` (5000, d), rows in the order ``load_karpathy`` lists images and captions
    (see :func:`save_embeddings`). Hashers fit on every (train caption, its image) pair; the 1,000
    test images and 5,000 test captions are both the queries and the retrieval set (Flickr8K-1K),
    an image being relevant exactly to its own captions.
    """
    embeddings, annotations = Path(embeddings), Path(annotations)
    images = Path(images) if images is not None else annotations.parent / "images"
    if not embeddings.is_file():
        raise FileNotFoundError(f"embedding cache not found: {embeddings}")
    with np.load(embeddings, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    sets = {}
    for role, split in FLICKR8K_SPLITS.items():
        ds = load_karpathy(annotations, images, split=split, check_files=False)
        image = _features(arrays, f"{split}_image", embeddings)
        text = _features(arrays, f"{split}_text", embeddings)
        if len(image) != ds.n_images or len(text) != len(ds.captions):
            raise ValueError(
                f"{embeddings}: {split}_image/{split}_text have {len(image)}/{len(text)} rows but {annotations} "
                f"split {split!r} has {ds.n_images} images / {len(ds.captions)} captions; re-encode the cache"
            )
        image_ids = np.arange(ds.n_images, dtype=np.int64)
        sets[role] = (image, text, image_ids, ds.caption_image)
    image, text, _, owner = sets["train"]
    train = FeatureSet(image[owner], text, owner, owner)
    query = FeatureSet(*sets["query"])
    return HashingData("flickr8k", train, query, query, "paired", has_class_labels=False)


def save_embeddings(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """Writes an embedding cache atomically; no pickle."""
    from retrieval.atomic import atomic_write_file

    return atomic_write_file(path, lambda fh: np.savez(
        fh, **{k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}))


def encode_flickr8k(
    model_id: str, annotations: str | Path, images: str | Path | None, out: str | Path,
    batch_size: int = 64, progress: bool = True,
) -> Path:
    """Encodes the Flickr8K train and test splits with ``retrieval.encoders.load_encoder(model_id)``
    and writes the cache :func:`load_flickr8k` reads."""
    try:
        from retrieval.encoders import load_encoder
    except ImportError as e:
        raise RuntimeError(
            "encoding Flickr8K needs retrieval.encoders.load_encoder; pass a precomputed --embeddings cache instead"
        ) from e
    annotations = Path(annotations)
    images = Path(images) if images is not None else annotations.parent / "images"
    encoder = load_encoder(model_id)
    arrays = {}
    for split in FLICKR8K_SPLITS.values():
        ds = load_karpathy(annotations, images, split=split)
        arrays[f"{split}_image"] = encoder.encode_images([str(p) for p in ds.image_paths],
                                                         batch_size=batch_size, progress=progress)
        arrays[f"{split}_text"] = encoder.encode_texts(ds.captions, progress=progress)
    return save_embeddings(out, arrays)


DATASETS = ("wiki", "flickr8k")
