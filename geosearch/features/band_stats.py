"""Per-band statistics of a tile's valid pixels (after the manifest's scaling to 0..1)."""

from __future__ import annotations

import numpy as np

from geosearch.features.base import TileBatch

STATISTICS = ("mean", "std", "min", "max", "p10", "p50", "p90")


class BandStatsExtractor:
    """Mean, std, min, max, 10/50/90th percentiles and a histogram of each band.

    Nodata-aware: only valid pixels count. Values are the manifest-scaled 0..1 ones, so that a
    uint8 and a uint16 database are comparable only through their scaling, never raw.
    """

    name = "band_stats"

    def __init__(self, band_count: int, histogram_bins: int = 8) -> None:
        self.band_count = band_count
        self.histogram_bins = histogram_bins
        self.version = f"1-bins{histogram_bins}"
        self.dim = band_count * (len(STATISTICS) + histogram_bins)

    def extract(self, batch: TileBatch) -> np.ndarray:
        out = np.zeros((len(batch), self.dim), dtype=np.float32)
        for i, (pixels, valid) in enumerate(zip(batch.pixels, batch.valid, strict=True)):
            values = pixels[:, valid]  # (bands, n valid)
            if values.shape[1] == 0:
                continue
            out[i] = self._describe(values)
        return out

    def _describe(self, values: np.ndarray) -> np.ndarray:
        bins = self.histogram_bins
        summary = np.column_stack(
            [
                values.mean(axis=1),
                values.std(axis=1),
                values.min(axis=1),
                values.max(axis=1),
                *np.percentile(values, [10, 50, 90], axis=1),
            ]
        )
        index = np.minimum((values * bins).astype(np.int64), bins - 1)
        offsets = np.arange(values.shape[0])[:, None] * bins
        counts = np.bincount((index + offsets).ravel(), minlength=values.shape[0] * bins)
        histogram = counts.reshape(values.shape[0], bins) / values.shape[1]
        return np.hstack([summary, histogram]).ravel()
