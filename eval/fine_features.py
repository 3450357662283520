"""The Flickr8K cache of MGSGH's fine-grained inputs: lite region grids and caption words.

    HF_HUB_OFFLINE=1 python -m eval.fine_features --data ../shared/data/flickr8k/dataset_flickr8k.json \\
        --out cache/flickr8k-lite-fine.npz [--model lite:heads]

One pass of the lite towers (:mod:`common.lite_fine`) over the Karpathy train and test splits gives
both the global embeddings (L2-normalised; the keys :func:`eval.datasets_hashing.load_flickr8k`
reads, so the cache is also a plain embedding cache, stamped with the encoder's fingerprint like
:func:`eval.datasets_hashing.encode_flickr8k`'s) and the nodes of the per-item graphs.

Which encoder. ``--model`` is ``lite`` (the default encoder: since issue 23 its image vectors hold
ImageNet concepts) or ``lite:heads`` (the Flickr8K heads alone, the image vectors before issue 23).
The region and word nodes are the same for both (the concepts are one vector per image, added to
the global embedding only); the global image embeddings differ, and ``--fine`` checks them against
``--embeddings`` (:func:`check_aligned`), so the cache is made with the encoder of the embeddings
it is used with.

Size. 7,000 images x 49 cells x 256 dims in float32 is 351 MB, and the 35,000 captions' words
another ~400 MB. The nodes are therefore reduced to ``dim`` (64) dimensions by a PCA fitted on the
*train* nodes of each modality (test nodes are projected, never fitted) and stored as float16:
about 44 MB of regions and 50 MB of words. 64 of 256 PCA dimensions keep most of the variance
(printed by the command and stored as ``*_pca_kept``); float16 is exact to 3 decimals, below what
the per-item GCN's standardised inputs resolve. Words are stored ragged (``words`` concatenated,
``word_offsets`` (n + 1,)), the form :mod:`hashing.mgsgh_fine` takes.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.atomic import atomic_write_file
from common.checks import check_int

from .datasets_hashing import FLICKR8K_SPLITS, HashingData
from .karpathy import load_karpathy

META_KEY = "fine_meta"
#: 2: parts and cache are stamped with the encoder's fingerprint (issue 23: ``lite`` or ``lite:heads``);
#: version-1 parts (always the heads alone) are refused rather than mixed with the default's.
VERSION = 2


@dataclass(frozen=True)
class FineSplit:
    """One split's fine inputs: ``regions`` (n_images, h, w, d) float16 in image order; captions'
    words ragged, ``words`` (total, d) float16 and ``offsets`` (n_captions + 1,) int64."""

    regions: np.ndarray
    words: np.ndarray
    offsets: np.ndarray

    def text_rows(self, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(words, offsets) of the captions ``rows`` (all when None), in that order."""
        if rows is None:
            return self.words, self.offsets
        starts, stops = self.offsets[rows], self.offsets[np.asarray(rows) + 1]
        lengths = stops - starts
        take = np.concatenate([np.arange(a, b) for a, b in zip(starts, stops)]) if len(rows) else np.zeros(0, int)
        return self.words[take], np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def _pca(chunks: list[np.ndarray], dim: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(mean, (dim, d) components, fraction of variance kept) of the rows of ``chunks``."""
    n = sum(len(c) for c in chunks)
    mean = sum(c.astype(np.float64).sum(0) for c in chunks) / n
    cov = sum((c.astype(np.float64) - mean).T @ (c.astype(np.float64) - mean) for c in chunks) / n
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1]
    kept = float(values[order[:dim]].sum() / values.sum())
    return mean.astype(np.float32), vectors[:, order[:dim]].T.astype(np.float32), kept


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


#: items per part file: a part is the unit of resumption (about a minute of the 2-core VM's time)
IMAGES_PER_PART = 500
CAPTIONS_PER_PART = 2500


def _part_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def _encode_part(model, transform, tokenizer, ds, modality: str, start: int, batch_size: int):
    """Raw (embed_dim) node features and global embeddings of one part, float16 / float32."""
    import torch

    from common.images import load_image
    from common.lite_fine import region_features, word_features

    if modality == "image":
        paths = ds.image_paths[start:start + IMAGES_PER_PART]
        regions, glob = [], []
        for b in range(0, len(paths), batch_size):
            pixels = torch.stack([transform(load_image(str(p))) for p in paths[b:b + batch_size]])
            r, g = region_features(model, pixels.contiguous(memory_format=torch.channels_last))
            regions.append(r.numpy().astype(np.float16))
            glob.append(g.numpy())
        return {"nodes": np.concatenate(regions), "global": np.concatenate(glob)}
    texts = ds.captions[start:start + CAPTIONS_PER_PART]
    order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths per batch: less padding
    words: list = [None] * len(texts)
    glob = np.empty((len(texts), model.config["embed_dim"]), np.float32)
    for b in range(0, len(texts), 4 * batch_size):
        rows = order[b:b + 4 * batch_size]
        w, g = word_features(model, tokenizer, [texts[i] for i in rows])
        glob[rows] = g.numpy()
        for i, x in zip(rows, w):
            words[i] = x.astype(np.float16)
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in words])]).astype(np.int64)
    return {"nodes": np.concatenate(words), "offsets": offsets, "global": glob}


def encode_flickr8k_fine(annotations: str | Path, out: str | Path, images: str | Path | None = None,
                         dim: int = 64, batch_size: int = 32, budget_s: float | None = None,
                         progress: bool = True, model_id: str = "lite") -> Path | None:
    """Runs the lite model ``model_id`` over Flickr8K train and test and writes the cache (module docstring).

    Work is done in parts (``IMAGES_PER_PART`` images, ``CAPTIONS_PER_PART`` captions) saved next
    to ``out`` (``out.parts/``), so that a run can stop after ``budget_s`` seconds and the next run
    go on where it stopped (the 2-core VM's heavy jobs take turns in slots of under 10 minutes).
    Returns the cache once every part exists, else None. Parts are checked against the encoder's
    fingerprint (model id, config with its concept settings, weights), the SHA-256 of the weight
    files and the annotation file, so neither a retrained head nor the other encoder's global
    vectors (``lite`` / ``lite:heads``) ever mix with old parts.
    """
    import time

    import torch
    from tqdm.auto import tqdm

    from common.digests import file_sha256
    from common.lite_model import image_transform
    from retrieval.encoders import is_lite_id, load_encoder
    from retrieval.encoders.lite import text_tokenizer

    from .datasets_hashing import FINGERPRINT_KEY
    from .embedding_cache import encoder_fingerprint

    began = time.monotonic()
    dim = check_int("dim", dim, 1)
    out, annotations = Path(out), Path(annotations)
    images = Path(images) if images is not None else annotations.parent / "images"
    if not is_lite_id(model_id):
        raise ValueError(f"fine features need a lite encoder (lite, lite:heads or a lite weights directory), "
                         f"got {model_id!r}")
    # torch: the region grids need the tower's feature map, which the ONNX graphs do not return
    encoder = load_encoder(model_id, runtime="torch", device="cpu")
    fingerprint = json.loads(json.dumps(encoder_fingerprint(encoder), sort_keys=True))
    weight_files = {f.name: file_sha256(f) for f in sorted(encoder.path.glob("*.safetensors"))}
    stamp = {"version": VERSION, "encoder": fingerprint, "weight_files_sha256": weight_files,
             "annotations_sha256": file_sha256(annotations)}
    parts = _part_dir(out)
    parts.mkdir(parents=True, exist_ok=True)
    stamp_file = parts / "stamp.json"
    if stamp_file.is_file() and json.loads(stamp_file.read_text()) != stamp:
        raise ValueError(f"{parts} holds parts of another encoder (or version, weights or annotations) than "
                         f"{model_id!r} now: remove it and rerun, or give another --out")
    stamp_file.write_text(json.dumps(stamp, sort_keys=True))
    datasets = {split: load_karpathy(annotations, images, split=split) for split in FLICKR8K_SPLITS.values()}
    todo = [(split, modality, start) for split, ds in datasets.items()
            for modality, n, step in (("image", ds.n_images, IMAGES_PER_PART), ("text", len(ds.captions), CAPTIONS_PER_PART))
            for start in range(0, n, step)]
    name = lambda split, modality, start: parts / f"{split}-{modality}-{start:06d}.npz"  # noqa: E731
    missing = [t for t in todo if not name(*t).is_file()]
    if missing:
        model = encoder.model
        if dim > model.config["embed_dim"]:
            raise ValueError(f"dim must be at most the lite embed_dim {model.config['embed_dim']}, got {dim}")
        transform = image_transform(model.config)
        tokenizer = text_tokenizer(int(model.config["text_max_length"]))
        model.image_tower.to(memory_format=torch.channels_last)
        for split, modality, start in tqdm(missing, desc="fine-feature parts", disable=not progress):
            if budget_s is not None and time.monotonic() - began > budget_s:
                print(f"stopped after {time.monotonic() - began:.0f} s: {len(missing)} parts were missing; rerun to go on")
                return None
            arrays = _encode_part(model, transform, tokenizer, datasets[split], modality, start, batch_size)
            atomic_write_file(name(split, modality, start), lambda fh: np.savez(fh, **arrays))
    raw: dict[str, dict[str, object]] = {}
    for split in datasets:
        loaded = {m: [dict(np.load(name(s, m, st))) for s, m2, st in todo if s == split and m2 == m]
                  for m in ("image", "text")}
        words = [np.split(p["nodes"], p["offsets"][1:-1]) for p in loaded["text"]]
        raw[split] = {"regions": np.concatenate([p["nodes"] for p in loaded["image"]]),
                      "words": [w for ws in words for w in ws],
                      "image": _normalise(np.concatenate([p["global"] for p in loaded["image"]])),
                      "text": _normalise(np.concatenate([p["global"] for p in loaded["text"]]))}
    train = raw["train"]
    img_mean, img_pc, img_kept = _pca([train["regions"].reshape(-1, train["regions"].shape[-1])], dim)
    txt_mean, txt_pc, txt_kept = _pca([np.concatenate(train["words"])], dim)
    print(f"PCA to {dim} dims keeps {img_kept:.3f} of the region variance and {txt_kept:.3f} of the word variance")
    arrays: dict[str, np.ndarray] = {}
    for split, r in raw.items():
        regions = r["regions"].astype(np.float32)
        arrays[f"{split}_image"], arrays[f"{split}_text"] = r["image"], r["text"]
        arrays[f"{split}_image_regions"] = ((regions - img_mean) @ img_pc.T).astype(np.float16)
        words = np.concatenate(r["words"]).astype(np.float32)
        arrays[f"{split}_text_words"] = ((words - txt_mean) @ txt_pc.T).astype(np.float16)
        arrays[f"{split}_text_word_offsets"] = np.concatenate([[0], np.cumsum([len(w) for w in r["words"]])]).astype(np.int64)
    arrays.update(image_pca_mean=img_mean, image_pca_components=img_pc, image_pca_kept=np.float32(img_kept),
                  text_pca_mean=txt_mean, text_pca_components=txt_pc, text_pca_kept=np.float32(txt_kept))
    meta = {**stamp, "dim": dim}
    arrays[META_KEY] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    arrays[FINGERPRINT_KEY] = np.frombuffer(json.dumps(fingerprint, sort_keys=True).encode(), dtype=np.uint8)
    return atomic_write_file(out, lambda fh: np.savez(fh, **arrays))


def load_flickr8k_fine(path: str | Path, annotations: str | Path) -> dict[str, FineSplit]:
    """``{"train": ..., "query": ...}`` (the roles of :func:`eval.datasets_hashing.load_flickr8k`),
    checked against the Karpathy split sizes."""
    path, annotations = Path(path), Path(annotations)
    if not path.is_file():
        raise FileNotFoundError(f"fine-feature cache not found: {path}; make it with python -m eval.fine_features")
    out = {}
    with np.load(path, allow_pickle=False) as z:
        for role, split in FLICKR8K_SPLITS.items():
            keys = [f"{split}_image_regions", f"{split}_text_words", f"{split}_text_word_offsets"]
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise ValueError(f"{path} lacks {', '.join(missing)}: not a fine-feature cache")
            ds = load_karpathy(annotations, annotations.parent / "images", split=split, check_files=False)
            fine = FineSplit(*(z[k] for k in keys))
            if len(fine.regions) != ds.n_images or len(fine.offsets) != len(ds.captions) + 1:
                raise ValueError(f"{path}: split {split!r} has {len(fine.regions)} region grids and "
                                 f"{len(fine.offsets) - 1} captions, {annotations} has {ds.n_images} / "
                                 f"{len(ds.captions)}; re-encode the cache")
            out[role] = fine
    return out


#: least row-wise cosine between the cache's global embeddings and another cache's for "the same rows"
ALIGNED_COSINE = 0.99


def check_aligned(path: str | Path, data: HashingData) -> None:
    """Raises ValueError unless the fine cache's global embeddings are ``data``'s rows (a
    :class:`eval.datasets_hashing.HashingData` of Flickr8K), row by row within ``ALIGNED_COSINE``.

    Why: the fine inputs are matched to embedding rows by position only. A global cache from the
    same lite weights through another runtime (ONNX) differs in float noise (cosine ~1); one from
    another encoder, or rows in another order, would silently pair items with other items' regions.
    """
    path = Path(path)
    with np.load(path, allow_pickle=False) as z:
        keys = [f"{split}_{m}" for split in FLICKR8K_SPLITS.values() for m in ("image", "text")]
        missing = [k for k in keys if k not in z.files]
        if missing:
            raise ValueError(f"{path} lacks {', '.join(missing)}: a fine cache holds its global embeddings too")
        cached = {k: z[k] for k in keys}
    train_split, query_split = FLICKR8K_SPLITS["train"], FLICKR8K_SPLITS["query"]
    pairs = {f"{train_split}_image": (cached[f"{train_split}_image"][data.train.image_labels], data.train.image),
             f"{train_split}_text": (cached[f"{train_split}_text"], data.train.text),
             f"{query_split}_image": (cached[f"{query_split}_image"], data.query.image),
             f"{query_split}_text": (cached[f"{query_split}_text"], data.query.text)}
    for key, (ours, theirs) in pairs.items():
        if ours.shape != theirs.shape:
            raise ValueError(f"{path}: {key} has shape {ours.shape}, the embeddings {theirs.shape}: not the same rows")
        cosine = np.sum(_normalise(ours) * _normalise(theirs), axis=1)
        if cosine.min() < ALIGNED_COSINE:
            raise ValueError(f"{path}: {key} is not the embeddings' rows (row {int(cosine.argmin())} has cosine "
                             f"{cosine.min():.3f} < {ALIGNED_COSINE}): another encoder or row order; re-encode one of them")


def main(argv: list[str] | None = None) -> Path | None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="dataset_flickr8k.json")
    p.add_argument("--images", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", default="lite", help="lite (default: the image vectors with ImageNet concepts) or "
                   "lite:heads (the heads alone, before issue 23): the encoder of the --embeddings it goes with")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--budget-s", type=float, help="start no new part after this many seconds (rerun to go on)")
    args = p.parse_args(argv)
    path = encode_flickr8k_fine(args.data, args.out, args.images, dim=args.dim, batch_size=args.batch_size,
                                budget_s=args.budget_s, model_id=args.model)
    if path is not None:
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return path


if __name__ == "__main__":
    main()
