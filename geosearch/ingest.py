"""Ingest: turn folders of imagery into tiles, vectors and an index in one database.

Planning (which files are new, changed, half-done or unchanged), creating a database's
manifest and fusion, and reporting are shared here; ``engines`` schedule the per-tile work.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from geosearch.bands import build_manifest
from geosearch.catalog import Catalog, initialise_catalog, open_catalog
from geosearch.config import Settings
from geosearch.errors import ConfigError, GeosearchError, InputError
from geosearch.sources import RawTile, file_name_problem, find_images, open_source
from geosearch.store import FileRecord, Store, normalise_path

# Tiles read to fit the fusion's standardisation when a database is created.
FIT_SAMPLE_TILES = 256
FIT_SAMPLE_TILES_PER_FILE = 32
FIT_SAMPLE_MAX_FILES = 32

Action = Literal["new", "resume", "replace", "unchanged"]


@dataclass(frozen=True)
class FilePlan:
    """What ingest will do with one file."""

    path: str
    size: int
    mtime_ns: int
    action: Action
    sha256: str | None = None

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
    files_ingested: int = 0
    files_unchanged: int = 0
    files_resumed: int = 0
    files_replaced: int = 0
    tiles_added: int = 0
    tiles_removed: int = 0
    tiles_nodata: int = 0
    seconds: float = 0.0
    skipped: list[Skipped] = field(default_factory=list)
    planned: list[dict] | None = None  # dry run only: {"path", "action"} per file
    engine: str = "local"
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


def discover(paths: Iterable[Path]) -> list[str]:
    """Every image file under ``paths``, normalised, each once, in a stable order."""
    seen: dict[str, None] = {}
    for root in paths:
        if not Path(root).exists() and not Path(root).is_symlink():
            raise InputError(f"{root}: no such file or folder")
        for path in find_images(Path(root)):
            seen.setdefault(normalise_path(path), None)
    return list(seen)


def plan_files(files: Sequence[str], store: Store | None, verify: bool = False) -> list[FilePlan]:
    """Decide per file: new, resume (half-done, unchanged), replace (changed) or unchanged.

    "Changed" means another size or mtime; with ``verify``, another content hash (SHA-256),
    and a file whose mtime alone changed is recorded as unchanged.
    """
    plans = []
    for path in files:
        try:
            stat = os.stat(path)
            size, mtime_ns = stat.st_size, stat.st_mtime_ns
        except OSError:
            size, mtime_ns = -1, -1  # reported when read
        digest = content_hash(path) if verify and size >= 0 else None
        known = store.file_record(path) if store is not None else None
        if known is None:
            action: Action = "new"
        elif verify and known.sha256 is not None:
            action = "replace" if digest != known.sha256 else _done_or_resume(known)
        elif (known.size, known.mtime_ns) != (size, mtime_ns):
            action = "replace"
        else:
            action = _done_or_resume(known)
        plan = FilePlan(path, size, mtime_ns, action, digest)
        touched = (known.size, known.mtime_ns, known.sha256) if known else None
        if verify and action == "unchanged" and touched != (size, mtime_ns, digest):
            store.touch_file(plan.record("done"))
        plans.append(plan)
    return plans


def _done_or_resume(known: FileRecord) -> Action:
    return "unchanged" if known.status == "done" else "resume"


def content_hash(path: str) -> str | None:
    """SHA-256 of a file's bytes, or None if it can't be read (reported later)."""
    if not os.path.isfile(path):  # a FIFO would block; anything else is reported when read
        return None
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def create_catalog(
    store: Store, settings: Settings, plans: Sequence[FilePlan], progress: IngestProgress
) -> tuple[Catalog | None, dict[str, str]]:
    """Make a new database's manifest (from its first readable file) and fusion (from a sample).

    Returns the catalog (None if no file could be read) and the files found unreadable, each
    with its reason (already reported to ``progress``).
    """
    unreadable: dict[str, str] = {}
    manifest = None
    sample: list[RawTile] = []
    files_sampled = 0
    for plan in plans:
        if len(sample) >= FIT_SAMPLE_TILES or files_sampled >= FIT_SAMPLE_MAX_FILES:
            break
        try:
            with open_source(Path(plan.path)) as source:
                # A file decides the layout only once its sample tiles have read cleanly.
                layout = manifest or build_manifest(source, settings.bands)
                bands = layout.bands_for(source, settings.bands.select, store.path.name)
                windows = source.windows(settings.tile_size)
                step = max(1, len(windows) // FIT_SAMPLE_TILES_PER_FILE)
                tiles = [
                    source.read(window, bands)
                    for window in windows[::step][:FIT_SAMPLE_TILES_PER_FILE]
                ]
            manifest = layout
            sample += [
                tile
                for tile in tiles
                if tile.valid.any() and tile.nodata_fraction <= settings.max_nodata_fraction
            ]
            files_sampled += 1
        except InputError as exc:
            unreadable[plan.path] = error_reason(exc, plan.path)
            progress.skipped(plan.path, unreadable[plan.path])
    if manifest is None:
        return None, unreadable
    return initialise_catalog(store, settings, manifest, sample), unreadable


def ingest(
    paths: Sequence[Path],
    db: Path,
    settings: Settings | None = None,
    *,
    bands: Sequence[int] | None = None,
    progress: IngestProgress | None = None,
    verify: bool = False,
    dry_run: bool = False,
    engine: str = "local",
    master: str | None = None,
) -> IngestReport:
    """Ingest every image under ``paths`` into database ``db`` (created if needed).

    Unreadable files are reported through ``progress.skipped`` and listed in the report; they
    never stop the ingest. Re-running skips unchanged files, resumes half-done ones and
    replaces changed ones (``verify``: judged by content hash). ``dry_run`` only plans:
    the report's ``planned`` lists each file with what ingest would do, nothing is written.
    ``engine="spark"`` runs the per-tile work on Apache Spark (``master``, else config).
    """
    if engine not in ("local", "spark"):
        raise ConfigError(f"--engine: expected local or spark, got {engine!r}")

    settings = settings or Settings()
    if bands:
        settings = settings.with_overrides({"bands.select": list(bands)})
    progress = progress or SilentProgress()
    started = time.perf_counter()
    files = discover(paths)
    report = IngestReport(db=str(db), files_found=len(files))
    for path in [f for f in files if file_name_problem(Path(f))]:
        files.remove(path)
        report.skipped.append(Skipped(path, file_name_problem(Path(path))))
        progress.skipped(path, report.skipped[-1].reason)
    if dry_run:
        if Path(db).exists():
            with Store(db) as store:
                plans = plan_files(files, store, verify)
        else:
            plans = plan_files(files, None, verify)
        report.planned = [{"path": plan.path, "action": plan.action} for plan in plans]
        report.seconds = round(time.perf_counter() - started, 3)
        return report
    with Store(db, create=True) as store, store.writer("ingest"):
        plans = plan_files(files, store, verify)
        catalog = open_catalog(store, settings)
        unreadable: dict[str, str] = {}
        if catalog is None:
            catalog, unreadable = create_catalog(store, settings, plans, progress)
            report.skipped += [Skipped(path, reason) for path, reason in unreadable.items()]
        progress.begin(len(plans))
        if catalog is None:
            progress.advance(len(plans))
        else:
            todo = [plan for plan in plans if plan.path not in unreadable]
            progress.advance(len(plans) - len(todo))
            if engine == "spark":
                from geosearch.engines.spark import run_spark

                run_spark(catalog, todo, settings, bands, report, progress, master)
            else:
                from geosearch.engines.local import run_local

                run_local(catalog, todo, settings, bands, report, progress)
        store.update_extent()
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def error_reason(exc: GeosearchError, path: str) -> str:
    """An error's message without the path it starts with (the caller shows the path)."""
    text = str(exc)
    prefix = f"{path}: "
    return text[len(prefix) :] if text.startswith(prefix) else text
