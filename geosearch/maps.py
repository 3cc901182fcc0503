"""Similarity maps: how much each place looks like a query, as GeoTIFFs with a QGIS style.

Values are the similarity people read in the results (``search.similarity_of``: the cosine as
0..1, 1 the same, about 0.5 unrelated), so a map shows each result's own number.

``tile_similarity`` gives one cell per indexed tile (its vector against the query vector) on
the grid of the database's tiles, in the CRS most tiles have; cells without a tile are NoData,
a cell holding several tiles (years) gets the highest. Tiles are placed by window arithmetic
from each file's geotransform, fitted once per file to one tile's native footprint, so a
million tiles cost no geometry parsing.

``write_pixel_map`` (embedding databases) gives every pixel's de-quantised vector against the
query at the rasters' own resolution over an area (``--bbox``/``--within``): read, computed and
written window by window, so memory follows the window, not the raster.

Each GeoTIFF gets a QGIS style beside it (``.qml``: single-band pseudocolour, viridis ramp).
"""

from __future__ import annotations

import os
import threading
import xml.etree.ElementTree as ET
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.features
import shapely
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.errors import RasterioError
from rasterio.transform import Affine
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from geosearch.catalog import Catalog
from geosearch.config import Settings
from geosearch.embeddings import Dequantization, dequantization_for
from geosearch.errors import ConfigError, InputError, OutputError
from geosearch.feedback import rocchio
from geosearch.pixels import Window
from geosearch.request import SearchFilters
from geosearch.search import SearchResult, allowed_ids, similarity_of
from geosearch.sources import GeoRasterSource, open_source, window_ring
from geosearch.store import Store, TileRecord

NODATA = -9999.0
MAX_CELLS = 250_000_000  # 1 GB of float32; beyond it the map needs --bbox/--within
STYLE_PERCENTILE = 2.0  # the colour ramp runs from this percentile of the values to their max
# Viridis (matplotlib, CC0), as QGIS ships it: position, red, green, blue.
VIRIDIS = ((0.0, 68, 1, 84), (0.25, 59, 82, 139), (0.5, 33, 145, 140), (0.75, 94, 201, 98),
           (1.0, 253, 231, 37))  # fmt: skip
# GDAL's block cache while a pixel map is made: every block is read once (windows follow the
# raster's grid), so a small cache does; GDAL's default (5 % of RAM) only grows the process.
PIXEL_MAP_GDAL_CACHE = 64 * 2**20
_NOTHING_IN_AREA = "the area does not meet the indexed rasters: the pixel map would be empty"
_HISTOGRAM_BINS = 2000  # over [0, 1]: the pixel map's percentile without keeping its values
SIMILARITY = ("similarity", "similarity to the query: (1 + cosine) / 2, 1 = the same")
CHANGE = ("change", "change between two dates: (1 - cosine) / 2, 0 = the same")
PROBABILITY = ("probability", "probability of the marked kind (geosearch detect's classifier)")


@dataclass(frozen=True)
class Grid:
    """Where a map's cells lie: CRS, north-up geotransform, size in cells."""

    crs: CRS
    transform: Affine
    width: int
    height: int


@dataclass
class SimilarityMap:
    """A map written: the GeoTIFF, its QGIS style, how many cells hold a value, files left out."""

    path: Path
    style: Path
    grid: Grid
    cells: int
    skipped: list[str] = field(default_factory=list)

    def describe(self) -> str:
        size_x, size_y = self.grid.transform.a, -self.grid.transform.e
        text = (
            f"{self.path} (+ {self.style.name}): {self.grid.width} x {self.grid.height} cells of "
            f"{size_x:g} x {size_y:g} in {_crs_name(self.grid.crs)}, {self.cells} with a value"
        )
        return text + "".join(f"; left out {reason}" for reason in self.skipped)


# -- tile maps -------------------------------------------------------------------------------


def file_frames(tiles: Sequence[TileRecord]) -> dict[str, tuple[Affine, str]]:
    """Each file's pixel-to-CRS geotransform and CRS, fitted (least squares) to the native
    footprint of one of its tiles, whose ring points lie at known pixels (``window_ring``)."""
    frames = {}
    for tile in tiles:
        if tile.footprint_native is None or tile.crs is None:
            continue
        points = shapely.get_coordinates(shapely.from_wkt(tile.footprint_native))
        w = tile.window
        pixels = window_ring(w.width, w.height) + (w.col, w.row)
        if len(pixels) != len(points):
            continue
        design = np.column_stack([pixels, np.ones(len(pixels))])
        (a, d), (b, e), (c, f) = np.linalg.lstsq(design, points, rcond=None)[0]
        exact = [float(f"{value:.12g}") for value in (a, b, c, d, e, f)]  # no fitting noise
        frames[tile.path] = (Affine(*exact), tile.crs)
    return frames


def tile_similarity(
    store: Store, query: np.ndarray, tile_size: int, allowed: set[int] | None = None
) -> tuple[Grid, np.ndarray, int]:
    """A tile-level map of every tile's similarity to ``query`` (``allowed``: only those): grid,
    (height, width) float32 values (NODATA without a tile) and the number of tiles placed.
    The similarity results show: each tile's own vector's cosine, streamed from the database
    (the index's rows are augmented, ``geosearch.index``)."""
    query = np.asarray(query, dtype=np.float32)
    ids, scores = [np.zeros(0, np.int64)], [np.zeros(0, np.float32)]
    for batch_ids, vectors in store.vector_batches():  # one batch in memory at a time
        ids.append(batch_ids)
        scores.append(vectors.astype(np.float32) @ query)
    return tile_values(
        store, np.concatenate(ids), similarity_of(np.concatenate(scores)), tile_size, allowed
    )


def tile_values(
    store: Store,
    ids: np.ndarray,
    scores: np.ndarray,
    tile_size: int,
    allowed: set[int] | None = None,
) -> tuple[Grid, np.ndarray, int]:
    """A tile-level map of a value per tile (``ids``, ``scores``; ``allowed``: only those) on
    the grid of the database's tiles: grid, (height, width) float32 values (NODATA without a
    tile; a cell holding several tiles gets the highest) and the number of tiles placed."""
    frames = file_frames(store.first_tile_of_each_file())
    if not frames:
        raise InputError(
            f"{store.path.name} has no georeferenced tiles: a tile map needs rasters with a CRS"
        )
    paths = list(frames)
    codes, pixels, scores = _scored_tiles(store, ids, scores, paths, allowed, tile_size)
    if not len(codes):
        raise InputError("no indexed tile passes the filters: the map would be empty")
    crs_labels = [frames[path][1] for path in paths]
    per_file = np.bincount(codes, minlength=len(paths))
    counts: Counter[str] = Counter()
    for code, label in enumerate(crs_labels):
        counts[label] += int(per_file[code])
    target = counts.most_common(1)[0][0]
    x, y = _tile_centres([frames[path][0] for path in paths], codes, pixels)
    del pixels  # 16 bytes a tile, not needed past here
    for label in counts:
        if label != target:
            moved = np.isin(codes, [i for i, other in enumerate(crs_labels) if other == label])
            to_target = Transformer.from_crs(label, target, always_xy=True)
            x[moved], y[moved] = to_target.transform(x[moved], y[moved])
    in_target = [i for i, label in enumerate(crs_labels) if label == target]
    reference = frames[paths[max(in_target, key=lambda i: per_file[i])]][0]
    grid, cell = _cell_grid(reference, tile_size, x, y, CRS.from_user_input(target))
    values = np.full(grid.width * grid.height, -np.inf, dtype=np.float32)
    np.maximum.at(values, cell, np.asarray(scores, dtype=np.float32))
    values[np.isneginf(values)] = NODATA
    return grid, values.reshape(grid.height, grid.width), len(codes)


def _scored_tiles(
    store: Store,
    scored_ids: np.ndarray,
    all_scores: np.ndarray,
    paths: list[str],
    allowed: set[int] | None,
    tile_size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """File codes (index in ``paths``), (n, 2) pixel centres of full tiles at the tiles'
    places, and scores of the scored tiles."""
    scored_ids, all_scores = np.asarray(scored_ids), np.asarray(all_scores)
    if np.any(scored_ids[1:] < scored_ids[:-1]):  # detect's come sorted: no copies (10M: 200 MB)
        order = np.argsort(scored_ids)
        scored_ids, all_scores = scored_ids[order], all_scores[order]
    code_of = {path: code for code, path in enumerate(paths)}
    wanted = np.fromiter(sorted(allowed), np.int64) if allowed is not None else None
    codes, centres, scores = [], [], []
    for batch_paths, file_of, ids, origins in store.tile_origins():
        batch_codes = np.array([code_of.get(path, -1) for path in batch_paths], np.int64)[file_of]
        position = np.minimum(np.searchsorted(scored_ids, ids), max(0, len(scored_ids) - 1))
        keep = (batch_codes >= 0) & (scored_ids[position] == ids)
        if wanted is not None:
            keep &= np.isin(ids, wanted)
        codes.append(batch_codes[keep])
        centres.append(origins[keep] + tile_size / 2.0)  # edge tiles: the same cell
        scores.append(all_scores[position[keep]])
    if not codes:
        return np.zeros(0, np.int64), np.zeros((0, 2)), np.zeros(0, np.float32)
    return np.concatenate(codes), np.vstack(centres), np.concatenate(scores)


def _tile_centres(
    frames: list[Affine], codes: np.ndarray, pixels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Tile centres in their file's CRS: each file's geotransform at the (col, row) ``pixels``
    (a coefficient at a time: an (n, 6) gather was 480 MB at 10M tiles)."""
    affine = np.array([frame[:6] for frame in frames]).reshape(-1, 6)  # a, b, c, d, e, f
    px, py = pixels[:, 0], pixels[:, 1]
    x = affine[codes, 0] * px
    x += affine[codes, 1] * py
    x += affine[codes, 2]
    y = affine[codes, 3] * px
    y += affine[codes, 4] * py
    y += affine[codes, 5]
    return x, y


def _cell_grid(
    reference: Affine, tile_size: int, x: np.ndarray, y: np.ndarray, crs: CRS
) -> tuple[Grid, np.ndarray]:
    """The north-up grid whose lines are the reference file's tile edges, covering every
    centre; and each centre's flat cell index."""
    size_x, size_y = abs(reference.a) * tile_size, abs(reference.e) * tile_size
    columns = np.floor((x - reference.c) / size_x).astype(np.int64)
    rows = np.floor((reference.f - y) / size_y).astype(np.int64)
    first_column, first_row = int(columns.min()), int(rows.min())
    width = int(columns.max()) - first_column + 1
    height = int(rows.max()) - first_row + 1
    if width * height > MAX_CELLS:
        raise ConfigError(
            f"the tiles spread over {width} x {height} cells of {size_x:g} x {size_y:g}: too "
            "large a map; choose an area with --bbox or --within"
        )
    transform = Affine(
        size_x, 0.0, reference.c + first_column * size_x,
        0.0, -size_y, reference.f - first_row * size_y,
    )  # fmt: skip
    cell = (rows - first_row) * width + (columns - first_column)
    return Grid(crs, transform, width, height), cell


# -- pixel maps ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Placed:
    """A raster of the pixel map, placed on its grid: its offset in the map's pixels."""

    path: str
    row: int
    col: int
    width: int
    height: int
    bottom_up: bool  # rows run south to north (positive y pixel size)


def pixel_cosines(
    raw: np.ndarray, usable: np.ndarray, query: np.ndarray, dequantization: Dequantization
) -> np.ndarray:
    """(h, w) float32 cosine of each usable pixel's de-quantised vector to the unit ``query``;
    NaN where there is no vector. 8-bit values are de-quantised by table look-up."""
    bands, height, width = raw.shape
    values = dequantization.vectors(raw.reshape(bands, -1))
    dots = np.asarray(query, dtype=np.float32) @ values
    norms = np.sqrt(np.einsum("ij,ij->j", values, values))
    with np.errstate(divide="ignore", invalid="ignore"):
        cosines = dots / norms
    cosines[~usable.ravel()] = np.nan
    return cosines.reshape(height, width)


def check_embedding(catalog: Catalog) -> None:
    """``ConfigError`` unless the database holds embedding rasters (pixel maps need them)."""
    if catalog.manifest.scaling != "none":
        raise ConfigError(
            f"--map-pixels needs an embedding database (AlphaEarth, GeoTessera, or "
            f"bands.scaling: none); {catalog.name} holds {catalog.manifest.describe()} "
            f"scaled by {catalog.manifest.scaling}: use --map"
        )


def write_pixel_map(
    catalog: Catalog,
    query: np.ndarray,
    area: BaseGeometry,
    allowed: set[int],
    path: Path,
    window: int = 512,
    threads: int = 2,
) -> SimilarityMap:
    """Every pixel's similarity to ``query`` over ``area`` (lon/lat), at the rasters' resolution,
    from the files holding the ``allowed`` tiles, streamed window by window in ``threads``."""
    check_embedding(catalog)
    paths = catalog.store.paths_of(sorted(allowed))
    if not paths:
        raise InputError("no indexed tile lies in the area: the pixel map would be empty")
    grid, placed, native_area, skipped = _pixel_grid(paths, area)
    dequantization = dequantization_for(catalog.features.embedding, catalog.manifest)
    compute = _WindowComputer(catalog, placed, grid, native_area, query, dequantization)
    return _write_windows(path, grid, placed, compute, window, threads, skipped, SIMILARITY)


def write_pixel_change_map(
    catalog: Catalog,
    before: Sequence[str],
    after: Sequence[str],
    area: BaseGeometry,
    path: Path,
    window: int = 512,
    threads: int = 2,
) -> SimilarityMap:
    """Every pixel's change from the ``before`` rasters to the ``after`` ones over ``area``
    (lon/lat): (1 - cosine of the two pixel vectors) / 2, at the rasters' resolution, streamed
    window by window in ``threads``; NoData where either has no vector."""
    check_embedding(catalog)
    if not before or not after:
        raise InputError("no indexed tile lies in the area: the pixel map would be empty")
    grid, placed, native_area, skipped = _pixel_grid([*before, *after], area)
    dequantization = dequantization_for(catalog.features.embedding, catalog.manifest)
    no_query = np.zeros(0, np.float32)
    compute = _ChangeWindowComputer(catalog, placed, grid, native_area, no_query, dequantization)
    compute.after = frozenset(str(p) for p in after)
    return _write_windows(path, grid, placed, compute, window, threads, skipped, CHANGE)


def _write_windows(
    path: Path,
    grid: Grid,
    placed: list[_Placed],
    compute: _WindowComputer,
    window: int,
    threads: int,
    skipped: list[str],
    meaning: tuple[str, str],
) -> SimilarityMap:
    """Write a pixel map window by window (and its overviews and QGIS style)."""
    histogram = np.zeros(_HISTOGRAM_BINS, dtype=np.int64)
    cells = 0
    first = placed[0]  # windows start on its window grid: each block is decoded once
    windows = _windows(grid, window, first.row % window, first.col % window)
    try:
        with (
            rasterio.Env(GDAL_CACHEMAX=PIXEL_MAP_GDAL_CACHE),
            _open_map(path, grid, True, meaning, zlevel=1) as dst,  # pixel maps are large
        ):
            for out_window, values in compute.stream(windows, threads):
                dst.write(values, 1, window=out_window.as_rasterio())
                found = values[values != NODATA]
                cells += found.size
                histogram += np.histogram(found, _HISTOGRAM_BINS, (0.0, 1.0))[0]
            dst.build_overviews(_overview_factors(grid), rasterio.enums.Resampling.average)
    except (RasterioError, OSError) as exc:
        raise OutputError(f"cannot write {path}: {exc}") from None
    finally:
        compute.close()
    low, high = _histogram_range(histogram)
    style = write_style(path.with_suffix(".qml"), low, high)
    return SimilarityMap(path, style, grid, cells, skipped)


def _pixel_grid(
    paths: list[str], area: BaseGeometry
) -> tuple[Grid, list[_Placed], BaseGeometry, list[str]]:
    """The map's grid (the first file's CRS and pixel grid, over the area's part of the files),
    the files placed on it, the area in that CRS, and the files left out with why."""
    headers, skipped = {}, []
    for path in paths:
        try:
            with rasterio.open(path) as dataset:
                headers[path] = (dataset.crs, dataset.transform, dataset.width, dataset.height)
        except (RasterioError, OSError) as exc:
            skipped.append(f"{path} (unreadable: {exc})")
    if not headers:
        raise InputError("none of the area's rasters can be read: " + "; ".join(skipped))
    crs_count = Counter(str(crs) for crs, *_ in headers.values())
    first = next(
        p for p, (crs, *_) in headers.items() if str(crs) == crs_count.most_common(1)[0][0]
    )
    target, reference = headers[first][0], headers[first][1]
    size_x, size_y = abs(reference.a), abs(reference.e)
    to_native = Transformer.from_crs("EPSG:4326", target, always_xy=True)
    minx, miny, maxx, maxy = area.bounds  # edges curve in the raster's CRS: 64 points a side
    dense = shapely.segmentize(area, max(maxx - minx, maxy - miny, 1e-9) / 64)
    native_area = shapely.transform(
        dense, lambda xy: np.column_stack(to_native.transform(xy[:, 0], xy[:, 1]))
    )
    shapely.prepare(native_area)
    extents = {}
    for path, (crs, transform, width, height) in headers.items():
        if crs != target or not _same_pixels(transform, reference):
            why = f"in {_crs_name(crs)}" if crs != target else "other pixel size or rotation"
            skipped.append(f"{path} ({why}; the map is on {Path(first).name}'s pixels)")
            continue
        extents[path] = (_bounds(transform, width, height), transform)
    union = box(*_union_bounds([bounds for bounds, _ in extents.values()]))
    covered = union.intersection(box(*native_area.bounds))
    if covered.is_empty:
        raise InputError(_NOTHING_IN_AREA)
    minx, miny, maxx, maxy = covered.bounds
    left = reference.c + np.floor((minx - reference.c) / size_x) * size_x
    top = reference.f + np.ceil((maxy - reference.f) / size_y) * size_y
    width = int(np.ceil((maxx - left) / size_x - 1e-6))
    height = int(np.ceil((top - miny) / size_y - 1e-6))
    if width < 1 or height < 1:
        raise InputError(_NOTHING_IN_AREA)
    grid = Grid(target, Affine(size_x, 0.0, left, 0.0, -size_y, top), width, height)
    placed = [
        _Placed(
            path,
            round((top - bounds[3]) / size_y),
            round((bounds[0] - left) / size_x),
            headers[path][2],
            headers[path][3],
            transform.e > 0,
        )
        for path, (bounds, transform) in extents.items()
    ]
    return grid, placed, native_area, skipped


def _same_pixels(transform: Affine, reference: Affine) -> bool:
    """Same pixel size (rows either way), west to east, not rotated: such a raster is placed
    on the map's grid at the nearest pixel (at most half a pixel off when grids differ)."""
    if transform.b or transform.d or transform.a <= 0:
        return False
    return bool(
        np.isclose(transform.a, reference.a) and np.isclose(abs(transform.e), abs(reference.e))
    )


def _bounds(transform: Affine, width: int, height: int) -> tuple[float, float, float, float]:
    """(minx, miny, maxx, maxy) of a raster, whichever way its rows run."""
    xs, ys = zip(*(transform * corner for corner in ((0, 0), (width, height))), strict=True)
    return min(xs), min(ys), max(xs), max(ys)


def _union_bounds(bounds: list[tuple[float, float, float, float]]) -> tuple[float, ...]:
    array = np.asarray(bounds)
    return (*array[:, :2].min(axis=0), *array[:, 2:].max(axis=0))


def _windows(grid: Grid, side: int, row_offset: int = 0, col_offset: int = 0) -> Iterator[Window]:
    """The map's windows, row by row, their edges at ``offset + k * side`` (the first ones
    narrower), so that they meet the source raster's blocks the same way everywhere."""
    rows = sorted({0, *range(row_offset, grid.height, side)} - {grid.height})
    cols = sorted({0, *range(col_offset, grid.width, side)} - {grid.width})
    for top, bottom in zip(rows, [*rows[1:], grid.height], strict=True):
        for left, right in zip(cols, [*cols[1:], grid.width], strict=True):
            yield Window(top, left, right - left, bottom - top)


class _WindowComputer:
    """Computes map windows in threads, each thread with its own open rasters."""

    def __init__(
        self,
        catalog: Catalog,
        placed: list[_Placed],
        grid: Grid,
        area: BaseGeometry,
        query: np.ndarray,
        dequantization: Dequantization,
    ) -> None:
        self.catalog = catalog
        self.placed = placed
        self.grid = grid
        self.area = area
        self.query = np.asarray(query, dtype=np.float32)
        self.dequantization = dequantization
        self._local = threading.local()
        self._opened: list[GeoRasterSource] = []
        self._lock = threading.Lock()

    def stream(
        self, windows: Iterator[Window], threads: int
    ) -> Iterator[tuple[Window, np.ndarray]]:
        """(window, values) in the windows' order; at most two windows per thread in flight."""
        with ThreadPoolExecutor(max(1, threads)) as pool:
            in_flight: deque[tuple[Window, Future]] = deque()
            for window in windows:
                in_flight.append((window, pool.submit(self.compute, window)))
                if len(in_flight) >= 2 * max(1, threads):
                    done, future = in_flight.popleft()
                    yield done, future.result()
            while in_flight:
                done, future = in_flight.popleft()
                yield done, future.result()

    def compute(self, window: Window) -> np.ndarray:
        """(h, w) float32 values of one map window, NODATA where no pixel has a vector."""
        values = np.full((window.height, window.width), -np.inf, dtype=np.float32)
        for placed in self.placed:
            part = self._part(window, placed)
            if part is None:
                continue
            target, raw, usable = part
            cosines = pixel_cosines(raw, usable, self.query, self.dequantization)
            np.fmax(target(values), cosines, out=target(values))
        return self._finished(window, values, similarity_of)

    def _finished(self, window: Window, cosines: np.ndarray, meaning: Any) -> np.ndarray:
        """Map values (``meaning`` of the cosines) of a window: NODATA where there is no
        cosine or outside the area."""
        empty = ~np.isfinite(cosines) | ~self._inside(window)
        values = np.asarray(meaning(cosines), dtype=np.float32)
        values[empty] = NODATA
        return values

    def _part(self, window: Window, placed: _Placed) -> tuple[Any, np.ndarray, np.ndarray] | None:
        """Where a placed raster meets a map window: (the window's array -> the view of it
        that the raster covers, the raw pixels there and which hold a vector, rows north
        first); None where it does not meet the window."""
        rows = (
            max(window.row, placed.row),
            min(window.row + window.height, placed.row + placed.height),
        )
        cols = (
            max(window.col, placed.col),
            min(window.col + window.width, placed.col + placed.width),
        )
        if rows[0] >= rows[1] or cols[0] >= cols[1]:
            return None
        first = rows[0] - placed.row
        if placed.bottom_up:
            first = placed.height - (rows[1] - placed.row)
        read = Window(first, cols[0] - placed.col, cols[1] - cols[0], rows[1] - rows[0])
        source, bands = self._source(placed.path)
        tile = source.read(read, bands)
        usable = self.dequantization.usable(tile.pixels, tile.valid)
        raw = tile.pixels[:, ::-1] if placed.bottom_up else tile.pixels
        usable = usable[::-1] if placed.bottom_up else usable

        def target(values: np.ndarray) -> np.ndarray:
            return values[
                rows[0] - window.row : rows[1] - window.row,
                cols[0] - window.col : cols[1] - window.col,
            ]

        return target, raw, usable

    def _inside(self, window: Window) -> np.ndarray:
        """(h, w): which pixels of a window the area covers (rasterised only on its edge)."""
        transform = rasterio.windows.transform(window.as_rasterio(), self.grid.transform)
        corners = box(*rasterio.windows.bounds(window.as_rasterio(), self.grid.transform))
        if self.area.contains(corners):
            return np.ones((window.height, window.width), dtype=bool)
        return rasterio.features.geometry_mask(
            [self.area], (window.height, window.width), transform, invert=True, all_touched=True
        )

    def _source(self, path: str) -> tuple[GeoRasterSource, list[int]]:
        opened = getattr(self._local, "sources", None)
        if opened is None:
            opened = self._local.sources = {}
        if path not in opened:
            with rasterio.Env(GTIFF_DIRECT_IO=True):  # uncompressed tiles: read, not cached
                source = open_source(Path(path))
            with self._lock:
                self._opened.append(source)
            opened[path] = (
                source,
                self.catalog.manifest.bands_for(source, None, self.catalog.name),
            )
        return opened[path]

    def close(self) -> None:
        for source in self._opened:
            source.close()


class _ChangeWindowComputer(_WindowComputer):
    """Computes change map windows: each pixel's vector in the earlier rasters against the
    later ones' (``after``: their paths, set once made); where rasters of one period
    overlap, the last."""

    after: frozenset[str] = frozenset()

    def compute(self, window: Window) -> np.ndarray:
        shape = (window.height, window.width)
        periods: dict[bool, tuple[np.ndarray, np.ndarray] | None] = {False: None, True: None}
        for placed in self.placed:
            part = self._part(window, placed)
            if part is None:
                continue
            target, raw, usable = part
            later = placed.path in self.after
            held = periods[later]
            if held is None and raw.shape[1:] == shape:
                periods[later] = (raw, usable)  # one raster of the period covers the window
                continue
            if held is None:
                held = (np.zeros((raw.shape[0], *shape), raw.dtype), np.zeros(shape, bool))
            elif not np.can_cast(raw.dtype, held[0].dtype):
                held = (held[0].astype(np.result_type(held[0], raw)), held[1])
            periods[later] = held
            kept = target(np.moveaxis(held[0], 0, -1))
            np.copyto(kept, np.moveaxis(raw, 0, -1), where=usable[..., None], casting="unsafe")
            np.logical_or(target(held[1]), usable, out=target(held[1]))
        before, after = periods[False], periods[True]
        if before is None or after is None:
            return self._finished(window, np.full(shape, np.nan, np.float32), change_of)
        cosines = self._cosines(before[0], after[0])
        cosines[~(before[1] & after[1])] = np.nan
        return self._finished(window, cosines, change_of)

    def _cosines(self, before: np.ndarray, after: np.ndarray, rows: int = 4) -> np.ndarray:
        """(h, w) float32 cosine of each pixel's two de-quantised vectors, from (bands, h, w)
        raw values: de-quantised and reduced a strip of ``rows`` rows at a time in the same
        two buffers, which stay in the CPU's cache (several times faster than the window at
        once)."""
        bands, height, width = before.shape
        dots = np.empty((height, width), np.float32)
        norms = np.empty((height, width), np.float32)
        x, y = (np.empty((bands, rows, width), np.float32) for _ in range(2))
        for top in range(0, height, rows):
            strip = slice(top, top + rows)
            count = min(rows, height - top)
            xs = self.dequantization.apply(before[:, strip], x[:, :count])
            ys = self.dequantization.apply(after[:, strip], y[:, :count])
            np.einsum("bhw,bhw->hw", xs, ys, out=dots[strip])
            np.multiply(np.einsum("bhw,bhw->hw", xs, xs), np.einsum("bhw,bhw->hw", ys, ys),
                        out=norms[strip])  # fmt: skip
        np.sqrt(norms, out=norms)
        with np.errstate(divide="ignore", invalid="ignore"):
            return dots / norms


def change_of(cosines: np.ndarray) -> np.ndarray:
    """Change as the maps and ``geosearch changes`` give it: (1 - cosine) / 2, 0..1."""
    return 1.0 - similarity_of(cosines)


def _overview_factors(grid: Grid) -> list[int]:
    """Overview levels 2, 4, 8 ... until the map fits in 256 pixels (QGIS draws them)."""
    factors, factor = [], 2
    while max(grid.width, grid.height) / factor >= 256:
        factors.append(factor)
        factor *= 2
    return factors


def _histogram_range(histogram: np.ndarray) -> tuple[float, float]:
    """The ramp's range from a histogram of values over [0, 1]: STYLE_PERCENTILE to max."""
    if not histogram.any():
        return 0.0, 1.0
    edges = np.linspace(0.0, 1.0, _HISTOGRAM_BINS + 1)
    cumulative = np.cumsum(histogram) / histogram.sum()
    low = float(edges[np.searchsorted(cumulative, STYLE_PERCENTILE / 100.0)])
    high = float(edges[np.flatnonzero(histogram)[-1] + 1])
    return low, max(high, low + 1e-6)


# -- writing ---------------------------------------------------------------------------------


def _open_map(
    path: Path, grid: Grid, tiled: bool, meaning: tuple[str, str] = SIMILARITY, zlevel: int = 6
) -> rasterio.io.DatasetWriter:
    """A float32 single-band GeoTIFF for a map (NoData NODATA), opened for writing;
    ``meaning``: the band's description and what its values are; ``zlevel``: deflate's
    effort (1: half the time of the default 6, files ~3 % larger)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff", "width": grid.width, "height": grid.height, "count": 1,
        "dtype": "float32", "crs": grid.crs, "transform": grid.transform, "nodata": NODATA,
        "compress": "deflate", "predictor": 3, "zlevel": zlevel, "bigtiff": "IF_SAFER",
    }  # fmt: skip
    if tiled and grid.width > 256 and grid.height > 256:
        profile |= {"tiled": True, "blockxsize": 256, "blockysize": 256}
    dataset = rasterio.open(path, "w", **profile)
    dataset.set_band_description(1, meaning[0])
    dataset.update_tags(GEOSEARCH_MAP=meaning[1])
    return dataset


def write_tile_map(
    path: Path, grid: Grid, values: np.ndarray, tiles: int, meaning: tuple[str, str] = SIMILARITY
) -> SimilarityMap:
    """Write a tile-level map and its QGIS style."""
    try:
        with _open_map(path, grid, tiled=True, meaning=meaning) as dst:
            dst.write(values, 1)
    except (RasterioError, OSError) as exc:
        raise OutputError(f"cannot write {path}: {exc}") from None
    found = values[values != NODATA]
    low, high = (
        (float(np.percentile(found, STYLE_PERCENTILE)), float(found.max()))
        if found.size
        else (0, 1)
    )
    style = write_style(path.with_suffix(".qml"), low, max(high, low + 1e-6))
    return SimilarityMap(path, style, grid, int(found.size))


def style_qml(low: float, high: float) -> bytes:
    """A QGIS layer style (QGIS 3 ``.qml``): band 1 in single-band pseudocolour, the viridis ramp
    interpolated from ``low`` to ``high``, NoData transparent."""
    root = ET.Element("qgis", version="3.22.16", styleCategories="AllStyleCategories")
    pipe = ET.SubElement(root, "pipe")
    renderer = ET.SubElement(
        pipe, "rasterrenderer", type="singlebandpseudocolor", band="1", opacity="1",
        alphaBand="-1", nodataColor="", classificationMin=repr(low), classificationMax=repr(high),
    )  # fmt: skip
    origin = ET.SubElement(renderer, "minMaxOrigin")
    for tag, text in (("limits", "None"), ("extent", "WholeRaster"),
                      ("statAccuracy", "Estimated"), ("cumulativeCutLower", "0.02"),
                      ("cumulativeCutUpper", "0.98"), ("stdDevFactor", "2")):  # fmt: skip
        ET.SubElement(origin, tag).text = text
    shader = ET.SubElement(
        ET.SubElement(renderer, "rastershader"), "colorrampshader", colorRampType="INTERPOLATED",
        classificationMode="1", clip="0", minimumValue=repr(low), maximumValue=repr(high),
        labelPrecision="3",
    )  # fmt: skip
    ramp = ET.SubElement(shader, "colorramp", type="gradient", name="[source]")
    first, last = VIRIDIS[0], VIRIDIS[-1]
    stops = ":".join(f"{p};{r},{g},{b},255" for p, r, g, b in VIRIDIS[1:-1])
    properties = {"color1": f"{first[1]},{first[2]},{first[3]},255",
                  "color2": f"{last[1]},{last[2]},{last[3]},255", "discrete": "0",
                  "rampType": "gradient", "stops": stops}  # fmt: skip
    options = ET.SubElement(ramp, "Option", type="Map")
    for key, value in properties.items():
        ET.SubElement(options, "Option", type="QString", name=key, value=value)
    for key, value in properties.items():  # the same as QGIS before 3.18 reads them
        ET.SubElement(ramp, "prop", k=key, v=value)
    for position, r, g, b in VIRIDIS:
        value = low + position * (high - low)
        ET.SubElement(shader, "item", alpha="255", value=repr(value), label=f"{value:.3f}",
                      color=f"#{r:02x}{g:02x}{b:02x}")  # fmt: skip
    ET.SubElement(pipe, "brightnesscontrast", brightness="0", contrast="0", gamma="1")
    ET.SubElement(pipe, "rasterresampler", maxOversampling="2")
    ET.SubElement(root, "blendMode").text = "0"
    ET.indent(root)
    return b"<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n" + ET.tostring(root)


def write_style(path: Path, low: float, high: float) -> Path:
    """Write ``style_qml`` beside a map (QGIS loads FILE.qml with FILE.tif)."""
    try:
        Path(path).write_bytes(style_qml(low, high))
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    return Path(path)


def _crs_name(crs: CRS) -> str:
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()[:40]


# -- from search results ---------------------------------------------------------------------


def query_vector(catalog: Catalog, result: SearchResult, settings: Settings) -> np.ndarray:
    """The vector a result was searched with: the query's, moved by its feedback if any."""
    vector = result.query.vector
    feedback = result.feedback or {}
    if not (feedback.get("good") or feedback.get("bad")):
        return vector
    dim = len(vector)

    def stored(ids: list[int]) -> np.ndarray:
        return catalog.store.vectors(ids)[1] if ids else np.zeros((0, dim), np.float32)

    return rocchio(vector, stored(feedback.get("good", [])), stored(feedback.get("bad", [])),
                   settings.feedback)  # fmt: skip


def numbered(path: Path, number: int, total: int) -> Path:
    """``path`` for one query; ``name_N.tif`` for query N of several."""
    return path if total == 1 else path.with_name(f"{path.stem}_{number}{path.suffix}")


def write_similarity_maps(
    catalog: Catalog,
    results: Sequence[SearchResult],
    tiles: Path | None,
    pixels: Path | None,
    filters: SearchFilters,
    settings: Settings,
) -> list[SimilarityMap]:
    """The maps asked for, one per query: tile level (``tiles``) and per pixel (``pixels``,
    embedding databases, over the filters' area). Tile maps honour the filters too."""
    area = area_of(filters)
    if pixels is not None and area is None:
        raise ConfigError("--map-pixels needs an area: give --bbox or --within")
    allowed = allowed_ids(catalog.store, filters)
    written = []
    for number, result in enumerate(results, start=1):
        vector = query_vector(catalog, result, settings)
        if tiles is not None:
            grid, values, count = tile_similarity(catalog.store, vector, catalog.tile_size, allowed)
            written.append(
                write_tile_map(numbered(tiles, number, len(results)), grid, values, count)
            )
        if pixels is not None:
            maps = settings.maps
            threads = maps.threads or os.cpu_count() or 1
            target = numbered(pixels, number, len(results))
            written.append(
                write_pixel_map(
                    catalog, vector, area, allowed or set(), target, maps.window, threads
                )
            )
    return written


def area_of(filters: SearchFilters) -> BaseGeometry | None:
    """The lon/lat area of the --bbox and --within filters (both: where they meet)."""
    shapes = [box(*filters.bbox)] if filters.bbox else []
    if filters.within is not None:
        shapes.append(filters.within)
    if not shapes:
        return None
    area = shapes[0]
    for shape in shapes[1:]:
        area = area.intersection(shape)
    return area


__all__ = [
    "NODATA",
    "Grid",
    "SimilarityMap",
    "file_frames",
    "pixel_cosines",
    "style_qml",
    "area_of",
    "change_of",
    "check_embedding",
    "tile_similarity",
    "tile_values",
    "write_pixel_change_map",
    "write_pixel_map",
    "write_similarity_maps",
    "write_tile_map",
]
