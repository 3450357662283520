"""Speed and memory of every stage, encoding to reranking, 10K to 10M items: the one benchmark.

    python -m eval.bench --hnsw-max-n 1000000 --output docs/bench.json --plot docs/bench.png

runs every stage (``--stages encode hash sizes ann scale``, the default) and writes one JSON; a
stage left out of ``--stages`` keeps its entry from an existing ``--output`` (``runs`` in the JSON
says which command and machine produced each). Each timing is the best of ``--repeats`` runs.

* **encode** (issue 13): on ``--encode-images`` Flickr8K test images and ``--encode-texts``
  captions, per ``--encode-variants`` of the lite encoder, in one process: decode + preprocess
  alone, the forward pass alone on ready tensors, ``encode_images`` end to end; tokenising alone,
  the forward alone, ``encode_texts``; the end-to-end share of the slower bound, and the smallest
  cosine of each variant's vectors to the first variant's (``before``: the pre-issue-13 path).
* **hash**: fit time of each ``--hashers`` method on ``--fit-n`` synthetic (image, text) pairs and
  its encode throughput (vectors/s).
* **sizes**, per size n, on synthetic vectors: faiss float ``IndexFlatIP`` (the baseline of every
  ratio, measured in the same run on the same queries), then each binary index on the
  ``--index-hasher`` codes of the same vectors: build time, memory (bytes of the saved index; the
  float baseline's is its ``n x dim x 4`` bytes of storage), QPS in batch and single-query mode,
  tie-aware recall@k against exact Hamming search, the peak RSS of the size; and the stage-2
  rescoring cost: :class:`rerank.FloatReranker` on ``--rerank-candidates`` Hamming candidates per
  query, and the vectorised :class:`hashing.index.Rescorer` over the same candidates.
* **ann** (what a user would deploy instead), at ``--ann-n`` items: faiss ``IndexFlatIP``,
  ``IndexHNSWFlat`` and ``IndexIVFPQ`` (float), and ours end to end as the Retriever's stage 1
  runs it (Hamming top-``depth``, exact rescoring of those from fp16 vectors, top ``--ann-k``
  kept), each at its first setting reaching recall@k >= ``--target-recall`` against exact float
  search (ours, whose scan and depth trade against each other: the fastest single-query setting
  reaching it, :func:`tune_fastest`): QPS batch and single, RAM, build time (:func:`bench_ann`).
  Ours runs on each ``--ann-ours`` binary index (flat, IVF, HNSW) at each of ``--ann-bits``.
  Its binary peer in faiss, ``IndexIVFRaBitQ`` with refinement (:func:`rabitq_rows`), is tuned
  the same way. Each ``--ann-asymmetric`` kind (IVF by default) runs a second time with an
  asymmetric cut before the rescoring (:func:`asymmetric_row`): the caption's real-valued
  projection scored against the Hamming top-D1's codes, the top-D2 of those rescored.
  ``--ann-data flickr8k-gmm`` replaces the synthetic mixture by Gaussian mixtures fitted to real
  Flickr8K embeddings (:mod:`eval.embedding_mixture`).
* **scale**: ``Retriever.create`` on disk + ``add_vectors`` in chunks + ``close`` at each
  ``--scale-sizes`` and ``--scale-dtypes``, then ``Retriever.open`` and single searches in a fresh
  process: build, save and open times, resident memory, p50/p99 latency, disk
  (:func:`bench_scale`); up to ``--scale-compare-max-n``, rankings against an in-memory Retriever
  over the same vectors and the caption cascade beside exhaustive float search; plus a linear
  budget for 100M and 1B items.

The vectors come from :class:`Mixture`: a Gaussian mixture, drawn in chunks so a 10M x 256 run
holds the float baseline's 10 GB once, not twice; each chunk has its own seed, so the 1M database
is the first 1M items of the 10M one. The mixture flatters clustered indexes (IVF cells can
follow its clusters) and, having no low-dimensional structure within a cluster, is harder for
binary codes than real embeddings are: read the ann and sizes rows as a synthetic comparison.

IVF cells and buckets number the power of two nearest sqrt(n), at most ``--max-nlist``. Each
approximate index's search parameter (IVF ``nprobe``, buckets ``e``, HNSW ``ef_search``) is the
first doubling step whose recall@k on the benchmark's queries reaches ``--target-recall``, so QPS
is compared at (about) equal recall; the tried steps are in the JSON.

Large sizes run fewer queries (``--nq`` scaled by ``--nq-ref-n / n``, not under ``--min-nq``), the
same queries for the baseline and every index, so each ratio compares like with like; the counts
are in the JSON. The floor matters: faiss 1.15 runs ``IndexFlatIP`` through BLAS only for batches
with nq x dim >= ``faiss.cvar.distance_compute_blas_threshold`` (128,000, i.e. 500 queries at
d = 256); below it a batch runs barely faster than its queries one at a time. The default floor
keeps the baseline's batches on BLAS.

HNSW over binary codes is built only up to ``--hnsw-max-n`` (its build is the slow part: 61 s
at 1M). Search threads default to 1 (``--threads``): on shared cores, OpenMP's spinning threads
slow down by an order of magnitude under load; the load average is recorded per size. No GPU
path is measured unless CUDA is visible (``gpu_flat``; the encoders then run fp16 on CUDA).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import faiss
import numpy as np
from tqdm.auto import tqdm

from common.atomic import write_json
from hashing.base import pack_signs
from hashing.hamming import hamming_distances_at
from hashing.index import PAD_DISTANCE, asymmetric_top

from .extras import require
from .machine import machine

FLICKR8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k"


# -- data ----------------------------------------------------------------------------------------
@dataclass
class Mixture:
    """Unit vectors from a Gaussian mixture; each role (database, queries, fit pairs) its own stream.

    The database depends only on the seed and ``chunk``, so every size is a prefix of the next;
    text-side vectors of the fit pairs are the image vectors plus ``text_noise`` Gaussian noise.
    """

    dim: int = 256
    clusters: int = 2000
    spread: float = 1.0
    text_noise: float = 0.5
    seed: int = 0
    #: None: isotropic within-cluster noise (every direction of the 256). An int: the noise lies in
    #: that many random directions (plus a tenth as much isotropic noise), as real embeddings vary
    #: along few directions; within a cluster, isotropic 256-d noise makes all neighbours near-ties.
    intrinsic: int | None = None
    centres: np.ndarray = field(init=False, repr=False)
    basis: np.ndarray | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        for name in ("dim", "clusters"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        self.centres = np.random.default_rng([self.seed, 0]).standard_normal((self.clusters, self.dim),
                                                                             dtype=np.float32)
        if self.intrinsic is not None:
            if not 1 <= self.intrinsic <= self.dim:
                raise ValueError(f"intrinsic must be in [1, dim={self.dim}], got {self.intrinsic}")
            rng = np.random.default_rng([self.seed, 4])
            # rows of norm ~sqrt(dim / intrinsic): the noise has the isotropic case's expected norm
            self.basis = rng.standard_normal((self.intrinsic, self.dim), dtype=np.float32) / np.float32(
                math.sqrt(self.intrinsic))

    def _draw(self, rng: np.random.Generator, m: int, of: int | None = None) -> np.ndarray:
        """m vectors; with ``of``, the first m of the ``of`` this generator state would give."""
        x = self.centres[rng.integers(0, self.clusters, of or m)[:m]]
        if self.basis is None:
            x += self.spread * rng.standard_normal((m, self.dim), dtype=np.float32)
        else:
            z = rng.standard_normal((m, self.intrinsic), dtype=np.float32)
            x += self.spread * (z @ self.basis)
            x += 0.1 * self.spread * rng.standard_normal((m, self.dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    def database(self, n: int, chunk: int = 1 << 18) -> Iterator[np.ndarray]:
        """n vectors in chunks; chunk i has its own seed, so any n is a prefix of a larger one."""
        for i, start in enumerate(range(0, n, chunk)):
            yield self._draw(np.random.default_rng([self.seed, 1, i]), min(chunk, n - start), of=chunk)

    def queries(self, nq: int) -> np.ndarray:
        return self._draw(np.random.default_rng([self.seed, 2]), nq)

    def pairs(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, 3])
        images = self._draw(rng, n)
        texts = images + self.text_noise * rng.standard_normal(images.shape, dtype=np.float32) / math.sqrt(self.dim)
        texts /= np.linalg.norm(texts, axis=1, keepdims=True)
        return images, texts


# -- timing and sizes ----------------------------------------------------------------------------
def best_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """The least disturbed of ``repeats`` runs (other processes share the cores) and its result."""
    best, out = float("inf"), None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def saved_size(index: Any) -> int:
    """Bytes of a binary index saved the way it is shipped (its versioned directory)."""
    import shutil
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="bench_"))
    try:
        path = index.save(tmp / "index")
        return sum(f.stat().st_size for f in path.iterdir())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def faiss_size(index: faiss.Index) -> int:
    """Bytes of a faiss index written with ``faiss.write_index`` (what a deployment loads into RAM)."""
    import tempfile

    with tempfile.NamedTemporaryFile(prefix="bench_", suffix=".faiss") as fh:
        faiss.write_index(index, fh.name)
        return os.path.getsize(fh.name)


def directory_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


# -- memory --------------------------------------------------------------------------------------
def _status(field_name: str) -> int:
    """VmRSS / VmHWM of this process in bytes (0 where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rss() -> int:
    return _status("VmRSS")


def peak_rss() -> int:
    return _status("VmHWM")


def reset_peak_rss() -> None:
    """Linux resets VmHWM to the current RSS on ``5 > /proc/self/clear_refs``: a per-stage peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def limit_blas_threads(threads: int) -> list[dict[str, Any]] | None:
    """numpy's BLAS (ITQ's SVD, every projection) gets the same thread cap as faiss and torch.

    Needs threadpoolctl (scikit-learn's dependency); without it the BLAS keeps its own default,
    and the JSON says so (None).
    """
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        return None
    threadpool_limits(threads)
    return [{"library": i.get("internal_api"), "num_threads": i.get("num_threads")} for i in threadpool_info()]


def gib(b: float) -> float:
    return round(b / 2**30, 3)


# -- stages --------------------------------------------------------------------------------------
ENCODE_VARIANTS = ("before", "torch", "onnxruntime", "int8")
#: Also offered, not run by default: ``concepts`` = onnxruntime with the ImageNet concepts of issue
#: 23 (``load_encoder("lite:concepts")``, the same as the default since issue 23's gate) and
#: ``heads`` = onnxruntime with the Flickr8K heads alone (``lite:heads``), to compare side by side.
ENCODE_CHOICES = ENCODE_VARIANTS + ("concepts", "heads")


class BeforeIssue13:
    """The lite encoder as it ran before issue 13, for the before/after rows of one run.

    PyTorch with a contiguous (NCHW) image tower, and the old loop: a batch is decoded by the
    pool, then run through the model, then the next batch is decoded (no overlap). Only the
    runtime path is the old one: the model is ``encoder``'s, so with today's ``lite`` (gated
    ImageNet concepts since issue 23) every variant computes the same vectors and the cosine
    column compares runtimes, not models.
    """

    def __init__(self, encoder: Any) -> None:
        import torch

        self.encoder = encoder
        encoder.model.image_tower.to(memory_format=torch.contiguous_format)

    def forward_images(self, pixels: Any) -> Any:
        return self.encoder.model.image_features(pixels)

    def forward_texts(self, tokens: dict[str, Any]) -> Any:
        return self.encoder.model.text_features(tokens["input_ids"], tokens["attention_mask"])

    def encode_images(self, images: list[Any], batch_size: int = 64, progress: bool = False,
                      num_workers: int = 4) -> np.ndarray:
        from concurrent.futures import ThreadPoolExecutor

        import torch

        from retrieval.encoders.base import normalize

        enc, out = self.encoder, []
        with ThreadPoolExecutor(max_workers=num_workers) as pool, torch.inference_mode():
            for start in range(0, len(images), batch_size):
                chunk = list(enumerate(images[start:start + batch_size], start))
                pixels = torch.stack([torch.as_tensor(p) for p in pool.map(enc._load_and_preprocess, chunk)])
                out.append(normalize(self.forward_images(pixels)))
        return np.concatenate(out)

    def encode_texts(self, texts: list[str], batch_size: int = 256, progress: bool = False) -> np.ndarray:
        import torch

        from retrieval.encoders.base import normalize

        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                out.append(normalize(self.forward_texts(self.encoder.tokenize(texts[start:start + batch_size]))))
        return np.concatenate(out)


def make_variant(variant: str, model: str, device: str | None) -> tuple[Any, Any]:
    """(what encodes, the LiteEncoder underneath) for one of :data:`ENCODE_CHOICES`."""
    from retrieval import load_encoder

    if model != "lite":
        encoder = load_encoder(model, device=device)
        return encoder, encoder
    if variant == "before":
        encoder = load_encoder("lite", device=device, runtime="torch")
        return BeforeIssue13(encoder), encoder
    if variant == "int8":
        encoder = load_encoder("lite", device=device, runtime="onnxruntime", int8=True)
    elif variant == "concepts":
        encoder = load_encoder("lite:concepts", device=device, runtime="onnxruntime")
    elif variant == "heads":
        encoder = load_encoder("lite:heads", device=device, runtime="onnxruntime")
    else:
        encoder = load_encoder("lite", device=device, runtime=variant)
    return encoder, encoder


def bench_encode(model: str, n_images: int, n_texts: int, annotations: Path, images: Path,
                 batch_size: int, device: str | None, variants: list[str] | None = None,
                 threads: int | None = None, repeats: int = 2, workers: int = 4) -> dict[str, Any]:
    """Encoding bounds and end to end, per variant, on real Flickr8K test files, in one process.

    For images: decode + preprocess alone (the encoder's own loader on a pool of ``workers``
    threads), the forward pass alone on ready tensors (same batches), ``encode_images`` end to end;
    for texts: tokenising alone, the forward alone on ready tokens, ``encode_texts``. ``share`` is
    end to end over the slower of the two bounds (what a perfect overlap would reach). Each
    number is the best of ``repeats`` runs after one warm-up batch; torch and ONNX Runtime get
    ``threads`` intra-op threads (default: every usable core, as a user's indexing run would).
    """
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from .karpathy import load_karpathy

    dataset = load_karpathy(annotations, images, "test")
    paths = [dataset.image_paths[i % dataset.n_images] for i in range(n_images)]
    texts = [dataset.captions[i % len(dataset.captions)] for i in range(n_texts)]
    threads = threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    out: dict[str, Any] = {"model": model, "threads": threads, "workers": workers, "batch_size": batch_size,
                           "text_batch_size": 4 * batch_size, "n_images": len(paths), "n_texts": len(texts),
                           "variants": {}}
    reference: dict[str, np.ndarray] = {}
    try:
        # the variants are the lite encoder's; any other model is loaded and measured once
        for variant in (variants or list(ENCODE_VARIANTS)) if model == "lite" else ["default"]:
            reset_peak_rss()
            t0 = time.perf_counter()
            encoder, lite = make_variant(variant, model, device)
            row: dict[str, Any] = {"load_s": time.perf_counter() - t0, "device": str(lite.device)}
            if paths:
                def decode() -> list[Any]:
                    with ThreadPoolExecutor(max_workers=workers) as pool:
                        return list(pool.map(lite._load_and_preprocess, enumerate(paths)))

                decode_s, pixels = best_time(decode, repeats)
                # the ONNX path preprocesses to numpy arrays (no torch); as tensors they feed forward_images alike
                batches = [torch.stack([torch.as_tensor(p) for p in pixels[i:i + batch_size]])
                           for i in range(0, len(pixels), batch_size)]
                with torch.inference_mode():
                    encoder.forward_images(batches[0][:8])  # warm-up
                    forward_s, _ = best_time(lambda: [encoder.forward_images(b) for b in batches], repeats)
                e2e_s, vectors = best_time(lambda: encoder.encode_images(paths, batch_size=batch_size,
                                                                         progress=False, num_workers=workers), repeats)
                bound = min(len(paths) / decode_s, len(paths) / forward_s)
                row["images"] = {"decode_per_s": len(paths) / decode_s, "forward_per_s": len(paths) / forward_s,
                                 "encode_per_s": len(paths) / e2e_s, "share_of_bound": len(paths) / e2e_s / bound}
                reference.setdefault("images", vectors)
                row["images"]["min_cosine_to_before"] = float(np.min(np.sum(vectors * reference["images"], axis=1)))
            if texts:
                tb = 4 * batch_size
                chunks = [texts[i:i + tb] for i in range(0, len(texts), tb)]
                tokenize_s, tokens = best_time(lambda: [lite.tokenize(c) for c in chunks], repeats)
                with torch.inference_mode():
                    encoder.forward_texts(lite.tokenize(texts[:32]))
                    forward_s, _ = best_time(lambda: [encoder.forward_texts(t) for t in tokens], repeats)
                e2e_s, vectors = best_time(lambda: encoder.encode_texts(texts, batch_size=tb, progress=False), repeats)
                bound = min(len(texts) / tokenize_s, len(texts) / forward_s)
                row["texts"] = {"tokenize_per_s": len(texts) / tokenize_s, "forward_per_s": len(texts) / forward_s,
                                "encode_per_s": len(texts) / e2e_s, "share_of_bound": len(texts) / e2e_s / bound}
                reference.setdefault("texts", vectors)
                row["texts"]["min_cosine_to_before"] = float(np.min(np.sum(vectors * reference["texts"], axis=1)))
            row["peak_rss_gib"] = gib(peak_rss())
            out["variants"][variant] = row
            i, t = row.get("images", {}), row.get("texts", {})
            tqdm.write(f"encode {model} {variant}: images decode {i.get('decode_per_s', 0):.0f}/s, forward "
                       f"{i.get('forward_per_s', 0):.1f}/s, encode_images {i.get('encode_per_s', 0):.1f}/s "
                       f"({i.get('share_of_bound', 0):.0%} of bound); texts tokenize {t.get('tokenize_per_s', 0):.0f}/s, "
                       f"forward {t.get('forward_per_s', 0):.1f}/s, encode_texts {t.get('encode_per_s', 0):.1f}/s "
                       f"({t.get('share_of_bound', 0):.0%}); min cosine to the first variant "
                       f"{i.get('min_cosine_to_before', 1):.6f} / {t.get('min_cosine_to_before', 1):.6f}")
            del encoder, lite
            gc.collect()
    finally:
        torch.set_num_threads(saved_threads)
    return out


def encode_markdown(encode: dict[str, Any]) -> str:
    lines = ["| variant | images: decode + preprocess /s | forward /s | `encode_images` /s | share of bound | "
             "texts: tokenise /s | forward /s | `encode_texts` /s | share of bound | min cosine to before (img / txt) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in encode["variants"].items():
        i, t = r.get("images", {}), r.get("texts", {})
        lines.append(f"| {name} | {i.get('decode_per_s', 0):,.0f} | {i.get('forward_per_s', 0):.1f} | "
                     f"{i.get('encode_per_s', 0):.1f} | {i.get('share_of_bound', 0):.0%} | "
                     f"{t.get('tokenize_per_s', 0):,.0f} | {t.get('forward_per_s', 0):.1f} | "
                     f"{t.get('encode_per_s', 0):.1f} | {t.get('share_of_bound', 0):.0%} | "
                     f"{i.get('min_cosine_to_before', 1):.6f} / {t.get('min_cosine_to_before', 1):.6f} |")
    return "\n".join(lines)


def bench_hashers(methods: list[str], bits: int, data: Mixture, fit_n: int, encode_n: int,
                  repeats: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Fit time and encode throughput of each method; returns the fitted hashers too."""
    from hashing import create_hasher

    images, texts = data.pairs(fit_n)
    sample = next(data.database(encode_n, chunk=encode_n))
    fitted, rows = {}, []
    for method in tqdm(methods, desc="hash fit + encode", unit="method"):
        t0 = time.perf_counter()
        hasher = create_hasher(method, bits=bits).fit(images, texts)
        fit_s = time.perf_counter() - t0
        enc_s, _ = best_time(lambda: hasher.encode(sample, "image"), repeats)
        fitted[method] = hasher
        rows.append({"method": method, "bits": bits, "fit_n": fit_n, "fit_s": round(fit_s, 3),
                     "encode_n": encode_n, "encode_per_s": encode_n / enc_s})
    return fitted, rows


@dataclass
class SizeData:
    """One size's database: the float baseline (which owns the float vectors) and the binary codes."""

    float_index: faiss.IndexFlatIP
    codes: np.ndarray
    float_add_s: float
    generate_s: float
    hash_encode_s: float

    @property
    def vectors(self) -> np.ndarray:
        """Zero-copy view of the baseline's storage: the float vectors rerankers read."""
        n, d = self.float_index.ntotal, self.float_index.d
        return faiss.rev_swig_ptr(self.float_index.get_xb(), n * d).reshape(n, d)


def build_size(n: int, data: Mixture, hasher: Any, chunk: int) -> SizeData:
    """Generates n vectors chunk by chunk into a pre-sized IndexFlatIP and encodes each chunk.

    The baseline's storage is sized once (faiss' vector would otherwise double and copy, briefly
    holding 3x the data), so the peak is the float vectors plus one chunk.
    """
    index = faiss.IndexFlatIP(data.dim)
    index.codes.resize(n * data.dim * 4)  # reserve: resizing down keeps the capacity
    index.codes.resize(0)
    codes = np.empty((n, hasher.bits // 8), dtype=np.uint8)
    gen_s = add_s = enc_s = 0.0
    bar = tqdm(total=n, desc=f"generate + encode {n:,}", unit="vec", unit_scale=True)
    t0 = time.perf_counter()
    start = 0
    for x in data.database(n, chunk):
        t1 = time.perf_counter()
        gen_s += t1 - t0
        index.add(x)
        t2 = time.perf_counter()
        codes[start:start + len(x)] = hasher.encode(x, "image")
        t0 = time.perf_counter()
        add_s, enc_s = add_s + t2 - t1, enc_s + t0 - t2
        start += len(x)
        bar.update(len(x))
    bar.close()
    return SizeData(index, codes, add_s, gen_s, enc_s)


def queries_for(n: int, nq: int, ref_n: int, minimum: int) -> int:
    """Fewer queries at large n: the float baseline's cost grows with n x nq."""
    return int(max(min(nq, minimum), min(nq, nq * ref_n // max(n, 1))))


def search_modes(search: Callable[[np.ndarray], Any], queries: np.ndarray, single: int,
                 repeats: int) -> tuple[float, float, Any]:
    """(batch QPS, single-query QPS, the batch result), each the best of ``repeats`` runs."""
    batch_s, res = best_time(lambda: search(queries), repeats)
    one = queries[:single]
    single_s, _ = best_time(lambda: [search(one[r:r + 1]) for r in range(len(one))], repeats)
    return len(queries) / batch_s, len(one) / single_s, res


def default_nlist(n: int, max_nlist: int) -> int:
    """IVF cells / buckets at n items: the power of two nearest sqrt(n), within [16, max_nlist]."""
    return int(np.clip(2 ** round(math.log2(math.sqrt(n))), 16, max_nlist))


def index_plan(n: int, args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    """The binary indexes run at size n and their build parameters.

    IVF cells and buckets: the power of two nearest sqrt(n), within [16, --max-nlist]. The search
    parameter (nprobe, e, ef_search) is tuned per size by :func:`tune`.
    """
    nlist = default_nlist(n, args.max_nlist)
    plan: list[tuple[str, dict[str, Any]]] = [("flat", {})]
    if "ivf" in args.indexes:
        plan.append(("ivf", {"nlist": nlist}))
    if "buckets" in args.indexes:
        plan.append(("buckets", {"nbuckets": nlist}))
    if "hnsw" in args.indexes and n <= args.hnsw_max_n:
        plan.append(("hnsw", {"M": args.hnsw_M, "ef_construction": args.hnsw_efc}))
    if "gpu_flat" in args.indexes and cuda_available():
        plan.append(("gpu_flat", {}))
    return plan


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


SearchFactory = Callable[[Any], Callable[[np.ndarray], Any]]


def build_index(kind: str, params: dict[str, Any], codes: np.ndarray, bits: int, queries: np.ndarray,
                k: int, args: argparse.Namespace) -> tuple[Any, str | None, list[Any], SearchFactory]:
    """Builds one index (training included).

    Returns the index, the name of its search parameter, the values :func:`tune` tries (doubling),
    and ``search_with(value)`` -> a search function at that value.
    """
    from hashing.index import create_index

    rng = np.random.default_rng(args.seed)
    if kind in ("flat", "gpu_flat"):
        index = create_index(kind, bits)
        index.add(codes)
        if kind == "gpu_flat":
            index.search(queries[:1], k)  # the host-to-device copy belongs to the build
        return index, None, [None], lambda _: (lambda q: index.search(q, k))
    if kind in ("ivf", "buckets"):
        nlist = params.get("nlist", params.get("nbuckets"))
        sample = codes[rng.choice(len(codes), min(len(codes), nlist * args.train_per_list), replace=False)]
        if kind == "ivf":
            index, probe = create_index("ivf", bits, nlist=nlist), "nprobe"
        else:  # the index fits its own centres (binary k-means) and assigns items and queries to them
            index, probe = create_index("buckets", bits, nbuckets=nlist, kmeans_iters=args.kmeans_iters,
                                        seed=args.seed), "e"
        index.train(sample)
        index.add(codes)

        def search_with(value: int) -> Callable[[np.ndarray], Any]:
            setattr(index, probe, value)
            return lambda q: index.search(q, k)

        return index, probe, doubling(max(1, nlist // 64), nlist), search_with
    if kind == "hnsw":
        index = create_index("hnsw", bits, **params)
        index.add(codes)

        def search_ef(ef: int) -> Callable[[np.ndarray], Any]:
            index.ef_search = ef
            return lambda q: index.search(q, k)

        return index, "ef_search", doubling(k, max(k, args.hnsw_max_ef)), search_ef
    raise ValueError(f"unknown index kind {kind!r}")


def doubling(start: int, stop: int) -> list[int]:
    values = [start]
    while values[-1] < stop:
        values.append(min(2 * values[-1], stop))
    return values


def recall_at(res: Any, q_codes: np.ndarray, codes: np.ndarray, kth: np.ndarray, what: str) -> float:
    """Tie-aware recall against exact Hamming search; also checks the returned distances are true."""
    true_d = hamming_distances_at(q_codes, codes, res.ids, PAD_DISTANCE)
    valid = res.ids >= 0
    if not np.array_equal(true_d[valid], res.distances[valid]):
        raise AssertionError(f"{what}: returned distances are not the items' Hamming distances")
    return float((true_d <= kth).sum() / true_d.size)


def tune(values: list[Any], search_with: SearchFactory, recall: Callable[[Any], float],
         queries: np.ndarray, target: float) -> tuple[Any, list[dict[str, Any]]]:
    """The cheapest value (first in ``values``) whose recall reaches ``target``, else the last one.

    Tuned on the benchmark's own queries, as a deployment would tune on held-out ones.
    """
    trace = []
    for value in values:
        r = recall(search_with(value)(queries))
        trace.append({"value": value, "recall": r})
        if r >= target:
            break
    return trace[-1]["value"], trace


def bench_rerank(vectors: np.ndarray, queries: np.ndarray, candidates: np.ndarray, n: int,
                 repeats: int) -> dict[str, Any]:
    """Stage-2 float rescoring per query: gather the candidates' vectors, score, sort."""
    from hashing.index import Rescorer
    from rerank.base import Candidates, Query
    from rerank.float_rescore import FloatReranker

    queries, candidates = queries[:n], candidates[:n]
    reranker = FloatReranker()

    def one_by_one() -> None:
        for q, ids in zip(queries, candidates):
            ids = ids[ids >= 0]
            scores = reranker.score(Query("text", "query", q), Candidates("image", ids, embeddings=vectors[ids]))
            _ = ids[np.argsort(-scores, kind="stable")]  # the ranking a caller would use

    per_query_s, _ = best_time(one_by_one, repeats)
    rescorer = Rescorer(vectors)
    batch_s, _ = best_time(lambda: rescorer.rescore(queries, candidates), repeats)
    return {"queries": len(queries), "candidates": int(candidates.shape[1]),
            "float_reranker_ms_per_query": 1e3 * per_query_s / len(queries),
            "rescorer_batch_ms_per_query": 1e3 * batch_s / len(queries)}


def bench_size(n: int, data: Mixture, hasher: Any, args: argparse.Namespace) -> dict[str, Any]:
    k, bits = args.k, hasher.bits
    gc.collect()
    reset_peak_rss()
    t_size = time.perf_counter()
    db = build_size(n, data, hasher, args.chunk)
    nq = queries_for(n, args.nq, args.nq_ref_n, args.min_nq)
    single = queries_for(n, args.single, args.nq_ref_n, args.min_single)
    xq = data.queries(nq)
    q_codes = hasher.encode(xq, "text")
    float_bytes = n * data.dim * 4
    f_batch, f_single, (_, f_ids) = search_modes(lambda q: db.float_index.search(q, k), xq, single, args.repeats)
    baseline = {"index": "float IndexFlatIP", "params": {"dim": data.dim}, "build_s": db.float_add_s,
                "bytes": float_bytes, "bytes_per_item": float_bytes / n, "batch_qps": f_batch, "single_qps": f_single}
    tqdm.write(f"[{n:,}] float IndexFlatIP d={data.dim}: batch {f_batch:.1f} qps, single {f_single:.1f} qps "
               f"({nq} / {single} queries), {gib(float_bytes)} GiB")
    rows, reference, kth = [], None, None
    for kind, params in tqdm(index_plan(n, args), desc=f"indexes at {n:,}", unit="index"):
        gc.collect()
        rss0 = rss()
        t0 = time.perf_counter()
        index, knob, values, search_with = build_index(kind, params, db.codes, bits, q_codes, k, args)
        build_s = time.perf_counter() - t0
        rss_delta = rss() - rss0
        if reference is None:  # the first index is exact flat search: the recall reference
            reference = search_with(None)(q_codes)
            kth = reference.distances[:, k - 1:k]
        what = f"{kind} {params}"
        value, trace = tune(values, search_with, lambda res: recall_at(res, q_codes, db.codes, kth, what),
                            q_codes, args.target_recall)
        batch, one, res = search_modes(search_with(value), q_codes, single, args.repeats)
        if knob:
            params = {**params, knob: value}
        size = saved_size(index)
        row = {"index": kind, "params": params, "bits": bits, "build_s": build_s, "bytes": size,
               "bytes_per_item": size / n, "rss_delta_bytes": rss_delta,
               "recall": recall_at(res, q_codes, db.codes, kth, what), "tuning": trace if knob else None,
               "scanned_fraction": res.scanned_fraction, "batch_qps": batch, "single_qps": one,
               "batch_x_float": batch / f_batch, "single_x_float": one / f_single,
               "memory_x_float": size / float_bytes}
        tqdm.write(f"[{n:,}] {kind:8s} {params}: recall {row['recall']:.3f} batch {batch:9.0f} qps "
                   f"({row['batch_x_float']:6.1f}x) single {one:8.0f} qps ({row['single_x_float']:7.1f}x) "
                   f"build {build_s:6.1f}s {row['bytes_per_item']:.0f} B/item")
        rows.append(row)
        del index, search_with
    top = min(10, k)
    kept = np.mean([np.isin(f, r).mean() for f, r in zip(f_ids[:, :top], reference.ids)])
    rerank = bench_rerank(db.vectors, xq, reference.ids[:, :args.rerank_candidates],
                          min(nq, args.rerank_queries), args.repeats)
    tqdm.write(f"[{n:,}] rerank {args.rerank_candidates} candidates: FloatReranker "
               f"{rerank['float_reranker_ms_per_query']:.3f} ms/query, Rescorer batch "
               f"{rerank['rescorer_batch_ms_per_query']:.3f} ms/query")
    out = {
        "n": n, "dim": data.dim, "data": "synthetic Gaussian mixture", "nq": nq, "single": single,
        "generate_s": db.generate_s, "hash_encode_s": db.hash_encode_s, "hash_encode_per_s": n / db.hash_encode_s,
        "float": baseline, "indexes": rows, "rerank": rerank,
        f"float_top{top}_in_hamming_top{k}": float(kept),
        "peak_rss_gib": gib(peak_rss()), "wall_s": time.perf_counter() - t_size, "loadavg": os.getloadavg(),
    }
    return out  # db (the float vectors) is freed here, before the next size is generated


# -- against what a user would deploy instead -----------------------------------------------------
def float_recall(ids: np.ndarray, truth: np.ndarray) -> float:
    """recall@k against exact float search: the share of the exact top-k ids returned (k = truth's width)."""
    k = truth.shape[1]
    return float(np.mean([len(np.intersect1d(a[:k], b)) / k for a, b in zip(ids, truth)]))


def share_in(candidates: np.ndarray, truth: np.ndarray) -> float:
    """The share of the exact top-k (``truth``) inside each query's ``candidates``, whatever their
    number: what exact rescoring of those candidates would reach as recall@k."""
    return float(np.mean([np.isin(t, c).mean() for t, c in zip(truth, candidates)]))


class Ours:
    """Stage 1 as the Retriever runs it on a store: Hamming top-``depth`` from a faiss binary index,
    the candidates' fp16 vectors gathered and rescored exactly, the top ``k`` kept."""

    def __init__(self, hasher: Any, index: Any, vectors16: np.ndarray, k: int) -> None:
        self.hasher, self.index, self.vectors, self.k = hasher, index, vectors16, k
        self.depth = k

    def candidates(self, queries: np.ndarray) -> np.ndarray:
        """(nq, depth) ids handed to the float rescoring, -1 padded."""
        return self.index.search(self.hasher.encode(queries, "text"), self.depth).ids

    def search(self, queries: np.ndarray) -> np.ndarray:
        ids = self.candidates(queries)
        out = np.full((len(queries), self.k), -1, dtype=np.int64)
        for row, (q, cand) in enumerate(zip(queries, ids)):
            cand = cand[cand >= 0]
            scores = self.vectors[cand].astype(np.float32) @ q
            top = np.argpartition(-scores, self.k - 1)[:self.k] if len(cand) > self.k else np.arange(len(cand))
            top = top[np.argsort(-scores[top], kind="stable")]
            out[row, :len(top)] = cand[top]
        return out


class OursAsymmetric(Ours):
    """:class:`Ours` with an asymmetric cut between the Hamming search and the float rescoring:
    Hamming top-``hamming_depth``, then those candidates' codes (held in RAM, ``codes[id]``)
    scored against the caption's real-valued projection (``Hasher.project``,
    :func:`hashing.index.asymmetric_top`), the best ``depth`` of them rescored from fp16 vectors.
    The aim is a smaller float depth at the same recall: fewer fp16 rows read a query."""

    def __init__(self, hasher: Any, index: Any, vectors16: np.ndarray, codes: np.ndarray, k: int) -> None:
        super().__init__(hasher, index, vectors16, k)
        self.codes = codes
        self.hamming_depth = k

    def hamming(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the queries' projections, their Hamming top-``hamming_depth`` ids): one projection
        serves both the query's code (its signs) and the asymmetric scores."""
        projected = self.hasher.project(queries, "text")
        return projected, self.index.search(pack_signs(projected), self.hamming_depth).ids

    def candidates(self, queries: np.ndarray) -> np.ndarray:
        projected, ids = self.hamming(queries)
        return asymmetric_top(projected, ids, self.codes, self.depth)


def top10_shares(ours: OursAsymmetric, queries: np.ndarray, truth: np.ndarray, hamming_depths: list[int],
                 depths: tuple[int, ...] = (64, 256)) -> list[dict[str, Any]]:
    """The README's diagnostic, at ``ours``' current scan: the share of the float top-k inside the
    Hamming top-d and inside the asymmetric top-d of the Hamming top-D1, for each D1 of
    ``hamming_depths`` (prefixes of one search at the largest). With exact rescoring, recall@k at
    rescoring depth d is this share, so it says how deep each ranking must be rescored."""
    ours.hamming_depth = max(hamming_depths)
    projected, deep = ours.hamming(queries)
    out = []
    for d1 in sorted(hamming_depths):
        row: dict[str, Any] = {"hamming_depth": d1}
        for d in depths:
            if d < d1:
                row[f"hamming_top{d}"] = share_in(deep[:, :d], truth)
                row[f"asymmetric_top{d}"] = share_in(asymmetric_top(projected, deep[:, :d1], ours.codes, d), truth)
        out.append(row)
    return out


def tune_grid(grid: list[dict[str, Any]], apply: Callable[[dict[str, Any]], Callable[[np.ndarray], np.ndarray]],
              queries: np.ndarray, truth: np.ndarray, target: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The first setting of ``grid`` (cheapest first) whose recall@k reaches ``target``, else the best."""
    trace = []
    for setting in grid:
        r = float_recall(apply(setting)(queries), truth)
        trace.append({**setting, "recall": r})
        if r >= target:
            return setting, trace
    best = max(trace, key=lambda t: t["recall"])
    return {k: v for k, v in best.items() if k != "recall"}, trace


def tune_fastest(chains: list[list[dict[str, Any]]],
                 apply: Callable[[dict[str, Any]], Callable[[np.ndarray], np.ndarray]], queries: np.ndarray,
                 truth: np.ndarray, target: float, timed: int, repeats: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The fastest single-query setting reaching ``target`` when two parameters trade against each other.

    Each chain holds one value of the scan parameter (nprobe, ef_search) with the rescoring depth
    rising; a chain stops at its first depth reaching the target, and a later chain (more scanned)
    only tries smaller depths than the best so far, since at equal depth it can only cost more.
    The settings reaching the target are then timed one query at a time on ``timed`` queries; with
    none, the best recall wins. A single-parameter grid has its first reaching setting as its
    fastest, which is why :func:`tune_grid` needs no timing.
    """
    trace: list[dict[str, Any]] = []
    reached: list[tuple[dict[str, Any], dict[str, Any]]] = []  # (setting, its trace row)
    max_depth: int | None = None
    for chain in chains:
        for setting in chain:
            if max_depth is not None and setting["depth"] >= max_depth:
                break
            trace.append({**setting, "recall": float_recall(apply(setting)(queries), truth)})
            if trace[-1]["recall"] >= target:
                reached.append((setting, trace[-1]))
                max_depth = setting["depth"]
                break
    if not reached:
        best = max(trace, key=lambda t: t["recall"])
        return {k: v for k, v in best.items() if k != "recall"}, trace
    one = queries[:timed]
    for setting, row in reached:
        search = apply(setting)
        seconds, _ = best_time(lambda: [search(one[i:i + 1]) for i in range(len(one))], repeats)
        row["single_qps_tuning"] = len(one) / seconds
    return max(reached, key=lambda pair: pair[1]["single_qps_tuning"])[0], trace


def bench_ann(n: int, data: Any, hasher_factory: Callable[[int], Any], args: argparse.Namespace) -> dict[str, Any]:
    """faiss IndexFlatIP / IndexHNSWFlat / IndexIVFPQ against ours at n items, recall@k vs exact float search.

    Every system is tuned on the benchmark's queries to its first setting (cheapest first)
    reaching ``--target-recall``; QPS batch (``--nq`` queries in one call) and single (one call per
    query), one search thread, builds on ``--build-threads``. Memory: what the index holds in RAM
    (``faiss.write_index`` size; ours: the saved binary index) and, for ours, the fp16 vectors the
    rescoring reads (memory-mapped from the store's chunk files: read per query, not loaded).
    """
    from hashing.index import create_index

    k = args.ann_k
    gc.collect()
    reset_peak_rss()
    t_stage = time.perf_counter()
    x = np.concatenate(list(data.database(n, args.chunk)))
    xq = data.queries(args.nq)
    single = min(args.single, args.nq)
    flat = faiss.IndexFlatIP(data.dim)
    t0 = time.perf_counter()
    flat.add(x)
    flat_build = time.perf_counter() - t0
    _, truth = flat.search(xq, k)
    rows = []

    def measure(name: str, params: dict[str, Any], search: Callable[[np.ndarray], np.ndarray], build_s: float,
                ram: int, extra: int = 0) -> None:
        batch_qps, single_qps, ids = search_modes(search, xq, single, args.repeats)
        row = {"system": name, "params": params, "recall": float_recall(ids, truth), "batch_qps": batch_qps,
               "single_qps": single_qps, "build_s": build_s, "ram_bytes": ram, "mmap_bytes": extra}
        rows.append(row)
        tqdm.write(f"[ann {n:,}] {name} {params}: recall@{k} {row['recall']:.3f}, batch {row['batch_qps']:.0f} qps, "
                   f"single {row['single_qps']:.0f} qps, build {build_s:.1f}s, RAM {human(ram)}"
                   + (f" + {human(extra)} rescoring vectors" if extra else ""))

    faiss.omp_set_num_threads(args.threads)
    measure("faiss IndexFlatIP", {"dim": data.dim}, lambda q: flat.search(q, k)[1], flat_build, n * data.dim * 4)

    faiss.omp_set_num_threads(args.build_threads)
    t0 = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(data.dim, args.ann_hnsw_M, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = args.ann_hnsw_efc
    hnsw.add(x)
    hnsw_build = time.perf_counter() - t0
    faiss.omp_set_num_threads(args.threads)

    def hnsw_at(setting: dict[str, Any]) -> Callable[[np.ndarray], np.ndarray]:
        hnsw.hnsw.efSearch = setting["efSearch"]
        return lambda q: hnsw.search(q, k)[1]

    setting, trace = tune_grid([{"efSearch": e} for e in doubling(k, 4096)], hnsw_at, xq, truth, args.target_recall)
    measure("faiss IndexHNSWFlat", {"M": args.ann_hnsw_M, "efConstruction": args.ann_hnsw_efc, **setting},
            hnsw_at(setting), hnsw_build, faiss_size(hnsw))
    rows[-1]["tuning"] = trace
    del hnsw
    gc.collect()

    nlist = default_nlist(n, args.max_nlist)
    rng = np.random.default_rng(args.seed)
    sample = x[rng.choice(n, min(n, nlist * args.train_per_list * 2), replace=False)]
    for m in args.ann_pq_m:
        faiss.omp_set_num_threads(args.build_threads)
        t0 = time.perf_counter()
        # L2 on unit vectors ranks as inner product does; faiss' IVFPQ with METRIC_INNER_PRODUCT encodes
        # residuals whose scores do not compare across lists (recall fell as nprobe rose here)
        ivfpq = faiss.IndexIVFPQ(faiss.IndexFlatL2(data.dim), data.dim, nlist, m, 8)
        ivfpq.train(sample)
        ivfpq.add(x)
        pq_build = time.perf_counter() - t0
        faiss.omp_set_num_threads(args.threads)

        def ivfpq_at(setting: dict[str, Any]) -> Callable[[np.ndarray], np.ndarray]:
            ivfpq.nprobe = setting["nprobe"]
            return lambda q: ivfpq.search(q, k)[1]

        setting, trace = tune_grid([{"nprobe": v} for v in doubling(1, nlist)], ivfpq_at, xq, truth,
                                   args.target_recall)
        measure("faiss IndexIVFPQ", {"nlist": nlist, "m": m, "nbits": 8, **setting}, ivfpq_at(setting), pq_build,
                faiss_size(ivfpq))
        rows[-1]["tuning"] = trace
        del ivfpq
        gc.collect()
        if rows[-1]["recall"] >= args.target_recall:
            break  # the first m that reaches the target is the one reported

    if args.ann_rabitq:
        rabitq_rows(x, args.ann_ours_nlist or nlist, rng, measure, rows, k, xq, truth, single, args)

    vectors16 = x.astype(np.float16)
    for bits in args.ann_bits:
        t0 = time.perf_counter()
        hasher = hasher_factory(bits)
        codes = np.concatenate([hasher.encode(x[i:i + args.chunk], "image") for i in range(0, n, args.chunk)])
        code_s = time.perf_counter() - t0
        bnlist = args.ann_ours_nlist or nlist
        for kind in args.ann_ours:
            t0 = time.perf_counter()
            faiss.omp_set_num_threads(args.build_threads)
            if kind == "ivf":
                train = codes[rng.choice(n, min(n, bnlist * args.train_per_list), replace=False)]
                index = create_index("ivf", bits, nlist=bnlist).train(train)
            elif kind == "hnsw":
                index = create_index("hnsw", bits, M=args.ann_ours_hnsw_M, ef_construction=args.hnsw_efc)
            else:
                index = create_index(kind, bits)
            index.add(codes)
            faiss.omp_set_num_threads(args.threads)
            build_s = code_s + time.perf_counter() - t0
            ours = Ours(hasher, index, vectors16, k)
            depths = doubling(args.ann_min_depth, args.ann_max_depth)
            if kind == "ivf":
                chains = [[{"depth": d, "nprobe": p} for d in depths] for p in doubling(max(1, bnlist // 32), bnlist)]
            elif kind == "hnsw":  # the beam is at least the depth (faiss raises it to k anyway)
                chains = [[{"depth": d, "ef_search": f * d} for d in depths] for f in (1, 2, 4)]
            else:
                chains = [[{"depth": d} for d in depths]]

            def ours_at(setting: dict[str, Any]) -> Callable[[np.ndarray], np.ndarray]:
                ours.depth = setting["depth"]
                if "nprobe" in setting:
                    index.nprobe = setting["nprobe"]
                if "ef_search" in setting:
                    index.ef_search = setting["ef_search"]
                return ours.search

            setting, trace = tune_fastest(chains, ours_at, xq, truth, args.target_recall, single, args.repeats)
            measure(f"ours: {kind} {bits}b + fp16 rescoring", {"bits": bits, **setting}, ours_at(setting), build_s,
                    saved_size(index), vectors16.nbytes)
            rows[-1]["tuning"] = trace
            if kind in args.ann_asymmetric:
                asymmetric_row(hasher, index, kind, bits, codes, vectors16, bnlist, measure, rows, xq, truth,
                               build_s, single, args)
            del index
    hnsw_row = next(r for r in rows if r["system"] == "faiss IndexHNSWFlat")
    for r in rows:
        r["ram_x_hnsw"] = r["ram_bytes"] / hnsw_row["ram_bytes"]
        r["ram_and_mmap_x_hnsw"] = (r["ram_bytes"] + r["mmap_bytes"]) / hnsw_row["ram_bytes"]
    return {"n": n, "dim": data.dim, "k": k, "nq": args.nq, "single": single, "rows": rows,
            "peak_rss_gib": gib(peak_rss()), "wall_s": time.perf_counter() - t_stage, "loadavg": os.getloadavg()}


def asymmetric_row(hasher: Any, index: Any, kind: str, bits: int, codes: np.ndarray, vectors16: np.ndarray,
                   nlist: int, measure: Callable[..., None], rows: list[dict[str, Any]], xq: np.ndarray,
                   truth: np.ndarray, build_s: float, single: int, args: argparse.Namespace) -> None:
    """Ours with the asymmetric cut (:class:`OursAsymmetric`) on the same binary index.

    Three knobs, tuned like ours (:func:`tune_fastest`, once per Hamming depth D1 of
    ``--ann-asymmetric-hamming-depths``, the fastest of those timed kept): one chain per nprobe
    from nlist/32 doubling, the float depth D2 (``depth``) from ``--ann-min-depth`` doubling below
    D1 (D2 = D1 is plain ours at extra cost).
    A chain whose Hamming top-D1 holds less than the target share of the float top-k is skipped:
    the cut keeps a subset of it, so no D2 can reach the target there (``hamming_bounds``).
    RAM: the saved index plus the codes held for the scorer (faiss' inverted lists do not give
    codes by id). ``top10_shares``: the diagnostic at the narrowest scan.
    """
    ours = OursAsymmetric(hasher, index, vectors16, codes, args.ann_k)
    scans = [{"nprobe": p} for p in doubling(max(1, nlist // 32), nlist)] if kind == "ivf" else [{}]
    d1s = sorted(args.ann_asymmetric_hamming_depths)
    ours.hamming_depth = d1s[-1]
    bounds, chains = [], []
    for scan in scans:
        if "nprobe" in scan:
            index.nprobe = scan["nprobe"]
        deep = ours.hamming(xq)[1]
        for d1 in d1s:
            bounds.append({**scan, "hamming_depth": d1, "recall_bound": share_in(deep[:, :d1], truth)})
            if bounds[-1]["recall_bound"] >= args.target_recall:
                chains.append([{"depth": d2, "hamming_depth": d1, **scan}
                               for d2 in doubling(args.ann_min_depth, d1) if d2 < d1])

    def at(setting: dict[str, Any]) -> Callable[[np.ndarray], np.ndarray]:
        ours.depth, ours.hamming_depth = setting["depth"], setting["hamming_depth"]
        if "nprobe" in setting:
            index.nprobe = setting["nprobe"]
        return ours.search

    if "nprobe" in scans[0]:
        index.nprobe = scans[0]["nprobe"]
    shares = top10_shares(ours, xq, truth, d1s)
    if not chains:  # no Hamming top-D1 holds the target: tune where it holds the most
        best = max(bounds, key=lambda b: b["recall_bound"])
        chains = [[{"depth": d2, "hamming_depth": best["hamming_depth"],
                    **{key: v for key, v in best.items() if key == "nprobe"}}
                   for d2 in doubling(args.ann_min_depth, best["hamming_depth"]) if d2 < best["hamming_depth"]]]
    # tune_fastest's pruning (a later chain only tries smaller depths) holds along nprobe at one D1,
    # not across D1 (a smaller D1 at a wider scan can be cheaper at a greater D2): one run per D1
    trace, reached = [], []
    for d1 in d1s:
        mine = [c for c in chains if c[0]["hamming_depth"] == d1]
        if mine:
            _, trace_d1 = tune_fastest(mine, at, xq, truth, args.target_recall, single, args.repeats)
            trace += trace_d1
            reached += [t for t in trace_d1 if "single_qps_tuning" in t]
    best = (max(reached, key=lambda t: t["single_qps_tuning"]) if reached
            else max(trace, key=lambda t: t["recall"]))
    setting = {key: v for key, v in best.items() if key not in ("recall", "single_qps_tuning")}
    measure(f"ours: {kind} {bits}b + asymmetric + fp16 rescoring", {"bits": bits, **setting}, at(setting), build_s,
            saved_size(index) + codes.nbytes, vectors16.nbytes)
    rows[-1]["tuning"] = trace
    rows[-1]["top10_shares"] = {**scans[0], "shares": shares}
    rows[-1]["hamming_bounds"] = bounds
    rows[-1]["codes_in_ram_bytes"] = int(codes.nbytes)


def rabitq_rows(x: np.ndarray, nlist: int, rng: np.random.Generator, measure: Callable[..., None],
                rows: list[dict[str, Any]], k: int, xq: np.ndarray, truth: np.ndarray, single: int,
                args: argparse.Namespace) -> None:
    """faiss ``IndexIVFRaBitQ`` (1 bit a dimension) refined by ``IndexRefine``: the binary peer of ours.

    At d = 256 a RaBitQ code is 256 bits plus two float factors (40 bytes; ours: 32), over the same
    ``nlist`` as our binary IVF, so a probe scans the same share of the items. The refinement
    re-ranks ``k_factor x k`` candidates from stored vectors: fp16 by default (``IndexRefine`` over
    ``IndexScalarQuantizer(QT_fp16)``, the same 512 bytes an item as ours rescores from; faiss keeps
    them in RAM, ours memory-maps them), fp32 with ``--ann-rabitq-refine fp32`` (``IndexRefineFlat``).
    Queries are quantised to ``--ann-rabitq-qb`` bits (faiss' ``qb``; 0 = float queries). L2 on
    unit vectors ranks as inner product does, as for IVFPQ. Tuned like ours (:func:`tune_fastest`):
    nprobe from nlist/32 doubling, for each the first rescoring depth (``k_factor = depth / k``)
    from ``--ann-min-depth`` doubling that reaches the target, the reaching settings timed.
    """
    n, dim = x.shape
    faiss.omp_set_num_threads(args.build_threads)
    t0 = time.perf_counter()
    base = faiss.IndexIVFRaBitQ(faiss.IndexFlatL2(dim), dim, nlist, faiss.METRIC_L2)
    base.qb = args.ann_rabitq_qb
    if args.ann_rabitq_refine == "fp32":
        refined = faiss.IndexRefineFlat(base)
    else:
        refined = faiss.IndexRefine(base, faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16))
    refined.train(x[rng.choice(n, min(n, nlist * args.train_per_list), replace=False)])
    refined.add(x)
    build_s = time.perf_counter() - t0
    faiss.omp_set_num_threads(args.threads)

    def at(setting: dict[str, Any]) -> Callable[[np.ndarray], np.ndarray]:
        base.nprobe = setting["nprobe"]
        refined.k_factor = setting["depth"] / k
        return lambda q: refined.search(q, k)[1]

    depths = doubling(args.ann_min_depth, args.ann_max_depth)
    chains = [[{"depth": d, "nprobe": p} for d in depths] for p in doubling(max(1, nlist // 32), nlist)]
    setting, trace = tune_fastest(chains, at, xq, truth, args.target_recall, single, args.repeats)
    total, codes = faiss_size(refined), faiss_size(base)
    measure(f"faiss IndexIVFRaBitQ + {args.ann_rabitq_refine} refine",
            {"nlist": nlist, "qb": args.ann_rabitq_qb, **setting}, at(setting), build_s, codes, total - codes)
    rows[-1]["tuning"] = trace
    rows[-1]["rescoring_in_ram"] = True
    rows[-1]["code_bytes_per_item"] = int(base.code_size)
    del refined, base
    gc.collect()


def rescoring(row: dict[str, Any]) -> str:
    if not row["mmap_bytes"]:
        return "-"
    return human(row["mmap_bytes"]) + (" in RAM" if row.get("rescoring_in_ram") else " memory-mapped")


def ann_markdown(ann: dict[str, Any]) -> str:
    lines = [f"| system | setting | recall@{ann['k']} | batch QPS | single QPS | build s | RAM | × HNSW RAM | "
             "+ rescoring vectors |", "|---|---|---|---|---|---|---|---|---|"]
    for r in ann["rows"]:
        params = ", ".join(f"{a}={b}" for a, b in r["params"].items())
        lines.append(f"| {r['system']} | {params} | {r['recall']:.3f} | {r['batch_qps']:,.0f} | {r['single_qps']:,.0f} | "
                     f"{r['build_s']:.1f} | {human(r['ram_bytes'])} | {r['ram_x_hnsw']:.3f} | "
                     f"{rescoring(r)} |")
    return "\n".join(lines)


# -- scale: the on-disk Retriever ------------------------------------------------------------------
#: A fresh-process probe of a saved retriever (argv: directory, queries .npy, "1" to compare): the
#: encoder is loaded before the first reading, so ``after_open - before`` is what the open added.
#: Resident memory both as VmRSS and as its private part (RssAnon): VmRSS also counts the pages of
#: memory-mapped chunk files the process touched, page cache the kernel can reclaim.
OPEN_PROBE = r"""
import json, os, sys, time
import faiss
import numpy as np
faiss.omp_set_num_threads(1)  # single queries: OpenMP's spin-waits cost more than they save on 2 cores

def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def anon():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("RssAnon:"))

from retrieval import Retriever, load_encoder
from retrieval.stored_gallery import return_free_heap
encoder = load_encoder("lite")
return_free_heap()  # what loading the encoder freed is not the open's to reuse or to be charged for
before, before_anon = rss(), anon()
t0 = time.perf_counter()
r = Retriever.open(sys.argv[1], encoder=encoder)
open_s = time.perf_counter() - t0
after_open, after_open_anon = rss(), anon()
queries = np.load(sys.argv[2])
compare = sys.argv[3] == "1"
times, hits = [], []
for q in queries:
    t0 = time.perf_counter()
    h = r.search_embeddings(q[None], "text", k=10, rerank="float")[0]
    times.append(1e3 * (time.perf_counter() - t0))
    hits.append([[x.id, x.score] for x in h])
out = {"open_s": open_s, "rss_open_bytes": after_open - before, "rss_search_bytes": rss() - before,
       "anon_open_bytes": after_open_anon - before_anon, "anon_search_bytes": anon() - before_anon,
       "p50_ms": float(np.percentile(times[1:], 50)), "p99_ms": float(np.percentile(times[1:], 99))}
if compare:
    # stage 1 as run for caption galleries (Hamming top-384, float-rescored, 128 kept) beside
    # exhaustive float search over the same vectors in RAM (faiss IndexFlatIP, float32)
    r.hamming_candidates = {"image": 384, "text": 384}
    cascade = []
    for q in queries:
        t0 = time.perf_counter()
        r.search_embeddings(q[None], "text", k=10, rerank=False)
        cascade.append(1e3 * (time.perf_counter() - t0))
    flat = faiss.IndexFlatIP(queries.shape[1])
    for ids, _ in r.store.live_codes("image"):
        flat.add(r.store.fetch_vectors("image", ids))
    exhaustive = []
    for q in queries:
        t0 = time.perf_counter()
        flat.search(q[None], 128)
        exhaustive.append(1e3 * (time.perf_counter() - t0))
    out.update(hits=hits, cascade_p50_ms=float(np.percentile(cascade[1:], 50)),
               float_exhaustive_p50_ms=float(np.percentile(exhaustive[1:], 50)))
print(json.dumps(out))
"""


@functools.cache
def scale_encoder() -> Any:
    """The lite encoder every scale-stage retriever is created with, loaded once per run (the
    vectors are synthetic: it only has to be there, so one load serves every size and dtype)."""
    from retrieval import load_encoder

    return load_encoder("lite")


def in_memory_hits(n: int, data: Mixture, hasher: Any, queries: np.ndarray, chunk: int) -> list[list[list[Any]]]:
    """Top-10 (id, score) lists of an in-memory Retriever over the same float32 vectors: the reference
    a stored one is compared with."""
    from retrieval import Retriever

    memory = Retriever(scale_encoder(), hasher)
    for x in data.database(n, chunk):
        memory.add_vectors("image", x, [None] * len(x))
    return [[[h.id, h.score] for h in memory.search_embeddings(q[None], "text", k=10, rerank="float")[0]]
            for q in queries]


def agreement(hits: list[list[list[Any]]], expected: list[list[list[Any]]]) -> dict[str, float]:
    """How far a stored retriever's top-10 lists are from the in-memory reference's."""
    return {"identical_top10_lists": float(np.mean([[h[0] for h in a] == [h[0] for h in b]
                                                    for a, b in zip(hits, expected)])),
            "top10_ids_kept": float(np.mean([len({h[0] for h in a} & {h[0] for h in b}) / len(b)
                                             for a, b in zip(hits, expected)])),
            "max_score_diff": float(max(abs(x[1] - y[1]) for a, b in zip(hits, expected) for x, y in zip(a, b)))}


def bench_scale(n: int, data: Mixture, hasher: Any, args: argparse.Namespace, vector_dtype: str = "fp16",
                expected: list[list[list[Any]]] | None = None) -> dict[str, Any]:
    """``Retriever.create`` on disk, ``add_vectors`` in chunks, ``close``; then a fresh process opens and searches.

    Build = the add_vectors calls, save = ``close()`` (the store commits as it goes), open and
    search in the fresh process; memory there is VmRSS and its private part (RssAnon) added by
    ``Retriever.open`` and after the searches, the encoder loaded before the first reading. With
    ``expected`` (:func:`in_memory_hits`), the fresh process also times the caption cascade beside
    exhaustive float search, and its rankings are compared with the reference.
    """
    import shutil
    import subprocess
    import tempfile

    from retrieval import Retriever

    workdir = Path(args.scale_dir or tempfile.mkdtemp(prefix="bench_scale."))
    workdir.mkdir(parents=True, exist_ok=True)
    directory = workdir / f"retriever-{n}-{vector_dtype}"
    shutil.rmtree(directory, ignore_errors=True)
    query_file = workdir / f"queries-{n}.npy"
    np.save(query_file, data.queries(args.scale_queries))
    gc.collect()
    reset_peak_rss()
    encoder = scale_encoder()
    t0 = time.perf_counter()
    r = Retriever.create(directory, encoder=encoder, hasher=hasher, vector_dtype=vector_dtype)
    bar = tqdm(total=n, desc=f"add_vectors {n:,} {vector_dtype}", unit="vec", unit_scale=True)
    for x in data.database(n, args.chunk):
        r.add_vectors("image", x, [None] * len(x))
        bar.update(len(x))
    bar.close()
    t1 = time.perf_counter()
    r.close()
    t2 = time.perf_counter()
    build_peak = peak_rss()
    del r
    gc.collect()
    probe = subprocess.run([sys.executable, "-c", OPEN_PROBE, str(directory), str(query_file),
                            "1" if expected is not None else "0"], capture_output=True, text=True, check=True)
    got = json.loads(probe.stdout.strip().splitlines()[-1])
    hits = got.pop("hits", None)
    row = {"n": n, "vector_dtype": vector_dtype, "bits": hasher.bits, "build_s": t1 - t0, "save_s": t2 - t1,
           **got, "build_peak_rss_bytes": build_peak, "disk_bytes": directory_size(directory),
           "queries": args.scale_queries, **(agreement(hits, expected) if expected is not None else {})}
    tqdm.write(f"[scale {n:,} {vector_dtype}] build {row['build_s']:.1f}s, save {row['save_s']:.2f}s, "
               f"open {row['open_s']:.2f}s, +{human(row['anon_open_bytes'])} private ({human(row['rss_open_bytes'])} "
               f"resident) after open, +{human(row['anon_search_bytes'])} ({human(row['rss_search_bytes'])}) after "
               f"{args.scale_queries} searches, p50 {row['p50_ms']:.2f} ms, "
               f"p99 {row['p99_ms']:.2f} ms, disk {human(row['disk_bytes'])}"
               + (f"; identical top-10 lists {row['identical_top10_lists']:.3f}, kept {row['top10_ids_kept']:.3f}; "
                  f"cascade p50 {row['cascade_p50_ms']:.2f} ms vs exhaustive float {row['float_exhaustive_p50_ms']:.2f} ms"
                  if expected is not None else ""))
    if not args.scale_keep:
        shutil.rmtree(directory, ignore_errors=True)
    return row


def scale_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| n | vectors | build s | save s | open s | resident after open: private (all) | after searches: "
             "private (all) | p50 / p99 ms (hash + float) | disk | identical top-10 lists | top-10 ids kept | cascade "
             "p50 ms | exhaustive float p50 ms |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        compared = "identical_top10_lists" in r
        lines.append(f"| {r['n']:,} | {r['vector_dtype']} | {r['build_s']:.1f} | {r['save_s']:.2f} | {r['open_s']:.2f} | "
                     f"{human(r['anon_open_bytes'])} ({human(r['rss_open_bytes'])}) | "
                     f"{human(r['anon_search_bytes'])} ({human(r['rss_search_bytes'])}) | {r['p50_ms']:.2f} / "
                     f"{r['p99_ms']:.2f} | {human(r['disk_bytes'])} | "
                     + (f"{r['identical_top10_lists']:.3f} | {r['top10_ids_kept']:.3f} | {r['cascade_p50_ms']:.2f} | "
                        f"{r['float_exhaustive_p50_ms']:.2f} |" if compared else "- | - | - | - |"))
    return "\n".join(lines)


def budget(rows: list[dict[str, Any]], targets: tuple[int, ...] = (100_000_000, 1_000_000_000)) -> list[dict[str, Any]]:
    """Disk and memory bytes per item from the largest measured size, extrapolated linearly.

    The private memory after open is what a machine must hold; resident after the searches adds
    the pages of the memory-mapped files the searches touched (page cache, reclaimable), so it is
    bounded by the files' size, not proportional to the queries.
    """
    if not rows:
        return []
    r = max(rows, key=lambda r: (r["n"], r["vector_dtype"] == "fp16"))
    return [{"n": t, "from_n": r["n"], "disk_bytes": r["disk_bytes"] / r["n"] * t,
             "private_open_bytes": r["anon_open_bytes"] / r["n"] * t,
             "private_after_search_bytes": r["anon_search_bytes"] / r["n"] * t,
             "resident_after_search_bytes": r["rss_search_bytes"] / r["n"] * t} for t in targets]


# -- report --------------------------------------------------------------------------------------
def markdown(sizes: list[dict[str, Any]], k: int) -> str:
    head = (f"| n | index | params | recall@{k} | batch QPS | × float | single QPS | × float | build s | "
            "memory | × float memory |\n|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for s in sizes:
        f = s["float"]
        lines.append(f"| {s['n']:,} | float IndexFlatIP | dim={s['dim']}, {s['nq']}/{s['single']} queries | "
                     f"exact | {f['batch_qps']:.1f} | 1 | {f['single_qps']:.1f} | 1 | {f['build_s']:.1f} | "
                     f"{human(f['bytes'])} | 1 |")
        for r in s["indexes"]:
            params = ", ".join(f"{a}={b}" for a, b in r["params"].items()) or "-"
            lines.append(f"| {s['n']:,} | {r['index']} {r['bits']}b | {params} | {r['recall']:.3f} | "
                         f"{r['batch_qps']:.0f} | {r['batch_x_float']:.1f} | {r['single_qps']:.0f} | "
                         f"{r['single_x_float']:.1f} | {r['build_s']:.1f} | {human(r['bytes'])} | "
                         f"{r['memory_x_float']:.3f} |")
    return "\n".join(lines)


def human(b: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= scale:
            return f"{b / scale:.1f} {unit}"
    return f"{b:.0f} B"


def plot(sizes: list[dict[str, Any]], path: Path) -> Path:
    """Batch and single-query QPS, and memory, against n (log-log), one line per index."""
    import io

    matplotlib = require("matplotlib", "eval.bench's plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common.atomic import atomic_write_file

    series: dict[str, dict[str, list[float]]] = {}
    for s in sizes:
        for r in [s["float"]] + s["indexes"]:
            name = r["index"] if r["index"].startswith("float") else f"{r['index']} {r['bits']}b"
            d = series.setdefault(name, {"n": [], "batch": [], "single": [], "bytes": []})
            d["n"].append(s["n"])
            d["batch"].append(r["batch_qps"])
            d["single"].append(r["single_qps"])
            d["bytes"].append(r["bytes"])
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    axes = axes.ravel()
    markers = iter("osD^vP*X")
    for name, d in series.items():
        style = {"color": "black", "linewidth": 2.5, "marker": "o"} if name.startswith("float") else \
            {"marker": next(markers), "alpha": 0.85}
        for ax, key in zip(axes, ("batch", "single", "bytes")):
            ax.plot(d["n"], d[key], label=name, **style)
        if not name.startswith("float"):
            base = series["float IndexFlatIP"]
            ratio = [q / base["batch"][base["n"].index(n)] for n, q in zip(d["n"], d["batch"])]
            axes[3].plot(d["n"], ratio, label=name, **style)
    titles = ("batch search", "single-query search", "index memory", "batch QPS / float IndexFlatIP QPS")
    for ax, title, ylabel in zip(axes, titles, ("queries / s", "queries / s", "bytes", "× float")):
        ax.set(xscale="log", yscale="log", title=title, xlabel="database items", ylabel=ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_file(path, lambda fh: fh.write(buf.getvalue()))


STAGES = ("encode", "hash", "sizes", "ann", "scale")
ANN_DATA = ("mixture", "flickr8k-gmm")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m eval.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000, 10_000_000])
    p.add_argument("--dim", type=int, default=256, help="vector dimension (the lite encoder's is 256)")
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--k", type=int, default=128, help="stage-1 candidates per query")
    p.add_argument("--nq", type=int, default=1000, help="batch queries at n <= --nq-ref-n")
    p.add_argument("--single", type=int, default=200, help="queries timed one at a time at n <= --nq-ref-n")
    p.add_argument("--nq-ref-n", type=int, default=1_000_000,
                   help="above this size, query counts shrink as nq x ref / n (float search costs n x nq)")
    p.add_argument("--min-nq", type=int, default=None,
                   help="floor of the batch size; default: the smallest batch faiss IndexFlatIP runs through BLAS "
                        "(nq x dim >= faiss.cvar.distance_compute_blas_threshold, 500 at d=256 in faiss 1.15)")
    p.add_argument("--min-single", type=int, default=20)
    p.add_argument("--repeats", type=int, default=2, help="timed runs per measurement (best kept)")
    p.add_argument("--threads", type=int, default=1, help="faiss OpenMP and torch threads (1 on shared cores)")
    p.add_argument("--chunk", type=int, default=1 << 18, help="vectors generated and encoded at a time")
    p.add_argument("--clusters", type=int, default=2000)
    p.add_argument("--spread", type=float, default=1.0)
    p.add_argument("--hashers", nargs="+", default=["itq", "lsh"])
    p.add_argument("--index-hasher", default="itq", help="whose codes the indexes hold")
    p.add_argument("--fit-n", type=int, default=100_000, help="synthetic pairs the hashers fit on")
    p.add_argument("--encode-n", type=int, default=262_144, help="vectors for the hash encode throughput")
    p.add_argument("--indexes", nargs="+", default=["ivf", "buckets", "hnsw", "gpu_flat"],
                   help="besides exact flat (always run: it is the recall reference); gpu_flat only with CUDA")
    p.add_argument("--max-nlist", type=int, default=1024,
                   help="cap on IVF cells / buckets (assigning 10M codes to more cells dominates the run)")
    p.add_argument("--target-recall", type=float, default=0.95,
                   help="nprobe / e / ef_search: the smallest power-of-two step reaching this recall@k")
    p.add_argument("--train-per-list", type=int, default=64)
    p.add_argument("--kmeans-iters", type=int, default=10)
    p.add_argument("--hnsw-max-n", type=int, default=100_000, help="skip HNSW above this size (slow build)")
    p.add_argument("--hnsw-M", type=int, default=16)
    p.add_argument("--hnsw-efc", type=int, default=64)
    p.add_argument("--hnsw-max-ef", type=int, default=2048, help="ef_search tried from k, doubling, up to this")
    p.add_argument("--rerank-candidates", type=int, default=128)
    p.add_argument("--rerank-queries", type=int, default=200)
    p.add_argument("--encode-model", default="lite")
    p.add_argument("--encode-images", type=int, default=256, help="0 skips the encoder stage")
    p.add_argument("--encode-texts", type=int, default=1024)
    p.add_argument("--encode-batch-size", type=int, default=64)
    p.add_argument("--annotations", type=Path, default=FLICKR8K / "dataset_flickr8k.json")
    p.add_argument("--images", type=Path, default=FLICKR8K / "images")
    p.add_argument("--device", default=None)
    p.add_argument("--encode-variants", nargs="+", default=list(ENCODE_VARIANTS), choices=ENCODE_CHOICES,
                   help="lite only: before = PyTorch NCHW without prefetching (as before issue 13), torch = "
                        "channels_last + prefetching, onnxruntime = the CPU default, int8 = onnxruntime + int8 "
                        "text, concepts = onnxruntime with lite:concepts (issue 23; not run by default), heads = "
                        "onnxruntime with lite:heads (the heads alone, no concepts; not run by default)")
    p.add_argument("--encode-threads", type=int, default=None, help="torch / ONNX Runtime threads (default: all cores)")
    p.add_argument("--ann-n", type=int, default=1_000_000, help="items of the comparison with faiss float indexes")
    p.add_argument("--ann-k", type=int, default=10)
    p.add_argument("--ann-intrinsic", type=int, default=16,
                   help="ann data: within-cluster variation in this many directions (0: isotropic, as --sizes)")
    p.add_argument("--ann-data", choices=ANN_DATA, default="mixture",
                   help="mixture: eval.bench's synthetic mixture (shaped by --ann-intrinsic); flickr8k-gmm: Gaussian "
                        "mixtures fitted to --ann-embeddings' Flickr8K train images (database) and captions "
                        "(queries), eval.embedding_mixture")
    p.add_argument("--ann-embeddings", type=Path, default=Path("cache/flickr8k-lite.npz"),
                   help="flickr8k-gmm: the Flickr8K embedding cache (encoded with --ann-embeddings-model if missing "
                        "or made by another encoder)")
    p.add_argument("--ann-embeddings-model", default="lite",
                   help="flickr8k-gmm: the encoder of --ann-embeddings ('': take the cache as it is)")
    p.add_argument("--ann-gmm-components", type=int, default=32)
    p.add_argument("--ann-gmm-covariance", default="full", choices=["full", "tied", "diag", "spherical"])
    p.add_argument("--ann-gmm-queries", default="text", choices=["text", "image"],
                   help="flickr8k-gmm: queries drawn from the caption mixture (text-to-image search) or the image one")
    p.add_argument("--no-ann-rabitq", dest="ann_rabitq", action="store_false",
                   help="leave out faiss IndexIVFRaBitQ + refinement")
    p.add_argument("--ann-rabitq-qb", type=int, default=4,
                   help="bits a RaBitQ query is quantised to (faiss' qb; 0: float queries; 4 as in the RaBitQ paper)")
    p.add_argument("--ann-rabitq-refine", default="fp16", choices=["fp16", "fp32"],
                   help="vectors the RaBitQ candidates are re-ranked from (fp16: the same bytes as ours rescores)")
    p.add_argument("--ann-hnsw-M", type=int, default=32)
    p.add_argument("--ann-hnsw-efc", type=int, default=40, help="faiss' default efConstruction")
    p.add_argument("--ann-pq-m", type=int, nargs="+", default=[32, 64], help="IVFPQ bytes per vector, tried in order")
    p.add_argument("--ann-bits", type=int, nargs="+", default=[256],
                   help="our code lengths (at 128 bits the float top-10 needs a Hamming depth near 1,024 on the "
                        "default data, at 256 bits 64)")
    p.add_argument("--ann-ours", nargs="+", default=["flat", "ivf"],
                   help="our binary index kinds: flat, ivf, hnsw (binary HNSW needs a beam in the thousands here)")
    p.add_argument("--ann-ours-hnsw-M", type=int, default=12,
                   help="our binary HNSW's degree (12: under 1/8 of a float HNSW's bytes at 128 bits)")
    p.add_argument("--ann-ours-nlist", type=int, default=4096,
                   help="lists of our binary IVF in the ann stage (4 sqrt(n) at 1M, the low end of faiss' "
                        "4-16 sqrt(n) guideline; with sqrt(n) lists a quarter of them had to be probed); "
                        "0: as the float IVF, sqrt(n) capped by --max-nlist")
    p.add_argument("--ann-asymmetric", nargs="*", default=["ivf"], choices=["flat", "ivf"],
                   help="our index kinds (of --ann-ours) also run with the asymmetric cut: Hamming top-D1, the "
                        "real-valued caption scored against those codes, top-D2 rescored from fp16 (none: skip)")
    p.add_argument("--ann-asymmetric-hamming-depths", type=int, nargs="+", default=[512, 1024, 2048, 4096],
                   help="the asymmetric row's Hamming depths D1, each tuned with its float depths D2 < D1")
    p.add_argument("--ann-min-depth", type=int, default=16)
    p.add_argument("--ann-max-depth", type=int, default=4096)
    p.add_argument("--build-threads", type=int, default=2, help="threads for faiss index builds in the comparison")
    p.add_argument("--scale-sizes", type=int, nargs="+", default=[1000, 1_000_000, 10_000_000],
                   help="the smallest is the baseline of the resident-memory comparison")
    p.add_argument("--scale-dtypes", nargs="+", default=["fp16", "fp32", "int8"], choices=["fp16", "fp32", "int8"],
                   help="stored vector dtypes; above --scale-compare-max-n only the first")
    p.add_argument("--scale-compare-max-n", type=int, default=1_000_000,
                   help="up to this size: every dtype, rankings against an in-memory Retriever, and the cascade "
                        "timed beside exhaustive float search (both hold float32 vectors in RAM)")
    p.add_argument("--scale-queries", type=int, default=200)
    p.add_argument("--scale-dir", type=Path, default=None, help="where the retrievers go (default: a temp dir)")
    p.add_argument("--scale-keep", action="store_true", help="keep the built retrievers")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES,
                   help="what to run; a stage not run keeps its entry from an existing --output file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=Path("runs/bench.json"))
    p.add_argument("--plot", type=Path, default=None, help="PNG of QPS and memory against size")
    args = p.parse_args(argv)
    if args.min_nq is None:
        args.min_nq = math.ceil(faiss.cvar.distance_compute_blas_threshold / args.dim)
    if args.index_hasher not in args.hashers:
        p.error(f"--index-hasher {args.index_hasher!r} must be one of --hashers {args.hashers}")
    if min(args.sizes) <= args.k:
        p.error(f"every size must exceed --k={args.k}, got {min(args.sizes)}")
    if args.rerank_candidates > args.k:
        p.error(f"--rerank-candidates ({args.rerank_candidates}) cannot exceed --k ({args.k})")
    return args


def ann_dataset(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The ann stage's data (``--ann-data``) and a description of it for the JSON."""
    if args.ann_data == "mixture":
        data = Mixture(args.dim, args.clusters, args.spread, seed=args.seed, intrinsic=args.ann_intrinsic or None)
        return data, {"kind": "mixture", "clusters": args.clusters, "spread": args.spread,
                      "intrinsic": args.ann_intrinsic or None, "fit_pairs": args.fit_n}
    from .datasets_hashing import flickr8k_embeddings
    from .embedding_mixture import flickr8k_mixture

    path = flickr8k_embeddings(args.ann_embeddings, args.ann_embeddings_model or None, args.annotations, args.images,
                               progress=True)
    t0 = time.perf_counter()
    data = flickr8k_mixture(path, args.annotations, args.ann_gmm_components, args.ann_gmm_covariance,
                            args.ann_gmm_queries, args.seed)
    tqdm.write(f"[ann] fitted {args.ann_gmm_components} {args.ann_gmm_covariance}-covariance components to "
               f"{path} in {time.perf_counter() - t0:.1f}s: {data.description}")
    if data.dim != args.dim:
        raise ValueError(f"{path} holds {data.dim}-d embeddings but --dim is {args.dim}")
    return data, {"kind": "flickr8k-gmm", **data.description, "fit_pairs": len(data.pair_images)}


def previous(path: Path) -> dict[str, Any]:
    """An earlier run's JSON at ``path`` (its stages are kept where this run skips them), or {}."""
    try:
        old = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return old if isinstance(old, dict) and isinstance(old.get("runs"), dict) else {}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    faiss.omp_set_num_threads(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    info = machine()
    info["blas_threads"] = limit_blas_threads(args.threads)
    info["loadavg_start"] = os.getloadavg()
    print(f"machine: {info.get('cpu_model')}, {info['cpus_usable']} usable cores, {info.get('mem_gib')} GiB, "
          f"{args.threads} thread(s), load average {info['loadavg_start']}", flush=True)
    command = "python -m eval.bench " + " ".join(argv if argv is not None else sys.argv[1:])
    result: dict[str, Any] = previous(args.output)
    result.update({
        "command": command,
        "machine": info,
        "config": {a: (str(v) if isinstance(v, Path) else v) for a, v in vars(args).items()},
        "conventions": {
            "qps": f"best of {args.repeats} runs; batch = nq queries in one call, single = one call per query; "
                   "nq and single per size in 'sizes'; the float baseline and every index use the same queries",
            "recall": f"sizes: recall@{args.k} vs exact Hamming search, an item tied with the exact k-th distance "
                      f"counts; ann: recall@{args.ann_k} vs exact float search (IndexFlatIP)",
            "bytes": "binary indexes: size of the saved index directory; float: n x dim x 4 (IndexFlatIP storage); "
                     "faiss float indexes: faiss.write_index size",
            "peak_rss": "VmHWM of the process, reset (clear_refs) at the start of each size",
            "threads": f"faiss.omp_set_num_threads({args.threads}), torch.set_num_threads({args.threads}), "
                       f"numpy BLAS threadpool_limits({args.threads}) (machine.blas_threads); the encode stage "
                       f"uses --encode-threads, the ann stage builds on --build-threads ({args.build_threads})",
            "faiss_blas_threshold": int(faiss.cvar.distance_compute_blas_threshold),
        },
        "complete": False,
    })
    runs = result.setdefault("runs", {})
    markdowns = result.setdefault("markdown", {}) if isinstance(result.get("markdown"), dict) else {}
    result["markdown"] = markdowns

    def done(stage: str) -> None:
        runs[stage] = {"command": command, "cpu_model": info.get("cpu_model"), "cpus_usable": info["cpus_usable"],
                       "loadavg_end": os.getloadavg(), "time": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        write_json(args.output, result)  # a killed run keeps the stages it finished

    if "encode" in args.stages and (args.encode_images or args.encode_texts):
        result["encode"] = bench_encode(args.encode_model, args.encode_images, args.encode_texts, args.annotations,
                                        args.images, args.encode_batch_size, args.device, args.encode_variants,
                                        args.encode_threads, args.repeats)
        markdowns["encode"] = encode_markdown(result["encode"])
        print("\n" + markdowns["encode"] + "\n", flush=True)
        done("encode")
    data = Mixture(args.dim, args.clusters, args.spread, seed=args.seed)
    hashers: dict[str, Any] = {}
    if {"hash", "sizes", "scale"} & set(args.stages):
        hashers, hash_rows = bench_hashers(args.hashers, args.bits, data, args.fit_n, args.encode_n, args.repeats)
        for h in hash_rows:
            print(f"hash {h['method']} {h['bits']}b: fit {h['fit_s']:.2f}s on {h['fit_n']:,} pairs, "
                  f"encode {h['encode_per_s']:,.0f} vectors/s", flush=True)
        if "hash" in args.stages:
            result["hash"] = hash_rows
            done("hash")
    if "sizes" in args.stages:
        result["sizes"] = []
        for n in tqdm(sorted(args.sizes), desc="sizes", unit="size"):
            result["sizes"].append(bench_size(n, data, hashers[args.index_hasher], args))
            write_json(args.output, result)
        markdowns["sizes"] = markdown(result["sizes"], args.k)
        print("\n" + markdowns["sizes"] + "\n")
        for s in result["sizes"]:
            r = s["rerank"]
            print(f"n={s['n']:,}: peak RSS {s['peak_rss_gib']} GiB, wall {s['wall_s']:.0f}s, load {s['loadavg']}; "
                  f"rerank {r['candidates']} candidates {r['float_reranker_ms_per_query']:.3f} ms/query "
                  f"(Rescorer batch {r['rescorer_batch_ms_per_query']:.3f}); hash encode "
                  f"{s['hash_encode_per_s']:,.0f}/s")
        done("sizes")
    if "ann" in args.stages:
        from hashing import create_hasher

        ann_data, described = ann_dataset(args)
        pairs = ann_data.pairs(args.fit_n)
        result["ann"] = bench_ann(args.ann_n, ann_data, lambda bits: create_hasher("itq", bits=bits).fit(*pairs), args)
        result["ann"]["intrinsic"] = (args.ann_intrinsic or None) if args.ann_data == "mixture" else None
        result["ann"]["data"] = described
        markdowns["ann"] = ann_markdown(result["ann"])
        print("\n" + markdowns["ann"] + "\n", flush=True)
        done("ann")
    if "scale" in args.stages:
        result["scale"] = {"rows": []}
        hasher = hashers[args.index_hasher]
        for n in sorted(args.scale_sizes):
            compare = n <= args.scale_compare_max_n
            expected = in_memory_hits(n, data, hasher, data.queries(args.scale_queries), args.chunk) if compare else None
            for dtype in args.scale_dtypes if compare else args.scale_dtypes[:1]:
                result["scale"]["rows"].append(bench_scale(n, data, hasher, args, dtype, expected))
                write_json(args.output, result)
        result["scale"]["budget"] = budget(result["scale"]["rows"])
        markdowns["scale"] = scale_markdown(result["scale"]["rows"])
        print("\n" + markdowns["scale"] + "\n", flush=True)
        for b in result["scale"]["budget"]:
            print(f"budget at {b['n']:,} items (linear from {b['from_n']:,}): disk {human(b['disk_bytes'])}, "
                  f"private memory after open {human(b['private_open_bytes'])}, after searches "
                  f"{human(b['private_after_search_bytes'])} (resident with mapped files "
                  f"{human(b['resident_after_search_bytes'])})")
        done("scale")
    info["loadavg_end"] = os.getloadavg()
    print(f"load average start {info['loadavg_start']}, end {info['loadavg_end']} on {info['cpus_usable']} cores")
    result["complete"] = all(stage in runs for stage in STAGES)
    write_json(args.output, result)
    print(f"wrote {args.output}")
    if args.plot and result.get("sizes"):
        print(f"wrote {plot(result['sizes'], args.plot)}")
    return result


if __name__ == "__main__":
    main()
