"""Stage-1 binary indexes: top-k Hamming search over packed codes, ready for reranking.

``create_index(kind, bits, **params)`` builds one of :func:`available_indexes`:

* ``flat``: exact, faiss IndexBinaryFlat (the reference)
* ``hnsw``: faiss IndexBinaryHNSW graph (removal by tombstones)
* ``ivf``: faiss IndexBinaryIVF, ``nlist`` cells trained on codes, ``nprobe`` scanned
* ``buckets``: UDDH-style bucketed search: ``nbuckets`` Hamming k-means centres trained on codes
  (:mod:`hashing.binary_kmeans`) or a UDDH hasher's (``UDDHHasher.bucket_index``), each query
  scans its ``e`` nearest buckets
* ``gpu_flat``: exact search on a GPU (faiss-gpu, else torch on CUDA)

``load_index(path)`` restores any of them from :meth:`BinaryIndex.save`. Candidates can then be
re-ranked by the real-valued query against their codes (:func:`asymmetric_top`, asymmetric
distances) and rescored with float vectors by :func:`rescore` / :class:`Rescorer`.
"""

from __future__ import annotations

import inspect
from typing import Any

from .asymmetric import asymmetric_scores, asymmetric_top
from .base import PAD_DISTANCE, PAD_ID, BinaryIndex, SearchResult, available_indexes, index_class
from .buckets import BucketIndex, assign_buckets
from .flat import FlatIndex
from .gpu import GpuFlatIndex, hamming_knn_torch
from .hnsw import HNSWIndex
from .io import load_index
from .ivf import IVFIndex
from .rescore import RescoreResult, Rescorer, rescore


def create_index(kind: str, bits: int, **params: Any) -> BinaryIndex:
    """``create_index("ivf", 64, nlist=1024, nprobe=128)``: an empty index of a registered kind.

    A setting the kind does not take is a ValueError naming the ones it does (settings come from
    saved configs and command lines, where a TypeError traceback would help nobody).
    """
    cls = index_class(kind)
    accepted = [n for n in inspect.signature(cls.__init__).parameters if n not in ("self", "bits")]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"index {kind!r} has no setting {', '.join(map(repr, unknown))}; "
                         f"it takes {', '.join(accepted) or 'none'}")
    return cls(bits, **params)


__all__ = [
    "PAD_DISTANCE", "PAD_ID", "BinaryIndex", "BucketIndex", "FlatIndex", "GpuFlatIndex", "HNSWIndex",
    "IVFIndex", "RescoreResult", "Rescorer", "SearchResult", "assign_buckets", "asymmetric_scores",
    "asymmetric_top", "available_indexes",
    "create_index", "hamming_knn_torch", "load_index", "rescore",
]
