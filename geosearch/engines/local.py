"""The local engine: read tiles window by window, extract features in batches, commit batches.

Each batch is one transaction (tiles with their vectors and the files they complete), then
the in-memory index follows it; the index file is saved at the end, or on interruption for
what was committed. A file that fails half-way loses the tiles it had written.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from geosearch.catalog import Catalog
from geosearch.config import Settings
from geosearch.errors import InputError
from geosearch.index import IndexState, VectorIndex, index_path, open_index
from geosearch.ingest import FilePlan, IngestProgress, IngestReport, Skipped, error_reason
from geosearch.sources import RawTile, open_source
from geosearch.store import FileRecord, TileRecord


class _BatchWriter:
    """Collects tiles and file progress; ``flush`` computes vectors and commits them."""

    def __init__(self, catalog: Catalog, index: VectorIndex, report: IngestReport) -> None:
        self.catalog = catalog
        self.index = index
        self.report = report
        self.tiles: list[tuple[TileRecord, RawTile]] = []
        self.started: list[FileRecord] = []
        self.finished: list[FileRecord] = []
        self.failed: list[str] = []

    def drop_file(self, path: str) -> None:
        """Forget a failed file's pending tiles; delete the ones already committed."""
        self.tiles = [(record, tile) for record, tile in self.tiles if record.path != path]
        self.failed.append(path)

    def flush(self) -> None:
        if not (self.tiles or self.started or self.finished or self.failed):
            return
        records = [record for record, _ in self.tiles]
        if self.tiles:
            vectors, raw = self.catalog.compute([tile for _, tile in self.tiles])
        else:
            vectors = raw = []
        result = self.catalog.store.write_batch(
            list(zip(records, vectors, raw, strict=True)), self.started, self.finished, self.failed
        )
        self.index.remove(result.removed)
        if result.added:
            self.index.add(result.added, vectors)
        self.report.tiles_added += len(result.added)
        self.report.tiles_removed += len(result.removed)
        self.tiles, self.started, self.finished, self.failed = [], [], [], []


def run_local(
    catalog: Catalog,
    plans: Sequence[FilePlan],
    settings: Settings,
    bands: Sequence[int] | None,
    report: IngestReport,
    progress: IngestProgress,
) -> None:
    """Ingest ``plans`` into ``catalog`` on this machine, committing every ``batch_size`` tiles."""
    store = catalog.store
    index = open_index(store)
    if index.dim != catalog.dim:
        index = VectorIndex(catalog.dim)
    writer = _BatchWriter(catalog, index, report)
    try:
        for plan in plans:
            if plan.action == "unchanged":
                report.files_unchanged += 1
                progress.advance(1)
                continue
            _ingest_file(catalog, plan, bands, settings.batch_size, writer, report, progress)
        writer.flush()
    finally:
        state = IndexState(store.generation, store.max_tile_id(), index.count, index.dim)
        index.save(index_path(store.path), state)


def _ingest_file(
    catalog: Catalog,
    plan: FilePlan,
    bands: Sequence[int] | None,
    batch_size: int,
    writer: _BatchWriter,
    report: IngestReport,
    progress: IngestProgress,
) -> None:
    store = catalog.store
    try:
        source = open_source(Path(plan.path))
    except InputError as exc:
        _skip(plan, error_reason(exc, plan.path), writer, report, progress)
        progress.advance(1)
        return
    with source:
        try:
            read_bands = catalog.manifest.bands_for(source, bands, catalog.name)
        except InputError as exc:
            _skip(plan, error_reason(exc, plan.path), writer, report, progress)
            progress.advance(1)
            return
        if plan.action == "replace":
            writer.flush()
            removed = store.remove_files([plan.path])
            writer.index.remove(removed)
            report.tiles_removed += len(removed)
            report.files_replaced += 1
        done = store.windows_done(plan.path) if plan.action == "resume" else set()
        report.files_resumed += plan.action == "resume"
        windows = [w for w in catalog.windows(source) if (w.row, w.col) not in done]
        writer.started.append(plan.record())
        step = 1.0 / max(1, len(windows))
        try:
            for window in windows:
                tile = source.read(window, read_bands)
                progress.advance(step, 1)
                if not catalog.keeps(tile):
                    report.tiles_nodata += 1
                    continue
                footprint = source.footprint(window)
                record = TileRecord(
                    id=None,
                    path=plan.path,
                    window=window,
                    crs=source.crs_label,
                    footprint_native=footprint.native_wkt if footprint else None,
                    footprint=footprint.wgs84 if footprint else None,
                    acquired=source.acquired,
                    nodata_fraction=round(tile.nodata_fraction, 6),
                )
                writer.tiles.append((record, tile))
                if len(writer.tiles) >= batch_size:
                    writer.flush()
        except InputError as exc:
            writer.drop_file(plan.path)
            _skip(plan, error_reason(exc, plan.path), writer, report, progress, drop=False)
            return
        if not windows:
            progress.advance(1)
        writer.finished.append(plan.record("done"))
        report.files_ingested += 1


def _skip(
    plan: FilePlan,
    reason: str,
    writer: _BatchWriter,
    report: IngestReport,
    progress: IngestProgress,
    drop: bool = True,
) -> None:
    """Report a file as skipped; a file known to the database loses its stale tiles."""
    if drop and plan.action in ("resume", "replace"):
        writer.drop_file(plan.path)
    report.skipped.append(Skipped(plan.path, reason))
    progress.skipped(plan.path, reason)
