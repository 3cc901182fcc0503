"""What every feature extractor takes and gives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass
class TileBatch:
    """Tiles ready for feature extraction.

    ``pixels[i]`` is (bands, h, w) float32 in 0..1 (the manifest's scaling; invalid pixels 0;
    embedding rasters: raw values in the file's dtype),
    ``valid[i]`` is (h, w) bool, and ``rgb`` the positions of the bands shown as red, green, blue.
    """

    pixels: list[np.ndarray]
    valid: list[np.ndarray]
    rgb: tuple[int, int, int]

    def __len__(self) -> int:
        return len(self.pixels)

    def rgb_uint8(self, index: int) -> np.ndarray:
        """Tile ``index`` as an (h, w, 3) uint8 RGB composite, invalid pixels black."""
        composite = self.pixels[index][list(self.rgb)].transpose(1, 2, 0)
        return np.round(composite * 255.0).astype(np.uint8)


class Extractor(Protocol):
    """A feature family: a name, a version that changes when its output does, a dimension, and
    which bands its features depend on (``band_use``): "each" (dims laid out band by band, so a
    query lacking a band can be compared on the others), "rgb" (the RGB composite) or "all", and
    how ``Fusion`` standardises its block (``standardisation``): "standard" (each dimension to
    mean 0, std 1 over the creation sample), "centred" (the sample mean subtracted, scales kept)
    or "none"."""

    name: str
    version: str
    dim: int
    band_use: str
    standardisation: str

    def extract(self, batch: TileBatch) -> np.ndarray:
        """(len(batch), dim) float32 features."""
        ...
