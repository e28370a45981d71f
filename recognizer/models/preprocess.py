"""Image preprocessing: how an RGB array becomes a backbone's input tensor.

Kept in one place so training, enrollment, matching and the camera all prepare images
identically; a gallery records the ``Preprocess`` its embeddings were made with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np
import torch

INTERPOLATIONS = ("bilinear", "bicubic", "area", "nearest")
_CV2_INTERP = {
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "nearest": cv2.INTER_NEAREST,
}
RESIZE_MODES = ("squash",)


@dataclass(frozen=True)
class Preprocess:
    """How an RGB image becomes the backbone's input tensor.

    ``resize="squash"`` resizes straight to ``input_size`` x ``input_size`` (no crop), so the
    whole item stays in view whatever the photo's aspect ratio.
    """

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    resize: str = "squash"

    def __post_init__(self) -> None:
        if self.input_size < 16:
            raise ValueError(f"input_size {self.input_size} is too small (>= 16)")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation {self.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}"
            )
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize {self.resize!r} is not one of {', '.join(RESIZE_MODES)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        unknown = set(d) - {"input_size", "mean", "std", "interpolation", "resize"}
        if unknown:
            raise ValueError(f"unknown preprocess key(s) {sorted(unknown)}")
        return cls(
            input_size=int(d["input_size"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            interpolation=d.get("interpolation", "bilinear"),
            resize=d.get("resize", "squash"),
        )

    def with_size(self, input_size: int | None) -> Preprocess:
        if input_size is None or input_size == self.input_size:
            return self
        return Preprocess(input_size, self.mean, self.std, self.interpolation, self.resize)

    def resized(self, rgb: np.ndarray) -> np.ndarray:
        """Resize an ``HxWx3`` uint8 image to the input size (area interpolation when shrinking a lot)."""
        s = self.input_size
        h, w = rgb.shape[:2]
        interp = _CV2_INTERP[self.interpolation]
        if min(h, w) > 2 * s and self.interpolation != "nearest":
            interp = cv2.INTER_AREA  # avoids aliasing on large photos
        return cv2.resize(np.ascontiguousarray(rgb), (s, s), interpolation=interp)

    def to_tensor(self, rgb: np.ndarray) -> torch.Tensor:
        """``HxWx3`` uint8 RGB -> normalised ``3 x S x S`` float32 tensor."""
        x = torch.from_numpy(self.resized(rgb)).permute(2, 0, 1).float().div_(255.0)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return x.sub_(mean).div_(std)
