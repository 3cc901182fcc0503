"""What every engine shares: the ingest's plan and report, chunks of work, the per-chunk
function, and the ordered writer.

``ingest`` plans (a ``FilePlan`` per file) and hands the plans to an engine (``engines.engine``),
which reports into an ``IngestReport`` and an ``IngestProgress``.

Files are cut into chunks of windows (``batch_size`` each). An engine (a scheduler) runs
``embed_chunk`` on each chunk somewhere — worker processes, Spark executors — and hands the
results back in chunk order to ``ingest_chunks``, which commits them a batch at a time: one
transaction holds tiles with their vectors and the files they complete, then the in-memory
index follows. The index file is saved at the end, or on interruption for what was committed.
A file that fails half-way loses the tiles it had written.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal, Protocol

import numpy as np

from geosearch.catalog import Catalog, EmbeddedTiles
from geosearch.config import Settings
from geosearch.errors import InputError, error_reason
from geosearch.index import IndexState, VectorIndex, index_path, open_index
from geosearch.pixels import Window
from geosearch.sources import window_grid
from geosearch.store import FileRecord, TileRecord

Action = Literal["new", "resume", "replace", "unchanged"]


@dataclass(frozen=True)
class FilePlan:
    """What ingest will do with one file."""

    path: str
    size: int
    mtime_ns: int
    action: Action
    sha256: str | None = None
    scene: str | None = None  # a product (a scene of several files): what it is

    def record(self, status: str = "partial") -> FileRecord:
        return FileRecord(self.path, self.size, self.mtime_ns, status, sha256=self.sha256)


@dataclass
class Skipped:
    path: str
    reason: str


@dataclass
class IngestReport:
    """What an ingest did; ``skipped`` lists every file that could not be ingested and why."""

    db: str
    files_found: int = 0
    files_excluded: int = 0  # left out by --include/--exclude
    files_ingested: int = 0
    scenes_ingested: int = 0  # of files_ingested: products (a scene of several files)
    files_unchanged: int = 0
    files_resumed: int = 0
    files_replaced: int = 0
    tiles_added: int = 0
    tiles_removed: int = 0
    tiles_nodata: int = 0
    seconds: float = 0.0
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # one line each, e.g. a file left empty
    planned: list[dict] | None = None  # dry run: {"path", "action", "detail"} per file
    kind: str | None = None  # what the database holds: "geo" or "plain"
    kind_reason: str = ""  # why: the database's own kind, --kind, or the inputs' majority
    new_database: bool = False  # the kind was decided by this run
    engine: str = ""  # which engine ran it (``engines.ENGINES``)
    remote_chunks: int = 0  # Spark: chunks computed by executors, outside the driver

    def to_dict(self) -> dict:
        return asdict(self)


class IngestProgress(Protocol):
    """Receives progress; the CLI draws a bar from it. Every method is optional to act on."""

    def begin(self, files: int) -> None: ...

    def advance(self, files: float, tiles: int = 0) -> None: ...

    def skipped(self, path: str, reason: str) -> None: ...


class SilentProgress:
    def begin(self, files: int) -> None:
        pass

    def advance(self, files: float, tiles: int = 0) -> None:
        pass

    def skipped(self, path: str, reason: str) -> None:
        pass


@dataclass(frozen=True)
class Chunk:
    """Some windows of one file (None: all of them), and whether they start/end the file."""

    plan: FilePlan
    windows: list[Window] | None
    first: bool
    last: bool
    share: float  # fraction of the file, for progress


@dataclass(frozen=True)
class ChunkFailure:
    reason: str


class Scheduler(Protocol):
    """Runs ``embed_chunk`` on chunks and yields (chunk, result) back in the chunks' order;
    ``label`` names it in the report, ``remote_chunks`` counts chunks run in other processes'
    hosts (Spark executors)."""

    label: str
    remote_chunks: int

    def run(
        self, catalog: Catalog, chunks: Iterator[Chunk], bands: Sequence[int] | None
    ) -> Iterator[tuple[Chunk, EmbeddedTiles | ChunkFailure]]: ...


def embed_chunk(
    catalog: Catalog, path: str, windows: list[Window] | None, select: Sequence[int] | None
) -> EmbeddedTiles | ChunkFailure:
    """Embed one chunk; an unreadable file becomes a ChunkFailure carrying the reason."""
    try:
        return catalog.embed(path, windows, select)
    except InputError as exc:
        return ChunkFailure(error_reason(exc, path))


class _BatchWriter:
    """Collects embedded tiles and file progress; ``flush`` commits them in one transaction."""

    def __init__(self, catalog: Catalog, index: VectorIndex, report: IngestReport) -> None:
        self.catalog = catalog
        self.index = index
        self.report = report
        self.records: list[TileRecord] = []
        self.vectors: list[np.ndarray] = []
        self.raw: list[np.ndarray | None] = []  # None: the database keeps no raw features
        self.started: list[FileRecord] = []
        self.finished: list[FileRecord] = []
        self.failed: list[str] = []
        self.kept: dict[str, int] = {}  # tiles kept so far of each file under way

    def add(self, embedded: EmbeddedTiles) -> None:
        self.records += embedded.records
        self.vectors += list(embedded.vectors)
        kept = embedded.raw if self.catalog.keeps_raw_features else [None] * len(embedded.records)
        self.raw += list(kept)

    def drop_file(self, path: str) -> None:
        """Forget a failed file's pending tiles; delete the ones already committed."""
        keep = [i for i, record in enumerate(self.records) if record.path != path]
        self.records = [self.records[i] for i in keep]
        self.vectors = [self.vectors[i] for i in keep]
        self.raw = [self.raw[i] for i in keep]
        self.started = [f for f in self.started if f.path != path]
        self.failed.append(path)

    def flush(self) -> None:
        if not (self.records or self.started or self.finished or self.failed):
            return
        result = self.catalog.store.write_batch(
            list(zip(self.records, self.vectors, self.raw, strict=True)),
            self.started,
            self.finished,
            self.failed,
        )
        self.index.remove(result.removed)
        if result.added:
            self.index.add(np.asarray(result.added), np.vstack(self.vectors))
        self.report.tiles_added += len(result.added)
        self.report.tiles_removed += len(result.removed)
        self.records, self.vectors, self.raw = [], [], []
        self.started, self.finished, self.failed = [], [], []


def ingest_chunks(
    catalog: Catalog,
    plans: Sequence[FilePlan],
    settings: Settings,
    bands: Sequence[int] | None,
    report: IngestReport,
    progress: IngestProgress,
    scheduler: Scheduler,
) -> None:
    """Ingest ``plans`` into ``catalog``, the per-chunk work done by ``scheduler``."""
    store = catalog.store
    catalog.extractors()  # checks the database's extractor versions here, before any work
    index = open_index(store)
    if index.dim != catalog.dim:
        index = VectorIndex(catalog.dim)
    writer = _BatchWriter(catalog, index, report)
    failed: set[str] = set()
    chunks = _chunks(catalog, plans, settings.batch_size, writer, report, progress)
    try:
        for chunk, result in scheduler.run(catalog, chunks, bands):
            _take(chunk, result, writer, failed, report, progress, settings.batch_size)
        writer.flush()
    finally:
        state = IndexState(store.generation, store.max_tile_id(), index.count, index.dim)
        index.save(index_path(store.path), state)
    open_index(store)  # the kind that suits the new size (a rebuild here, not at the next query)


def _chunks(
    catalog: Catalog,
    plans: Sequence[FilePlan],
    size: int,
    writer: _BatchWriter,
    report: IngestReport,
    progress: IngestProgress,
) -> Iterator[Chunk]:
    """Chunks of work, in file order; unchanged files are counted, changed ones cleared first."""
    for plan in plans:
        if plan.action == "unchanged":
            report.files_unchanged += 1
            progress.advance(1)
            continue
        if plan.action == "replace":
            writer.flush()
            removed = catalog.store.remove_files([plan.path])
            writer.index.remove(removed)
            report.tiles_removed += len(removed)
            report.files_replaced += 1
        report.files_resumed += plan.action == "resume"
        windows = window_grid(plan.path, catalog.tile_size)
        if windows is None:
            yield Chunk(plan, None, first=True, last=True, share=1.0)
            continue
        if plan.action == "resume":
            done = catalog.store.windows_done(plan.path)
            windows = [w for w in windows if (w.row, w.col) not in done]
        pieces = [windows[i : i + size] for i in range(0, len(windows), size)] or [[]]
        for number, piece in enumerate(pieces):
            yield Chunk(
                plan,
                piece,
                first=number == 0,
                last=number == len(pieces) - 1,
                share=1.0 / len(pieces),
            )


def _take(
    chunk: Chunk,
    result: EmbeddedTiles | ChunkFailure,
    writer: _BatchWriter,
    failed: set[str],
    report: IngestReport,
    progress: IngestProgress,
    batch_size: int,
) -> None:
    """Hand one finished chunk to the writer (in file order), committing full batches."""
    path = chunk.plan.path
    tiles = len(result.records) + result.too_empty if isinstance(result, EmbeddedTiles) else 0
    progress.advance(chunk.share, tiles)
    if path in failed:
        return
    if isinstance(result, ChunkFailure):
        failed.add(path)
        if not chunk.first or chunk.plan.action in ("resume", "replace"):
            writer.drop_file(path)
        report.skipped.append(Skipped(path, result.reason))
        progress.skipped(path, result.reason)
        return
    if chunk.first:
        writer.started.append(chunk.plan.record())
    writer.add(result)
    report.tiles_nodata += result.too_empty
    writer.kept[path] = writer.kept.get(path, 0) + len(result.records)
    if chunk.last:
        writer.finished.append(chunk.plan.record("done"))
        report.files_ingested += 1
        report.scenes_ingested += chunk.plan.scene is not None
        if not writer.kept.pop(path) and chunk.plan.action != "resume":
            limit = writer.catalog.max_nodata_fraction
            report.notes.append(
                f"{path}: no tile indexed: every tile is more than {limit:.0%} nodata "
                f"(max_nodata_fraction {limit:g})"
            )
    if len(writer.records) >= batch_size:
        writer.flush()
