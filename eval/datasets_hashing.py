"""Feature sets for cross-modal hashing benchmarks: precomputed image/text features plus labels.

Every loader returns a :class:`HashingData`: a ``train`` set of paired rows that hashers fit on,
a ``query`` set and a ``retrieval`` set, each with image and text features and per-modality
labels. Image and text rows of the query / retrieval sets need not be paired (Flickr8K has five
captions per image), so relevance is always taken between a query's labels and an item's labels:
shared class label (``relevance="label"``, multi-label sets: at least one shared label) or same
pair id (``relevance="paired"``).

Two file layouts cover the literature's releases:

* one ``.mat`` with the splits already cut (Wiki: ``I_tr``/``T_tr``/``L_tr``, ``I_te``/...), a
  :class:`MatLayout` in ``MAT_LAYOUTS``;
* whole-collection matrices ``XAll`` (image features), ``YAll`` (text / tag features) and
  ``LAll`` (multi-hot labels), one file each or all in one, as DJSRH and UCCH distribute
  MIRFlickr-25K, NUS-WIDE TC-10 and MS-COCO (:data:`ALL_LAYOUTS`); the query / retrieval / train
  split is then a :class:`SplitProtocol` taken from the code that defines it.

Files may be MATLAB v5 (scipy), MATLAB v7.3 (HDF5: read with h5py and transposed, since MATLAB
writes column-major and h5py shows the dimensions reversed) or plain HDF5 written from Python
(UCCH's ``.h5py``; read as stored). Only the named matrices are read: DJSRH's pixel files
(``*-iall.mat``, tens of GB) are never touched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from .extras import require
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
    split_protocol: str = ""  # how query / retrieval / train were cut, and whose convention

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
            **({"split_protocol": self.split_protocol} if self.split_protocol else {}),
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


MATLAB_V73_HEADER = b"MATLAB 7.3 MAT-file"


def array_file_format(path: str | Path) -> Literal["mat5", "mat73", "hdf5"]:
    """MATLAB v5, MATLAB v7.3 (HDF5 with a MATLAB header, column-major) or plain HDF5."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature file not found: {path}")
    with path.open("rb") as fh:
        head = fh.read(128)
    if head.startswith(MATLAB_V73_HEADER):
        return "mat73"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "hdf5"
    return "mat5"  # v5 / v6 (and headerless v4): scipy says so if it is none of them


def _h5py(path: Path) -> Any:
    return require("h5py", f"reading {path} (HDF5: MATLAB v7.3 or .h5)")


def list_arrays(path: str | Path) -> list[str]:
    """Names of the numeric matrices in a file, without reading them."""
    path = Path(path)
    fmt = array_file_format(path)
    if fmt == "mat5":
        from scipy.io import whosmat

        try:
            return [name for name, _, _ in whosmat(str(path))]
        except (ValueError, TypeError, OSError) as e:
            raise ValueError(f"{path} is neither a readable .mat file nor HDF5: {e}") from e
    h5py = _h5py(path)
    with h5py.File(path, "r") as f:
        return [k for k, v in f.items() if isinstance(v, h5py.Dataset) and not k.startswith("#")]


def read_arrays(path: str | Path, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """The named matrices (all numeric ones when ``keys`` is None), rows = items in every format.

    A missing key is a ValueError naming the file, the key and what the file holds.
    """
    path = Path(path)
    fmt = array_file_format(path)
    present = list_arrays(path)
    wanted = present if keys is None else list(keys)
    missing = [k for k in wanted if k not in present]
    if missing:
        raise ValueError(f"{path} has no variable {missing[0]!r}; it has: {', '.join(present) or 'none'}")
    if fmt == "mat5":
        from scipy.io import loadmat

        try:
            arrays = loadmat(str(path), variable_names=wanted)
        except ValueError as e:
            raise ValueError(f"{path} is not a readable .mat file: {e}") from e
        return {k: arrays[k] for k in wanted}
    h5py = _h5py(path)
    with h5py.File(path, "r") as f:
        out = {}
        for k in wanted:
            a = np.asarray(f[k][()])
            out[k] = a.T if fmt == "mat73" else a  # MATLAB column-major: h5py shows (d, n) for (n, d)
        return out


def read_mat(path: str | Path) -> dict[str, np.ndarray]:
    """Every numeric matrix of a ``.mat`` (v5 or v7.3) or HDF5 file by key."""
    return read_arrays(path)


def _features(arrays: dict[str, np.ndarray], key: str, path: Path) -> np.ndarray:
    if key not in arrays:
        raise ValueError(f"{path} has no key {key!r}; it has: {', '.join(sorted(arrays))}")
    x = np.asarray(arrays[key])
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{path}:{key} must be a 2-D numeric (n, d) matrix, got shape {x.shape} dtype {x.dtype}")
    x = x.astype(np.float32, copy=False)
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
# MIRFlickr-25K, NUS-WIDE TC-10, MS-COCO: XAll / YAll / LAll over the whole collection
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SplitProtocol:
    """How one paper cuts XAll/YAll/LAll rows into query, retrieval and training sets.

    ``kind="last"``: the last ``query`` rows are the queries, every other row is both retrieval set
    and training set (UCCH, ``src/cmdataset.py``: ``data[-test_size:]`` / ``data[0:-test_size]``,
    ``partition="retrieval"`` = ``"train"``). ``kind="first"``: the first ``query`` rows are the
    queries, the next ``train`` rows the training set, all rows after the queries the retrieval set
    (DCMH, ``DCMH_demo.py`` ``split_data``). ``kind="per_label"``: DJSRH's ``datasets.py``: for each
    label column in turn, a random permutation of the rows carrying that label not yet taken gives
    ``(query, train)`` rows (``first`` for label 0, ``rest`` after); the training set is then topped
    up to ``train`` rows from the retrieval set when ``top_up``; retrieval = every row not a query
    (training rows included). DJSRH draws from numpy's unseeded global generator; here the draw is
    seeded, so it is reproducible but not DJSRH's own draw.
    """

    kind: Literal["last", "first", "per_label"]
    source: str
    query: int = 0
    train: int | None = None
    first: tuple[int, int] = (0, 0)
    rest: tuple[int, int] = (0, 0)
    top_up: bool = False

    def split(self, labels: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query, retrieval, train) row indices for a (n, c) multi-hot label matrix."""
        n = len(labels)
        if self.kind == "last":
            self._need(n, self.query + 1)
            retrieval = np.arange(n - self.query)
            return np.arange(n - self.query, n), retrieval, retrieval
        if self.kind == "first":
            self._need(n, self.query + (self.train or 0) + 1)
            return (np.arange(self.query), np.arange(self.query, n),
                    np.arange(self.query, self.query + (self.train or n - self.query)))
        if labels.ndim != 2:
            raise ValueError(f"the per-label split needs (n, c) multi-hot labels, got shape {labels.shape}")
        rng = np.random.default_rng(seed)
        taken = np.zeros(n, dtype=bool)
        query: list[np.ndarray] = []
        train: list[np.ndarray] = []
        for c in range(labels.shape[1]):
            rows = np.flatnonzero(labels[:, c] == 1)
            rows = rows[rng.permutation(len(rows))]
            rows = rows[~taken[rows]]
            n_query, n_train = self.first if c == 0 else self.rest
            query.append(rows[:n_query])
            train.append(rows[n_query:n_query + n_train])
            taken[query[-1]] = taken[train[-1]] = True
        q, t = np.concatenate(query), np.concatenate(train)
        retrieval = np.setdiff1d(np.arange(n), q)
        if self.top_up and self.train is not None and len(t) < self.train:
            pool = np.setdiff1d(retrieval, t)
            t = np.concatenate([t, pool[rng.permutation(len(pool))][:self.train - len(t)]])
        return q, retrieval, t

    def _need(self, n: int, at_least: int) -> None:
        if n < at_least:
            raise ValueError(f"{n} rows are too few for the {self.source} split ({self.describe()})")

    def describe(self) -> str:
        if self.kind == "last":
            return f"last {self.query} rows query, the rest retrieval = train"
        if self.kind == "first":
            return f"first {self.query} rows query, next {self.train} train, all after the queries retrieval"
        top = f", train topped up to {self.train} from retrieval" if self.top_up else ""
        return (f"per label: {self.first[0]} query / {self.first[1]} train from label 1, {self.rest[0]} / "
                f"{self.rest[1]} from each later label{top}; retrieval = all but the queries")


@dataclass(frozen=True)
class AllLayout:
    """Where a benchmark's whole-collection matrices live: ``(file name, variable)`` per role."""

    title: str
    image: tuple[str, str]
    text: tuple[str, str]
    labels: tuple[str, str]
    protocols: dict[str, SplitProtocol]
    default_protocol: str
    pixel_file: str | None = None  # DJSRH's raw-pixel release of the same rows (not features)
    notes: str = ""


_UCCH = "UCCH (penghu-cs/UCCH src/cmdataset.py)"
_DJSRH = "DJSRH (zs-zhong/DJSRH datasets.py)"
_DCMH = "DCMH (jiangqy/DCMH-CVPR2017 DCMH_tensorflow/DCMH_demo.py)"

#: File and variable names as UCCH's ``*_fea`` loaders and DJSRH's ``settings.py`` name them.
ALL_LAYOUTS: dict[str, AllLayout] = {
    "mirflickr": AllLayout(
        "MIRFlickr-25K",
        image=("mirflickr25k-iall-vgg.mat", "XAll"),
        text=("mirflickr25k-yall.mat", "YAll"),
        labels=("mirflickr25k-lall.mat", "LAll"),
        protocols={
            "ucch": SplitProtocol("last", _UCCH, query=2000),
            "djsrh": SplitProtocol("per_label", _DJSRH, train=5000, first=(160, 400), rest=(80, 200), top_up=True),
            "dcmh": SplitProtocol("first", _DCMH, query=2000, train=10000),
        },
        default_protocol="ucch",
        pixel_file="mirflickr25k-iall.mat",
        notes="24 labels, 1,386-d tag vectors; the cleaned release has 20,015 pairs (DCMH: 2,000 query + 18,015 "
              "retrieval)",
    ),
    "nuswide-tc10": AllLayout(
        "NUS-WIDE TC-10 (the 10 most frequent concepts)",
        image=("nus-wide-tc10-xall-vgg.mat", "XAll"),
        text=("nus-wide-tc10-yall.mat", "YAll"),
        labels=("nus-wide-tc10-lall.mat", "LAll"),
        protocols={
            "ucch": SplitProtocol("last", _UCCH, query=2100),
            "djsrh": SplitProtocol("per_label", _DJSRH, first=(200, 500), rest=(200, 500)),
        },
        default_protocol="ucch",
        pixel_file="nus-wide-tc10-iall.mat",
        notes="10 labels, 1,000-d tag vectors, 186,577 pairs; DJSRH ships YAll as MATLAB v7.3, UCCH as v5",
    ),
    "mscoco": AllLayout(
        "MS-COCO (UCCH's VGG image / doc2vec text features)",
        image=("MSCOCO_deep_doc2vec_data_rand.h5py", "XAll"),
        text=("MSCOCO_deep_doc2vec_data_rand.h5py", "YAll"),
        labels=("MSCOCO_deep_doc2vec_data_rand.h5py", "LAll"),
        protocols={"ucch": SplitProtocol("last", _UCCH, query=5000)},
        default_protocol="ucch",
        notes="multi-hot COCO category labels; one HDF5 file written from Python, rows are items as stored",
    ),
}


def _layout_files(path: Path, layout: AllLayout, image_file: str | Path | None) -> dict[str, tuple[Path, str]]:
    names = {"image": layout.image, "text": layout.text, "labels": layout.labels}
    if path.is_file():
        if len({f for f, _ in names.values()}) != 1:
            raise ValueError(f"{layout.title} is spread over {', '.join(sorted({f for f, _ in names.values()}))}; "
                             f"pass the folder holding them, not {path}")
        folder, single = path.parent, path
    elif path.is_dir():
        folder, single = path, None
    else:
        raise FileNotFoundError(f"{layout.title} data not found: {path}")
    files = {role: (single or folder / name, key) for role, (name, key) in names.items()}
    if image_file is not None:
        files["image"] = (Path(image_file), layout.image[1])
    for role, (file, _) in files.items():
        if not file.is_file():
            hint = ""
            if role == "image" and layout.pixel_file and (folder / layout.pixel_file).is_file():
                hint = (f"; {layout.pixel_file} is there, but it holds raw pixels (DJSRH's release), not features: "
                        f"use UCCH's {layout.image[0]} or encode the images and pass image_file= (variable "
                        f"{layout.image[1]!r}, one row per item)")
            raise FileNotFoundError(f"{layout.title}: {role} file {file} not found{hint}")
    return files


def load_all_layout(
    path: str | Path, dataset: str, protocol: str | None = None, seed: int = 0,
    image_file: str | Path | None = None,
) -> HashingData:
    """MIRFlickr-25K / NUS-WIDE TC-10 / MS-COCO from their ``XAll``/``YAll``/``LAll`` files.

    ``path`` is the folder holding the files (or the file itself for one-file layouts);
    ``protocol`` picks the split (:attr:`AllLayout.protocols`, default UCCH's); ``seed`` drives the
    per-label (DJSRH) draw; ``image_file`` replaces the image-feature file, e.g. with features from
    another encoder (same variable name, same row order). Relevance: sharing at least one label.
    """
    if dataset not in ALL_LAYOUTS:
        raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(ALL_LAYOUTS)}")
    layout = ALL_LAYOUTS[dataset]
    protocol = protocol or layout.default_protocol
    if protocol not in layout.protocols:
        raise ValueError(f"{layout.title} has no split protocol {protocol!r}; it has: {', '.join(layout.protocols)}")
    files = _layout_files(Path(path), layout, image_file)
    raw = {role: read_arrays(file, [var])[var] for role, (file, var) in files.items()}
    if len({np.shape(a)[0] if np.ndim(a) else 0 for a in raw.values()}) != 1:
        shapes = "; ".join(f"{files[r][0].name}:{files[r][1]} {np.shape(a)}" for r, a in raw.items())
        raise ValueError(f"{layout.title}: image, text and label matrices must have one row per item each, got "
                         f"{shapes} (a MATLAB v7.3 matrix read without transposing shows (d, n))")
    (image_path, image_var), (text_path, text_var), (label_path, label_var) = (
        files["image"], files["text"], files["labels"])
    image = _features({image_var: raw["image"]}, image_var, image_path)
    text = _features({text_var: raw["text"]}, text_var, text_path)
    labels = _labels({label_var: raw["labels"]}, label_var, label_path, len(image))
    if labels.ndim != 2:
        raise ValueError(f"{label_path}:{label_var} must be (n, c) multi-hot, got shape {labels.shape}")
    split = layout.protocols[protocol]
    q, r, t = split.split(labels, seed)

    def part(idx: np.ndarray) -> FeatureSet:
        return FeatureSet(_rows(image, idx), _rows(text, idx), _rows(labels, idx), _rows(labels, idx))

    query, retrieval = part(q), part(r)
    train = retrieval if np.array_equal(r, t) else part(t)
    described = (f"{protocol}: {split.describe()} [{split.source}]: {len(q)} query / {len(r)} retrieval / "
                 f"{len(t)} train" + (f", seed {seed}" if split.kind == "per_label" else ""))
    return HashingData(dataset, train, query, retrieval, "label", has_class_labels=True, split_protocol=described)


def _rows(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``a[idx]``, as a view when ``idx`` is a contiguous run (NUS-WIDE's XAll is gigabytes)."""
    if len(idx) and idx[-1] - idx[0] + 1 == len(idx) and np.all(np.diff(idx) == 1):
        return a[idx[0]:idx[-1] + 1]
    return a[idx]


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


#: The npz key holding the JSON fingerprint of the encoder that made a cache (eval.embedding_cache).
FINGERPRINT_KEY = "encoder_fingerprint"


def save_embeddings(path: str | Path, arrays: dict[str, np.ndarray], fingerprint: dict | None = None) -> Path:
    """Writes an embedding cache atomically, with the encoder's fingerprint when given; no pickle."""
    from common.atomic import atomic_write_file

    out = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}
    if fingerprint is not None:
        out[FINGERPRINT_KEY] = np.frombuffer(json.dumps(fingerprint, sort_keys=True).encode(), dtype=np.uint8)
    return atomic_write_file(path, lambda fh: np.savez(fh, **out))


def cache_fingerprint(path: str | Path) -> dict | None:
    """The fingerprint of the encoder that made the cache at ``path``; None for caches made before it was kept."""
    with np.load(path, allow_pickle=False) as z:
        if FINGERPRINT_KEY not in z.files:
            return None
        return json.loads(z[FINGERPRINT_KEY].tobytes().decode())


def made_by(path: str | Path, encoder: Any) -> bool | None:
    """Whether ``encoder``, as it is now, made the cache at ``path``; None when the cache does not say."""
    from .embedding_cache import encoder_fingerprint

    stamp = cache_fingerprint(path)
    return None if stamp is None else stamp == json.loads(json.dumps(encoder_fingerprint(encoder), sort_keys=True))


def check_made_by(path: str | Path, encoder: Any) -> None:
    """Refuses (ValueError) a cache another encoder made; a fingerprint-less one is trusted, with a word."""
    same, name = made_by(path, encoder), getattr(encoder, "model_id", type(encoder).__name__)
    if same is None:
        print(f"note: {path} records no encoder fingerprint; assuming {name!r} made it", flush=True)
    elif not same:
        raise ValueError(f"{path} was made by another encoder than {name!r} as it is now; re-encode "
                         f"it: python -m eval.stage1 --embeddings {path} --model {name} ...")


def encode_flickr8k(
    model_id: str, annotations: str | Path, images: str | Path | None, out: str | Path,
    batch_size: int = 64, progress: bool = True, encoder: Any = None,
) -> Path:
    """Encodes the Flickr8K train and test splits with ``retrieval.encoders.load_encoder(model_id)``
    (or ``encoder``) and writes the cache :func:`load_flickr8k` reads, stamped with its fingerprint."""
    from .embedding_cache import encoder_fingerprint

    annotations = Path(annotations)
    images = Path(images) if images is not None else annotations.parent / "images"
    if encoder is None:
        from retrieval.encoders import load_encoder

        encoder = load_encoder(model_id)
    arrays = {}
    for split in FLICKR8K_SPLITS.values():
        ds = load_karpathy(annotations, images, split=split)
        arrays[f"{split}_image"] = encoder.encode_images([str(p) for p in ds.image_paths],
                                                         batch_size=batch_size, progress=progress)
        arrays[f"{split}_text"] = encoder.encode_texts(ds.captions, progress=progress)
    return save_embeddings(out, arrays, encoder_fingerprint(encoder))


def flickr8k_embeddings(path: str | Path, model_id: str | None, annotations: str | Path,
                        images: str | Path | None, progress: bool = True) -> Path:
    """The Flickr8K cache at ``path``, (re-)encoded with ``model_id`` unless it was made by that very encoder.

    A cache is named by the caller (``cache/flickr8k-lite.npz``), not by the weights, so retrained
    weights under the same model id would otherwise be evaluated on the old model's embeddings.
    Without ``model_id`` the cache is taken as it is. A cache made before fingerprints were kept is
    re-encoded once.
    """
    path = Path(path)
    if model_id is None:
        if not path.is_file():
            raise FileNotFoundError(f"embedding cache {path} not found; pass --model to create it")
        return path
    from retrieval.encoders import load_encoder

    encoder = load_encoder(model_id)
    if path.is_file():
        if made_by(path, encoder):
            return path
        print(f"{path} was not made by {model_id!r} as it is now: re-encoding", flush=True)
    return encode_flickr8k(model_id, annotations, images, path, progress=progress, encoder=encoder)


DATASETS = ("wiki", "flickr8k", *ALL_LAYOUTS)
