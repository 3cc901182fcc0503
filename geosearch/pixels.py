"""What every layer passes around: a pixel ``Window`` of a file and the ``RawTile`` read there.

Readers (``sources``) hand out ``RawTile`` objects; bands, features, the catalog and the
engines take them; the store records ``Window`` objects. Nothing here reads a file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import rasterio.windows


@dataclass(frozen=True)
class Window:
    """A pixel window of a source: top row, left column, width and height."""

    row: int
    col: int
    width: int
    height: int

    def as_rasterio(self) -> rasterio.windows.Window:
        return rasterio.windows.Window(self.col, self.row, self.width, self.height)


@dataclass
class RawTile:
    """Pixels of one window as stored in the file, before band scaling.

    ``pixels`` is (bands, height, width) in the file's dtype; ``valid`` is (height, width),
    True where every selected band holds data (not nodata, not masked, finite).
    """

    pixels: np.ndarray
    valid: np.ndarray

    @property
    def nodata_fraction(self) -> float:
        return float(1.0 - self.valid.mean()) if self.valid.size else 1.0

    def worth_indexing(self, max_nodata_fraction: float) -> bool:
        """Whether the tile has enough valid pixels to be indexed (``max_nodata_fraction``)."""
        return bool(self.valid.any()) and self.nodata_fraction <= max_nodata_fraction


def tile_windows(width: int, height: int, tile_size: int) -> list[Window]:
    """A grid of windows covering the raster; edge remainders are kept as smaller windows."""
    return [
        Window(row, col, min(tile_size, width - col), min(tile_size, height - row))
        for row in range(0, height, tile_size)
        for col in range(0, width, tile_size)
    ]
