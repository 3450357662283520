"""The lite image tower's preprocessing in PIL and numpy: what an image search runs without torch.

Why not torchvision: importing ``torchvision.transforms.v2`` pulls in torch and ``torch._dynamo``,
about 3 s of a 3.3 s ``crossmodal search INDEX --image FILE`` on the project's VM, where the
image graph itself runs in 0.1 s in ONNX Runtime. The steps are torchvision's (``T.Resize(size,
BICUBIC, antialias=True)``, ``T.CenterCrop(size)``, ``T.ToDtype(float32, scale=True)``,
``T.Normalize(mean, std)``, on the RGB image's uint8 pixels), with the same output size and crop
offsets. The resampling is Pillow's antialiased bicubic, the filter (a = -0.5, support 2 x scale)
and separable two-pass scheme that PyTorch's uint8 antialias kernel was ported from; the two round
their fixed-point sums differently, so a pixel can differ by a level or two (``tests/test_lite.py``
checks pixels and embeddings against torchvision's transform).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

#: The one resize rule the lite config may name (``image_resize`` / ``image_interpolation``).
RESIZE = "shortest_side_then_center_crop"
INTERPOLATION = "bicubic"


class LitePixels:
    """RGB PIL image -> (3, size, size) float32 array, normalised as the lite tower was trained."""

    def __init__(self, config: dict[str, Any]) -> None:
        resize = config.get("image_resize", RESIZE)
        interpolation = config.get("image_interpolation", INTERPOLATION)
        if (resize, interpolation) != (RESIZE, INTERPOLATION):
            raise ValueError(f"lite preprocessing supports image_resize={RESIZE!r} with image_interpolation="
                             f"{INTERPOLATION!r}, got {resize!r} / {interpolation!r}")
        self.size = int(config["image_size"])
        mean = np.asarray(config["image_mean"], dtype=np.float32)
        std = np.asarray(config["image_std"], dtype=np.float32)
        if mean.shape != (3,) or std.shape != (3,) or not (std > 0).all():
            raise ValueError(f"image_mean and image_std must be 3 numbers (std > 0), got {mean} / {std}")
        # (x / 255 - mean) / std as one multiply-add per value
        self.scale = (1.0 / (255.0 * std))[:, None, None]
        self.shift = (-mean / std)[:, None, None]

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """torchvision's ``Resize(int)``: the shorter side to ``size``, the longer truncated to keep the ratio."""
        if width <= height:
            return self.size, int(self.size * height / width)
        return int(self.size * width / height), self.size

    def __call__(self, image: Image.Image) -> np.ndarray:
        if image.mode != "RGB":
            raise ValueError(f"expected an RGB image (common.images.load_image), got mode {image.mode!r}")
        width, height = self.resized_size(*image.size)
        if (width, height) != image.size:
            image = image.resize((width, height), Image.Resampling.BICUBIC)
        # torchvision's centre-crop anchor: Python's round of half the margin
        top, left = int(round((height - self.size) / 2.0)), int(round((width - self.size) / 2.0))
        pixels = np.asarray(image, dtype=np.uint8)[top:top + self.size, left:left + self.size]
        return pixels.transpose(2, 0, 1) * self.scale + self.shift
