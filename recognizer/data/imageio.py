"""The one image loader every part of the recognizer uses.

Photos arrive from phones and folders in every mode PIL knows. Everything downstream
wants the same thing: an upright ``HxWx3`` uint8 RGB array. Anything that cannot be
turned into that raises an :class:`ImageLoadError` subclass that names the file, so a
batch can skip and report the row instead of crashing.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Refuse anything larger than this many pixels (a 20000x20000 header is 4e8): decoding
# such a file would take gigabytes. 8192x8192 covers every camera we expect.
MAX_PIXELS = 8192 * 8192

# Never silently accept truncated files: a half-grey photo would poison a gallery.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageLoadError(Exception):
    """An image could not be loaded; ``path`` names the file and ``reason`` says why."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class MissingImageError(ImageLoadError):
    """The file does not exist or is not a regular file."""


class CorruptImageError(ImageLoadError):
    """The file is empty, truncated, not an image, or not decodable."""


class ImageTooLargeError(ImageLoadError):
    """The image header claims more pixels than :data:`MAX_PIXELS` (decompression bomb)."""


def _to_rgb(img: Image.Image, background: tuple[int, int, int]) -> np.ndarray:
    """Convert any PIL mode to uint8 RGB; alpha is composited over ``background``."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit grayscale: PIL's convert("L") clips at 255; rescale from the real range instead.
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        gray = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.max() > 1.0 else 1.0
        gray = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("LA", "La", "PA"):
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "RGBa"):
        bg = Image.new("RGB", img.size, background)
        bg.paste(img, mask=img.getchannel("A"))
        return np.asarray(bg, dtype=np.uint8).copy()
    if mode != "RGB":
        img = img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
    return np.asarray(img, dtype=np.uint8).copy()


def load_image(
    path: str | os.PathLike,
    *,
    background: tuple[int, int, int] = (255, 255, 255),
    max_pixels: int = MAX_PIXELS,
) -> np.ndarray:
    """Load ``path`` as an upright ``HxWx3`` uint8 RGB array.

    EXIF orientation is applied, so a phone photo taken sideways comes out upright.
    Grayscale, palette, CMYK and 16-bit images are converted; transparent pixels are
    composited over ``background`` (white, like a catalog photo).

    Raises:
        MissingImageError, CorruptImageError, ImageTooLargeError: all subclasses of
        :class:`ImageLoadError`, whose message starts with the path.
    """
    p = Path(path)
    if not p.is_file():
        raise MissingImageError(p, "no such file" if not p.exists() else "not a regular file")
    if p.stat().st_size == 0:
        raise CorruptImageError(p, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageTooLargeError(p, f"{w}x{h} pixels exceeds the limit of {max_pixels}")
                if w < 1 or h < 1:
                    raise CorruptImageError(p, f"degenerate size {w}x{h}")
                img.load()
                img = ImageOps.exif_transpose(img)
                return _to_rgb(img, background)
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLargeError(p, f"decompression bomb refused ({e})") from None
    except UnidentifiedImageError:
        raise CorruptImageError(p, "not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # PIL reports truncated/corrupt data as OSError ("image file is truncated"), SyntaxError
        # (broken PNG chunks) or ValueError.
        raise CorruptImageError(p, f"cannot decode image ({type(e).__name__}: {e})") from None


def crop_bbox(rgb: np.ndarray, bbox: tuple[float, float, float, float] | None) -> np.ndarray:
    """Crop ``x y w h`` (pixels) out of ``rgb``, clipped to the image; ``None`` returns it unchanged."""
    if bbox is None:
        return rgb
    x, y, w, h = bbox
    H, W = rgb.shape[:2]
    x0, y0 = max(0, int(round(x))), max(0, int(round(y)))
    x1, y1 = min(W, int(round(x + w))), min(H, int(round(y + h)))
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"bbox {bbox} lies outside the {W}x{H} image")
    return rgb[y0:y1, x0:x1]
