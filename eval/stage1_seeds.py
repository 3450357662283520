"""Mean ± sd over seeds of ``python -m eval.stage1`` reports: one table from several seeded runs.

    python -m eval.stage1_seeds runs/stage1_mgsgh_seed0.json runs/stage1_mgsgh_seed1.json \\
        runs/stage1_mgsgh_seed2.json --output runs/stage1_mgsgh_seeds.json

Why a separate step: each seed is its own ``eval.stage1`` run (the project's heavy jobs take turns
in slots of under ten minutes), and a spread is only meaningful over runs that differ in nothing
but the seed. So the reports must agree on everything else that shapes the numbers (embeddings,
hasher settings, fit pairs, candidates, fine cache) and carry distinct seeds; otherwise this
refuses, naming the field. Each method and bit length present in every report gets, per direction,
the mean and the population sd (``np.std``, as ``scripts/mgsgh_ablation.py``) of every metric,
and the paired per-seed difference of hash R@1 against ``--baseline`` (default ``itq``) when
that method ran in the same reports: the same seed's baseline is fitted in the same process.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from common.atomic import write_json

from .recall import DEFAULT_KS

#: report fields that must be equal across the runs for their spread to be a seed spread
SAME_FIELDS = ("dataset", "embeddings", "model", "candidates", "hamming_candidates", "fit_pairs",
               "multi_positive", "hasher_args", "fine")


def load_reports(paths: list[Path], kind: str = "eval.stage1") -> list[dict]:
    """The reports, each checked to hold ``results`` and ``seed`` (``kind`` names the producer in errors)."""
    reports = []
    for path in paths:
        try:
            report = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not a readable {kind} report ({e})") from None
        if not isinstance(report, dict) or "results" not in report or "seed" not in report:
            raise ValueError(f"{path}: not an {kind} report with a seed (it lacks 'results' or 'seed')")
        reports.append(report)
    return reports


def summarise(reports: list[dict], baseline: str = "itq", *, same_fields: tuple[str, ...] = SAME_FIELDS,
              paired: str = "hash_R@1") -> dict:
    """``{"seeds", "results": {method: {bits: {dir: {metric: {mean, sd, runs}}}}},
    "<paired>_minus_baseline"}``: ``same_fields`` must agree across the reports, and ``paired`` is
    the metric differenced against ``baseline`` seed by seed (``eval.hashing_seeds`` passes its own)."""
    if len(reports) < 2:
        raise ValueError(f"a seed spread needs at least 2 reports, got {len(reports)}")
    for field in same_fields:
        values = [r.get(field) for r in reports]
        if any(v != values[0] for v in values):
            raise ValueError(f"the reports differ in {field!r} ({values}): only the seed may differ")
    seeds = [r["seed"] for r in reports]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"the reports repeat a seed ({seeds}): each run must have its own")
    results: dict = {}
    for method in reports[0]["results"]:
        for bits in reports[0]["results"][method]:
            rows = [r["results"].get(method, {}).get(bits) for r in reports]
            if any(row is None for row in rows):
                continue  # not run in every report: no spread
            for d in rows[0]:
                metrics = [m for m in rows[0][d] if isinstance(rows[0][d][m], (int, float))]
                results.setdefault(method, {}).setdefault(bits, {})[d] = {
                    m: {"mean": float(np.mean(v)), "sd": float(np.std(v)), "runs": v}
                    for m in metrics for v in [[float(row[d][m]) for row in rows]]}
    vs = {}
    if baseline in results:
        for method, by_bits in results.items():
            if method == baseline:
                continue
            for bits, by_dir in by_bits.items():
                if bits not in results[baseline]:
                    continue
                for d, metrics in by_dir.items():
                    diff = np.subtract(metrics[paired]["runs"], results[baseline][bits][d][paired]["runs"])
                    vs.setdefault(method, {}).setdefault(bits, {})[d] = {
                        "mean": float(diff.mean()), "sd": float(diff.std()), "runs": diff.tolist(),
                        "ahead_in": int((diff > 0).sum()), "of": len(diff)}
    return {"seeds": seeds, "baseline": baseline, "results": results, f"{paired}_minus_baseline": vs}


def markdown(summary: dict) -> str:
    pm = lambda s, scale=100, fmt=".1f": f"{scale * s['mean']:{fmt}} ± {scale * s['sd']:{fmt}}"  # noqa: E731
    lines = ["| method | bits | dir | hash R@1 / 5 / 10 | float top-10 in Hamming top-K | fit s | encode items/s |",
             "|---|---|---|---|---|---|---|"]
    for method, by_bits in summary["results"].items():
        for bits, by_dir in by_bits.items():
            for d, m in by_dir.items():
                recall = " / ".join(pm(m[f"hash_R@{k}"]) for k in DEFAULT_KS)
                lines.append(f"| {method} | {bits} | {d} | {recall} | {pm(m['top10_in_candidates'], 1, '.3f')} | "
                             f"{pm(m['fit_seconds'], 1, '.0f')} | {m['encode_items_per_s']['mean']:,.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m eval.stage1_seeds", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reports", type=Path, nargs="+", help="eval.stage1 --output files, one per seed")
    p.add_argument("--baseline", default="itq", help="method whose hash R@1 the others are paired against")
    p.add_argument("--output", type=Path)
    args = p.parse_args(argv)
    try:
        summary = summarise(load_reports(args.reports), args.baseline)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    print(f"seeds {summary['seeds']}; R@K in percent, mean ± population sd")
    print(markdown(summary))
    for method, by_bits in summary["hash_R@1_minus_baseline"].items():
        for bits, by_dir in by_bits.items():
            print(f"{method} {bits} bits, hash R@1 minus {args.baseline}'s, paired by seed: " + "; ".join(
                f"{d} {100 * v['mean']:+.1f} ± {100 * v['sd']:.1f} (ahead in {v['ahead_in']} of {v['of']})"
                for d, v in by_dir.items()))
    if args.output:
        write_json(args.output, {**summary, "reports": [str(r) for r in args.reports]})
    return summary


if __name__ == "__main__":
    main()
