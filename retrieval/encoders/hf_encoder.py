"""transformers dual encoders (CLIP, SigLIP, and any model with ``get_image_features`` /
``get_text_features``) from a Hub id or a local directory, with the checkpoint's own processor."""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from common.hub import resolve_pretrained_dir
from .base import Encoder


def pooled(output: Any) -> torch.Tensor:
    """transformers 5 returns a ModelOutput whose ``pooler_output`` is projected; 4.x a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class TransformersEncoder(Encoder):
    def __init__(self, model_id: str, device: str | torch.device | None = None, precision: str | None = None,
                 revision: str | None = None, token: str | bool | None = None,
                 cache_dir: str | None = None) -> None:
        from transformers import AutoModel, AutoProcessor

        super().__init__(device, precision)
        self.model_id = model_id
        directory = resolve_pretrained_dir(model_id.removeprefix("transformers:"), ["config.json"],
                                           revision=revision, token=token, cache_dir=cache_dir)
        self.model = AutoModel.from_pretrained(directory).to(self.device).eval()
        for method in ("get_image_features", "get_text_features"):
            if not hasattr(self.model, method):
                raise ValueError(f"{model_id!r} ({type(self.model).__name__}) is not a dual encoder: no {method}()")
        self.processor = AutoProcessor.from_pretrained(directory)
        self.model_type = self.model.config.model_type
        config = self.model.config
        text_config = getattr(config, "text_config", config)
        self.max_length = int(getattr(text_config, "max_position_embeddings", 77))
        self._dim = int(getattr(config, "projection_dim", 0) or getattr(text_config, "hidden_size"))

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def preprocess_config(self) -> dict[str, Any]:
        keys = ("size", "crop_size", "image_mean", "image_std", "resample", "do_center_crop", "do_normalize",
                "do_resize", "rescale_factor")
        config = self.processor.image_processor.to_dict()
        return {k: config[k] for k in keys if k in config}

    def preprocess_image(self, image: Image.Image) -> torch.Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        # SigLIP was trained on texts padded to max_length; its embeddings change with padding="longest".
        padding = "max_length" if "siglip" in self.model_type else "longest"
        tokens = self.processor(text=texts, padding=padding, truncation=True, max_length=self.max_length,
                                return_tensors="pt")
        return {k: v for k, v in tokens.items() if k in ("input_ids", "attention_mask")}

    def forward_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return pooled(self.model.get_image_features(pixel_values=pixels))

    def forward_texts(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return pooled(self.model.get_text_features(**tokens))
