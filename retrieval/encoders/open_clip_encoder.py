"""open_clip models: ``model/pretrained`` tags, ``hf-hub:org/repo`` ids and local checkpoints.

The model always comes with the preprocessing open_clip resolves for *that* checkpoint (its
``preprocess_cfg``: size, mean, std, interpolation, resize mode), never a default one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image

from common.hub import ModelNotAvailableError, not_available_message
from .base import Encoder


def parse_open_clip_id(model_id: str) -> tuple[str, str | None]:
    """Splits an id into open_clip's ``(model_name, pretrained)``.

    ``ViT-B-32/laion2b_s34b_b79k`` -> ("ViT-B-32", "laion2b_s34b_b79k"); ``ViT-B-32/ckpt.pt`` (an
    existing file) -> ("ViT-B-32", "ckpt.pt"); ``hf-hub:org/repo`` and ``local-dir:/path`` pass
    whole; a bare architecture name (``ViT-B-32``) means random weights.
    """
    model_id = model_id.removeprefix("open_clip:")
    if model_id.startswith(("hf-hub:", "local-dir:")):
        return model_id, None
    name, sep, pretrained = model_id.partition("/")
    return name, (pretrained if sep else None)


def is_open_clip_id(model_id: str) -> bool:
    if model_id.startswith(("open_clip:", "hf-hub:", "local-dir:")):
        return True
    import open_clip

    return parse_open_clip_id(model_id)[0] in set(open_clip.list_models())


class OpenClipEncoder(Encoder):
    def __init__(self, model_id: str, device: str | torch.device | None = None,
                 precision: str | None = None, cache_dir: str | None = None) -> None:
        import open_clip

        super().__init__(device, precision)
        self.model_id = model_id
        name, pretrained = parse_open_clip_id(model_id)
        if name.startswith("local-dir:") and not Path(name.removeprefix("local-dir:")).is_dir():
            raise FileNotFoundError(f"open_clip model directory not found: {name.removeprefix('local-dir:')}")
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=pretrained, device=self.device, cache_dir=cache_dir
            )
            self.tokenizer = open_clip.get_tokenizer(name, cache_dir=cache_dir)
        except RuntimeError as e:
            if name.startswith("hf-hub:") and "HF Hub" in str(e):
                raise ModelNotAvailableError(not_available_message(model_id, "open_clip_config.json not found")) from e
            if any(m in str(e) for m in ("Unknown model", "not a known tag", "Pretrained weights")):
                raise ValueError(f"open_clip cannot resolve {model_id!r}: {e}") from e
            raise
        except OSError as e:
            if name.startswith("hf-hub:") or pretrained:
                raise ModelNotAvailableError(not_available_message(model_id, type(e).__name__)) from e
            raise
        self.model = model.eval()
        self.preprocess = preprocess
        self._dim = int(self.model.text_projection.shape[1]) if getattr(self.model, "text_projection", None) is not None \
            else int(self.encode_texts(["a"], progress=False).shape[1])

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def preprocess_config(self) -> dict[str, Any]:
        return dict(getattr(self.model.visual, "preprocess_cfg", {}))

    def preprocess_image(self, image: Image.Image) -> torch.Tensor:
        return self.preprocess(image)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return {"text": self.tokenizer(texts)}  # truncates to the model's context length

    def forward_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def forward_texts(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.encode_text(tokens["text"])
