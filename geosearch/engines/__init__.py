"""Engines: where an ingest's per-tile work runs, picked by name (``--engine``).

- ``local``: worker processes on this machine (``engines/local.py``);
- ``spark``: Apache Spark executors (``engines/spark.py``, ``pip install 'geosearch[spark]'``),
  which also search many queries at once (``similar --engine spark``, ``geosearch.batch``).

Both run the same per-chunk function and hand results to the same ordered writer
(``engines/base.py``, which also holds the ingest's plan and report types). A new engine is a
module with a ``scheduler(settings, master)`` function like ``local.scheduler`` (returning a
``base.Scheduler``) and one line in ``ENGINES``; its module is imported only when it runs, so
an engine's optional packages stay optional.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from geosearch.errors import ConfigError

if TYPE_CHECKING:
    from geosearch.catalog import Catalog
    from geosearch.config import Settings
    from geosearch.engines.base import FilePlan, IngestProgress, IngestReport, Scheduler


@dataclass(frozen=True)
class Engine:
    """One scheduler of the per-tile work: its name, module and what it offers."""

    name: str
    module: str
    description: str  # for --help
    batch_search: bool = False  # runs ``similar`` for many queries at once

    def run(
        self,
        catalog: Catalog,
        plans: Sequence[FilePlan],
        settings: Settings,
        bands: Sequence[int] | None,
        report: IngestReport,
        progress: IngestProgress,
        master: str | None = None,
    ) -> None:
        """Ingest ``plans`` into ``catalog`` on this engine (``master``: where, if it asks)."""
        from geosearch.engines.base import ingest_chunks  # numpy, the store: only when it runs

        scheduler = self.scheduler(settings, master)
        report.engine = scheduler.label
        ingest_chunks(catalog, plans, settings, bands, report, progress, scheduler)
        report.remote_chunks = scheduler.remote_chunks

    def scheduler(self, settings: Settings, master: str | None = None) -> Scheduler:
        """This engine's scheduler of chunks (``engines.base.Scheduler``)."""
        return importlib.import_module(self.module).scheduler(settings, master)


ENGINES = {
    engine.name: engine
    for engine in (
        Engine("local", "geosearch.engines.local", "this machine"),
        Engine("spark", "geosearch.engines.spark", "geosearch[spark]", batch_search=True),
    )
}
DEFAULT_ENGINE = "local"


def engine(name: str) -> Engine:
    """The engine called ``name``; ConfigError naming the choices otherwise."""
    try:
        return ENGINES[name]
    except KeyError:
        raise ConfigError(f"--engine: expected {' or '.join(ENGINES)}, got {name!r}") from None


def engines_help() -> str:
    """``local (this machine) or spark (geosearch[spark]).``"""
    return " or ".join(f"{e.name} ({e.description})" for e in ENGINES.values()) + "."
