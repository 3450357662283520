"""A deterministic toy dual encoder for Retriever tests: solid-colour images and colour-name texts.

"red" embeds exactly where a red image does, so correct results are known without a real model,
and it runs in microseconds. It goes through the real :class:`retrieval.encoders.base.Encoder`
machinery (validation, batching, image loading, normalisation).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from retrieval.encoders.base import Encoder

COLORS = {
    "red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0), "yellow": (1.0, 1.0, 0.0),
    "cyan": (0.0, 1.0, 1.0), "magenta": (1.0, 0.0, 1.0), "white": (1.0, 1.0, 1.0), "orange": (1.0, 0.5, 0.0),
    "purple": (0.5, 0.0, 1.0), "pink": (1.0, 0.6, 0.8), "grey": (0.5, 0.5, 0.5), "navy": (0.0, 0.0, 0.5),
}


class ToyEncoder(Encoder):
    model_id = "toy"

    def __init__(self, dim: int = 16, seed: int = 0) -> None:
        super().__init__("cpu", "fp32")
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.randn(3, 32, generator=g)
        self.w2 = torch.randn(32, dim, generator=g)
        self._dim = dim

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def preprocess_config(self) -> dict[str, Any]:
        return {"size": 4}

    def embed_rgb(self, rgb: torch.Tensor) -> torch.Tensor:
        return torch.tanh((rgb - 0.4) @ self.w1) @ self.w2

    def preprocess_image(self, image: Any) -> torch.Tensor:
        return torch.from_numpy(np.asarray(image.resize((4, 4)), dtype=np.float32) / 255.0).permute(2, 0, 1)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        rgb = [np.mean([COLORS[w] for w in t.split() if w in COLORS] or [(0.3, 0.3, 0.3)], axis=0) for t in texts]
        return {"rgb": torch.tensor(np.array(rgb), dtype=torch.float32)}

    def forward_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.embed_rgb(pixels.mean(dim=(2, 3)))

    def forward_texts(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.embed_rgb(tokens["rgb"])


def solid_images(directory, names=tuple(COLORS)) -> list[str]:
    from PIL import Image

    paths = []
    for name in names:
        path = directory / f"{name}.png"
        Image.new("RGB", (8, 8), tuple(int(255 * c) for c in COLORS[name])).save(path)
        paths.append(str(path))
    return paths
