"""Per-band statistics of a tile's valid pixels (after the manifest's scaling to 0..1)."""

from __future__ import annotations

import numpy as np

from geosearch.features.base import TileBatch

STATISTICS = ("mean", "std", "min", "max", "p10", "p50", "p90")
# Values are binned at this resolution once; every statistic is read off the bins, which is
# several times faster than sorting for percentiles and exact to 1/LEVELS of the 0..1 range.
LEVELS = 1024
_CENTRES = (np.arange(LEVELS) + 0.5) / LEVELS
# Tiles with more pixels than this are described from every other row and column.
SUBSAMPLE_ABOVE = 128 * 128


class BandStatsExtractor:
    """Mean, std, min, max, 10/50/90th percentiles and a histogram of each band.

    Nodata-aware: only valid pixels count. Values are the manifest-scaled 0..1 ones, so that a
    uint8 and a uint16 database are comparable only through their scaling, never raw.
    """

    name = "band_stats"
    band_use = "each"
    standardisation = "standard"

    def __init__(self, band_count: int, histogram_bins: int = 8) -> None:
        if LEVELS % histogram_bins:
            raise ValueError(f"histogram_bins must divide {LEVELS}")
        self.band_count = band_count
        self.histogram_bins = histogram_bins
        self.version = f"3-bins{histogram_bins}"
        self.dim = band_count * (len(STATISTICS) + histogram_bins)

    def extract(self, batch: TileBatch) -> np.ndarray:
        out = np.zeros((len(batch), self.dim), dtype=np.float32)
        for i, (pixels, valid) in enumerate(zip(batch.pixels, batch.valid, strict=True)):
            if valid.any():
                out[i] = self.describe(pixels, valid)
        return out

    def describe(self, pixels: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """The statistics of (bands, h, w) values in 0..1 where ``valid``, one row per band."""
        bands = pixels.shape[0]
        if valid.size > SUBSAMPLE_ABOVE:  # every other row and column: 4x less work, same stats
            pixels, valid = pixels[:, ::2, ::2], valid[::2, ::2]
        values = pixels.reshape(bands, -1) if valid.all() else pixels[:, valid]
        levels = np.minimum((values * LEVELS).astype(np.int32), LEVELS - 1)
        levels += np.arange(bands, dtype=np.int32)[:, None] * LEVELS
        counts = np.bincount(levels.ravel(), minlength=bands * LEVELS).reshape(bands, LEVELS)
        n = values.shape[1]
        fractions = counts / n
        mean = fractions @ _CENTRES
        std = np.sqrt(np.maximum(fractions @ _CENTRES**2 - mean**2, 0.0))
        cumulative = np.cumsum(fractions, axis=1)
        low = np.argmax(counts > 0, axis=1)
        high = LEVELS - 1 - np.argmax(counts[:, ::-1] > 0, axis=1)
        percentiles = [_CENTRES[np.argmax(cumulative >= q, axis=1)] for q in (0.10, 0.50, 0.90)]
        summary = np.column_stack([mean, std, _CENTRES[low], _CENTRES[high], *percentiles])
        histogram = fractions.reshape(bands, self.histogram_bins, -1).sum(axis=2)
        return np.hstack([summary, histogram]).ravel()
