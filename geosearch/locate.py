"""The second search stage: where the query lies in the shortlisted scenes.

The vectors' shortlist names scenes (indexed files) and the tiles in them that look like the
query. Around each shortlisted tile the query picture is registered against the scene's pixels
(``geosearch.register``: gradient images, normalised cross-correlation). Where it fits
surely, the query's place is found, and the same place in every other scene that covers it
(other dates, other sensors) is registered too. Sure is measured in the query's own texture:
its correlation and the best elsewhere in the region searched, both in standard deviations of
chance for as many independent pixels as the query has, must stand
``search.locate_margin_sigmas`` apart (a texture-poor query needs a wider gap in correlation
than a rich one), with a correlation of at least ``MIN_CORRELATION``. Tiles covering the placed
query then lead the results, ordered by correlation times the share of the query they cover;
the vectors' ranking follows. When the query's place is not in the database nothing fits, and
the vectors' ranking stands unchanged.

A query with a georeference is compared at its own ground resolution (its position is never
used); one without (a screenshot) over a sweep of scales; with ``any_orientation`` under the
eight rotations and mirrors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from pyproj import CRS, Transformer
from rasterio import Affine
from shapely.geometry import Polygon, mapping

from geosearch.bands import QueryBands
from geosearch.catalog import Catalog
from geosearch.config import SearchSettings
from geosearch.errors import InputError
from geosearch.orientation import ALL_ORIENTATIONS, IDENTITY, Orientation
from geosearch.pixels import Window
from geosearch.register import (
    SCALE_SWEEP,
    QueryPicture,
    Registration,
    fisher_sigmas,
    register,
)
from geosearch.sources import GeoRasterSource, open_source, pixel_footprint
from geosearch.store import Store, TileRecord

# Queries up to this many tile sides (in the scene's pixels) are placed; larger ones (a whole
# scene) are searched with their vectors only.
MAX_QUERY_TILES = 2.0
# Around a shortlisted tile, the query is looked for this far out (a fraction of its side), so
# any tile it overlaps leads to all of it.
SEARCH_MARGIN = 1.0
# The shortlist is worked through this many tiles at a time, in its order, until the query fits.
SHORTLIST_STEP = 16
# Around the place found in one scene, other scenes are searched this far out (fraction of the
# query's side, plus a few pixels for georeferencing differences).
EXPAND_MARGIN = 0.25
EXPAND_PIXELS = 8
# There, a query without a georeference is first tried at these factors of the first fit's
# scale.
RESCALE_AROUND = tuple(float(2 ** (k / 8)) for k in range(-4, 5))  # 0.71 .. 1.41
# When nothing in the shortlist is sure, the ground of this many of the best unsure fits is
# searched in the other scenes covering it (other dates) that the shortlist did not lead to.
RECHECK = 4
# No fit with a lower correlation counts, however far above its neighbours (in a small region
# the best elsewhere is a poor sample of chance).
MIN_CORRELATION = 0.4
# A sure fit this many times ``search.locate_margin_sigmas`` above its neighbours ends the
# search of the shortlist at once.
OVERWHELMING = 2.0
# A fit in another scene counts, however weak, when its corners land within this many pixels
# (plus a share of the query's side) of where the first placement puts them: the same place.
CONSISTENT_PIXELS = 4.0
CONSISTENT_SHARE = 0.03
# Tiles covering less of the placed query than this are not listed as its place.
MIN_COVERAGE = 0.05
# The grey image of a query is read at most this large (pixels per side).
MAX_IMAGE_SIDE = 1024


@dataclass(frozen=True)
class QueryImage:
    """A query as a grey picture for registration: the mean of its RGB bands scaled to 0..1,
    its validity, and where it is georeferenced, its CRS and the transform of its pixels."""

    grey: np.ndarray
    valid: np.ndarray
    crs_wkt: str | None
    transform: Affine | None  # image pixel -> query CRS
    to_file: Affine  # image pixel -> query file pixel
    positions: tuple[int, ...]  # the database bands (0-based) the grey image averages

    @property
    def shape(self) -> tuple[int, int]:
        return self.grey.shape


@dataclass(frozen=True)
class Placement:
    """Where the query lies in one indexed scene.

    ``corners``: the query picture's corners (top-left, top-right, bottom-right, bottom-left)
    in the scene's pixel (col, row) coordinates; ``scale``: scene pixels per query pixel;
    ``orientation``: the turn applied to the query to match; ``correlation``: -1..1, and its
    ``margin`` over the best fit elsewhere in the region searched (how distinct the fit is).
    """

    path: str
    correlation: float
    margin: float
    scale: float
    orientation: Orientation
    corners: np.ndarray
    scene_transform: Affine
    crs_wkt: str
    footprint_native: Polygon
    footprint: Any  # lon/lat geometry
    query_to_scene: Affine = field(repr=False)  # query image pixel -> scene pixel
    independent_pixels: float = 1.0  # of the query against this scene (``register``)
    elsewhere: float = 0.0  # the best correlation away from the peak in that region

    @property
    def sigmas(self) -> float:
        """The correlation in standard deviations of chance (``register.fisher_sigmas``)."""
        return fisher_sigmas(self.correlation, self.independent_pixels)

    @property
    def sigmas_over_elsewhere(self) -> float:
        """How far it stands above the best placement elsewhere in its region, in sigmas."""
        return self.sigmas - fisher_sigmas(self.elsewhere, self.independent_pixels)

    @property
    def query_transform(self) -> Affine:
        """Query image pixel -> coordinates of the scene's CRS (a georeference for it)."""
        return self.scene_transform * self.query_to_scene

    def to_dict(self) -> dict[str, Any]:
        a = self.query_to_scene
        return {
            "path": self.path,
            "correlation": round(self.correlation, 4),
            "margin": round(self.margin, 4),
            "sigmas": round(self.sigmas, 2),
            "independent_pixels": round(self.independent_pixels, 1),
            "scale": round(self.scale, 4),
            "rotation": 90 * self.orientation.quarter_turns,
            "mirrored": self.orientation.mirrored,
            "offset": [round(a.c, 2), round(a.f, 2)],
            "footprint": mapping(self.footprint),
        }


@dataclass(frozen=True)
class PlacedTile:
    """An indexed tile where the query was placed: how much of the query it covers."""

    tile_id: int
    coverage: float
    placement: Placement

    @property
    def score(self) -> float:
        return self.placement.correlation * self.coverage


def query_image(
    catalog: Catalog, path: str, bands: QueryBands, window: Window | None = None
) -> QueryImage | None:
    """The grey picture of a query file (or one ``window`` of it) for registration; None when
    it is larger than placing it makes sense for (see ``MAX_QUERY_TILES``)."""
    slots = list(dict.fromkeys(bands.shown()))
    with open_source(Path(path)) as source:
        window = window or Window(0, 0, source.width, source.height)
        if max(window.width, window.height) > MAX_IMAGE_SIDE:
            return None
        tile = source.read(window, [bands.read[slot] for slot in slots])
        grey = bands.manifest.scale(tile, slots).mean(axis=0)
        transform = source.transform
        if transform is not None:
            transform = transform * Affine.translation(window.col, window.row)
        return QueryImage(
            grey,
            tile.valid,
            source.crs_wkt,
            transform,
            Affine.translation(window.col, window.row),
            tuple(slots),
        )


class Locator:
    """Places one query in scenes of the database; keeps the scenes open meanwhile."""

    def __init__(
        self,
        catalog: Catalog,
        image: QueryImage,
        settings: SearchSettings,
        any_orientation: bool = False,
    ) -> None:
        self.catalog = catalog
        self.image = image
        self.margin_sigmas = settings.locate_margin_sigmas
        self.orientations = ALL_ORIENTATIONS if any_orientation else (IDENTITY,)
        self.georeferenced = image.transform is not None and image.crs_wkt is not None
        self.picture = QueryPicture(image.grey, image.valid)
        self._scenes: dict[str, GeoRasterSource | None] = {}

    def close(self) -> None:
        for scene in self._scenes.values():
            if scene is not None:
                scene.close()

    def __enter__(self) -> Locator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def place(self, shortlist: Sequence[TileRecord]) -> list[Placement]:
        """Placements of the query, best first: the surest fit around the shortlisted tiles
        (see ``_sure``), then every other scene covering that place, registered again there
        (kept if it fits surely too, or lands where the best placement says, within
        ``CONSISTENT_PIXELS``: the same ground seen another time).

        A query without a georeference is first looked for at scales around the first fit's in
        the other scenes; the best fit of all then sets the ground scale every scene is placed
        at (one query has one ground size, however much the place changed between dates)."""
        anchor = self._anchor(shortlist)
        if anchor is None:
            return []
        others = self._other_scenes(anchor)
        if not self.georeferenced:  # the best fit anywhere sets the scale
            for path in others:
                found = self._place_again(anchor, path, RESCALE_AROUND)
                if self._sure(found) and found.correlation > anchor.correlation:
                    anchor = found
            others = [path for path in [anchor.path, *others] if path != anchor.path]
        placed = [anchor]
        for path in others:
            found = self._place_again(anchor, path)
            expected = _in_scene_pixels(anchor, self._scenes[path])
            if found is not None and (self._sure(found) or _lands_on(found, expected)):
                placed.append(found)
        return sorted(placed, key=lambda p: -p.correlation)

    def _anchor(self, shortlist: Sequence[TileRecord]) -> Placement | None:
        """The surest fit around the shortlisted tiles, searched ``SHORTLIST_STEP`` tiles at a
        time until one is sure (see ``_sure``); a fit that stands ``OVERWHELMING`` times the
        margin above its neighbours ends the search at once. None if none is sure."""
        sure: list[Placement] = []
        unsure: list[Placement] = []
        searched: dict[str, list[Window]] = {}
        for start in range(0, len(shortlist), SHORTLIST_STEP):  # further only while none is sure
            for path, region, scales in self._regions(shortlist[start : start + SHORTLIST_STEP]):
                found = self._register(self._scenes[path], path, region, scales, self.orientations)
                searched.setdefault(path, []).append(region)
                if not self._sure(found):
                    if found is not None and found.correlation >= MIN_CORRELATION:
                        unsure.append(found)
                    continue
                if found.sigmas_over_elsewhere >= OVERWHELMING * self.margin_sigmas:
                    return found
                sure.append(found)
            if sure:
                return max(sure, key=lambda p: p.sigmas)
        return self._other_dates(unsure, searched)

    def _other_dates(
        self, unsure: Sequence[Placement], searched: dict[str, list[Window]]
    ) -> Placement | None:
        """When nothing was sure: the ground of the best unsure fits (``RECHECK`` of them)
        searched in the other scenes covering it that the shortlist did not lead to (another
        date may show the place more clearly), each region as a shortlisted tile's would be.
        The surest fit there, if any is sure; else None."""
        sure: list[Placement] = []
        best = sorted(unsure, key=lambda p: -p.sigmas_over_elsewhere)[:RECHECK]
        for candidate in best:
            for path in self._other_scenes(candidate):
                scene = self._scenes[path]
                corners = _in_scene_pixels(candidate, scene)
                scales = self._scales(scene)
                if corners is None or not scales:
                    continue
                (left, top), (right, bottom) = corners.min(axis=0), corners.max(axis=0)
                if any(_holds(w, left, top, right, bottom) for w in searched.get(path, [])):
                    continue
                region = _clipped(scene, left, top, right, bottom, self._search_margin(scales))
                if region is None:
                    continue
                searched.setdefault(path, []).append(region)
                found = self._register(scene, path, region, scales, self.orientations)
                if self._sure(found):
                    sure.append(found)
        return max(sure, key=lambda p: p.sigmas) if sure else None

    def _sure(self, found: Placement | None) -> bool:
        """A sure fit: it stands ``margin_sigmas`` above the best placement elsewhere in its
        region, in standard deviations of chance for this query's texture, with a correlation
        of at least ``MIN_CORRELATION``."""
        return (
            found is not None
            and found.correlation >= MIN_CORRELATION
            and found.sigmas_over_elsewhere >= self.margin_sigmas
        )

    # -- registration in one scene ---------------------------------------------------------

    def _scene(self, path: str) -> GeoRasterSource | None:
        if path not in self._scenes:
            try:
                scene = open_source(Path(path))
            except InputError:  # moved or unreadable since ingest: searched by vectors only
                scene = None
            if scene is not None and (scene.kind != "geo" or scene.transform is None):
                scene.close()
                scene = None
            self._scenes[path] = scene
        return self._scenes[path]

    def _scales(self, scene: GeoRasterSource) -> list[float]:
        """Scene pixels per query pixel: the one the georeferences give, else the sweep (only
        those that keep the query within ``MAX_QUERY_TILES`` tiles)."""
        side = max(self.image.shape)
        limit = MAX_QUERY_TILES * self.catalog.tile_size / side
        if self.georeferenced:
            scale = _pixel_size(self.image, scene) / _pixel_side(scene.transform)
            return [scale] if scale <= limit else []
        return [s for s in SCALE_SWEEP if s <= limit]

    def _regions(self, shortlist: Sequence[TileRecord]) -> list[tuple[str, Window, list[float]]]:
        """Where to look for the query: around each shortlisted tile, out to ``SEARCH_MARGIN``
        of the query's side; overlapping regions of a scene are merged into one."""
        regions: dict[str, list[Window]] = {}
        scales_of: dict[str, list[float]] = {}
        for tile in shortlist:
            scene = self._scene(tile.path)
            if scene is None:
                continue
            scales = scales_of.setdefault(tile.path, self._scales(scene))
            if not scales:
                continue
            w = tile.window
            region = _clipped(
                scene, w.col, w.row, w.col + w.width, w.row + w.height, self._search_margin(scales)
            )
            if region is not None:
                regions.setdefault(tile.path, []).append(region)
        return [
            (path, region, scales_of[path])
            for path, windows in regions.items()
            for region in _merged(windows)
        ]

    def _search_margin(self, scales: Sequence[float]) -> int:
        """Scene pixels searched around a shortlisted place: ``SEARCH_MARGIN`` of the query's
        side at the largest of ``scales``."""
        return math.ceil(SEARCH_MARGIN * max(self.image.shape) * max(scales))

    def _other_scenes(self, placement: Placement) -> list[str]:
        """Indexed files, other than the placement's, with tiles meeting the placed query."""
        store = self.catalog.store
        ids = sorted(store.ids_in_bbox(*placement.footprint.bounds))
        paths = []
        for tile in store.tiles(ids):
            if tile.path == placement.path or tile.path in paths or tile.footprint is None:
                continue
            if tile.footprint.intersects(placement.footprint) and self._scene(tile.path):
                paths.append(tile.path)
        return paths

    def _place_again(
        self, placement: Placement, path: str, factors: Sequence[float] = (1.0,)
    ) -> Placement | None:
        """The query registered in another scene around where ``placement`` puts it, in the
        same orientation, at the same ground scale (times each of ``factors``)."""
        scene = self._scene(path)
        expected = _in_scene_pixels(placement, scene) if scene is not None else None
        if expected is None:
            return None
        ground = placement.scale * _pixel_side(placement.scene_transform)
        scales = [ground / _pixel_side(scene.transform) * factor for factor in factors]
        pad = EXPAND_MARGIN * max(self.image.shape) * max(scales) + EXPAND_PIXELS
        (left, top), (right, bottom) = expected.min(axis=0), expected.max(axis=0)
        region = _clipped(scene, left, top, right, bottom, pad)
        return self._register(scene, path, region, scales, [placement.orientation])

    def _register(
        self,
        scene: GeoRasterSource,
        path: str,
        region: Window | None,
        scales: Sequence[float],
        orientations: Sequence[Orientation],
    ) -> Placement | None:
        if region is None:
            return None
        manifest = self.catalog.manifest
        slots = list(self.image.positions)
        try:
            tile = scene.read(region, [manifest.bands[slot] for slot in slots])
        except InputError:
            return None
        grey = manifest.scale(tile, slots).mean(axis=0)
        found = register(self.picture, grey, tile.valid, scales, orientations)
        if found is None:
            return None
        return _placement(path, scene, region, found, self.image.shape)


def placed_tiles(store: Store, placements: Sequence[Placement]) -> list[PlacedTile]:
    """Every indexed tile covering at least ``MIN_COVERAGE`` of a placed query, by score."""
    out = []
    for placement in placements:
        area = placement.footprint_native.area
        for tile in store.tiles(sorted(store.ids_in_bbox(*placement.footprint.bounds))):
            if tile.path != placement.path or tile.footprint_native is None:
                continue
            shared = shapely.from_wkt(tile.footprint_native).intersection(
                placement.footprint_native
            )
            coverage = shared.area / area if area > 0 else 0.0
            if coverage >= MIN_COVERAGE:
                out.append(PlacedTile(int(tile.id), coverage, placement))
    return sorted(out, key=lambda placed: -placed.score)


# -- geometry -----------------------------------------------------------------------------


def _lands_on(found: Placement, expected: np.ndarray | None) -> bool:
    """Whether a placement's corners lie where ``expected`` (scene pixels) puts them."""
    if expected is None:
        return False
    side = float(np.ptp(expected, axis=0).max())
    tolerance = CONSISTENT_PIXELS + CONSISTENT_SHARE * side
    return float(np.abs(found.corners - expected[:4]).max()) <= tolerance


def _holds(window: Window, left: float, top: float, right: float, bottom: float) -> bool:
    """Whether ``window`` contains the box (scene pixels)."""
    return (
        window.col <= left
        and window.row <= top
        and right <= window.col + window.width
        and bottom <= window.row + window.height
    )


def _merged(windows: Sequence[Window]) -> list[Window]:
    """Windows with overlapping ones replaced by their common bounding window whenever that is
    no larger than the two were apart (so no pixel is read twice without need)."""
    merged = list(windows)
    changed = True
    while changed:
        changed = False
        for i in range(len(merged)):
            for j in range(i + 1, len(merged)):
                union = _bounding(merged[i], merged[j])
                if _area(union) <= _area(merged[i]) + _area(merged[j]):
                    merged[i] = union
                    del merged[j]
                    changed = True
                    break
            if changed:
                break
    return merged


def _bounding(a: Window, b: Window) -> Window:
    top, left = min(a.row, b.row), min(a.col, b.col)
    bottom = max(a.row + a.height, b.row + b.height)
    right = max(a.col + a.width, b.col + b.width)
    return Window(top, left, right - left, bottom - top)


def _area(window: Window) -> int:
    return window.width * window.height


def _clipped(
    scene: GeoRasterSource, left: float, top: float, right: float, bottom: float, margin: float
) -> Window | None:
    """The box (scene pixels) grown by ``margin`` on every side, the part of it inside the
    scene as whole pixels; None if nothing is."""
    left, top = max(0, math.floor(left - margin)), max(0, math.floor(top - margin))
    right = min(scene.width, math.ceil(right + margin))
    bottom = min(scene.height, math.ceil(bottom + margin))
    if right - left < 2 or bottom - top < 2:
        return None
    return Window(top, left, right - left, bottom - top)


def _placement(
    path: str, scene: GeoRasterSource, region: Window, found: Registration, shape: tuple[int, int]
) -> Placement | None:
    """A registration in ``region`` as the query's placement in the scene."""
    height, width = shape
    corners = _turned_corners(found, width, height) + (
        region.col + found.col,
        region.row + found.row,
    )
    top_left, top_right, _, bottom_left = corners
    query_to_scene = Affine(
        (top_right[0] - top_left[0]) / width,
        (bottom_left[0] - top_left[0]) / height,
        top_left[0],
        (top_right[1] - top_left[1]) / width,
        (bottom_left[1] - top_left[1]) / height,
        top_left[1],
    )
    ring = np.vstack([corners, corners[:1]])
    footprint = pixel_footprint(ring, scene.transform, scene.crs_wkt)
    if footprint is None:
        return None
    return Placement(
        path=path,
        correlation=found.correlation,
        margin=found.margin,
        scale=found.scale,
        orientation=found.orientation,
        corners=corners,
        scene_transform=scene.transform,
        crs_wkt=scene.crs_wkt,
        footprint_native=shapely.from_wkt(footprint.native_wkt),
        footprint=footprint.wgs84,
        query_to_scene=query_to_scene,
        independent_pixels=found.independent_pixels,
        elsewhere=found.elsewhere,
    )


def _turned_corners(found: Registration, width: int, height: int) -> np.ndarray:
    """The query's corners (TL, TR, BR, BL of the picture as given) in the matched window's
    pixels: scaled, mirrored and turned as ``found.orientation`` turned the template."""
    turns = found.orientation.quarter_turns
    scaled_w, scaled_h = (found.height, found.width) if turns % 2 else (found.width, found.height)
    points = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float64)
    points *= (scaled_w / width, scaled_h / height)
    current_w, current_h = scaled_w, scaled_h
    if found.orientation.mirrored:
        points[:, 0] = current_w - points[:, 0]
    for _ in range(turns):  # np.rot90: (x, y) -> (y, W - x)
        points = np.column_stack([points[:, 1], current_w - points[:, 0]])
        current_w, current_h = current_h, current_w
    return points


def _pixel_side(t: Affine) -> float:
    """The side of a square with a pixel's area, in the transform's units."""
    return math.sqrt(abs(t.a * t.e - t.b * t.d))


def _pixel_size(image: QueryImage, scene: GeoRasterSource) -> float:
    """The query's pixel size in the units of the scene's CRS, measured at its centre."""
    t = image.transform
    height, width = image.shape
    cols = np.array([width / 2, width / 2 + 1, width / 2])
    rows = np.array([height / 2, height / 2, height / 2 + 1])
    xs, ys = t.a * cols + t.b * rows + t.c, t.d * cols + t.e * rows + t.f
    if image.crs_wkt != scene.crs_wkt:
        to_scene = _transformer(image.crs_wkt, scene.crs_wkt)
        xs, ys = to_scene.transform(xs, ys)
    step_x = math.hypot(xs[1] - xs[0], ys[1] - ys[0])
    step_y = math.hypot(xs[2] - xs[0], ys[2] - ys[0])
    return math.sqrt(step_x * step_y)


def _in_scene_pixels(placement: Placement, scene: GeoRasterSource) -> np.ndarray | None:
    """A placement's corners in another scene's pixel (col, row) coordinates."""
    xs, ys = placement.footprint_native.exterior.coords.xy
    xs, ys = np.asarray(xs), np.asarray(ys)
    if placement.crs_wkt != scene.crs_wkt:
        xs, ys = _transformer(placement.crs_wkt, scene.crs_wkt).transform(xs, ys)
    if not (np.all(np.isfinite(xs)) and np.all(np.isfinite(ys))):
        return None
    inverse = ~scene.transform
    cols, rows = inverse * (xs, ys)
    return np.column_stack([cols, rows])


@lru_cache(maxsize=64)
def _transformer(source_wkt: str, target_wkt: str) -> Transformer:
    return Transformer.from_crs(CRS.from_wkt(source_wkt), CRS.from_wkt(target_wkt), always_xy=True)
