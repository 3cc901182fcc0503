"""What the HTTP service does, without HTTP: list tiles, search, sessions, previews.

Every call opens the database for itself and closes it before returning, so many requests run
at once (SQLite WAL readers) while an ingest writes elsewhere, and each sees what the last
committed batch left: new tiles without a restart (``open_index`` catches the index up). Nothing
here takes a path from a caller: tiles are named by id, uploads come as a file this module
writes into a private temporary folder of its own and deletes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import numpy as np
import shapely
from cachetools import LRUCache
from PIL import Image

from geosearch import api
from geosearch.catalog import Catalog, open_database
from geosearch.changes import ChangeResult, PlaceChange
from geosearch.config import Settings
from geosearch.coverage import CHANGES_COLOUR, DETECTION_COLOUR, Coverage
from geosearch.detection import DetectResult, area_tiles, georeferenced
from geosearch.errors import ConfigError, ConflictError, InputError, NotFoundError
from geosearch.render import marks_collection, tile_preview
from geosearch.request import SearchFilters, SearchRequest
from geosearch.search import SearchResult, stored_tile
from geosearch.serve.models import MAX_TOP
from geosearch.sessions import search, session_marks
from geosearch.sources import open_source
from geosearch.store import Store, TileRecord

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_UPLOAD_PIXELS = 40_000_000  # a PNG/JPEG is decoded whole: 40 MP is 120 MB of RGB
UPLOAD_TOO_LARGE = f"upload: larger than {MAX_UPLOAD_BYTES // 2**20} MB; crop or downsample it"
MAX_UPLOAD_TILES = 64  # an uploaded raster is embedded tile by tile: 64 tiles of 256 px = 2048²
PREVIEW_CACHE_BYTES = 64 * 1024 * 1024
# A box drawn on the map marks at most this many tiles: a mis-drag over the whole database
# is refused with a message, not saved as a million marks.
MAX_BOX_TILES = 1000
CHANGE_RUNS_KEPT = 2  # runs of changes kept for their map layer (each holds every pair)


class UnsupportedUploadError(InputError):
    """An upload that is not a PNG, JPEG or TIFF (HTTP 415)."""


class UploadTooLargeError(InputError):
    """An upload over the size or tile limit (HTTP 413)."""


@dataclass(frozen=True)
class TilePage:
    """One page of tiles (in a box, or all) and how many there are in all."""

    tiles: list[TileRecord]
    total: int
    limit: int
    offset: int


@dataclass(frozen=True)
class Preview:
    """A tile's preview PNG (None when the caller's copy, named by ``etag``, is current)."""

    etag: str
    png: bytes | None


class _PngCache:
    """Least-recently-used PNG bytes, bounded by their total size (``cachetools``); safe
    across threads. ``hits`` counts the PNGs served from memory."""

    def __init__(self, max_bytes: int) -> None:
        self._items: LRUCache[str, bytes] = LRUCache(max_bytes, getsizeof=len)
        self._lock = threading.Lock()
        self.hits = 0

    def get(self, key: str) -> bytes | None:
        with self._lock:
            png = self._items.get(key)
            self.hits += png is not None
            return png

    def put(self, key: str, png: bytes) -> None:
        with self._lock, contextlib.suppress(ValueError):  # ValueError: larger than the cache
            if key not in self._items:
                self._items[key] = png


@dataclass(frozen=True)
class ChangeLayer:
    """A run of ``changes`` kept by the service: the result (every pair's score and whether it
    is significant; the places listed), the significant ones' centres as a map layer, and each
    pair's tile ids (to find the place at a click)."""

    key: str
    result: ChangeResult
    coverage: Coverage
    before_ids: np.ndarray
    after_ids: np.ndarray

    @classmethod
    def of(cls, key: str, result: ChangeResult) -> ChangeLayer:
        pairs = result.all_pairs
        footprints = [pairs[i].before.footprint or pairs[i].after.footprint
                      for i in np.flatnonzero(result.flags)]  # fmt: skip
        before_ids = np.fromiter((p.before.id for p in pairs), np.int64, len(pairs))
        after_ids = np.fromiter((p.after.id for p in pairs), np.int64, len(pairs))
        layer = Coverage.of_footprints(footprints, CHANGES_COLOUR)
        return cls(key, result, layer, before_ids, after_ids)

    def place(self, index: int) -> PlaceChange:
        """Pair ``index`` as a place: the listed one (ranked, maybe looked at), else scored by
        its vectors and ranked after the listed places by its score."""
        pair = self.result.all_pairs[index]
        listed = self.result.places
        for place in listed:
            if place.pair is pair:
                return place
        scores = self.result.scores
        score = float(scores[index])
        higher = int((scores > scores[index]).sum())
        higher -= sum(place.vector_change > score for place in listed)
        return PlaceChange(pair, score, score, None, bool(self.result.flags[index]),
                           rank=len(listed) + higher + 1)  # fmt: skip


class SearchService:
    """The service's operations on one database, each opening and closing it."""

    def __init__(self, db: Path, settings: Settings | None = None) -> None:
        self.db = Path(db)
        self.settings = settings or Settings()
        self.previews = _PngCache(PREVIEW_CACHE_BYTES)
        self._coverage: tuple[int, Coverage] | None = None
        self._coverage_lock = threading.Lock()
        # session: run, layer, its result and the folder its files go in (once downloaded)
        self._detections: dict[str, tuple[int, Coverage, DetectResult, Path]] = {}
        self._detect_lock = threading.Lock()
        self._detect_folder: Path | None = None
        self.max_box_tiles = MAX_BOX_TILES
        self._changes: dict[str, ChangeLayer] = {}  # the last runs of changes, oldest first
        self._changes_lock = threading.Lock()

    @contextmanager
    def catalog(self) -> Iterator[Catalog]:
        with open_database(self.db, self.settings) as catalog:
            yield catalog

    # -- the database ------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return api.info(self.db, self.settings)

    def summary(self) -> dict[str, Any]:
        """Kind, tile count, generation and the extent of the tiles' centres (lon/lat), without
        touching the index (for the page)."""
        with self.catalog() as catalog:
            kind, tiles = catalog.manifest.kind, catalog.store.tile_count()
        generation, coverage = self.coverage()
        return {"kind": kind, "tiles": tiles, "generation": generation, "extent": coverage.extent}

    def coverage(self) -> tuple[int, Coverage]:
        """(database generation, where its tiles are): the footprints' centres, read once
        per generation (a second at a million tiles) and kept for the coverage layer."""
        with Store(self.db) as store:  # not the catalog: parsing its fusion costs ~10 ms
            generation = store.generation
            with self._coverage_lock:
                if self._coverage is None or self._coverage[0] != generation:
                    centres = store.footprint_centres()
                    self._coverage = (generation, Coverage.of(*centres))
                return self._coverage

    def coverage_tile(self, z: int, x: int, y: int) -> bytes:
        """Map tile z/x/y of the coverage layer (PNG), cached with the previews."""
        generation, coverage = self.coverage()
        return self._map_tile(f"coverage:{generation}", coverage, z, x, y)

    def _map_tile(self, layer: str, coverage: Coverage, z: int, x: int, y: int) -> bytes:
        """A density layer's map tile z/x/y (PNG), cached with the previews under ``layer``."""
        key = f"{layer}:{z}/{x}/{y}"
        png = self.previews.get(key)
        if png is None:
            png = coverage.map_tile(z, x, y)
            self.previews.put(key, png)
        return png

    def tiles_page(
        self, bbox: tuple[float, float, float, float] | None, limit: int, offset: int
    ) -> TilePage:
        """Tiles meeting a lon/lat box (GeoPackage R-tree), or all tiles by file, paged."""
        with self.catalog() as catalog:
            store = catalog.store
            if bbox is not None:
                ids, total = store.bbox_page(bbox, limit, offset)
                return TilePage(store.tiles(ids), total, limit, offset)
            counts = sorted(store.tile_counts().items())
            total = sum(count for _, count in counts)
            tiles: list[TileRecord] = []
            skip = offset
            for path, count in counts:
                if len(tiles) >= limit:
                    break
                if skip >= count:
                    skip -= count
                    continue
                tiles += store.tiles_of_file(path)[skip : skip + limit - len(tiles)]
                skip = 0
            return TilePage(tiles, total, limit, offset)

    def tile(self, tile_id: int) -> TileRecord:
        with self.catalog() as catalog:
            return stored_tile(catalog, tile_id)

    def preview(self, tile_id: int, size: int, etag_held: str | None = None) -> Preview:
        """A tile's preview PNG, cached in memory by what it shows (tile, file version, size)."""
        with self.catalog() as catalog:
            record = stored_tile(catalog, tile_id)
            stored = catalog.store.file_record(record.path)
            version = (stored.size, stored.mtime_ns) if stored else None
            key = repr((catalog.name, record.id, record.path, record.window, version, size))
            etag = hashlib.sha256(key.encode()).hexdigest()[:32]
            if etag_held == etag:
                return Preview(etag, None)
            png = self.previews.get(etag)
            if png is None:
                try:
                    png = tile_preview(catalog, record.path, record.window, size)
                except InputError as exc:
                    raise NotFoundError(f"tile {tile_id} has no preview: {exc}") from None
                self.previews.put(etag, png)
            return Preview(etag, png)

    # -- what changed -------------------------------------------------------------------

    def changes(
        self, date_from: str, date_to: str, bbox: tuple[float, ...] | None, top: int
    ) -> ChangeResult:
        """The ``top`` places that changed most between two periods (``geosearch changes``);
        the run is kept for its map layer (``changes_tile``) and clicks (``change_at``)."""
        layer = self._change_layer(date_from, date_to, bbox)
        return replace(layer.result, places=layer.result.places[:top])

    def changes_tile(
        self, date_from: str, date_to: str, bbox: tuple[float, ...] | None, z: int, x: int, y: int
    ) -> bytes:
        """Map tile z/x/y of the significant places between two periods (PNG), rendered like
        the coverage layer, cached with the previews."""
        layer = self._change_layer(date_from, date_to, bbox)
        return self._map_tile(f"changes:{layer.key}", layer.coverage, z, x, y)

    def change_at(
        self, date_from: str, date_to: str, bbox: tuple[float, ...] | None, lon: float, lat: float
    ) -> ChangeResult:
        """The place paired between two periods whose footprint holds lon/lat (a significant
        one first, then the most changed), as a result of that one place (of none if none)."""
        layer = self._change_layer(date_from, date_to, bbox)
        with Store(self.db) as store:
            here = np.asarray(area_tiles(store, shapely.Point(lon, lat)), np.int64)
        found = np.flatnonzero(np.isin(layer.before_ids, here) | np.isin(layer.after_ids, here))
        if not len(found):
            return replace(layer.result, places=[])
        scores = layer.result.scores
        best = int(found[np.lexsort((-scores[found], ~layer.result.flags[found]))[0]])
        return replace(layer.result, places=[layer.place(best)])

    def _change_layer(
        self, date_from: str, date_to: str, bbox: tuple[float, ...] | None
    ) -> ChangeLayer:
        """The run of ``changes`` between two periods in a box, computed once per database
        generation (every pair scored; the places listed cover those given a second look)."""
        with Store(self.db) as store:
            key = repr((date_from, date_to, bbox, store.generation))
        with self._changes_lock:  # one run at a time: map tiles wait for the first
            layer = self._changes.get(key)
            if layer is None:
                listed = max(MAX_TOP, self.settings.changes.second_look)
                filters = SearchFilters(bbox=bbox)
                result = api.changes(self.db, date_from, date_to, top=listed, filters=filters,
                                     settings=self.settings)  # fmt: skip
                layer = ChangeLayer.of(hashlib.sha256(key.encode()).hexdigest()[:16], result)
                self._changes[key] = layer
                while len(self._changes) > CHANGE_RUNS_KEPT:
                    self._changes.pop(next(iter(self._changes)))
            return layer

    # -- searching without saving ---------------------------------------------------------

    def similar(self, request: SearchRequest) -> SearchResult:
        """Search with a stored tile or a place (``tile_id`` or ``lonlat``); nothing is written
        to the database."""
        request = request.with_defaults(self.settings)
        with self.catalog() as catalog:
            [result] = search(catalog, request, self.settings)
            return result

    def similar_to_upload(
        self, upload: IO[bytes], name: str, request: SearchRequest
    ) -> SearchResult:
        """Search with an uploaded image (embedded like a file the database doesn't hold; one
        of its tiles with ``tile_index``)."""
        request = request.with_defaults(self.settings)
        with self.catalog() as catalog, _saved_upload(upload) as path:
            _check_upload(catalog, path)
            [result] = search(
                catalog, request.model_copy(update={"queries": [path]}), self.settings
            )
            result.query.label = result.query.path = Path(name).name or "upload"  # not the temp
            return result

    # -- feedback sessions ------------------------------------------------------------------

    def create_session(self, request: SearchRequest) -> SearchResult:
        """Search and save the query as a feedback session (``api.similar``; named
        ``request.session``, else web-TIME-RANDOM)."""
        name = request.session or f"web-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        with self.catalog() as catalog:
            if catalog.store.sessions.get(name) is not None:
                raise ConflictError(f"feedback session '{name}' exists already; pick a new name")
        [result] = api.similar(
            self.db, request.model_copy(update={"session": name}), settings=self.settings
        )
        return result

    def session(self, name: str) -> dict[str, Any]:
        with self.catalog() as catalog:
            saved = catalog.store.sessions.get(name)
        if saved is None:
            raise NotFoundError(f"no feedback session '{name}' in {self.db.name}")
        return saved

    def sessions(self) -> list[str]:
        with self.catalog() as catalog:
            return catalog.store.sessions.names()

    def mark(
        self, name: str, good: list[int], bad: list[int], top: int | None = None
    ) -> SearchResult:
        """Mark tiles (by id) good or bad in a session and search again with every mark."""
        self.session(name)
        return api.feedback(
            self.db, name, good, bad, by_rank=False, top=top, settings=self.settings
        )

    def box_tiles(self, bbox: tuple[float, float, float, float]) -> list[int]:
        """Tiles whose footprint meets a lon/lat box (``detection.area_tiles``, what
        ``detect --good-within`` marks), refused over ``max_box_tiles``."""
        cap = self.max_box_tiles
        with self.catalog() as catalog:
            store = catalog.store
            _, candidates = store.bbox_page(bbox, 0)  # R-tree count: no tile is loaded
            ids = area_tiles(store, shapely.box(*bbox)) if candidates <= 2 * cap else None
        if ids is None or len(ids) > cap:
            held = f"{len(ids)}" if ids is not None else f"about {candidates}"
            raise ConfigError(
                f"the box holds {held} tiles; one box marks at most {cap}: draw a smaller box "
                "(zoom in)"
            )
        if not ids:
            raise ConfigError(f"no tile's footprint meets the box {_box_text(bbox)}")
        return ids

    def mark_box(
        self, name: str, bbox: tuple[float, float, float, float], label: int,
        top: int | None = None,
    ) -> tuple[list[int], SearchResult]:  # fmt: skip
        """Mark every tile in a lon/lat box good (``label`` 1) or bad (-1) in a session and
        search again (``mark``): (the tiles marked, the search)."""
        self.session(name)
        ids = self.box_tiles(bbox)
        good, bad = (ids, []) if label > 0 else ([], ids)
        return ids, self.mark(name, good, bad, top)

    # -- detect ---------------------------------------------------------------------------

    def detect(
        self, name: str, review: int, threshold: float | None
    ) -> tuple[int, DetectResult, bool]:
        """``api.detect`` on a session; the detected tiles' centres kept for the detections
        layer, the result for its files (written in a folder of this service's when first
        downloaded). (run number, result, whether the tiles have footprints)."""
        self.session(name)
        with self._detect_lock:
            if self._detect_folder is None:
                self._detect_folder = Path(tempfile.mkdtemp(prefix="geosearch-detect-"))
            folder = self._detect_folder / secrets.token_hex(8)
        result = api.detect(  # the files are written when first downloaded
            self.db, name, review=review, threshold=threshold, write=False,
            settings=self.settings,
        )  # fmt: skip
        with self.catalog() as catalog:
            geo = georeferenced(catalog)
        ids = sorted(t for detection in result.detections for t in detection.tile_ids)
        with Store(self.db) as store:
            footprints = [tile.footprint for tile in store.tiles(ids)]
        with self._detect_lock:
            run = self._detections.get(name, (0,))[0] + 1
            layer = Coverage.of_footprints(footprints, DETECTION_COLOUR)
            self._detections[name] = (run, layer, result, folder)
        return run, result, geo

    def _detected(self, name: str) -> tuple[int, Coverage, DetectResult, Path]:
        with self._detect_lock:
            found = self._detections.get(name)
        if found is None:
            raise NotFoundError(f"session '{name}' has not been run through detect here yet")
        return found

    def detections_tile(self, name: str, z: int, x: int, y: int) -> bytes:
        """Map tile z/x/y of the session's last detections (PNG), cached with the previews."""
        run, layer, *_ = self._detected(name)
        return self._map_tile(f"detections:{name}:{run}", layer, z, x, y)

    def detections_file(self, name: str, file_name: str) -> Path:
        """A file of the session's last detect (detections.gpkg, detections.geojson), its
        files written at the first such request."""
        _, _, result, folder = self._detected(name)
        with self._detect_lock:
            if not result.files:
                api.write_detections(result, self.db, folder, self.settings)
        path = folder / file_name
        if not path.is_file():
            raise NotFoundError(f"the last detect of session '{name}' wrote no {file_name}")
        return path

    def marks_geojson(self, name: str) -> bytes:
        """The session's marked tiles as GeoJSON (``render.marks_collection``)."""
        self.session(name)
        saved = session_marks(self.db, name, self.settings)
        return json.dumps(marks_collection(saved), indent=1).encode()


def _box_text(bbox: tuple[float, ...]) -> str:
    return ",".join(f"{v:.6f}" for v in bbox)


_MAGIC_SUFFIXES = (
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"\xff\xd8\xff", ".jpg"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
    (b"II+\x00", ".tif"),  # BigTIFF
    (b"MM\x00+", ".tif"),
)


@contextmanager
def _saved_upload(upload: IO[bytes]) -> Iterator[Path]:
    """The upload copied into a new private folder (named by its content type, not by the
    client), at most ``MAX_UPLOAD_BYTES``; the folder is removed afterwards."""
    head = upload.read(16)
    suffix = next((s for magic, s in _MAGIC_SUFFIXES if head.startswith(magic)), None)
    if suffix is None:
        raise UnsupportedUploadError("upload: not a PNG, JPEG or TIFF image")
    folder = tempfile.mkdtemp(prefix="geosearch-upload-")  # mode 0700
    try:
        path = Path(folder) / f"query{suffix}"
        written = len(head)
        with open(path, "wb") as out:
            out.write(head)
            while chunk := upload.read(1 << 20):
                written += len(chunk)
                if written > MAX_UPLOAD_BYTES:
                    raise UploadTooLargeError(UPLOAD_TOO_LARGE)
                out.write(chunk)
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _check_upload(catalog: Catalog, path: Path) -> None:
    """Open the upload as ingest would (a clear InputError if it can't be read) and refuse
    pictures too large to decode in memory and rasters with more tiles than a query should
    embed."""
    width = height = 0
    if path.suffix in (".png", ".jpg"):
        with contextlib.suppress(OSError, ValueError), Image.open(path) as image:  # header only
            width, height = image.size  # (an unreadable file is open_source's to report)
    if width * height > MAX_UPLOAD_PIXELS:
        raise UploadTooLargeError(
            f"upload: {width}x{height} px is more than "
            f"{MAX_UPLOAD_PIXELS // 1_000_000} megapixels; downsample it"
        )
    with open_source(path) as source:
        tiles = len(catalog.windows(source))
        width, height = source.width, source.height
    if tiles > MAX_UPLOAD_TILES:
        raise UploadTooLargeError(
            f"upload: {width}x{height} px is {tiles} tiles of {catalog.tile_size} px; a query "
            f"image may have at most {MAX_UPLOAD_TILES} (crop it)"
        )
