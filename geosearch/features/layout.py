"""The layout block: a small thumbnail of every band, standardised within the tile.

Where things lie in the tile (field edges, water, roads) at coarse resolution, with each band's
brightness and contrast removed (per-tile, per-band standardisation), so that the same place
photographed in another year, season or sensor calibration still matches. It knows nothing of
content and is not rotation-invariant on its own: ``--any-orientation`` turns the query.
"""

from __future__ import annotations

import numpy as np

from geosearch.features.base import TileBatch


class LayoutExtractor:
    """``side`` x ``side`` cell means of each band's valid pixels, standardised per band."""

    name = "layout"
    band_use = "each"
    standardisation = "standard"

    def __init__(self, band_count: int, side: int = 16) -> None:
        self.band_count = band_count
        self.side = side
        self.version = f"1-side{side}"
        self.dim = band_count * side * side

    def extract(self, batch: TileBatch) -> np.ndarray:
        out = np.zeros((len(batch), self.dim), dtype=np.float32)
        for i, (pixels, valid) in enumerate(zip(batch.pixels, batch.valid, strict=True)):
            out[i] = self.describe(pixels, valid)
        return out

    def describe(self, pixels: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """(bands * side * side,) standardised cell means; cells with no valid pixel are 0."""
        height, width = valid.shape
        weights = valid.astype(np.float32)
        side = self.side
        if height % side == 0 and width % side == 0:  # whole cells: sum through a reshape
            bands, cell_h, cell_w = pixels.shape[0], height // side, width // side
            counts = weights.reshape(side, cell_h, side, cell_w).sum(axis=(1, 3))
            masked = pixels * weights
            sums = masked.reshape(bands, side, cell_h, side, cell_w).sum(axis=(2, 4))
        else:
            rows = np.linspace(0, height, side + 1).astype(int)[:-1]
            cols = np.linspace(0, width, side + 1).astype(int)[:-1]
            counts = np.add.reduceat(np.add.reduceat(weights, rows, axis=0), cols, axis=1)
            sums = np.add.reduceat(np.add.reduceat(pixels * weights, rows, axis=1), cols, axis=2)
        filled = counts > 0
        means = np.where(filled, sums / np.maximum(counts, 1.0), 0.0)
        out = np.zeros_like(means)
        if filled.any():
            cells = means[:, filled]  # (bands, filled cells)
            centred = cells - cells.mean(axis=1, keepdims=True)
            scale = centred.std(axis=1, keepdims=True)
            out[:, filled] = centred / np.where(scale > 1e-6, scale, 1.0)
        return out.ravel()
