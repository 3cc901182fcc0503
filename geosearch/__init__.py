"""geosearch: find similar places in imagery.

The public API::

    import geosearch
    report = geosearch.ingest(["tiles/"], db="geosearch.gpkg")
    results = geosearch.similar("geosearch.gpkg", ["tiles/a.tif"], top=5)
    results = geosearch.similar("geosearch.gpkg", geosearch.SearchRequest(lonlat=(-99.16, 47.01)))
    geosearch.write_results(results, "geosearch.gpkg", "results/")
    geosearch.info("geosearch.gpkg")

The names are imported when first used (PEP 562), so ``import geosearch`` and
``geosearch --version`` stay quick: the API pulls in numpy, rasterio, GDAL and FAISS.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from geosearch.version import __version__

if TYPE_CHECKING:
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

_HOMES = {
    **dict.fromkeys(
        ("check", "export_feedback", "feedback", "info", "ingest", "load_settings", "remove",
         "similar", "write_results"),
        "geosearch.api",
    ),
    **dict.fromkeys(
        ("BandLayoutError", "ConfigError", "DatabaseError", "GeosearchError", "InputError",
         "ModelError", "OutputError"),
        "geosearch.errors",
    ),
    **dict.fromkeys(("SearchFilters", "SearchRequest"), "geosearch.request"),
}  # fmt: skip


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'geosearch' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


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
