"""The band manifest: which bands a database holds, in what order, and how values become 0..1.

A database is made for one band layout. The manifest is written into it when it is created
(from the first file ingested and the ``bands`` settings) and every later file is checked
against it, so that vectors are only ever compared between like imagery.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from geosearch.config import BandSettings
from geosearch.embeddings import embedding_product
from geosearch.errors import BandLayoutError, ConfigError
from geosearch.sources import ImageSource, RawTile

# Largest side of the overview read to measure percentiles when a database is created.
PERCENTILE_SAMPLE_SIDE = 512
# Scaling bounds beyond this (in absolute value) are computed in float64: float32 would overflow.
FLOAT32_SAFE = 1e30

_RGB_NAME_SETS = (
    ("red", "green", "blue"),
    ("b04", "b03", "b02"),  # Sentinel-2
    ("b4", "b3", "b2"),  # Landsat 8/9
)


@dataclass(frozen=True)
class BandManifest:
    """One database's band layout and the scaling that brings each band to 0..1."""

    kind: str  # "geo" or "plain"
    source_count: int  # data bands in the files (alpha excluded)
    bands: tuple[int, ...]  # 1-based band indexes read from each file, in order
    names: tuple[str, ...]
    dtype: str
    scaling: str  # "dtype", "percentile" or "none" (embedding rasters: raw values)
    low: tuple[float, ...]  # per band: value mapped to 0
    high: tuple[float, ...]  # per band: value mapped to 1
    rgb: tuple[int, int, int]  # 0-based positions in ``bands`` for the RGB composite

    def describe(self) -> str:
        return f"{len(self.bands)} bands ({','.join(self.names)}) {self.dtype}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: tuples as lists."""
        return {key: list(v) if isinstance(v, tuple) else v for key, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BandManifest:
        return cls(**{key: tuple(v) if isinstance(v, list) else v for key, v in data.items()})

    def bands_for(
        self, source: ImageSource, select: Sequence[int] | None, db_name: str
    ) -> list[int]:
        """The band indexes to read from ``source``; ``BandLayoutError`` if it doesn't fit."""
        found = (
            f"found {len(source.data_bands)} "
            f"({','.join(source.band_names[i - 1] for i in source.data_bands)}) {source.dtype}"
        )
        expected = f"expected {self.describe()} as stored in {db_name}"
        if source.kind != self.kind:
            what = {"geo": "georeferenced rasters", "plain": "plain images (JPEG/PNG)"}
            raise BandLayoutError(
                f"{source.path}: {db_name} holds {what[self.kind]}, this file is one of the "
                f"{what[source.kind]}; use another --db"
            )
        bands = list(select) if select else list(self.bands)
        if not select and len(source.data_bands) != self.source_count:
            raise BandLayoutError(f"{source.path}: {expected}, {found}; use --bands to select")
        if len(bands) != len(self.bands) or max(bands) > len(source.band_names):
            raise BandLayoutError(f"{source.path}: {expected}, {found}; use --bands to select")
        if source.dtype != self.dtype:
            raise BandLayoutError(f"{source.path}: {expected}, {found}")
        return bands

    def scale(self, tile: RawTile) -> np.ndarray:
        """(bands, h, w) float32 in 0..1; invalid pixels 0. Scaling ``none`` (embedding
        rasters, de-quantised by features.embedding): the raw values, in the file's dtype."""
        if self.scaling == "none":
            raw = tile.pixels.copy()
            raw[:, ~tile.valid] = 0
            return raw
        low = np.asarray(self.low, dtype=np.float64)[:, None, None]
        high = np.asarray(self.high, dtype=np.float64)[:, None, None]
        bound = float(np.abs(np.concatenate([low, high])).max(initial=0.0))
        if tile.pixels.dtype == np.float64 or bound > FLOAT32_SAFE:
            # Beyond float32 (or high - low beyond float64): work in float64, scaled down.
            factor = max(bound, 1.0)
            low, high = low / factor, high / factor
            scaled = tile.pixels / factor
        else:
            low, high = low.astype(np.float32), high.astype(np.float32)
            scaled = tile.pixels.astype(np.float32)
        span = high - low
        with np.errstate(over="ignore", invalid="ignore"):  # inf/NaN are mapped just below
            scaled -= low
            scaled /= np.where(span > 0, span, 1.0)
        if tile.pixels.dtype.kind == "f":
            np.nan_to_num(scaled, copy=False, nan=0.0, posinf=1.0, neginf=0.0)
        np.clip(scaled, 0.0, 1.0, out=scaled)
        if not tile.valid.all():
            scaled[:, ~tile.valid] = 0.0
        return scaled.astype(np.float32, copy=False)


def build_manifest(source: ImageSource, settings: BandSettings) -> BandManifest:
    """A manifest for a new database, from its first file and the ``bands`` settings."""
    bands = tuple(settings.select) if settings.select else tuple(source.data_bands)
    if max(bands) > len(source.band_names):
        raise ConfigError(
            f"bands.select: {source.path} has {len(source.band_names)} bands, "
            f"cannot select {list(bands)}"
        )
    names = tuple(source.band_names[i - 1] for i in bands)
    scaling = settings.scaling
    if scaling == "auto":
        scaling = "dtype" if source.dtype == "uint8" else "percentile"
        if embedding_product(source.band_names, source.dtype):  # AlphaEarth, GeoTessera
            scaling = "none"
    if scaling in ("dtype", "none"):  # none: embedding rasters, raw values pass through
        low, high = _dtype_range(source.dtype) if scaling == "dtype" else (0.0, 1.0)
        lows, highs = (low,) * len(bands), (high,) * len(bands)
    else:
        lows, highs = _percentile_range(source, bands, settings.percentiles)
    return BandManifest(
        kind=source.kind,
        source_count=len(source.data_bands),
        bands=bands,
        names=names,
        dtype=source.dtype,
        scaling=scaling,
        low=lows,
        high=highs,
        rgb=_rgb_positions(bands, names, settings.rgb),
    )


def _dtype_range(dtype: str) -> tuple[float, float]:
    kind = np.dtype(dtype)
    if kind.kind in "ui":
        info = np.iinfo(kind)
        return float(info.min), float(info.max)
    return 0.0, 1.0


def _percentile_range(
    source: ImageSource, bands: Sequence[int], percentiles: tuple[float, float]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per band low/high percentiles of valid pixels in a decimated read of the whole file."""
    sample = source.overview(bands, PERCENTILE_SAMPLE_SIDE)
    lows, highs = [], []
    for band in sample.pixels:
        values = band[sample.valid].astype(np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            low, high = _dtype_range(str(band.dtype))
        else:
            low, high = _percentiles(values, percentiles)
            if high <= low:
                high = low + 1.0
        lows.append(low)
        highs.append(high)
    return tuple(lows), tuple(highs)


def _percentiles(values: np.ndarray, percentiles: tuple[float, float]) -> tuple[float, float]:
    """Two percentiles of finite values; near the float64 limits numpy's interpolation
    overflows to inf, so such values are scaled down first."""
    with np.errstate(over="ignore", invalid="ignore"):
        low, high = np.percentile(values, percentiles)
    if not (np.isfinite(low) and np.isfinite(high)):
        peak = float(np.abs(values).max())
        low, high = np.percentile(values / peak, percentiles) * peak
    return float(low), float(high)


def _rgb_positions(
    bands: Sequence[int], names: Sequence[str], requested: Sequence[int | str] | None
) -> tuple[int, int, int]:
    """0-based positions in ``bands`` of the bands shown as red, green and blue."""
    if requested:
        positions = []
        lowered = [name.lower() for name in names]
        for item in requested:
            if isinstance(item, int) and item in bands:
                positions.append(list(bands).index(item))
            elif isinstance(item, str) and item.lower() in lowered:
                positions.append(lowered.index(item.lower()))
            else:
                raise ConfigError(
                    f"bands.rgb: {item!r} is not one of the selected bands "
                    f"{list(bands)} ({','.join(names)})"
                )
        return positions[0], positions[1], positions[2]
    lowered = [name.lower() for name in names]
    for triple in _RGB_NAME_SETS:
        if all(name in lowered for name in triple):
            r, g, b = (lowered.index(name) for name in triple)
            return r, g, b
    if len(bands) >= 3:
        return 0, 1, 2
    return 0, 0, 0
