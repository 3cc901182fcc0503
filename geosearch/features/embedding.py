"""The embedding block: a tile of an embedding raster described by its pixels' own vectors.

The valid pixels' de-quantised vectors are averaged and the mean scaled to unit length, so the
cosine between two tiles is the cosine between their mean embeddings (AlphaEarth's own
overviews are built the same way: "the mean of the highest-resolution pixels ... normalized to
have length 1"), and a per-pixel similarity map (``geosearch.maps``) compares pixels with the
very vector a tile query searches with. The block is fused as it is: no standardisation.
"""

from __future__ import annotations

import numpy as np

from geosearch.embeddings import Dequantization, unit_rows
from geosearch.features.base import TileBatch


class EmbeddingExtractor:
    """The unit-length mean of a tile's de-quantised pixel vectors (``pixels`` hold the raw
    values in the file's dtype: the manifest's scaling ``none``)."""

    name = "embedding"
    standardisation = "none"  # kept as it is: inner product = embedding cosine

    def __init__(self, band_count: int, dequantization: Dequantization) -> None:
        self.dequantization = dequantization
        self.version = f"1-{dequantization.describe()}"
        self.dim = band_count

    def extract(self, batch: TileBatch) -> np.ndarray:
        out = np.zeros((len(batch), self.dim), dtype=np.float32)
        for i, (pixels, valid) in enumerate(zip(batch.pixels, batch.valid, strict=True)):
            out[i] = self.describe(pixels, valid)
        return unit_rows(out)

    def describe(self, pixels: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """(bands,) mean de-quantised vector of the usable pixels; zeros if there are none."""
        usable = self.dequantization.usable(pixels, valid)
        count = int(usable.sum())
        if count == 0:
            return np.zeros(self.dim, dtype=np.float32)
        raw = pixels.reshape(pixels.shape[0], -1) if count == usable.size else pixels[:, usable]
        return self.dequantization.vectors(raw).mean(axis=1, dtype=np.float64).astype(np.float32)
