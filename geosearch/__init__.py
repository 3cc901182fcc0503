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
import sys
import types
from typing import TYPE_CHECKING, Any

from geosearch.version import __version__

if TYPE_CHECKING:
    from geosearch.api import (
        changes,
        check,
        detect,
        export_chips,
        export_feedback,
        feedback,
        info,
        ingest,
        load_settings,
        remove,
        similar,
        write_changes,
        write_detections,
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
        ("changes", "check", "detect", "export_chips", "export_feedback", "feedback", "info",
         "ingest", "load_settings", "remove", "similar", "write_changes", "write_detections",
         "write_results"),
        "geosearch.api",
    ),
    **dict.fromkeys(
        ("BandLayoutError", "ConfigError", "DatabaseError", "GeosearchError", "InputError",
         "ModelError", "OutputError"),
        "geosearch.errors",
    ),
    **dict.fromkeys(("SearchFilters", "SearchRequest"), "geosearch.request"),
}  # fmt: skip


class _Package(types.ModuleType):
    """The package, whose public names are imported on first use. ``check``, ``feedback`` and
    ``ingest`` are also submodules: importing one must not put the module where the API
    function is (as the eager ``from geosearch.api import ...`` used to ensure)."""

    def __getattr__(self, name: str) -> Any:
        home = _HOMES.get(name)
        if home is None:
            raise AttributeError(f"module 'geosearch' has no attribute {name!r}")
        module = importlib.import_module(home)
        for public, where in _HOMES.items():
            if where == home:
                self.__dict__[public] = getattr(module, public)
        return self.__dict__[name]

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _HOMES and isinstance(value, types.ModuleType):
            return  # a submodule named like an API function (sys.modules still has it)
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *__all__})


sys.modules[__name__].__class__ = _Package

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
    "changes",
    "check",
    "detect",
    "export_chips",
    "export_feedback",
    "feedback",
    "info",
    "ingest",
    "load_settings",
    "remove",
    "similar",
    "write_changes",
    "write_detections",
    "write_results",
]
