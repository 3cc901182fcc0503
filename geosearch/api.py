"""The Python API, one function per thing a user does; the CLI is a shell over these."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geosearch import engines
from geosearch.catalog import open_database
from geosearch.config import Settings, load_settings
from geosearch.engines import DEFAULT_ENGINE
from geosearch.engines.base import IngestProgress, IngestReport
from geosearch.errors import ConfigError, InputError, disk_full_said
from geosearch.index import IndexState, index_path, open_index, vectors_path
from geosearch.ingest import ingest as _ingest
from geosearch.render import (
    PARQUET_NAME,
    LocationFiles,
    ResultFiles,
    prepare_output,
    write_marks,
    write_parquet,
)
from geosearch.render import write_location as _write_location
from geosearch.render import write_results as _write_results
from geosearch.request import SearchFilters, SearchRequest
from geosearch.search import LocateResult, SearchResult, allowed_ids, load_area
from geosearch.search import locate as _locate
from geosearch.sessions import refine, search_and_save, session_marks
from geosearch.sources import canonical_path
from geosearch.store import Store

if TYPE_CHECKING:
    from geosearch.changes import ChangeFiles, ChangeResult
    from geosearch.check import CheckReport
    from geosearch.chips import ChipExport
    from geosearch.detection import DetectResult
    from geosearch.maps import SimilarityMap
    from geosearch.migrate import MigrateReport

PathLike = str | Path


def ingest(
    paths: Sequence[PathLike],
    db: PathLike = "geosearch.gpkg",
    settings: Settings | None = None,
    *,
    bands: Sequence[int] | None = None,
    progress: IngestProgress | None = None,
    verify: bool = False,
    dry_run: bool = False,
    engine: str = DEFAULT_ENGINE,
    master: str | None = None,
    kind: str | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> IngestReport:
    """Ingest every image and scene under ``paths`` into ``db``; see
    ``geosearch.ingest.ingest``. A full disk: ``DiskFullError``; the same call resumes."""
    with disk_full_said(db):
        return _ingest(
            [Path(p) for p in paths], Path(db), settings, bands=bands, progress=progress,
            verify=verify, dry_run=dry_run, engine=engine, master=master, kind=kind,
            include=include, exclude=exclude,
        )  # fmt: skip


def remove(db: PathLike, paths: Sequence[PathLike]) -> dict[str, Any]:
    """Delete files (or every file under folders) from ``db``: their tiles, vectors, index rows."""
    with disk_full_said(db), Store(Path(db)) as store, store.writer("remove"):
        known = {record.path for record in store.files()}
        chosen: list[str] = []
        for path in paths:
            stored = canonical_path(path)  # a scene's MTL or STAC item: the scene
            under = [
                p for p in known if p == stored or p.startswith(stored.rstrip(os.sep) + os.sep)
            ]
            if not under:
                raise InputError(f"{path}: not in {Path(db).name}")
            chosen += under
        index = open_index(store)
        removed = store.remove_files(sorted(set(chosen)))
        index.remove(removed)
        index.save(
            index_path(store.path),
            IndexState(store.generation, store.max_tile_id(), index.count, index.dim),
        )
    return {"files_removed": len(set(chosen)), "tiles_removed": len(removed)}


def check(db: PathLike, repair: bool = False, settings: Settings | None = None) -> CheckReport:
    """Verify ``db`` (counts, vectors, footprints, index); ``repair`` fixes what it can."""
    from geosearch.check import check_database

    with disk_full_said(db):
        return check_database(Path(db), repair, settings)


def migrate(db: PathLike, settings: Settings | None = None) -> MigrateReport:
    """Project and shrink the vectors of a database made before compact vectors (or from too
    small a sample to project them then); see ``geosearch.migrate``."""
    from geosearch.migrate import migrate as _migrate

    with disk_full_said(db):
        return _migrate(Path(db), settings)


def similar(
    db: PathLike,
    queries: SearchRequest | Sequence[PathLike] = (),
    top: int | None = None,
    *,
    tile: int | None = None,
    lonlat: tuple[float, float] | None = None,
    date: str | None = None,
    filters: SearchFilters | None = None,
    good: Sequence[int] = (),
    bad: Sequence[int] = (),
    session: str | None = None,
    any_orientation: bool | None = None,
    settings: Settings | None = None,
) -> list[SearchResult]:
    """The most similar tiles to each query: ``similar(db, SearchRequest(...))``, or the same
    options as keywords: query files, ``top`` (default ``search.top``), ``tile`` (which tile of
    each file, 0-based), ``lonlat``/``date`` (the tile at a place), ``filters``.

    ``good``/``bad`` tile ids move the query (relevance feedback); each query is saved as a
    feedback session (``result.session``) that ``feedback`` refines in later rounds.
    ``any_orientation`` finds places however rotated or mirrored (config:
    ``search.orientations``); it embeds the query 8 times, with the CNN even for indexed tiles.
    """
    if isinstance(queries, SearchRequest):
        request = queries
    else:
        request = SearchRequest(
            queries=[Path(q) for q in queries], top=top, tile_index=tile, lonlat=lonlat,
            date=date, filters=filters or SearchFilters(), good=list(good), bad=list(bad),
            session=session, any_orientation=any_orientation,
        )  # fmt: skip
    return search_and_save(Path(db), request, settings or Settings())


def locate(
    db: PathLike,
    query: PathLike,
    *,
    tile: int | None = None,
    any_orientation: bool | None = None,
    settings: Settings | None = None,
) -> LocateResult:
    """Where a query picture (a chip, an upload, a screenshot) lies in the database's scenes:
    its placements, best first, each with the transform from its pixels to the scene's CRS."""
    settings = settings or Settings()
    request = SearchRequest(tile_index=tile, any_orientation=any_orientation)
    request = request.with_defaults(settings)
    with open_database(Path(db), settings) as catalog:
        return _locate(catalog, Path(query), settings.search, tile, request.any_orientation)


def write_location(
    result: LocateResult, db: PathLike, out: PathLike, settings: Settings | None = None
) -> LocationFiles:
    """Write ``located.geojson`` (every placement) and a copy of the query georeferenced by
    the best one (a GeoTIFF, or a PNG with a world file) in ``out``."""
    with open_database(Path(db), settings) as catalog:
        return _write_location(result, catalog, Path(out))


def feedback(
    db: PathLike,
    session: str,
    good: Sequence[int] = (),
    bad: Sequence[int] = (),
    *,
    by_rank: bool = True,
    top: int | None = None,
    settings: Settings | None = None,
) -> SearchResult:
    """Mark results of a session good/bad (by rank in its last results, or by tile id) and
    search again with every mark so far."""
    with disk_full_said(db):
        return refine(Path(db), session, good, bad, by_rank=by_rank, top=top, settings=settings)


def export_feedback(
    db: PathLike, session: str, out: PathLike, settings: Settings | None = None
) -> Path:
    """Write a GeoJSON of every tile marked in ``session``, with its label, time and user."""
    saved = session_marks(Path(db), session, settings)
    return write_marks(saved, Path(out))


def detect(
    db: PathLike,
    session: str,
    *,
    good: Sequence[int] = (),
    bad: Sequence[int] = (),
    good_within: PathLike | None = None,
    bad_within: PathLike | None = None,
    filters: SearchFilters | None = None,
    threshold: float | None = None,
    review: int = 0,
    out: PathLike | None = None,
    engine: str = DEFAULT_ENGINE,
    master: str | None = None,
    write: bool = True,
    settings: Settings | None = None,
) -> DetectResult:
    """Find every place like a session's marks: a classifier of its good and bad tiles (and
    those given here by id or by area, saved to the session) scores every tile the ``filters``
    allow; tiles at or above ``threshold`` (default ``detect.threshold``) are written to ``out``
    as merged detections (``geosearch.detection``); ``review`` tiles to mark next are picked.
    ``engine="spark"`` scores the database's vectors on Spark executors (``master``).
    ``write=False``: nothing written yet (``write_detections`` writes the result later)."""
    from geosearch.detection import area_tiles, check_threshold
    from geosearch.detection import detect as _detect
    from geosearch.detection import write_detections as _write_detections

    settings = settings or Settings()
    chosen = settings.detect.threshold if threshold is None else threshold
    check_threshold(chosen)
    marks = {int(t): 1 for t in good} | {int(t): -1 for t in bad}
    out_dir = Path(out) if out is not None else settings.detect.out
    with disk_full_said(db), open_database(Path(db), settings) as catalog:
        for area, label in ((good_within, 1), (bad_within, -1)):
            if area is not None:
                marks |= dict.fromkeys(area_tiles(catalog.store, _area_option(area)), label)
        spark = (settings.spark, master) if engines.engine(engine).batch_search else None
        result = _detect(
            catalog, session, marks, filters or SearchFilters(), chosen, review, settings.detect,
            spark,
        )  # fmt: skip
        if not write:
            return result
        return _write_detections(result, catalog, out_dir, settings.search.preview_size)


def write_detections(
    result: DetectResult, db: PathLike, out: PathLike, settings: Settings | None = None
) -> DetectResult:
    """Write a ``detect(..., write=False)`` result's files to ``out`` (``result.files``)."""
    from geosearch.detection import write_detections as _write_detections

    settings = settings or Settings()
    with disk_full_said(out), open_database(Path(db), settings) as catalog:
        return _write_detections(result, catalog, Path(out), settings.search.preview_size)


def _area_option(path: PathLike) -> Any:
    """An area given as an option: an unreadable file is a bad option (exit 2)."""
    try:
        return load_area(Path(path))
    except InputError as exc:
        raise ConfigError(str(exc)) from None


def export_chips(
    db: PathLike,
    session: str,
    out: PathLike,
    negatives: int = 0,
    settings: Settings | None = None,
) -> ChipExport:
    """Training data out: every tile marked in ``session`` and ``negatives`` background tiles
    as image chips in ``out/good`` and ``out/bad`` (torchvision's ImageFolder layout), with
    labels.csv and a GeoPackage of their footprints; see ``geosearch.chips``."""
    from geosearch.chips import export_chips as _export_chips

    if negatives < 0:
        raise ConfigError(f"--negatives {negatives}: a number of tiles, 0 or more")
    saved = session_marks(Path(db), session, settings)
    with open_database(Path(db), settings) as catalog:
        return _export_chips(catalog, saved, Path(out), negatives)


def similar_batch(
    db: PathLike,
    queries: Sequence[PathLike] = (),
    top: int = 5,
    *,
    all_tiles: bool = False,
    master: str | None = None,
    any_orientation: bool = False,
    settings: Settings | None = None,
) -> list[SearchResult]:
    """Many queries at once on Apache Spark: files/folders, or every tile (``all_tiles``)."""
    from geosearch.batch import similar_spark

    return similar_spark(
        Path(db),
        [Path(q) for q in queries],
        top,
        all_tiles=all_tiles,
        master=master,
        any_orientation=any_orientation,
        settings=settings,
    )


def write_results(
    results: Sequence[SearchResult],
    db: PathLike,
    out: PathLike = "results",
    preview_size: int = 256,
    settings: Settings | None = None,
    previews: int | str | None = None,
    parquet: bool = False,
) -> ResultFiles:
    """Write GeoJSON (and previews, contact sheets; a Parquet table) for ``results``.

    ``previews``: results per query given a preview, a number, "all" or "none" (default: the
    setting ``search.previews``); the others say ``preview: null``."""
    count = (settings or Settings()).search.previews_per_query(previews)
    with open_database(Path(db), settings) as catalog:
        files = _write_results(results, catalog, Path(out), preview_size, count)
    if parquet:
        files.parquet = write_parquet(results, Path(out) / PARQUET_NAME)
    return files


def similarity_maps(
    results: Sequence[SearchResult],
    db: PathLike,
    tiles: PathLike | None = None,
    pixels: PathLike | None = None,
    filters: SearchFilters | None = None,
    settings: Settings | None = None,
) -> list[SimilarityMap]:
    """GeoTIFF similarity maps of search results, a QGIS ``.qml`` beside each: ``tiles``, every
    indexed tile's similarity; ``pixels`` (embedding databases), every pixel's, over the area of
    the ``filters`` (``bbox``/``within``). See ``geosearch.maps``."""
    from geosearch.maps import write_similarity_maps

    settings = settings or Settings()
    with open_database(Path(db), settings) as catalog:
        return write_similarity_maps(
            catalog, results, Path(tiles) if tiles else None, Path(pixels) if pixels else None,
            filters or SearchFilters(), settings,
        )  # fmt: skip


def changes(
    db: PathLike,
    date_from: str,
    date_to: str,
    *,
    filters: SearchFilters | None = None,
    top: int = 20,
    pixel_map: bool = False,
    settings: Settings | None = None,
    engine: str = DEFAULT_ENGINE,
    master: str | None = None,
) -> ChangeResult:
    """The ``top`` places whose picture changed most from the period ``date_from`` to
    ``date_to`` (each a year, YYYY-MM or YYYY-MM-DD), in the ``filters``' area; see
    ``geosearch.changes``. ``pixel_map``: a per-pixel map will be asked for (embedding
    databases only: checked before the work). ``engine="spark"`` pairs the places and scores
    their vectors on Spark executors (``master``); the ranking is the local run's."""
    from geosearch.changes import find_changes, periods
    from geosearch.maps import check_embedding

    settings = settings or Settings()
    before, after = periods(date_from, date_to)
    spark = (settings.spark, master) if engines.engine(engine).batch_search else None
    area_filters = SearchFilters(bbox=(filters or SearchFilters()).bbox,
                                 within=(filters or SearchFilters()).within)  # fmt: skip
    with open_database(Path(db), settings) as catalog:
        if pixel_map:
            check_embedding(catalog)
        allowed = allowed_ids(catalog.store, area_filters)
        return find_changes(catalog, before, after, allowed, top, settings.changes, spark)


def write_changes(
    result: ChangeResult,
    db: PathLike,
    out: PathLike = "changes",
    *,
    tiles_map: PathLike | None = None,
    pixels_map: PathLike | None = None,
    filters: SearchFilters | None = None,
    settings: Settings | None = None,
) -> ChangeFiles:
    """Write ``changes.geojson``, previews and a contact sheet of ``result`` in ``out``;
    ``tiles_map``: every pair's change on the tile grid (GeoTIFF + .qml); ``pixels_map``
    (embedding databases): every pixel's change over the filters' area (default: the places
    paired)."""
    from geosearch.changes import change_maps
    from geosearch.changes import write_changes as _write_changes
    from geosearch.maps import area_of

    settings = settings or Settings()
    with open_database(Path(db), settings) as catalog:
        files = _write_changes(result, catalog, Path(out), settings.search.preview_size)
        files.maps = change_maps(
            result, catalog, Path(tiles_map) if tiles_map else None,
            Path(pixels_map) if pixels_map else None, area_of(filters or SearchFilters()),
            settings.maps,
        )  # fmt: skip
    return files


def info(db: PathLike, settings: Settings | None = None) -> dict[str, Any]:
    """What a database holds: tiles, files, extractors, bands, index."""
    with open_database(Path(db), settings) as catalog:
        store = catalog.store
        index = open_index(store)
        described = index.describe()
        files = store.files()
        path = index_path(store.path)
        tiles = store.tile_count()
        index_bytes = sum(p.stat().st_size for p in (path, vectors_path(path)) if p.exists())
        database_bytes = store.path.stat().st_size
        per_tile = max(tiles, 1)
        return {
            "db": str(store.path),
            "tiles": tiles,
            "files": sum(f.status == "done" for f in files),
            "files_partial": sum(f.status != "done" for f in files),
            "kind": catalog.manifest.kind,
            "bands": catalog.manifest.to_dict(),
            "tile_size": catalog.tile_size,
            "max_nodata_fraction": catalog.max_nodata_fraction,
            "extractors": [
                {"name": b.name, "version": b.version, "dim": b.dim, "weight": b.weight}
                for b in catalog.fusion.blocks
            ],
            "dim": catalog.dim,
            "vectors": {
                "dim": catalog.dim,
                "fused_dim": catalog.raw_dim,
                "projected": catalog.fusion.projection is not None,
                "dtype": "float16" if store.vector_dtype.endswith("f2") else "float32",
                "raw_features": catalog.keeps_raw_features,
            },
            "bytes_per_tile": {
                "database": round(database_bytes / per_tile),
                "index_files": round(index_bytes / per_tile),
                "disk": round((database_bytes + index_bytes) / per_tile),
                "index_memory": round(described["bytes_per_million"] / 1e6),
            },
            "fusion_fitted_on_tiles": store.meta("fusion_fitted_on_tiles"),
            "index": {
                "type": described["type"],
                "settings": described["settings"],
                "vectors": index.count,
                "file": str(path),
                "bytes": index_bytes,
                "bytes_per_million_tiles": described["bytes_per_million"],
                "disk_bytes_per_million_tiles": described["disk_bytes_per_million"],
            },
            "dates": store.date_sources(),  # tiles per date source; "undated": without
            "read_only": store.readonly,
            "geosearch_version": store.meta("geosearch_version"),
            "created": store.meta("created"),
        }


__all__ = [
    "changes",
    "check",
    "detect",
    "export_chips",
    "export_feedback",
    "write_detections",
    "feedback",
    "info",
    "ingest",
    "load_area",
    "load_settings",
    "migrate",
    "locate",
    "prepare_output",
    "remove",
    "SearchFilters",
    "SearchRequest",
    "similar",
    "similar_batch",
    "similarity_maps",
    "write_changes",
    "write_location",
    "write_results",
]
