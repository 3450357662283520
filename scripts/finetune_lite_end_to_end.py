"""Fine-tunes both lite towers end to end on Flickr8K train (issue 23's accelerator route): ``eval.lite_end_to_end``'s CLI.

Three steps, the first on the machine that has the pip towers and ``../shared/data``, the others
where the accelerator is (they need only torch, timm, transformers, safetensors and Pillow):

    python scripts/finetune_lite_end_to_end.py pack --out runs/e2e-pack
    python scripts/finetune_lite_end_to_end.py train --pack runs/e2e-pack --out /tmp/e2e/a --image-lr 1e-4
    python scripts/finetune_lite_end_to_end.py select --pack runs/e2e-pack /tmp/e2e/a /tmp/e2e/b --export $OUT/model

``train`` measures one setting on the 500 held-out train images (start and best epoch);
``select`` takes the setting with the best held-out rsum and measures it and the start on test,
and with ``--export`` writes its weights in shards small enough to come back from a lease.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from eval.lite_end_to_end import EndToEndOptions, build_pack, run, select_and_test  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    data = ROOT.parent / "shared" / "data" / "flickr8k"
    pk = sub.add_parser("pack", help="write the pack the accelerator run reads")
    pk.add_argument("--out", type=Path, required=True)
    pk.add_argument("--annotations", type=Path, default=data / "dataset_flickr8k.json")
    pk.add_argument("--images", type=Path, default=data / "images")
    pk.add_argument("--model", type=Path, default=None, help="lite weights directory (default: the shipped ones)")
    pk.add_argument("--fit-quality", type=int, default=75, help="WebP quality of the images training fits")
    pk.add_argument("--fit-part-mib", type=float, default=40.0, help="largest image part (a device call carries 64 MiB)")
    tr = sub.add_parser("train", help="fine-tune one setting; held-out images only")
    tr.add_argument("--pack", type=Path, required=True)
    tr.add_argument("--out", type=Path, required=True)
    tr.add_argument("--device", default="cuda")
    tr.add_argument("--partial", action="store_true", help="use the image parts present (a smoke run)")
    for f in fields(EndToEndOptions):
        tr.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    se = sub.add_parser("select", help="the best held-out setting, and the start, on test")
    se.add_argument("--pack", type=Path, required=True)
    se.add_argument("--device", default="cuda")
    se.add_argument("--out", type=Path, default=None, help="write the summary JSON here")
    se.add_argument("--export", type=Path, default=None,
                    help="also write the chosen weights here, in shards of at most 15 MiB (how they leave a lease)")
    se.add_argument("runs", type=Path, nargs="+")
    args = p.parse_args(argv)
    if args.command == "pack":
        meta = build_pack(args.out, args.annotations, args.images, args.model, args.fit_quality, args.fit_part_mib)
        sizes = {f.name: f.stat().st_size for f in sorted(args.out.iterdir())}
        print(json.dumps({"parts": meta["parts"], "vocab": len(meta["vocab"]), "bytes": sizes}, indent=1))
        return meta
    if args.command == "train":
        options = EndToEndOptions(**{f.name: getattr(args, f.name) for f in fields(EndToEndOptions)})
        return run(args.pack, options, args.out, args.device, require_all=not args.partial)
    summary = select_and_test(args.pack, args.runs, args.device, export=args.export)
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
