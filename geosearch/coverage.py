"""Where a database has tiles (or where ``detect`` found some, or which places changed), drawn
as a density map in web-map tiles (XYZ, Web Mercator).

The map page shows this layer instead of millions of footprints: the tiles' centres (lon/lat,
read once per database generation) are counted into each 256 px map tile's pixels on the
server and coloured by count, so the page downloads a few PNGs whatever the database's size.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

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
    """The centres (lon, lat) of a database's tiles, sorted by longitude for quick slicing."""

    lon: np.ndarray
    lat: np.ndarray
    colour: tuple[int, int, int] = COLOUR

    @classmethod
    def of(
        cls, lon: np.ndarray, lat: np.ndarray, colour: tuple[int, int, int] = COLOUR
    ) -> Coverage:
        order = np.argsort(lon, kind="stable")
        return cls(np.asarray(lon)[order], np.asarray(lat)[order], colour)

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
        """The PNG of map tile z/x/y: each pixel coloured by how many tile centres it holds
        (transparent where none)."""
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
    buffer = io.BytesIO()
    Image.fromarray(image, "RGBA").save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
