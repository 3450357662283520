"""Turning whatever a user calls "an image" into an RGB PIL image, or a clear error.

Encoders accept paths, PIL images and arrays. Real collections contain truncated downloads,
empty files, CMYK JPEGs, palette PNGs with transparency, 16-bit grayscale, panoramas and
50-megapixel photos; each is either normalised here or rejected with the offending file named.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]

#: Longest side kept before model preprocessing. Every encoder here resizes to <= 512 px, so
#: decoding a 50 MP photo at full size would only cost memory and time.
MAX_SIDE = 1024
#: Panoramas beyond this aspect ratio are centre-cropped to it: the models' own "resize shorter
#: side, centre crop" would keep only the centre anyway, and resizing a 1 x 20000 strip's short
#: side to 224 px would allocate gigabytes first.
MAX_ASPECT = 8.0
#: Transparent pixels are composited on white, as browsers show them, not on black.
BACKGROUND = (255, 255, 255)


class ImageLoadError(ValueError):
    """An input image that cannot be decoded; the message names which one."""


def describe(item: Any, index: int | None) -> str:
    where = f"images[{index}]" if index is not None else "image"
    if isinstance(item, (str, os.PathLike)):
        return f"{where} ({os.fspath(item)})"
    return where


def load_image(item: ImageInput, index: int | None = None) -> Image.Image:
    """Returns an RGB image no larger than :data:`MAX_SIDE` and no more elongated than :data:`MAX_ASPECT`."""
    name = describe(item, index)
    if isinstance(item, (str, os.PathLike)):
        image = open_file(Path(item), name)
    elif isinstance(item, Image.Image):
        image = item
    elif isinstance(item, np.ndarray):
        image = from_array(item, name)
    else:
        raise TypeError(f"{name}: expected a path, PIL.Image or numpy array, got {type(item).__name__}")
    try:
        return bound_geometry(to_rgb(image))
    except (OSError, ValueError) as e:  # lazy decoding errors surface here for files
        raise ImageLoadError(f"{name}: cannot decode image: {e}") from e


def open_file(path: Path, name: str) -> Image.Image:
    if not path.is_file():
        raise FileNotFoundError(f"{name}: no such file")
    if path.stat().st_size == 0:
        raise ImageLoadError(f"{name}: file is empty")
    try:
        with Image.open(path) as image:
            # JPEG can decode at 1/2, 1/4, 1/8 scale directly: huge photos cost little.
            image.draft("RGB", (MAX_SIDE, MAX_SIDE))
            image.load()
            return image.copy() if image.mode != "P" else image.convert("RGBA")
    except Image.DecompressionBombError as e:
        raise ImageLoadError(f"{name}: {e}") from e
    except UnidentifiedImageError as e:
        raise ImageLoadError(f"{name}: not an image file PIL can read") from e
    except OSError as e:  # truncated or corrupt data
        raise ImageLoadError(f"{name}: cannot decode image ({e})") from e


def from_array(array: np.ndarray, name: str) -> Image.Image:
    """HWC or HW arrays; uint8 as is, floats taken as [0, 1]."""
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[2] not in (1, 3, 4):
        raise ValueError(f"{name}: array of shape {array.shape} looks channels-first; pass HWC")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ValueError(f"{name}: expected an HxW, HxWx3 or HxWx4 array, got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name}: array has an empty dimension, shape {array.shape}")
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError(f"{name}: float array contains NaN or infinity")
        array = (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        raise TypeError(f"{name}: unsupported array dtype {array.dtype}; use uint8 or float in [0, 1]")
    return Image.fromarray(np.ascontiguousarray(array))


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, BACKGROUND)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: PIL's RGB conversion clips instead of scaling.
        array = np.asarray(image, dtype=np.float64)
        hi = float(array.max()) or 1.0
        return Image.fromarray((array / hi * 255.0).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV, F


def bound_geometry(image: Image.Image) -> Image.Image:
    width, height = image.size
    if width == 0 or height == 0:
        raise ValueError(f"image has size {width}x{height}")
    long_side, short_side = max(width, height), min(width, height)
    if long_side > MAX_ASPECT * short_side:
        keep = int(round(MAX_ASPECT * short_side))
        if width > height:
            left = (width - keep) // 2
            image = image.crop((left, 0, left + keep, height))
        else:
            top = (height - keep) // 2
            image = image.crop((0, top, width, top + keep))
    if max(image.size) > MAX_SIDE:
        image = image.copy()
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.BICUBIC)
    return image


# Truncated files must raise, not silently decode grey bands.
ImageFile.LOAD_TRUNCATED_IMAGES = False
