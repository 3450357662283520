"""Builds the lite encoder's ImageNet class embeddings (``concepts.safetensors``, issue 23).

    python scripts/build_lite_concepts.py --model retrieval/weights/lite

Each of the 1,000 ImageNet classes becomes the mean unit text embedding of its WordNet synonyms
(``timm.data.ImageNetInfo``) in a few prompts, through the model's own text tower and head, so it
must be rerun whenever the text side is retrained. The config's ``concept_weight`` /
``concept_top_k`` decide how the encoder uses them (``common.lite_model.LiteModel.image_features``).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="lite model directory (config.json, model.safetensors)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    from common.lite_concepts import build_concept_embeddings, save_concepts
    from common.lite_model import load_lite_model

    model = load_lite_model(args.model, concept_weight=0)  # the text side only; no concepts needed to build them
    print(f"wrote {save_concepts(args.model, build_concept_embeddings(model, progress=not args.no_progress))}")


if __name__ == "__main__":
    main()
