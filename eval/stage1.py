"""Stage-1 quality on Flickr8K-1K: how much of the float ranking survives the Hamming top-128.

    python -m eval.stage1 --embeddings cache/flickr8k-lite.npz --model lite \\
        --method lsh itq contrastive uddh --bits 16 32 64 128 --output runs/stage1.json

For each hasher (fitted on Flickr8K train pairs) and bit length, both directions:

- ``top10_in_candidates``: the fraction of the exhaustive float-cosine top-10 that lands inside
  the Hamming top-``candidates`` (default 128);
- R@1/5/10 of Hamming ranking alone (tie-aware), and after exact float rescoring of the candidates,
  beside exhaustive float search.

Candidates are exactly what faiss ``IndexBinaryFlat`` returns for k = ``candidates``: at the k-th
distance, ties are broken by faiss's scan order, as they are for a user of the index.

With ``--hamming-candidates N ...``, the cascade of ``retrieval.Retriever`` is measured too: the
share of the float top-10 inside the Hamming top-N (= inside the ``candidates`` kept after float
rescoring of those N), and, as a middle stage that needs no float vectors, asymmetric rescoring:
the query's real-valued projection (``Hasher.project``, the ITQ rotation space for ITQ) dotted
with each of the N candidates' +-1 codes, keeping the best ``candidates``.

``--multi-positive`` fits learned hashers with each train pair's image as its label, so all five
captions of an image are positives for each other (the contrastive hasher's SupCon-style target).

``--fine CACHE`` (the cache of ``python -m eval.fine_features``) gives the region grids and caption
words to every hasher configured with ``fine=True`` (MGSGH's fine-grained branch, e.g.
``--hasher-arg mgsgh.fine=true``), in fit, in encode and in the asymmetric projection; the
others ignore it. The cache's own global embeddings must be those of ``--embeddings`` (row by
row, up to the float noise of another runtime): a cache of another encoder or order is refused.
``--seed`` seeds every hasher (and the ``--fit-pairs`` sample): run it several times for a spread.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from hashing import available_methods, create_hasher
from hashing.base import unpack_codes
from hashing.index import create_index
from common.atomic import write_json
from common.settings_args import by_name, named_setting

from .datasets_hashing import flickr8k_embeddings, load_flickr8k
from .fine_features import check_aligned, load_flickr8k_fine
from .hash_metrics import hamming_distances
from .machine import machine
from .recall import DEFAULT_KS, expected_hits

#: encode calls timed per hasher; the encode rate is that of the fastest
ENCODE_REPEATS = 3


def float_topk(scores: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def candidate_scores(candidates: np.ndarray, float_scores: np.ndarray) -> np.ndarray:
    """Float scores on the candidates, -inf elsewhere: the rescored ranking as a score matrix."""
    out = np.full_like(float_scores, -np.inf)
    rows = np.arange(len(candidates))[:, None]
    valid = candidates >= 0
    out[np.broadcast_to(rows, candidates.shape)[valid], candidates[valid]] = float_scores[
        np.broadcast_to(rows, candidates.shape)[valid], candidates[valid]]
    return out


def recalls(scores: np.ndarray, relevant: np.ndarray, ks: tuple[int, ...] = DEFAULT_KS) -> dict[str, float]:
    hits = expected_hits(scores, relevant, ks)
    return {f"R@{k}": float(hits[k].mean()) for k in ks}


def uses_fine(hasher: object) -> bool:
    """Whether ``hasher`` takes fine-grained inputs (an MGSGH hasher with ``fine=True``)."""
    return bool(getattr(getattr(hasher, "config", None), "fine", False))


def fine_fit_inputs(fine: dict, owner: np.ndarray, rows: np.ndarray) -> dict:
    """``fit``'s fine inputs for the train pairs ``rows``: each pair's image grid (``owner``: the
    image of every train caption) and its caption's words."""
    return {"image_fine": fine["train"].regions[owner[rows]], "text_fine": fine["train"].text_rows(rows)}


def evaluate_direction(q_float: np.ndarray, db_float: np.ndarray, q_codes: np.ndarray, db_codes: np.ndarray,
                       relevant: np.ndarray, bits: int, candidates: int, depths: tuple[int, ...] = (),
                       q_projected: np.ndarray | None = None) -> dict[str, float]:
    index = create_index("flat", bits)
    index.add(db_codes)
    t0 = time.perf_counter()
    result = index.search(q_codes, candidates)
    search_seconds = time.perf_counter() - t0
    cand = result.ids
    float_scores = q_float @ db_float.T
    top10 = float_topk(float_scores, 10)
    in_cand = np.array([np.isin(t, c).mean() for t, c in zip(top10, cand)])
    hamming = hamming_distances(q_codes, db_codes)
    out = {"top10_in_candidates": float(in_cand.mean()), "search_seconds": search_seconds}
    signs = unpack_codes(db_codes, bits)
    for depth in depths:
        deep = index.search(q_codes, depth).ids
        out[f"top10_in_hamming_top{depth}"] = float(np.mean([np.isin(t, c).mean() for t, c in zip(top10, deep)]))
        if q_projected is not None:
            asym = np.stack([c[np.argsort(-(signs[c] @ p), kind="stable")[:candidates]]
                             for c, p in zip(deep, q_projected)])
            out[f"top10_in_asymmetric_top{depth}"] = float(np.mean([np.isin(t, c).mean() for t, c in zip(top10, asym)]))
    out.update({f"hash_{k}": v for k, v in recalls(-hamming.astype(np.float64), relevant).items()})
    out.update({f"rescored_{k}": v for k, v in recalls(candidate_scores(cand, float_scores), relevant).items()})
    out.update({f"float_{k}": v for k, v in recalls(float_scores, relevant).items()})
    return out


def markdown(results: dict, candidates: int, depths: tuple[int, ...] = ()) -> str:
    extra = "".join(f" | top-10 in Hamming top-{d} | asymmetric top-{d} -> {candidates}" for d in depths)
    head = ("| method | bits | dir | float top-10 in Hamming top-" + str(candidates) + extra
            + " | hash R@1/5/10 | rescored R@1/5/10 | float R@1/5/10 |")
    lines = [head, "|" + "---|" * (7 + 2 * len(depths))]
    for method, by_bits in results.items():
        for bits, by_dir in by_bits.items():
            for d, m in by_dir.items():
                trip = lambda p: "/".join(f"{100 * m[f'{p}_R@{k}']:.1f}" for k in DEFAULT_KS)  # noqa: E731
                cells = "".join(f" | {m[f'top10_in_hamming_top{n}']:.3f} | {m.get(f'top10_in_asymmetric_top{n}', float('nan')):.3f}"
                                for n in depths)
                lines.append(f"| {method} | {bits} | {d} | {m['top10_in_candidates']:.3f}{cells} | {trip('hash')} | "
                             f"{trip('rescored')} | {trip('float')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m eval.stage1", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    data = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k"
    p.add_argument("--annotations", type=Path, default=data / "dataset_flickr8k.json")
    p.add_argument("--images", type=Path, default=None)
    p.add_argument("--embeddings", type=Path, required=True, help=".npz cache (created from --model if absent)")
    p.add_argument("--model", default=None,
                   help="encoder id: the cache is (re-)encoded with it unless that very encoder made it")
    p.add_argument("--method", nargs="+", default=["itq"])
    p.add_argument("--bits", type=int, nargs="+", default=[64])
    p.add_argument("--candidates", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fit-pairs", type=int, default=None,
                   help="fit each hasher on a seeded sample of this many train (image, caption) pairs")
    p.add_argument("--hasher-arg", action="append", default=[], type=named_setting, metavar="METHOD.KEY=VALUE",
                   help="constructor argument for one method, e.g. contrastive.epochs=20 (JSON value)")
    p.add_argument("--hamming-candidates", type=int, nargs="*", default=[],
                   help="cascade depths N to measure (Hamming top-N, then float or asymmetric rescoring)")
    p.add_argument("--multi-positive", action="store_true",
                   help="fit with each pair's image as its label (all captions of an image are positives)")
    p.add_argument("--fine", type=Path, default=None,
                   help="fine-feature cache (python -m eval.fine_features) for hashers with fine=True")
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)
    depths = tuple(args.hamming_candidates)
    unknown = sorted(set(args.method) - set(available_methods()))
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; available: {available_methods()}")
    try:
        flickr8k_embeddings(args.embeddings, args.model, args.annotations, args.images)
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from None
    data = load_flickr8k(args.embeddings, args.annotations, args.images)
    fine = None
    if args.fine is not None:
        try:
            fine = load_flickr8k_fine(args.fine, args.annotations)
            check_aligned(args.fine, data)
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(str(e)) from None
    fit_rows = np.arange(len(data.train.image))
    if args.fit_pairs and args.fit_pairs < len(fit_rows):
        fit_rows = np.sort(np.random.default_rng(args.seed).choice(fit_rows, args.fit_pairs, replace=False))
    hasher_args = by_name(args.hasher_arg)
    test = data.query
    caption_image = test.text_labels
    i2t_relevant = caption_image[None, :] == np.arange(len(test.image))[:, None]
    results: dict = {}
    for method in args.method:
        for bits in args.bits:
            t0 = time.perf_counter()
            hasher = create_hasher(method, bits, seed=args.seed, **hasher_args.get(method, {}))
            labels = data.train.text_labels[fit_rows] if args.multi_positive else None
            with_fine = uses_fine(hasher)
            if with_fine and fine is None:
                raise SystemExit(f"{method} is configured with fine=True: pass --fine CACHE "
                                 "(python -m eval.fine_features)")
            fit_fine = fine_fit_inputs(fine, data.train.image_labels, fit_rows) if with_fine else {}
            hasher.fit(data.train.image[fit_rows], data.train.text[fit_rows], labels, **fit_fine)
            fit_seconds = time.perf_counter() - t0
            # the test items' fine inputs, for hashers that take them (encode's and project's ``fine``)
            extra = ({"image": {"fine": fine["query"].regions}, "text": {"fine": fine["query"].text_rows()}}
                     if with_fine else {"image": {}, "text": {}})
            encode_seconds = []
            for _ in range(ENCODE_REPEATS):  # the fastest of a few calls: a busy machine only adds time
                t0 = time.perf_counter()
                img_codes = hasher.encode(test.image, "image", **extra["image"])
                txt_codes = hasher.encode(test.text, "text", **extra["text"])
                encode_seconds.append(time.perf_counter() - t0)
            encode_rate = (len(test.image) + len(test.text)) / min(encode_seconds)
            projected = ({m: hasher.project(x, m, **extra[m]) for m, x in (("image", test.image), ("text", test.text))}
                         if depths else {})
            row = {
                "i2t": evaluate_direction(test.image, test.text, img_codes, txt_codes, i2t_relevant, bits,
                                          args.candidates, depths, projected.get("image")),
                "t2i": evaluate_direction(test.text, test.image, txt_codes, img_codes, i2t_relevant.T, bits,
                                          args.candidates, depths, projected.get("text")),
            }
            for d in row.values():
                d["fit_seconds"] = fit_seconds
                d["encode_items_per_s"] = encode_rate  # test images + captions, one call per modality, best of 3
            name = f"{method} (fine)" if with_fine else method
            results.setdefault(name, {})[bits] = row
            print(f"{method} {bits} bits: top-10 in candidates i2t {row['i2t']['top10_in_candidates']:.3f}, "
                  f"t2i {row['t2i']['top10_in_candidates']:.3f} (fit {fit_seconds:.0f}s, encode {encode_rate:,.0f} items/s)", flush=True)
    table = markdown(results, args.candidates, depths)
    print(table)
    report = {"dataset": "flickr8k-1k test", "embeddings": str(args.embeddings), "model": args.model,
              "candidates": args.candidates, "hamming_candidates": list(depths), "fit_pairs": len(fit_rows),
              "multi_positive": args.multi_positive, "hasher_args": hasher_args,
              "fine": None if args.fine is None else str(args.fine), "seed": args.seed,
              "results": results, "machine": machine(),
              "tie_convention": "R@K: expected value over random order of ties; candidates: faiss order"}
    if args.output:
        write_json(args.output, report)
    return report


if __name__ == "__main__":
    main()
