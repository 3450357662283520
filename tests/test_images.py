"""Every kind of image a real collection contains is either normalised or rejected by name."""

import numpy as np
import pytest
from PIL import Image

from common.images import MAX_ASPECT, MAX_SIDE, ImageLoadError, load_image


def save(image: Image.Image, path, **kw):
    image.save(path, **kw)
    return path


@pytest.fixture
def photo():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))


def test_modes_become_rgb(tmp_path, photo):
    cases = {
        "gray.png": photo.convert("L"),
        "cmyk.jpg": photo.convert("CMYK"),
        "palette.png": photo.convert("P"),
        "bw.png": photo.convert("1"),
        "ycbcr.jpg": photo.convert("YCbCr"),
    }
    for name, image in cases.items():
        loaded = load_image(save(image, tmp_path / name))
        assert loaded.mode == "RGB" and loaded.size == (64, 48), name


def test_transparency_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))  # fully transparent red
    rgba.paste((0, 0, 255, 255), (0, 0, 5, 10))  # opaque blue left half
    out = np.asarray(load_image(save(rgba, tmp_path / "alpha.png")))
    assert out[5, 2].tolist() == [0, 0, 255]
    assert out[5, 8].tolist() == [255, 255, 255]
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.info["transparency"] = 0
    assert np.asarray(load_image(save(palette, tmp_path / "pal.png", transparency=0)))[0, 0].tolist() == [255] * 3


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    array = np.linspace(0, 4000, 64 * 32, dtype=np.uint16).reshape(32, 64)
    out = np.asarray(load_image(save(Image.fromarray(array), tmp_path / "depth.png")))
    assert out.max() == 255 and out[0, 0, 0] == 0
    assert out[16, 32, 0] not in (0, 255)


def test_huge_and_elongated_images_are_bounded(tmp_path):
    big = Image.new("RGB", (4000, 3000), (10, 200, 30))
    loaded = load_image(save(big, tmp_path / "big.jpg", quality=70))
    assert max(loaded.size) <= MAX_SIDE and abs(loaded.size[0] / loaded.size[1] - 4 / 3) < 0.02
    strip = Image.new("RGB", (20000, 20), (0, 0, 0))
    loaded = load_image(strip)
    assert loaded.size[0] / loaded.size[1] <= MAX_ASPECT + 1e-6
    tall = load_image(np.zeros((5000, 3, 3), np.uint8))
    assert tall.size[1] / tall.size[0] <= MAX_ASPECT + 1e-6


def test_decompression_bomb_is_rejected_by_name(tmp_path, monkeypatch):
    path = save(Image.new("L", (300, 300)), tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    with pytest.raises(ImageLoadError, match=r"images\[7\].*bomb.png"):
        load_image(path, index=7)


def test_broken_files_name_the_file(tmp_path, photo):
    good = save(photo, tmp_path / "good.jpg")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    for path, message in [(truncated, "truncated.jpg"), (empty, "empty.jpg.*empty"), (text, "notes.jpg.*not an image")]:
        with pytest.raises(ImageLoadError, match=message):
            load_image(path, index=3)
    with pytest.raises(FileNotFoundError, match=r"images\[2\].*missing.jpg"):
        load_image(tmp_path / "missing.jpg", index=2)


def test_arrays(photo):
    hwc = np.asarray(photo)
    assert np.array_equal(np.asarray(load_image(hwc)), hwc)
    assert np.asarray(load_image(hwc / 255.0)).astype(int).tolist() == hwc.astype(int).tolist()
    assert load_image(hwc[:, :, 0]).mode == "RGB"
    assert load_image(np.dstack([hwc, np.full(hwc.shape[:2], 255, np.uint8)])).mode == "RGB"
    with pytest.raises(ValueError, match="channels-first"):
        load_image(hwc.transpose(2, 0, 1).copy(), index=1)
    with pytest.raises(TypeError, match="dtype int64"):
        load_image(hwc.astype(np.int64))
    with pytest.raises(ValueError, match="NaN"):
        load_image(np.full((4, 4, 3), np.nan))
    with pytest.raises(ValueError, match="empty dimension"):
        load_image(np.zeros((0, 4, 3), np.uint8))
    with pytest.raises(TypeError, match="got int"):
        load_image(3)
