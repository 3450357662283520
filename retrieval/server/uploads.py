"""An uploaded query image: bytes in, an RGB PIL image out, or a 4xx naming what was wrong.

The byte cap is enforced by the route's body limit before the upload is read (see
:mod:`.app`); here the header is probed for its pixel count first, so a small file that would
inflate to gigabytes (a decompression bomb) is refused before any decoding, at the threshold
above which PIL itself warns (``Image.MAX_IMAGE_PIXELS``). Decoding then goes through
:func:`common.images.load_image`, the encoders' own loader, so an upload obeys exactly the
rules an indexed file does (JPEG draft decoding, alpha on white, truncated files refused, PIL's
bomb check).
"""

from __future__ import annotations

import tempfile
from io import BytesIO
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from common.images import ImageLoadError, load_image

from .errors import BadRequest


def max_pixels() -> int:
    return int(Image.MAX_IMAGE_PIXELS or 0) or 89_478_485


def decode_upload(data: bytes, filename: str | None) -> Image.Image:
    """Runs in a worker thread (decoding is CPU work); ``filename`` only names the upload in errors."""
    name = f"upload {filename!r}" if filename else "upload"
    if not data:
        raise BadRequest(f"{name} is empty: send an image file in the form field 'file'", 422)
    try:
        with Image.open(BytesIO(data)) as probe:
            width, height = probe.size
            fmt = probe.format
    except Image.DecompressionBombError as e:
        raise BadRequest(f"{name} is refused as a decompression bomb: {e}", 413) from None
    except UnidentifiedImageError:
        raise BadRequest(f"{name} is not an image file PIL can read (send a JPEG, PNG, WebP, GIF...)", 415) from None
    except OSError as e:
        raise BadRequest(f"{name} cannot be read as an image: {e}", 422) from None
    if width * height > max_pixels():
        raise BadRequest(f"{name} is {width}x{height} pixels, more than the limit of {max_pixels():,} "
                         f"(a decompression-bomb guard)", 413)
    with tempfile.TemporaryDirectory(prefix="crossmodal-upload-") as tmp:
        path = Path(tmp) / f"query.{(fmt or 'img').lower()}"
        path.write_bytes(data)
        try:
            return load_image(path)
        except (ImageLoadError, OSError, ValueError) as e:
            message = str(e).replace(f"image ({path})", name).replace(str(path), name)
            raise BadRequest(message, 422) from None
