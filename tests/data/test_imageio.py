"""One test per kind of bad image: each loads as RGB or raises a typed error naming the file."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from recognizer.data.imageio import (
    CorruptImageError,
    ImageLoadError,
    ImageTooLargeError,
    MissingImageError,
    crop_bbox,
    load_image,
)


def _jpeg(path, size=(40, 30), color=(200, 30, 30)):
    Image.new("RGB", size, color).save(path, "JPEG", quality=95)
    return path


def test_plain_rgb_jpeg(tmp_path):
    img = load_image(_jpeg(tmp_path / "a.jpg"))
    assert img.shape == (30, 40, 3) and img.dtype == np.uint8
    assert abs(int(img[15, 20, 0]) - 200) < 6


def test_truncated_jpeg_names_file(tmp_path):
    p = tmp_path / "trunc.jpg"
    arr = (np.random.default_rng(0).random((200, 200, 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(p, "JPEG")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptImageError, match="trunc.jpg") as e:
        load_image(p)
    assert e.value.path == str(p)


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(CorruptImageError, match=r"empty\.jpg: empty file"):
        load_image(p)


def test_text_file_named_jpg(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("this is not an image\n")
    with pytest.raises(CorruptImageError, match=r"notes\.jpg: not a recognised image format"):
        load_image(p)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(MissingImageError, match=r"nope\.jpg: no such file"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(MissingImageError, match="not a regular file"):
        load_image(tmp_path)


def test_png_with_alpha_is_composited_on_white(tmp_path):
    p = tmp_path / "alpha.png"
    arr = np.zeros((10, 10, 4), np.uint8)
    arr[:5, :, :] = (0, 0, 255, 255)  # opaque blue top half, transparent bottom half
    Image.fromarray(arr, "RGBA").save(p)
    img = load_image(p)
    assert img.shape == (10, 10, 3)
    assert tuple(img[0, 0]) == (0, 0, 255)
    assert tuple(img[9, 9]) == (255, 255, 255)


def test_16bit_png_keeps_its_range(tmp_path):
    p = tmp_path / "deep.png"
    arr = np.array([[0, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(arr).save(p)  # PIL writes mode I;16
    img = load_image(p)
    assert img.shape == (1, 3, 3)
    assert list(img[0, :, 0]) == [0, 128, 255]  # not clipped to 255 everywhere


def test_cmyk_jpeg(tmp_path):
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(p, "JPEG")  # pure red in CMYK
    img = load_image(p)
    assert img.shape == (16, 16, 3)
    assert img[8, 8, 0] > 200 and img[8, 8, 1] < 60 and img[8, 8, 2] < 60


def test_palette_gif_and_grayscale(tmp_path):
    p = tmp_path / "pal.gif"
    Image.new("RGB", (12, 12), (10, 200, 10)).convert("P").save(p)
    img = load_image(p)
    assert img.shape == (12, 12, 3) and img[6, 6, 1] > 150
    g = tmp_path / "gray.png"
    Image.new("L", (5, 7), 77).save(g)
    assert load_image(g).shape == (7, 5, 3)
    assert tuple(load_image(g)[0, 0]) == (77, 77, 77)


def test_one_pixel_image(tmp_path):
    p = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (1, 2, 3)).save(p)
    assert load_image(p).shape == (1, 1, 3)


def _png_header_only(path, w, h):
    """A PNG whose header claims w x h pixels: the decompression-bomb case, a few bytes on disk."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )
    return path


def test_decompression_bomb_is_refused(tmp_path):
    p = _png_header_only(tmp_path / "bomb.png", 20000, 20000)
    with pytest.raises(ImageTooLargeError, match=r"bomb\.png: .*exceeds.*limit"):
        load_image(p)


def test_exif_rotated_photo_comes_out_upright(tmp_path):
    p = tmp_path / "rotated.jpg"
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)  # left half red, right half blue, as stored
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    Image.fromarray(arr).save(p, "JPEG", exif=exif.tobytes(), quality=98)
    img = load_image(p)
    assert img.shape == (40, 20, 3)  # upright: taller than wide
    assert img[2, 10, 0] > 200 and img[38, 10, 2] > 200  # red on top, blue below


def test_errors_share_a_base_class(tmp_path):
    for cls in (MissingImageError, CorruptImageError, ImageTooLargeError):
        assert issubclass(cls, ImageLoadError)


def test_crop_bbox_clips_and_rejects_outside():
    img = np.zeros((10, 20, 3), np.uint8)
    assert crop_bbox(img, (5, 2, 100, 3)).shape == (3, 15, 3)
    assert crop_bbox(img, None) is img
    with pytest.raises(ValueError, match="outside"):
        crop_bbox(img, (30, 30, 5, 5))
