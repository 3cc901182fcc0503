"""What a search leaves on disk: GeoJSON, PNG previews of query and results, a contact sheet.

``render_png`` is a pure function from an RGB array and a validity mask to PNG bytes; the
rest reads each tile's pixels back through the same reader and band manifest as ingest.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import shapely
from PIL import Image, ImageDraw, ImageFont
from shapely.geometry import MultiPolygon
from shapely.geometry.base import BaseGeometry

from geosearch.catalog import Catalog
from geosearch.errors import GeosearchError, OutputError
from geosearch.geopackage import GPKG_VERSION
from geosearch.locate import Placement
from geosearch.pixels import Window
from geosearch.search import LocateResult, Match, Query, SearchResult
from geosearch.sources import open_source
from geosearch.store import TileRecord

GEOJSON_NAME = "similar.geojson"
LOCATED_GEOJSON_NAME = "located.geojson"
PARQUET_NAME = "similar.parquet"
COORDINATE_DECIMALS = 7
STRETCH_PERCENTILES = (2.0, 98.0)
# How every PNG is encoded (previews, contact sheets, map layers, picture chips): zlib level 1,
# run-length matching and every row filtered by the one above: imagery encodes in half the time
# of level 1 alone and a quarter of PNG's usual level 6, the files within a few % of either's
# size (bench/README.md, "The command line").
PNG_OPTIONS = (
    cv2.IMWRITE_PNG_COMPRESSION, 1,
    cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
    cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP,
)  # fmt: skip
PREVIEW_WINDOWS_PER_TASK = 16  # windows of one file rendered by one thread, the file opened once
SHEET_QUERIES = 3  # up to this many queries: a contact sheet each; more: one for the batch
BATCH_SHEET_ROWS = 10  # the batch's contact sheet shows the first queries, one row each
BATCH_SHEET_CELL = 128  # pixels per side of a cell of the batch's contact sheet
INDENTED_FEATURES = 1000  # similar.geojson is indented up to this many features


@dataclass
class ResultFiles:
    """Paths written for a search."""

    geojson: Path
    previews: list[Path]
    contact_sheets: list[Path]
    parquet: Path | None = None
    located: Path | None = None  # where queries were found (second stage), if any


def render_png(rgb: np.ndarray, valid: np.ndarray, max_side: int) -> bytes:
    """PNG bytes of a (3, h, w) image: per-channel percentile stretch, invalid transparent (an
    image without invalid pixels is written opaque: RGB, a quarter less to encode)."""
    values = rgb.astype(np.float32)
    opaque = bool(valid.all())
    good = values.reshape(len(values), -1) if opaque else values[:, valid]
    stretched = np.zeros(rgb.shape, dtype=np.uint8)
    if good.size:
        low, high = _percentiles(good, STRETCH_PERCENTILES)
        span = np.where(high > low, high - low, 1.0)
        stretched[:] = np.clip((values - low) / span * 255.0, 0, 255)
    if opaque:
        image = Image.fromarray(np.dstack(stretched), "RGB")
    else:
        alpha = np.where(valid, 255, 0).astype(np.uint8)
        image = Image.fromarray(np.dstack([*stretched, alpha]), "RGBA")
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return png_bytes(np.asarray(image))


def _percentiles(values: np.ndarray, percentiles: Sequence[float]) -> tuple[np.ndarray, ...]:
    """Each ``percentiles`` of each row of ``values`` as ``np.percentile`` (linear) gives them,
    shaped (rows, 1, 1): by partitioning, without the sort and first-call imports of
    ``np.percentile`` (~10 ms of a search's previews)."""
    last = values.shape[1] - 1
    positions = [q / 100.0 * last for q in percentiles]
    below = [int(np.floor(p)) for p in positions]
    kth = sorted({k for b in below for k in (b, min(b + 1, last))})
    parted = np.partition(values, kth, axis=1)
    return tuple(
        (parted[:, b] + (p - b) * (parted[:, min(b + 1, last)] - parted[:, b]))[:, None, None]
        for p, b in zip(positions, below, strict=True)
    )


def png_bytes(pixels: np.ndarray) -> bytes:
    """PNG of an (h, w, 3) RGB or (h, w, 4) RGBA uint8 array, by OpenCV (``PNG_OPTIONS``; faster
    than Pillow's encoder, and it spares Pillow's loading of its five file formats: ~10 ms of a
    search)."""
    bgr = np.ascontiguousarray(pixels[:, :, [2, 1, 0, 3][: pixels.shape[2]]])  # OpenCV's order
    done, encoded = cv2.imencode(".png", bgr, list(PNG_OPTIONS))
    if not done:
        raise OutputError(f"cannot encode a {pixels.shape} image as PNG")
    return encoded.tobytes()


def png_pixels(png: bytes) -> np.ndarray:
    """The (h, w, 4) RGBA uint8 array of ``png_bytes``' output (opaque where it has no alpha)."""
    pixels = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise OutputError("not a PNG image")
    opaque = pixels.shape[2] == 3
    return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGBA if opaque else cv2.COLOR_BGRA2RGBA)


def tile_preview(catalog: Catalog, path: str, window: Window | None, max_side: int) -> bytes:
    """PNG of one tile (``window``) or of a whole file (``window=None``): a file of the database
    or a query (its RGB bands, or its first band where it lacks one)."""
    png = file_previews(catalog, path, [window], max_side, strict=True)[0]
    assert png is not None  # strict: an unreadable window raised
    return png


def file_previews(
    catalog: Catalog,
    path: str,
    windows: Sequence[Window | None],
    max_side: int,
    strict: bool = False,
) -> list[bytes | None]:
    """PNGs of ``windows`` of one file (``None``: the whole file), the file opened once and
    each window read once. Not ``strict``: a file or window that cannot be read gets None."""
    try:
        with open_source(Path(path)) as source:
            bands = catalog.manifest.query_bands(source, catalog.name)
            shown = bands.shown()
            read = [bands.read[slot] for slot in shown]
            pngs: list[bytes | None] = []
            for window in windows:
                try:
                    tile = (
                        source.overview(read, max_side)
                        if window is None
                        else source.read(window, read)
                    )
                    pngs.append(render_png(bands.manifest.scale(tile, shown), tile.valid, max_side))
                except GeosearchError:
                    if strict:
                        raise
                    pngs.append(None)
            return pngs
    except GeosearchError:
        if strict:
            raise
        return [None] * len(windows)


PreviewKey = tuple[str, Window | None]


def render_previews(
    catalog: Catalog, wanted: Iterable[PreviewKey], max_side: int
) -> dict[PreviewKey, bytes | None]:
    """PNGs of (file, window) pairs, each rendered once, on a thread per core: windows are
    grouped by file so that a file is opened once per few windows (GDAL, numpy's percentiles
    and PNG encoding release the GIL)."""
    by_file: dict[str, list[Window | None]] = {}
    for path, window in dict.fromkeys(wanted):
        by_file.setdefault(path, []).append(window)
    tasks = [
        (path, windows[start : start + PREVIEW_WINDOWS_PER_TASK])
        for path, windows in by_file.items()
        for start in range(0, len(windows), PREVIEW_WINDOWS_PER_TASK)
    ]

    def render(task: tuple[str, list[Window | None]]) -> list[bytes | None]:
        return file_previews(catalog, task[0], task[1], max_side)

    rendered: dict[PreviewKey, bytes | None] = {}
    with ThreadPoolExecutor(max_workers=min(len(tasks), os.cpu_count() or 1) or 1) as pool:
        for (path, windows), pngs in zip(tasks, pool.map(render, tasks), strict=True):
            rendered.update(zip(((path, w) for w in windows), pngs, strict=True))
    return rendered


def lonlat_geometry(geometry: BaseGeometry | None) -> dict[str, Any] | None:
    """RFC 7946 geometry: counter-clockwise exterior rings, 7 decimals, Polygon if one part."""
    return lonlat_geometries([geometry])[0]


def lonlat_geometries(geometries: Sequence[BaseGeometry | None]) -> list[dict[str, Any] | None]:
    """``lonlat_geometry`` of each, converted together."""
    return [None if text is None else json.loads(text) for text in geometry_texts(geometries)]


def geometry_texts(geometries: Sequence[BaseGeometry | None]) -> list[str | None]:
    """Each geometry as ``lonlat_geometry`` says, as GeoJSON text (None: no geometry), all
    converted together by GEOS's GeoJSON writer (much faster than mapping them in Python)."""
    shapes = np.empty(len(geometries), dtype=object)
    shapes[:] = geometries
    present = ~shapely.is_missing(shapes) & ~shapely.is_empty(shapes)
    single = present & (shapely.get_type_id(shapes) == shapely.GeometryType.MULTIPOLYGON)
    single &= shapely.get_num_geometries(shapes) == 1
    shapes[single] = shapely.get_geometry(shapes[single], 0)  # a MultiPolygon of one: Polygon
    texts = np.full(len(shapes), None, dtype=object)
    if present.any():
        oriented = shapely.orient_polygons(shapes[present], exterior_cw=False)
        rounded = shapely.transform(oriented, lambda xy: np.round(xy, COORDINATE_DECIMALS))
        texts[present] = shapely.to_geojson(rounded)
    return texts.tolist()


def feature(
    geometry: BaseGeometry | None, properties: dict[str, Any], feature_id: int | None = None
) -> dict[str, Any]:
    """An RFC 7946 Feature: a lon/lat geometry (``lonlat_geometry``; null without one) and
    ``properties``, with ``feature_id`` as its id if given."""
    return features([geometry], [properties], [feature_id])[0]


def features(
    geometries: Sequence[BaseGeometry | None],
    properties: Sequence[dict[str, Any]],
    feature_ids: Sequence[int | None],
) -> list[dict[str, Any]]:
    """``feature`` of each, the geometries converted together (``geometry_texts``)."""
    return [json.loads(text) for text in feature_texts(geometries, properties, feature_ids)]


def feature_texts(
    geometries: Sequence[BaseGeometry | None],
    properties: Sequence[dict[str, Any]],
    feature_ids: Sequence[int | None],
) -> list[str]:
    """``feature`` of each as JSON text: what a large FeatureCollection file is written from."""
    texts = []
    for geometry, values, n in zip(
        geometry_texts(geometries), properties, feature_ids, strict=True
    ):
        identity = "" if n is None else f'"id": {json.dumps(n)}, '
        texts.append(
            f'{{"type": "Feature", {identity}"geometry": {geometry or "null"}, '
            f'"properties": {json.dumps(values)}}}'
        )
    return texts


def tile_properties(tile: TileRecord) -> dict[str, Any]:
    """What every feature of a stored tile says of it: id, file, window, date and CRS."""
    window = tile.window
    return {
        "id": tile.id, "path": tile.path, "row": window.row, "col": window.col,
        "width": window.width, "height": window.height, "acquired": tile.acquired,
        "crs": tile.crs,
    }  # fmt: skip


def tile_feature(
    tile: TileRecord,
    leading: dict[str, Any],
    trailing: dict[str, Any],
    feature_id: bool = False,
) -> dict[str, Any]:
    """A stored tile as a Feature (the one builder of ``similar.geojson``'s results and the
    service's tiles): its footprint; ``leading`` properties, ``tile_properties`` (where not
    already among them) and ``trailing`` ones; ``feature_id``: the tile id as the Feature's id."""
    return tile_features([tile], [leading], [trailing], feature_id)[0]


def tile_features(
    tiles: Sequence[TileRecord],
    leading: Sequence[dict[str, Any]],
    trailing: Sequence[dict[str, Any]],
    feature_id: bool = False,
) -> list[dict[str, Any]]:
    """``tile_feature`` of each, the footprints converted together (``features``)."""
    return [json.loads(text) for text in tile_feature_texts(tiles, leading, trailing, feature_id)]


def tile_feature_texts(
    tiles: Sequence[TileRecord],
    leading: Sequence[dict[str, Any]],
    trailing: Sequence[dict[str, Any]],
    feature_id: bool = False,
) -> list[str]:
    """``tile_features`` as JSON text (``feature_texts``)."""
    properties = [
        first | tile_properties(tile) | last
        for tile, first, last in zip(tiles, leading, trailing, strict=True)
    ]
    ids = [tile.id if feature_id else None for tile in tiles]
    return feature_texts([tile.footprint for tile in tiles], properties, ids)


def feature_collection(results: Sequence[SearchResult]) -> dict[str, Any]:
    """Query and result features of every search, in one RFC 7946 FeatureCollection."""
    return _collection_of(_collected_texts(results))


def _collection_of(texts: Sequence[str]) -> dict[str, Any]:
    """An RFC 7946 FeatureCollection of features given as JSON text."""
    return {"type": "FeatureCollection", "features": [json.loads(text) for text in texts]}


def collection_text(texts: Sequence[str]) -> str:
    """A FeatureCollection's JSON text from its features' texts, a feature a line (what large
    GeoJSON files are written as: the features are not parsed and encoded again)."""
    features = ",\n".join(texts)
    return f'{{"type": "FeatureCollection", "features": [\n{features}\n]}}\n'


def _collected_texts(results: Sequence[SearchResult]) -> list[str]:
    """``feature_collection``'s features as JSON text, a query's then its results'."""
    texts = []
    for number, result in enumerate(results, start=1):
        matches = result.matches
        texts.append(_query_feature_text(result, number))
        texts += tile_feature_texts(
            [match.tile for match in matches],
            [_result_properties(match, number) for match in matches],
            [{"preview": match.preview} for match in matches],
        )
    return texts


def _result_properties(match: Match, number: int) -> dict[str, Any]:
    """What a result's feature says first (``role: result``) of query ``number``'s match."""
    located = match.located
    return {
        "role": "result",
        "query": number,
        "rank": match.rank,
        "score": round(match.score, 6),
        "similarity": round(match.similarity, 4),
        "cosine": round(match.cosine, 6) if match.cosine is not None else None,
        "correlation": round(located.placement.correlation, 4) if located else None,
        "coverage": round(located.coverage, 4) if located else None,
        "near_copy": round(match.near_copy, 4) if match.near_copy is not None else None,
        "id": match.tile.id,
        "path": match.tile.path,
        "tiles": 1,
    }


def _query_feature_text(result: SearchResult, number: int) -> str:
    """The query of a search as a Feature (``role: query``), JSON text: its tile, or its file's
    tiles."""
    query = result.query
    first = query.tiles[0]
    one = len(query.tiles) == 1
    properties = {
        "role": "query",
        "query": number,
        "rank": 0,
        "score": 1.0,
        "id": first.id if one else None,
        "path": query.path,
        "tiles": len(query.tiles),
        "row": first.window.row if one else None,
        "col": first.window.col if one else None,
        "width": first.window.width if one else None,
        "height": first.window.height if one else None,
        "acquired": first.acquired,
        "crs": first.crs,
        "preview": result.query_preview,
    }
    return feature_texts([query.footprint], [properties], [None])[0]


def location_feature(placement: Placement, number: int = 1, rank: int = 0) -> dict[str, Any]:
    """Where a query lies (``role: location``): the placed picture's outline and how it fits."""
    properties = {
        "role": "location",
        "query": number,
        "rank": rank,
        "path": placement.path,
        "correlation": round(placement.correlation, 4),
        "margin": round(placement.margin, 4),
        "scale": round(placement.scale, 4),
        "rotation": 90 * placement.orientation.quarter_turns,
        "mirrored": placement.orientation.mirrored,
    }
    return feature(placement.footprint, properties)


@dataclass
class LocationFiles:
    """Paths written by ``locate``: the placements and the georeferenced copy of the query."""

    geojson: Path
    georeferenced: Path | None


def write_location(result: LocateResult, catalog: Catalog, out_dir: Path) -> LocationFiles:
    """``located.geojson`` (every placement, best first) and, if the query was placed, a copy
    of it georeferenced by the best placement: a GeoTIFF of its bands for a raster, a PNG with
    a world file (``.wld``) and the CRS (``.aux.xml``, GDAL's) for a picture."""
    prepare_output(out_dir, previews=False)
    collection = {
        "type": "FeatureCollection",
        "features": [
            location_feature(placement, 1, rank)
            for rank, placement in enumerate(result.placements, start=1)
        ],
    }
    geojson = out_dir / LOCATED_GEOJSON_NAME
    write_bytes(geojson, json.dumps(collection, indent=1).encode())
    copy = None
    if result.placements:
        copy = _georeferenced_copy(result.query, result.placements[0], out_dir)
    return LocationFiles(geojson, copy)


def _georeferenced_copy(query: Query, placement: Placement, out_dir: Path) -> Path:
    """The query's pixels (its window, as read for registration) with the placement's
    transform and CRS."""
    import rasterio

    with open_source(Path(query.path)) as source:
        window = query.window or Window(0, 0, source.width, source.height)
        tile = source.read(window, source.data_bands)
        plain = source.kind == "plain"
    name = Path(query.path).stem + "_located" + (".png" if plain else ".tif")
    path = out_dir / name
    profile = {
        "driver": "PNG" if plain else "GTiff",
        "width": window.width,
        "height": window.height,
        "count": tile.pixels.shape[0],
        "dtype": tile.pixels.dtype,
        "crs": placement.crs_wkt,
        "transform": placement.query_transform,
    }
    options = {"WORLDFILE": "YES"} if plain else {"COMPRESS": "DEFLATE"}
    try:
        with rasterio.open(path, "w", **profile, **options) as dst:
            dst.write(tile.pixels)
    except (OSError, rasterio.errors.RasterioError) as exc:
        raise OutputError(f"cannot write {path}: {exc}") from None
    return path


def write_parquet(results: Sequence[SearchResult], path: Path) -> Path:
    """One row per (query, result): query path and tile, rank, score, tile, footprint as WKB."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows: dict[str, list] = {key: [] for key in (
        "query", "query_path", "query_tile_ids", "rank", "score", "id", "path", "row", "col",
        "width", "height", "acquired", "geometry",
    )}  # fmt: skip
    for number, result in enumerate(results, start=1):
        for match in result.matches:
            tile = match.tile
            for key, value in (
                ("query", number), ("query_path", result.query.path),
                ("query_tile_ids", sorted(result.query.exclude)), ("rank", match.rank),
                ("score", match.score), ("id", tile.id), ("path", tile.path),
                ("row", tile.window.row), ("col", tile.window.col), ("width", tile.window.width),
                ("height", tile.window.height), ("acquired", tile.acquired),
                ("geometry", shapely.to_wkb(tile.footprint) if tile.footprint else None),
            ):  # fmt: skip
                rows[key].append(value)
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(rows), str(path))
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    return Path(path)


def marks_collection(session: dict[str, Any]) -> dict[str, Any]:
    """GeoJSON of a feedback session's marked tiles: label (good/bad), when, by whom."""
    features = []
    for mark in session["marks"]:
        tile = mark["tile"]
        features.append(
            feature(
                tile.footprint if tile else None,
                {
                    "session": session["name"],
                    "id": mark["tile_id"],
                    "label": "good" if mark["label"] > 0 else "bad",
                    "marked_at": mark["marked_at"],
                    "marked_by": mark["marked_by"],
                    "path": tile.path if tile else None,
                    "row": tile.window.row if tile else None,
                    "col": tile.window.col if tile else None,
                    "acquired": tile.acquired if tile else None,
                },
            )
        )
    return {"type": "FeatureCollection", "features": features}


def write_marks(session: dict[str, Any], path: Path) -> Path:
    """Write ``marks_collection`` of a session to ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    write_bytes(path, json.dumps(marks_collection(session), indent=1).encode())
    return path


def _label(match: Match) -> list[str]:
    """A result's lines on the contact sheet: rank, similarity (and the share of the query it
    shows, where the second stage placed it, or "near copy"), date, file."""
    first = f"#{match.rank}  similarity {match.similarity:.2f}"
    if match.located is not None:
        first += f"  · {match.located.coverage:.0%} of query"
    elif match.near_copy is not None:
        first += "  · near copy"
    return [first, match.tile.acquired or "undated", Path(match.tile.path).name]


def contact_sheet(rows: Sequence[Sequence[tuple[bytes | None, Sequence[str]]]], cell: int) -> bytes:
    """PNG of labelled previews, a row per query (the query first, then results in rank
    order); each label's lines are cut to the cell's width."""
    line_height = max(14, cell // 14)
    font = ImageFont.load_default(size=max(10, line_height - 3))
    lines = max(len(label) for row in rows for _, label in row)
    row_height = cell + lines * line_height + 4
    columns = max(len(row) for row in rows)
    sheet = Image.new("RGB", (cell * columns, row_height * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate(rows):
        top = r * row_height
        for i, (png, label) in enumerate(row):
            if png is not None:
                picture = Image.fromarray(png_pixels(png), "RGBA")
                picture.thumbnail((cell, cell))
                offset = (
                    i * cell + (cell - picture.width) // 2,
                    top + (cell - picture.height) // 2,
                )
                sheet.paste(picture, offset, picture)
            else:
                draw.text((i * cell + 4, top + cell // 2), "(missing)", fill="gray", font=font)
            for n, text in enumerate(label):
                shown = _fitted(text, font, cell - 8)
                colour = "black" if n == 0 else "dimgray"
                position = (i * cell + 4, top + cell + 2 + n * line_height)
                draw.text(position, shown, fill=colour, font=font)
    return png_bytes(np.asarray(sheet))


def _fitted(text: str, font: ImageFont.ImageFont, width: int) -> str:
    """``text``, cut in the middle with an ellipsis if wider than ``width`` pixels."""
    if font.getlength(text) <= width:
        return text
    keep = len(text)
    while keep > 3 and font.getlength(f"{text[: keep // 2]}…{text[-(keep // 2) :]}") > width:
        keep -= 2
    return f"{text[: keep // 2]}…{text[-(keep // 2) :]}"


def write_layer(
    path: Path, layer: str, geometries: Sequence[BaseGeometry | None], columns: dict[str, Any]
) -> Path:
    """A GeoPackage (the version older GDALs read without warning, as the database's) of one
    MultiPolygon layer in EPSG:4326 (feature id ``id``): lon/lat
    ``geometries`` (None: no geometry) and a value of each column (name: array) per feature."""
    from pyogrio.raw import write

    shapes = [
        None if g is None else g if isinstance(g, MultiPolygon) else MultiPolygon([g])
        for g in geometries
    ]
    try:
        path.unlink(missing_ok=True)
        write(
            str(path), geometry=shapely.to_wkb(np.array(shapes, dtype=object)),
            field_data=[np.asarray(v) for v in columns.values()], fields=list(columns),
            layer=layer, driver="GPKG", geometry_type="MultiPolygon", crs="EPSG:4326",
            layer_options={"FID": "id"}, dataset_options={"VERSION": GPKG_VERSION},
        )  # fmt: skip
    except Exception as exc:
        raise OutputError(f"cannot write {path}: {exc}") from None
    return path


def prepare_output(out_dir: Path, previews: bool = True) -> Path:
    """Create the results folder (and its previews/) or fail with OutputError, before any work;
    returns the folder previews go in."""
    previews_dir = Path(out_dir) / "previews"
    try:
        (previews_dir if previews else Path(out_dir)).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write results to {out_dir}: {exc.strerror or exc}") from None
    return previews_dir


def write_results(
    results: Sequence[SearchResult],
    catalog: Catalog,
    out_dir: Path,
    preview_size: int,
    previews: int | None = 10,
) -> ResultFiles:
    """Write previews, contact sheets and similar.geojson under ``out_dir``.

    ``previews``: how many results of each query get a preview (and the query one), in rank
    order; None: all; 0: none. Sets those results' preview paths (relative to ``out_dir``); the
    others, and a tile whose source file can no longer be read, say ``preview: null``. A
    contact sheet is written per query up to ``SHEET_QUERIES`` queries, else one for the batch.
    """
    out_dir = Path(out_dir)
    previews_dir = prepare_output(out_dir)
    _clear_earlier_results(out_dir)
    shown = [] if previews == 0 else results
    rendered = render_previews(
        catalog,
        (
            key
            for result in shown
            for key in [_query_key(result)]
            + [(m.tile.path, m.tile.window) for m in result.matches[:previews]]
        ),
        preview_size,
    )
    files: list[tuple[Path, bytes]] = []
    rows: list[list[tuple[bytes | None, Sequence[str]]]] = []
    for number, result in enumerate(shown, start=1):
        query = result.query
        query_png = rendered[_query_key(result)]
        result.query_preview = _save(query_png, previews_dir / f"query{number}.png", out_dir, files)
        cells = [(query_png, ["query", query.tiles[0].acquired or "", Path(query.path).name])]
        for match in result.matches[:previews]:
            png = rendered[(match.tile.path, match.tile.window)]
            name = f"query{number}_rank{match.rank}_tile{match.tile.id}.png"
            match.preview = _save(png, previews_dir / name, out_dir, files)
            cells.append((png, _label(match)))
        rows.append(cells)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(lambda file: write_bytes(*file), files))
    written = [path for path, _ in files]
    sheets = _write_contact_sheets(rows, out_dir, preview_size)
    geojson = out_dir / GEOJSON_NAME
    texts = _collected_texts(results)
    if len(texts) <= INDENTED_FEATURES:  # indented for a person
        text = json.dumps(_collection_of(texts), indent=1)
    else:  # as built (10,200 features: ~0.1 s less than parsing and encoding them again)
        text = collection_text(texts)
    write_bytes(geojson, text.encode())
    located = [
        location_feature(result.location, number)
        for number, result in enumerate(results, start=1)
        if result.location is not None
    ]
    located_path = out_dir / LOCATED_GEOJSON_NAME
    if located:
        collection = {"type": "FeatureCollection", "features": located}
        write_bytes(located_path, json.dumps(collection, indent=1).encode())
    return ResultFiles(geojson, written, sheets, located=located_path if located else None)


def _query_key(result: SearchResult) -> PreviewKey:
    """What a query's preview shows: its tile, or the whole file for a file's mean."""
    query = result.query
    return (query.path, query.tiles[0].window if len(query.tiles) == 1 else None)


def _write_contact_sheets(
    rows: Sequence[Sequence[tuple[bytes | None, Sequence[str]]]], out_dir: Path, preview_size: int
) -> list[Path]:
    """A sheet per query (``contact_sheet.png`` for one, ``contact_sheet_N.png`` for a few), or
    one ``contact_sheet.png`` for a batch: a row per query, the first ``BATCH_SHEET_ROWS``."""
    if not rows:
        return []
    if len(rows) == 1:
        named = [(out_dir / "contact_sheet.png", rows[0])]
    elif len(rows) <= SHEET_QUERIES:
        named = [(out_dir / f"contact_sheet_{n}.png", row) for n, row in enumerate(rows, 1)]
    else:
        sheet = contact_sheet(rows[:BATCH_SHEET_ROWS], min(preview_size, BATCH_SHEET_CELL))
        write_bytes(out_dir / "contact_sheet.png", sheet)
        return [out_dir / "contact_sheet.png"]
    for path, row in named:
        write_bytes(path, contact_sheet([row], min(preview_size, 256)))
    return [path for path, _ in named]


def _clear_earlier_results(out_dir: Path) -> None:
    """Delete what an earlier search wrote in ``out_dir`` (only the names searches write), so
    the folder holds this run's results alone."""
    earlier = [
        *(out_dir / "previews").glob("query*.png"),
        *out_dir.glob("contact_sheet*.png"),
        *(out_dir / name for name in (GEOJSON_NAME, LOCATED_GEOJSON_NAME, PARQUET_NAME)),
    ]
    for path in earlier:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot replace {path}: {exc.strerror or exc}") from None


def _save(
    png: bytes | None, path: Path, out_dir: Path, files: list[tuple[Path, bytes]]
) -> str | None:
    """Queue ``png`` to be written at ``path``; its name relative to ``out_dir`` (None: none)."""
    if png is None:
        return None
    files.append((path, png))
    return path.relative_to(out_dir).as_posix()


def write_bytes(path: Path, data: bytes) -> None:
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
