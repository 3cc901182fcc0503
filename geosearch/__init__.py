"""geosearch: find similar places in imagery.

The public API::

    import geosearch
    report = geosearch.ingest(["tiles/"], db="geosearch.gpkg")
    results = geosearch.similar("geosearch.gpkg", ["tiles/a.tif"], top=5)
    results = geosearch.similar("geosearch.gpkg", geosearch.SearchRequest(lonlat=(-99.16, 47.01)))
    geosearch.write_results(results, "geosearch.gpkg", "results/")
    geosearch.info("geosearch.gpkg")
"""

from __future__ import annotations

from geosearch.api import (
    check,
    export_feedback,
    feedback,
    info,
    ingest,
    load_settings,
    remove,
    similar,
    write_results,
)
from geosearch.errors import (
    BandLayoutError,
    ConfigError,
    DatabaseError,
    GeosearchError,
    InputError,
    ModelError,
    OutputError,
)
from geosearch.request import SearchFilters, SearchRequest
from geosearch.version import __version__

__all__ = [
    "BandLayoutError",
    "ConfigError",
    "DatabaseError",
    "GeosearchError",
    "InputError",
    "ModelError",
    "OutputError",
    "SearchFilters",
    "SearchRequest",
    "__version__",
    "check",
    "export_feedback",
    "feedback",
    "info",
    "ingest",
    "load_settings",
    "remove",
    "similar",
    "write_results",
]
