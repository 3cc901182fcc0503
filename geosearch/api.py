"""The Python API, one function per thing a user does; the CLI is a shell over these."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from geosearch.config import Settings, load_settings
from geosearch.index import index_path, open_index
from geosearch.ingest import IngestProgress, IngestReport
from geosearch.ingest import ingest as _ingest
from geosearch.render import ResultFiles
from geosearch.render import write_results as _write_results
from geosearch.search import SearchResult, open_database
from geosearch.search import similar as _similar

PathLike = str | Path


def ingest(
    paths: Sequence[PathLike],
    db: PathLike = "geosearch.gpkg",
    settings: Settings | None = None,
    *,
    bands: Sequence[int] | None = None,
    progress: IngestProgress | None = None,
) -> IngestReport:
    """Ingest every image under ``paths`` into ``db``; see ``geosearch.ingest.ingest``."""
    return _ingest([Path(p) for p in paths], Path(db), settings, bands=bands, progress=progress)


def similar(
    db: PathLike,
    queries: Sequence[PathLike],
    top: int = 5,
    *,
    tile: int | None = None,
    settings: Settings | None = None,
) -> list[SearchResult]:
    """The ``top`` most similar tiles to each query file, best first."""
    return _similar(Path(db), [Path(q) for q in queries], top, tile=tile, settings=settings)


def write_results(
    results: Sequence[SearchResult],
    db: PathLike,
    out: PathLike = "results",
    preview_size: int = 256,
    settings: Settings | None = None,
) -> ResultFiles:
    """Write GeoJSON, previews and contact sheets for ``results`` under ``out``."""
    catalog = open_database(Path(db), settings)
    try:
        return _write_results(results, catalog, Path(out), preview_size)
    finally:
        catalog.store.close()


def info(db: PathLike, settings: Settings | None = None) -> dict[str, Any]:
    """What a database holds: tiles, files, extractors, bands, index."""
    catalog = open_database(Path(db), settings)
    store = catalog.store
    try:
        index = open_index(store)
        files = store.files()
        path = index_path(store.path)
        return {
            "db": str(store.path),
            "tiles": store.tile_count(),
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
            "fusion_fitted_on_tiles": store.meta("fusion_fitted_on_tiles"),
            "index": {
                "type": "flat inner product (exact)",
                "vectors": index.count,
                "file": str(path),
                "bytes": path.stat().st_size if path.exists() else None,
                "bytes_per_million_tiles": catalog.dim * 4 * 1_000_000,
            },
            "geosearch_version": store.meta("geosearch_version"),
            "created": store.meta("created"),
        }
    finally:
        store.close()


__all__ = ["info", "ingest", "load_settings", "similar", "write_results"]
