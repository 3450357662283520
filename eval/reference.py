"""Published retrieval numbers to compare a run against, and the ours-minus-reference table.

Two sources are read:

* open_clip's ``docs/openclip_retrieval_results.csv`` (mlfoundations/open_clip), one row per
  ``name`` (architecture) and ``pretrained`` tag, with columns ``Flickr image retr. R@1`` ...
  ``MSCOCO text retr. R@10`` in [0, 1]. Those are CLIP_benchmark runs: "image retr." is
  text->image (``image_retrieval_recall@K``), "text retr." is image->text
  (``text_retrieval_recall@K``); Flickr is the Flickr30K 1K test, MSCOCO the 5K test (not 5 x 1K).
* JSON: a CLIP_benchmark result file (``{"dataset", "model", "pretrained", "metrics": {...}}``),
  a flat row (``{"model", "pretrained", "dataset", "image_retrieval_recall@1", ...}``) or a list
  of either.
"""

from __future__ import annotations

import csv
import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .recall import DEFAULT_KS

#: Our dataset names -> the column prefix open_clip's csv uses.
CSV_DATASETS = {"flickr30k": "Flickr", "flickr": "Flickr", "coco": "MSCOCO", "mscoco": "MSCOCO",
                "mscoco_captions": "MSCOCO"}
CSV_DIRECTIONS = {"image retr.": "image_retrieval_recall", "text retr.": "text_retrieval_recall"}
DIRECTION_LABELS = (("text_retrieval_recall", "I→T"), ("image_retrieval_recall", "T→I"))


@dataclass(frozen=True)
class ReferenceRow:
    """One published result: recalls in [0, 1] under CLIP_benchmark's keys."""

    source: str
    model: str
    pretrained: str
    dataset: str
    metrics: dict[str, float]


def split_model_id(model: str) -> tuple[str, str | None]:
    """``"ViT-B-32/laion2b_s34b_b79k"`` or CLIP_benchmark's ``"ViT-B-32,laion2b_s34b_b79k"`` ->
    (architecture, pretrained tag); a bare name gives (name, None)."""
    for sep in (",", "/"):
        if sep in model and not model.startswith("hf-hub:"):
            name, _, tag = model.partition(sep)
            return name, tag or None
    return model, None


def canonical_dataset(dataset: str) -> str:
    key = dataset.lower().removeprefix("wds/")
    if key not in CSV_DATASETS:
        raise ValueError(f"no reference columns for dataset {dataset!r}; known: {', '.join(CSV_DATASETS)}")
    return "flickr30k" if CSV_DATASETS[key] == "Flickr" else "coco"


def load_reference(path: str | Path, model: str, dataset: str, pretrained: str | None = None) -> ReferenceRow:
    """The row for ``model`` (``name/pretrained`` or ``name`` plus ``pretrained=``) on ``dataset``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference file not found: {path}")
    name, tag = split_model_id(model)
    tag = pretrained or tag
    if path.suffix.lower() == ".csv":
        return _from_openclip_csv(path, name, tag, dataset)
    if path.suffix.lower() == ".json":
        return _from_json(path, name, tag, dataset)
    raise ValueError(f"{path}: expected open_clip's retrieval .csv or a .json result row")


def _pick_row(rows: list[dict[str, Any]], name: str, tag: str | None, path: Path, name_key: str) -> dict[str, Any]:
    same = [r for r in rows if str(r.get(name_key, "")) == name]
    if not same:
        near = difflib.get_close_matches(name, sorted({str(r.get(name_key, "")) for r in rows}), n=5)
        raise ValueError(f"{path} has no row for model {name!r}" + (f"; close: {', '.join(near)}" if near else ""))
    if tag is not None:
        same = [r for r in same if str(r.get("pretrained", "")) == tag]
        if not same:
            raise ValueError(f"{path} has no row for {name!r} with pretrained {tag!r}")
    tags = sorted({str(r.get("pretrained", "")) for r in same})
    if len(tags) > 1:
        raise ValueError(f"{path} has several rows for {name!r}; name one with pretrained= (or NAME/TAG): "
                         f"{', '.join(tags)}")
    return same[0]


def _from_openclip_csv(path: Path, name: str, tag: str | None, dataset: str) -> ReferenceRow:
    prefix = CSV_DATASETS[canonical_dataset(dataset)]
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        rows = list(reader)
    for needed in ("name", "pretrained"):
        if needed not in columns:
            raise ValueError(f"{path} is not open_clip's retrieval csv: no column {needed!r}")
    row = _pick_row(rows, name, tag, path, "name")
    metrics: dict[str, float] = {}
    for column in columns:
        head, _, k = column.rpartition(" R@")
        if not head.startswith(prefix + " ") or not k.isdigit():
            continue
        direction = CSV_DIRECTIONS.get(head.removeprefix(prefix + " "))
        if direction is None:
            continue
        metrics[f"{direction}@{k}"] = _number(row[column], f"{path}: {column} of {name}")
    if not metrics:
        raise ValueError(f"{path} has no '{prefix} image retr. R@K' / '{prefix} text retr. R@K' columns")
    return ReferenceRow(f"{path.name} ({prefix} columns)", name, str(row["pretrained"]),
                        canonical_dataset(dataset), metrics)


def _from_json(path: Path, name: str, tag: str | None, dataset: str) -> ReferenceRow:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    rows = data if isinstance(data, list) else [data]
    if not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{path}: expected a JSON object or a list of objects")
    want = canonical_dataset(dataset)
    in_dataset = [r for r in rows if "dataset" not in r or _same_dataset(str(r["dataset"]), want)]
    if not in_dataset:
        raise ValueError(f"{path} has no row for dataset {dataset!r}; it has: "
                         + ", ".join(sorted({str(r.get('dataset')) for r in rows})))
    row = _pick_row(in_dataset, name, tag, path, "model")
    flat = dict(row.get("metrics", {}), **{k: v for k, v in row.items() if k != "metrics"})
    metrics = {k: _number(v, f"{path}: {k}") for k, v in flat.items()
               if k.startswith(("image_retrieval_recall@", "text_retrieval_recall@"))}
    if not metrics:
        raise ValueError(f"{path}: the row for {name!r} has no image_retrieval_recall@K / text_retrieval_recall@K")
    return ReferenceRow(path.name, name, str(row.get("pretrained", "")), want, metrics)


def _same_dataset(value: str, want: str) -> bool:
    try:
        return canonical_dataset(value) == want
    except ValueError:
        return False


def _number(value: Any, where: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where} is {value!r}, not a number") from None
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"{where} is {x}; recalls must be fractions in [0, 1]")
    return x


def deltas(ours: Mapping[str, float], reference: ReferenceRow) -> dict[str, dict[str, float]]:
    """Per shared metric ``{"ours", "reference", "delta"}`` (fractions; delta = ours - reference)."""
    shared = [k for k in reference.metrics if k in ours]
    if not shared:
        raise ValueError(f"no metric in common between the run ({', '.join(ours)}) and the reference "
                         f"({', '.join(reference.metrics)})")
    return {k: {"ours": float(ours[k]), "reference": reference.metrics[k],
                "delta": float(ours[k]) - reference.metrics[k]} for k in shared}


def delta_table(ours: Mapping[str, float], reference: ReferenceRow, label: str = "ours",
                ks: tuple[int, ...] = DEFAULT_KS) -> str:
    """Markdown: one row for the run, one for the reference, one for ours - reference (percent)."""
    diff = deltas(ours, reference)
    keys = [f"{d}@{k}" for d, _ in DIRECTION_LABELS for k in ks if f"{d}@{k}" in diff]
    head = ["run", *(f"{lab} R@{k}" for d, lab in DIRECTION_LABELS for k in ks if f"{d}@{k}" in diff)]
    full = tuple(ks) == DEFAULT_KS and len(keys) == 2 * len(ks)  # rsum: the six R@1/5/10, as eval.recall
    if full:
        head.append("rsum")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ref_name = f"{reference.model} / {reference.pretrained}" if reference.pretrained else reference.model
    for row_label, field, fmt in ((label, "ours", "{:.1f}"), (f"reference: {ref_name}", "reference", "{:.1f}"),
                                  ("ours − reference", "delta", "{:+.1f}")):
        values = [100 * diff[k][field] for k in keys]
        cells = [row_label, *(fmt.format(v) for v in values)]
        if full:
            cells.append(fmt.format(sum(values)))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Reference: {reference.source}, {reference.dataset}. Recall in percent; "
                 "I→T = text_retrieval_recall, T→I = image_retrieval_recall (CLIP_benchmark keys).")
    return "\n".join(lines)
