"""The band manifest: which bands a database holds, in what order, and how values become 0..1.

A database is made for one band layout. The manifest is written into it when it is created
(from the first file ingested and the ``bands`` settings) and every later file is checked
against it, so that vectors are only ever compared between like imagery.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from geosearch.config import BandSettings
from geosearch.embeddings import embedding_product
from geosearch.errors import BandLayoutError, ConfigError
from geosearch.pixels import RawTile
from geosearch.sources import ImageSource

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
        fits = (select or len(source.data_bands) == self.source_count) and (
            len(bands) == len(self.bands) and max(bands) <= len(source.band_names)
        )
        if not fits or source.dtype != self.dtype:
            hint = ""
            if source.dtype == self.dtype and len(source.data_bands) > len(self.bands):
                hint = "; use --bands to select"  # choosing some of its bands can fit
            elif source.alpha_band and len(source.data_bands) + 1 == self.source_count:
                hint = (
                    f"; its band {source.alpha_band} is flagged alpha (a mask, never data): "
                    "write it with photometric MINISBLACK to use it as data"
                )
            raise BandLayoutError(f"{source.path}: {expected}, {found}{hint}")
        return bands

    def query_bands(self, source: ImageSource, db_name: str) -> QueryBands:
        """Which of a query file's bands stand for the database's, and how they are scaled.

        A file like the database's files fills every band. Another (a screenshot, an RGB chip
        of a 4-band database, another sensor's file) fills what it shares: bands of the same
        name, else its red, green and blue as the database's RGB bands, else bands by position
        when it has as many. Values keep the database's scaling when the dtype is the same;
        8-bit pictures are taken as rendered (0..255); others get their own percentiles.
        """
        if self.scaling == "none":  # embedding rasters: a query is one too, with every band
            return QueryBands(tuple(self.bands_for(source, None, db_name)), self)
        same_kind = source.kind == self.kind and source.dtype == self.dtype
        if same_kind and len(source.data_bands) == self.source_count:
            return QueryBands(tuple(self.bands), self)
        read = _shared_bands(self, source)
        if not any(read):
            raise BandLayoutError(
                f"{source.path}: shares no band with {db_name} (expected {self.describe()}, "
                f"found {len(source.data_bands)} "
                f"({','.join(source.band_names[i - 1] for i in source.data_bands)}) "
                f"{source.dtype}); no band names, RGB or band count in common"
            )
        if same_kind:
            lows, highs = self.low, self.high
        elif source.dtype == "uint8":
            lows, highs = (0.0,) * len(read), (255.0,) * len(read)
        else:
            present = [band for band in read if band is not None]
            low, high = _percentile_range(source, present, (2.0, 98.0))
            found = dict(zip(present, zip(low, high, strict=True), strict=True))
            lows = tuple(found[band][0] if band else 0.0 for band in read)
            highs = tuple(found[band][1] if band else 1.0 for band in read)
        manifest = replace(self, dtype=source.dtype, low=tuple(lows), high=tuple(highs))
        return QueryBands(tuple(read), manifest)

    def scale(self, tile: RawTile, positions: Sequence[int] | None = None) -> np.ndarray:
        """(bands, h, w) float32 in 0..1; invalid pixels set to 0. ``positions``: which of the
        manifest's bands the tile's rows are (default: all, in order). Scaling ``none``
        (embedding rasters, de-quantised by features.embedding): raw values in the file's dtype."""
        if self.scaling == "none":
            raw = tile.pixels.copy()
            raw[:, ~tile.valid] = 0
            return raw
        chosen = list(positions) if positions is not None else slice(None)
        low = np.asarray(self.low, dtype=np.float64)[chosen, None, None]
        high = np.asarray(self.high, dtype=np.float64)[chosen, None, None]
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


@dataclass(frozen=True)
class QueryBands:
    """A query file's bands in the database's band order (1-based; None where the query lacks
    that band) and the manifest that scales them to 0..1."""

    read: tuple[int | None, ...]
    manifest: BandManifest

    @property
    def missing(self) -> tuple[int, ...]:
        """Positions (0-based, in the database's bands) the query has no band for."""
        return tuple(i for i, band in enumerate(self.read) if band is None)

    def shown(self) -> list[int]:
        """The database band positions (0-based) shown as red, green and blue for this file:
        the database's RGB bands, or its first band three times where it lacks one of them."""
        rgb = list(self.manifest.rgb)
        if all(self.read[slot] is not None for slot in rgb):
            return rgb
        first = next(slot for slot, band in enumerate(self.read) if band is not None)
        return [first] * 3

    def compared_on(self) -> dict[str, Any] | None:
        """The database bands a partial query was compared on, and those it lacks; None when
        the query has them all."""
        if not self.missing:
            return None
        names = self.manifest.names
        return {
            "bands": [name for i, name in enumerate(names) if i not in self.missing],
            "missing": [names[i] for i in self.missing],
        }


_GENERIC_NAME = re.compile(r"^band\d+$")


def _band_key(name: str) -> str:
    """A band name compared across files: lower case, B04 and B4 alike."""
    name = name.lower()
    match = re.fullmatch(r"b0*(\d+a?)", name)
    return f"b{match.group(1)}" if match else name


def _shared_bands(manifest: BandManifest, source: ImageSource) -> list[int | None]:
    """Per database band, the query file band that stands for it (see ``query_bands``)."""
    names = {
        _band_key(source.band_names[i - 1]): i
        for i in source.data_bands
        if not _GENERIC_NAME.match(source.band_names[i - 1])
    }
    by_name = [names.get(_band_key(name)) for name in manifest.names]
    if any(by_name):
        return by_name
    read: list[int | None] = [None] * len(manifest.bands)
    rgb = list(dict.fromkeys(manifest.rgb))
    if len(rgb) == 3 and len(source.data_bands) >= 3:
        source_rgb = _rgb_positions(
            source.data_bands, [source.band_names[i - 1] for i in source.data_bands], None
        )
        for slot, position in zip(rgb, source_rgb, strict=True):
            read[slot] = source.data_bands[position]
        return read
    if len(source.data_bands) == len(manifest.bands):
        return list(source.data_bands)
    if len(rgb) == 1 and source.data_bands:  # a grey database: the query's first band
        read[rgb[0]] = source.data_bands[0]
    return read


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
        rgb=_rgb_positions(bands, names, settings.rgb or _product_rgb(source, names)),
    )


def _product_rgb(source: ImageSource, names: Sequence[str]) -> tuple[str, ...] | None:
    """The RGB bands a product's metadata names (Landsat 7: B3,B2,B1), if all are selected."""
    rgb = getattr(source, "rgb_names", None)
    return tuple(rgb) if rgb and set(rgb) <= set(names) else None


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
