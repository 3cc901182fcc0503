"""Where a database has tiles (or where ``detect`` found some, or which places changed), drawn
as a density map in web-map tiles (XYZ, Web Mercator).

The map page shows this layer instead of millions of footprints: the tiles' centres (lon/lat,
read once per database generation) are counted into each 256 px map tile's pixels on the
server and coloured by count, so the page downloads a few PNGs whatever the database's size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from geosearch.render import png_bytes

MAP_TILE_PIXELS = 256
# Counts per pixel are coloured on a log scale up to this many tiles (and above).
SATURATION = 64
# Colour of covered ground (RGB) and the opacity of a pixel holding one tile .. SATURATION.
COLOUR = (21, 101, 192)
DETECTION_COLOUR = (230, 81, 0)  # detect's layer: the tiles found, in orange
CHANGES_COLOUR = (198, 40, 40)  # the changes layer: the significant places, in red
OPACITY = (90, 230)


@dataclass(frozen=True)
class Coverage:
    """The centres (lon, lat) of a database's tiles, sorted by longitude for quick slicing, and
    maybe their half-sizes (degrees): then each is drawn as its box, at least a pixel, so a
    place stays visible zoomed in; without, as the pixel of its centre."""

    lon: np.ndarray
    lat: np.ndarray
    colour: tuple[int, int, int] = COLOUR
    half_width: np.ndarray | None = None
    half_height: np.ndarray | None = None

    @classmethod
    def of(
        cls, lon: np.ndarray, lat: np.ndarray, colour: tuple[int, int, int] = COLOUR
    ) -> Coverage:
        order = np.argsort(lon, kind="stable")
        return cls(np.asarray(lon)[order], np.asarray(lat)[order], colour)

    @classmethod
    def of_footprints(
        cls, footprints: Sequence[BaseGeometry | None], colour: tuple[int, int, int]
    ) -> Coverage:
        """The layer of the footprints' (lon/lat) bounding boxes; None footprints left out."""
        bounds = shapely.bounds(np.asarray(footprints, dtype=object)).reshape(-1, 4)
        west, south, east, north = bounds[~np.isnan(bounds[:, 0])].T
        lon, lat = (west + east) / 2, (south + north) / 2
        order = np.argsort(lon, kind="stable")
        half_width, half_height = (east - west) / 2, (north - south) / 2
        return cls(lon[order], lat[order], colour, half_width[order], half_height[order])

    @property
    def extent(self) -> tuple[float, float, float, float] | None:
        """(min lon, min lat, max lon, max lat) of the centres; None when there are none."""
        if not len(self.lon):
            return None
        return (
            float(self.lon[0]),
            float(self.lat.min()),
            float(self.lon[-1]),
            float(self.lat.max()),
        )

    def map_tile(self, z: int, x: int, y: int) -> bytes:
        """The PNG of map tile z/x/y: each pixel coloured by how many tile centres (or boxes)
        it holds (transparent where none)."""
        if self.half_width is not None:
            return _coloured(self._box_counts(z, x, y), self.colour)
        west, south, east, north = map_tile_bounds(z, x, y)
        first, last = np.searchsorted(self.lon, [west, east])
        lon, lat = self.lon[first:last], self.lat[first:last]
        inside = (lat >= south) & (lat < north)
        lon, lat = lon[inside], lat[inside]
        size = MAP_TILE_PIXELS
        columns = ((lon - west) / (east - west) * size).astype(int)
        top = _mercator_y(north)
        rows = ((_mercator_y(lat) - top) / (_mercator_y(south) - top) * size).astype(int)
        counts = np.bincount(
            np.clip(rows, 0, size - 1) * size + np.clip(columns, 0, size - 1),
            minlength=size * size,
        ).reshape(size, size)
        return _coloured(counts, self.colour)

    def _box_counts(self, z: int, x: int, y: int) -> np.ndarray:
        """How many boxes cover each pixel of map tile z/x/y (each box at least one pixel),
        summed from the boxes' corners (a 2-D difference array)."""
        assert self.half_width is not None and self.half_height is not None
        west, south, east, north = map_tile_bounds(z, x, y)
        reach = self.half_width.max(initial=0.0)
        first, last = np.searchsorted(self.lon, [west - reach, east + reach])
        part = slice(first, last)
        lon, lat = self.lon[part], self.lat[part]
        half_width, half_height = self.half_width[part], self.half_height[part]
        inside = ((lon + half_width >= west) & (lon - half_width < east)
                  & (lat + half_height >= south) & (lat - half_height < north))  # fmt: skip
        lon, lat = lon[inside], lat[inside]
        half_width, half_height = half_width[inside], half_height[inside]
        size = MAP_TILE_PIXELS
        top = _mercator_y(north)
        span_x, span_y = (east - west) / size, (_mercator_y(south) - top) / size

        def pixel_range(low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            start = np.clip(np.floor(low), 0, size - 1).astype(int)
            return start, np.clip(np.maximum(np.floor(high) + 1, start + 1), 1, size).astype(int)

        col0, col1 = pixel_range((lon - half_width - west) / span_x,
                                 (lon + half_width - west) / span_x)  # fmt: skip
        row0, row1 = pixel_range((_mercator_y(lat + half_height) - top) / span_y,
                                 (_mercator_y(lat - half_height) - top) / span_y)  # fmt: skip
        corners = np.zeros((size + 1, size + 1), np.int64)
        np.add.at(corners, (row0, col0), 1)
        np.add.at(corners, (row0, col1), -1)
        np.add.at(corners, (row1, col0), -1)
        np.add.at(corners, (row1, col1), 1)
        return corners.cumsum(axis=0).cumsum(axis=1)[:size, :size]


def map_tile_bounds(z: int, x: int, y: int) -> tuple[float, float, float, float]:
    """(west, south, east, north) in degrees of XYZ map tile z/x/y (Web Mercator)."""
    tiles = 2**z
    west, east = x / tiles * 360.0 - 180.0, (x + 1) / tiles * 360.0 - 180.0
    north = math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * y / tiles))))
    south = math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * (y + 1) / tiles))))
    return west, south, east, north


def _mercator_y(lat: np.ndarray | float) -> np.ndarray | float:
    """Web Mercator's y (up is larger) of latitudes in degrees."""
    return np.log(np.tan(np.pi / 4 + np.radians(np.clip(lat, -85.0511, 85.0511)) / 2))


def _coloured(counts: np.ndarray, colour: tuple[int, int, int] = COLOUR) -> bytes:
    """RGBA PNG bytes: covered pixels in ``colour``, more opaque where more tiles lie."""
    level = np.log1p(np.minimum(counts, SATURATION)) / math.log1p(SATURATION)
    alpha = np.where(counts > 0, OPACITY[0] + level * (OPACITY[1] - OPACITY[0]), 0)
    image = np.zeros((*counts.shape, 4), dtype=np.uint8)
    image[..., :3] = colour
    image[..., 3] = alpha.astype(np.uint8)
    return png_bytes(image)
