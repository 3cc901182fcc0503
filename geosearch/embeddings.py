"""Embedding rasters: pixels that already are feature vectors (AlphaEarth, GeoTessera, ...).

A database holds embedding rasters when its band manifest's scaling is ``none``: recognised from
the data when the database is created (``embedding_product``), or declared in config.yaml
(``bands.scaling: none``). Raw values pass through the manifest unscaled and are de-quantised
here into vector components (``Dequantization``, set by ``features.embedding``).

**AlphaEarth Foundations Satellite Embedding** (Google and Google DeepMind, CC-BY 4.0): COGs of
8192 x 8192 pixels per UTM zone, 10 m, 64 int8 bands named A00..A63, NoData -128, overviews
down to 1 x 1. The de-quantisation, from the dataset's README ("AlphaEarth Foundations GCS
data", https://developers.google.com/earth-engine/guides/aef_on_gcs_readme, section
"De-quantization"): "divide by 127.5, square, multiply by the sign of the original value",
in NumPy ``de_quantized_values = ((values / 127.5) ** 2) * np.sign(values)``; values then lie
in [-1, 1] and each pixel's vector has unit length.

**GeoTessera** (Tessera embeddings, University of Cambridge): stored as int8 ``.npy`` arrays
with a float32 ``_scales.npy`` (value = int8 x scale, ``geotessera.dequantize_embedding``);
``geotessera download`` (format tiff, the default) writes them de-quantised as 128-band float32
GeoTIFFs in the tile's UTM zone, bands named Tessera_Band_0..Tessera_Band_127, without a NoData
value. Those GeoTIFFs are what geosearch reads (GDAL cannot read the ``.npy`` pair).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from geosearch.config import EmbeddingSettings
from geosearch.pixels import RawTile

ALPHAEARTH = "alphaearth"
GEOTESSERA = "geotessera"
ALPHAEARTH_NODATA = -128  # "reserved as the 'no data' value" (AlphaEarth README)
_ALPHAEARTH_BAND = re.compile(r"A\d\d", re.IGNORECASE)  # A00 .. A63
_TESSERA_BAND = re.compile(r"Tessera_Band_\d+", re.IGNORECASE)


class _Layout(Protocol):
    names: tuple[str, ...]
    dtype: str


def embedding_product(names: Sequence[str], dtype: str) -> str | None:
    """The published embedding product a raster's bands look like (``alphaearth``,
    ``geotessera``), or None. A selection of the bands is recognised too."""
    if not names:
        return None
    if dtype == "int8" and all(_ALPHAEARTH_BAND.fullmatch(name) for name in names):
        return ALPHAEARTH
    if np.dtype(dtype).kind == "f" and all(_TESSERA_BAND.fullmatch(name) for name in names):
        return GEOTESSERA
    return None


@dataclass(frozen=True)
class Dequantization:
    """How raw values become vector components: ``none``, ``linear`` or ``alphaearth``."""

    mode: str
    scale: float = 1.0
    offset: float = 0.0

    def describe(self) -> str:
        if self.mode == "linear":
            return f"linear*{self.scale:g}+{self.offset:g}"
        return self.mode

    def apply(self, raw: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """De-quantised float32 values, same shape as ``raw``; in ``out`` if given (a float32
        array of that shape: computed in place, no array made)."""
        values = np.empty(raw.shape, np.float32) if out is None else out
        np.copyto(values, raw, casting="unsafe")  # as np.asarray(raw, np.float32) rounds
        if self.mode == ALPHAEARTH:  # the README's ((values / 127.5) ** 2) * np.sign(values):
            np.divide(values, np.float32(127.5), out=values)  # x * |x| rounds as x**2 does
            np.multiply(values, np.abs(values), out=values)
        elif self.mode == "linear":
            np.multiply(values, np.float32(self.scale), out=values)
            np.add(values, np.float32(self.offset), out=values)
        return values

    def table(self, dtype: np.dtype) -> np.ndarray | None:
        """For 8-bit integers: every raw value's de-quantised value, indexed by the value's
        unsigned byte (look-ups are several times faster than the arithmetic); else None."""
        if np.dtype(dtype) not in (np.dtype("int8"), np.dtype("uint8")):
            return None
        every = np.arange(256, dtype=np.uint8).view(dtype)
        return self.apply(every.astype(np.float32))

    def vectors(self, raw: np.ndarray) -> np.ndarray:
        """``apply``, by table look-up for 8-bit values (int8: a quarter of the memory
        traffic of float arithmetic)."""
        table = self.table(raw.dtype)
        return table[raw.view(np.uint8)] if table is not None else self.apply(raw)

    def usable(self, raw: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """(h, w) pixels with a vector: valid in the file, all components finite, not all zero
        (fill: GeoTessera has no NoData value), no AlphaEarth -128 in any band."""
        usable = valid.copy()
        if raw.dtype.kind == "f":
            usable &= np.isfinite(raw).all(axis=0)
        usable &= (raw != 0).any(axis=0)
        if self.mode == ALPHAEARTH:
            usable &= ~(raw == ALPHAEARTH_NODATA).any(axis=0)
        return usable

    def masked(self, tile: RawTile) -> RawTile:
        """``tile`` with pixels that hold no vector marked invalid."""
        return RawTile(pixels=tile.pixels, valid=self.usable(tile.pixels, tile.valid))


def dequantization_for(settings: EmbeddingSettings, layout: _Layout) -> Dequantization:
    """The de-quantisation of a database's rasters: ``auto`` is AlphaEarth's mapping for
    AlphaEarth bands, none (values used as they are) for anything else."""
    mode = settings.dequantize
    if mode == "auto":
        mode = ALPHAEARTH if embedding_product(layout.names, layout.dtype) == ALPHAEARTH else "none"
    return Dequantization(mode, settings.scale, settings.offset)


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), float32."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
