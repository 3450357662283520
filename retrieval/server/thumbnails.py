"""Small JPEG thumbnails of indexed images, made on first request and kept in a bounded LRU.

Made from the file the index holds for that id (never a path from a request), through
:func:`common.images.load_image`, so the same decoding rules and guards apply as when the
image was encoded (CMYK, palette, 16-bit, huge or elongated images).
"""

from __future__ import annotations

from io import BytesIO

from PIL import Image

from rerank.lru import FeatureCache
from common.images import load_image

#: Longest side of a thumbnail in pixels: a grid cell on a high-density screen.
THUMBNAIL_SIDE = 256
JPEG_QUALITY = 85


class Thumbnails:
    """``get(id, path)`` -> JPEG bytes; about 10-20 kB each, so the default 2,048 hold ~30 MB."""

    def __init__(self, side: int = THUMBNAIL_SIDE, capacity: int = 2048, quality: int = JPEG_QUALITY) -> None:
        if side < 16:
            raise ValueError(f"thumbnail side must be >= 16 px, got {side}")
        self.side, self.quality = side, quality
        self.cache = FeatureCache(capacity)

    def get(self, image_id: int, path: str) -> bytes:
        """Raises what :func:`load_image` raises (missing or undecodable file)."""
        key = (image_id, path)
        data = self.cache.get(key)
        if data is None:
            data = self.make(path)
            self.cache.put(key, data)
        return data

    def make(self, path: str) -> bytes:
        image = load_image(path)
        image.thumbnail((self.side, self.side), Image.Resampling.LANCZOS)
        out = BytesIO()
        image.save(out, "JPEG", quality=self.quality, optimize=True)
        return out.getvalue()
