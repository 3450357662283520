"""Mean ± sd over hasher seeds of ``python -m eval.hashing`` reports, paired against a baseline.

    python -m eval.hashing_seeds runs/wiki_mgsgh_seed0.json runs/wiki_mgsgh_seed1.json \\
        runs/wiki_mgsgh_seed2.json --baseline contrastive --within 0.02 --output runs/wiki_mgsgh_seeds.json

Each report is one ``eval.hashing ... --seed S`` run (the hasher seed; the data split is the
data set's own and does not move). A goal such as "MAP@50 within .02 of the contrastive hasher run
in the same command" is a per-command comparison, so the difference is paired by seed: the
baseline of each seed was fitted in the same process. The reports must agree on everything but
the seed (data, supervision, hasher settings, tie conventions), or this refuses, naming the field.
Spreads are population sds (``np.std``), as ``eval.stage1_seeds``, whose summary this reuses.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common.atomic import write_json

from .stage1_seeds import load_reports, summarise

#: report fields that must be equal across the runs for their spread to be a seed spread
SAME_FIELDS = ("dataset", "data", "supervised", "hasher_args", "conventions")
METRIC = "map@50"


def lines(summary: dict, within: float) -> list[str]:
    """One line per method, bit length and direction: per-seed values, mean ± sd, and for the
    non-baseline methods the paired difference and how many seeds meet ``diff >= -within``."""
    out = []
    diffs = summary[f"{METRIC}_minus_baseline"]
    for method, by_bits in summary["results"].items():
        for bits, by_dir in by_bits.items():
            for d, metrics in by_dir.items():
                m = metrics[METRIC]
                text = (f"{method} {bits} bits {d}: MAP@50 " + " / ".join(f"{v:.3f}" for v in m["runs"])
                        + f" (mean {m['mean']:.3f} ± {m['sd']:.3f})")
                diff = diffs.get(method, {}).get(bits, {}).get(d)
                if diff is not None:
                    met = sum(v >= -within for v in diff["runs"])
                    text += (f"; minus {summary['baseline']}'s " + " / ".join(f"{v:+.3f}" for v in diff["runs"])
                             + f" (mean {diff['mean']:+.3f} ± {diff['sd']:.3f}; ahead in {diff['ahead_in']}, "
                               f"within {within:g} in {met} of {diff['of']}; mean within: "
                               f"{'yes' if diff['mean'] >= -within else 'no'})")
                out.append(text)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m eval.hashing_seeds", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reports", type=Path, nargs="+", help="eval.hashing --output files, one per --seed")
    p.add_argument("--baseline", default="contrastive", help="method the others are paired against, seed by seed")
    p.add_argument("--within", type=float, default=0.02, help="the goal's tolerance on MAP@50 (default .02)")
    p.add_argument("--output", type=Path)
    args = p.parse_args(argv)
    if not args.within >= 0:
        p.error(f"--within must be a non-negative number, got {args.within}")
    try:
        summary = summarise(load_reports(args.reports, "eval.hashing"), args.baseline, same_fields=SAME_FIELDS,
                            paired=METRIC)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    print(f"seeds {summary['seeds']}; MAP@50, mean ± population sd")
    print("\n".join(lines(summary, args.within)))
    if args.output:
        write_json(args.output, {**summary, "within": args.within, "reports": [str(r) for r in args.reports]})
    return summary


if __name__ == "__main__":
    main()
