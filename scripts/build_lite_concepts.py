"""Builds the lite encoder's ImageNet class embeddings (``concepts.safetensors``, issue 23).

    python scripts/build_lite_concepts.py --model retrieval/weights/lite

Each of the 1,000 ImageNet classes becomes the mean unit text embedding of its WordNet synonyms
(``timm.data.ImageNetInfo``) in a few prompts, through the model's own text tower and head, so it
must be rerun whenever the text side is retrained. It also saves the Flickr8K class prior
(``concept_prior``): the tower's mean ImageNet class probabilities over the 500 padding images of
``eval.validation.held_out_train`` (train images outside the held-out draw, which tuning may fit
on; never queried, never test), and the concept gate's caption bank (``concept_gate``): the lite
text embeddings of one caption per train image outside the held-out gallery
(``eval.concept_dev.gate_bank_captions``, 5,000). The config's ``concept_*`` settings decide how the encoder uses
them (``common.lite_model.LiteModel.image_features``).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="lite model directory (config.json, model.safetensors)")
    p.add_argument("--annotations", type=Path, default=None, help="Flickr8K's dataset_flickr8k.json (default: ../shared/data)")
    p.add_argument("--images", type=Path, default=None, help="Flickr8K's image folder (default: ../shared/data)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    import torch

    from common.lite_concepts import build_concept_embeddings, class_prior, save_concepts
    from common.lite_model import image_transform, load_lite_model
    from eval.concept_dev import DATA, gate_bank_captions, lite_texts, prior_images

    model = load_lite_model(args.model, concept_weight=0)  # no concepts needed to build them
    embeddings = build_concept_embeddings(model, progress=not args.no_progress)
    annotations, image_dir = args.annotations or DATA / "dataset_flickr8k.json", args.images or DATA / "images"
    images = prior_images(annotations, image_dir)
    prior = class_prior(model, images, image_transform(model.config), progress=not args.no_progress)
    source = f"mean class probability over the {len(images)} padding images of eval.validation.held_out_train"
    bank = torch.from_numpy(lite_texts(model, gate_bank_captions(annotations, image_dir)))
    bank_source = (f"lite text embeddings of the first caption of the {len(bank)} Flickr8K train images outside "
                   "eval.validation.held_out_train's gallery")
    print(f"wrote {save_concepts(args.model, embeddings, prior=prior, prior_source=source, gate_bank=bank, gate_bank_source=bank_source)}")


if __name__ == "__main__":
    main()
