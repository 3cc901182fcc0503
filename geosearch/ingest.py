"""Ingest: turn folders of imagery into tiles, vectors and an index in one database.

Planning (which files are new, changed, half-done or unchanged) and creating a database's
manifest and fusion happen here; then the plans are handed to an engine (``engines``), which
schedules the per-tile work and reports into the ``IngestReport`` (``engines.base``).
"""

from __future__ import annotations

import fnmatch
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from geosearch.bands import BandManifest, build_manifest
from geosearch.catalog import (
    Catalog,
    EmbeddedTiles,
    initialise_catalog,
    open_catalog,
    sampling_catalog,
)
from geosearch.config import Settings
from geosearch.engines import DEFAULT_ENGINE
from geosearch.engines import engine as engine_named
from geosearch.engines.base import (
    Action,
    Chunk,
    FilePlan,
    IngestProgress,
    IngestReport,
    Scheduler,
    SilentProgress,
    Skipped,
)
from geosearch.errors import ConfigError, InputError, error_reason
from geosearch.formats import KINDS, kind_of
from geosearch.pixels import RawTile, Window
from geosearch.products import product_at
from geosearch.sources import (
    content_hash,
    file_identity,
    file_name_problem,
    find_images,
    open_source,
)
from geosearch.store import FileRecord, Store, normalise_path

# Tiles read to fit the fusion's standardisation when a database is created, from files spread
# over the whole input (the first 32 files of a folder of pictures were 32 pictures of one
# kind: EuroSAT's fusion was fitted on AnnualCrop alone).
FIT_SAMPLE_TILES = 1024  # the projection to vectors.dims needs twice as many
FIT_SAMPLE_TILES_PER_FILE = 128


def discover(paths: Iterable[Path]) -> list[str]:
    """Every image file and scene under ``paths``, normalised, each once, in a stable order."""
    return [path for path, _ in _discover_with_names(paths)]


def _discover_with_names(paths: Iterable[Path]) -> list[tuple[str, str]]:
    """(stored path, path relative to the folder given) of every image file and scene."""
    seen: dict[str, str] = {}
    for root in map(Path, paths):
        if not (root.exists() or root.is_symlink() or "*" in root.name):  # *: band files
            raise InputError(f"{root}: no such file or folder")
        for path in find_images(root):
            stored = _canonical(path) if path == root else normalise_path(path)
            relative = os.path.relpath(path, root) if root.is_dir() else path.name
            seen.setdefault(stored, relative)
    return list(seen.items())


def _canonical(path: Path) -> str:
    """A path given by the user (a scene's MTL or STAC item...): the path stored for it."""
    try:
        product = product_at(path)
    except InputError:
        product = None  # reported when read
    return product.path if product is not None else normalise_path(path)


def select_inputs(
    paths: Iterable[Path], include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> tuple[list[str], int]:
    """Discovered inputs that ``include`` globs (any, if given) and no ``exclude`` glob match,
    and how many were left out. Globs match the path below the folder given, or the file name,
    ignoring case: ``*.jpg``, ``quicklooks/*``, ``*_B8.TIF``."""
    kept, excluded = [], 0

    def matches(patterns: Sequence[str], relative: str) -> bool:
        names = (relative.lower(), Path(relative).name.lower())
        return any(fnmatch.fnmatchcase(n, p.lower()) for p in patterns for n in names)

    for path, relative in _discover_with_names(paths):
        if (include and not matches(include, relative)) or matches(exclude, relative):
            excluded += 1
        else:
            kept.append(path)
    return kept, excluded


def choose_kind(
    files: Sequence[str], requested: str | None, stored: str | None, db_name: str
) -> tuple[str, str]:
    """What the database holds ("geo" or "plain") and why: its own kind if it has one (a
    contrary ``requested`` kind is an error), else ``requested`` (--kind), else the kind of most
    inputs (georeferenced when tied)."""
    if requested is not None and requested not in KINDS:
        raise ConfigError(f"--kind: expected geo or plain, got {requested!r}")
    if stored is not None:
        if requested is not None and requested != stored:
            raise ConfigError(
                f"--kind {requested}: {db_name} holds {KINDS[stored]}; use another --db"
            )
        return stored, f"{db_name} holds {KINDS[stored]}"
    if requested is not None:
        return requested, f"--kind {requested}"
    counts = Counter(kind_of(path) for path in files)
    kind = "plain" if counts["plain"] > counts["geo"] else "geo"
    return kind, f"{counts[kind]} of {len(files)} inputs are {KINDS[kind]}; --kind to choose"


def other_kind_reason(kind: str, db_name: str) -> str:
    """Why a file of the other kind is skipped, in words a user can act on."""
    other = "plain" if kind == "geo" else "geo"
    return (
        f"{db_name} holds {KINDS[kind]}, this file is one of the {KINDS[other]}; "
        "use another --db for them (--exclude leaves them out quietly)"
    )


def plan_files(
    files: Sequence[str], store: Store | None, verify: bool = False, touch: bool = True
) -> list[FilePlan]:
    """Decide per file: new, resume (half-done, unchanged), replace (changed) or unchanged.

    "Changed" means another size or mtime (a scene: its member files' total size and latest
    mtime); with ``verify``, another content hash (SHA-256), and a file whose mtime alone
    changed is recorded as unchanged (unless ``touch`` is False: a dry run writes nothing).
    """
    plans = []
    for path in files:
        try:
            size, mtime_ns = file_identity(path)
        except OSError:
            size, mtime_ns = -1, -1  # reported when read
        digest = content_hash(path) if verify and size >= 0 else None
        known = store.file_record(path) if store is not None else None
        if known is None:
            action: Action = "new"
        elif verify and known.sha256 is not None:
            action = "replace" if digest != known.sha256 else _done_or_resume(known)
        elif not known.same_identity(size, mtime_ns):
            action = "replace"
        else:
            action = _done_or_resume(known)
        plan = FilePlan(path, size, mtime_ns, action, digest, _scene(path))
        touched = (known.size, known.mtime_ns, known.sha256) if known else None
        if touch and verify and action == "unchanged" and touched != (size, mtime_ns, digest):
            store.touch_file(plan.record("done"))
        plans.append(plan)
    return plans


def _scene(path: str) -> str | None:
    """What a product is (None for a plain file, or a product that can't be read yet)."""
    try:
        product = product_at(Path(path))
    except InputError:
        return None
    return product.describe() if product is not None and product.bands else None


def _done_or_resume(known: FileRecord) -> Action:
    return "unchanged" if known.status == "done" else "resume"


def create_catalog(
    store: Store,
    settings: Settings,
    plans: Sequence[FilePlan],
    progress: IngestProgress,
    scheduler: Scheduler | None = None,
) -> tuple[Catalog | None, dict[str, str]]:
    """Make a new database's manifest (from its first readable file) and fusion (from a sample).
    The sample's features are computed by ``scheduler``'s workers (else in this process) and
    kept in the catalog for this ingest, which reuses them for those tiles rather than
    computing them twice (``Catalog.sample_features``).

    Returns the catalog (None if no file could be read) and the files found unreadable, each
    with its reason (already reported to ``progress``).
    """
    unreadable: dict[str, str] = {}
    manifest = None
    sample: list[RawTile] = []
    origins: list[tuple[str, Window]] = []  # each sample tile's file and window
    for plan in spread(plans, FIT_SAMPLE_TILES):
        if len(sample) >= FIT_SAMPLE_TILES:
            break
        try:
            with open_source(Path(plan.path)) as source:
                # A file decides the layout only once its sample tiles have read cleanly.
                layout = manifest or build_manifest(source, settings.bands)
                bands = layout.bands_for(source, settings.bands.select, store.path.name)
                windows = source.windows(settings.tile_size)
                step = max(1, len(windows) // FIT_SAMPLE_TILES_PER_FILE)
                read = [
                    (window, source.read(window, bands))
                    for window in windows[::step][:FIT_SAMPLE_TILES_PER_FILE]
                ]
            manifest = layout
            for window, tile in read:
                if tile.worth_indexing(settings.max_nodata_fraction):
                    sample.append(tile)
                    origins.append((plan.path, window))
        except InputError as exc:
            unreadable[plan.path] = error_reason(exc, plan.path)
            progress.skipped(plan.path, unreadable[plan.path])
    if manifest is None:
        return None, unreadable
    raw = None
    if scheduler is not None and sample:
        computed = sample_features(settings, manifest, origins, scheduler)
        kept = [n for n, origin in enumerate(origins) if origin in computed]
        sample, origins = [sample[n] for n in kept], [origins[n] for n in kept]
        raw = np.array([computed[origin] for origin in origins], dtype=np.float32)
    catalog = initialise_catalog(store, settings, manifest, sample, origins, raw)
    return catalog, unreadable


def sample_features(
    settings: Settings,
    manifest: BandManifest,
    origins: Sequence[tuple[str, Window]],
    scheduler: Scheduler,
) -> dict[tuple[str, Window], np.ndarray]:
    """The raw features of the creation sample's tiles at ``origins`` (file, window), computed
    by ``scheduler``'s workers as they compute every tile's (in this process, on one process's
    threads, the CNN ran 2-3x slower on a busy machine); a tile whose file failed there has
    none."""
    windows: dict[str, list[Window]] = {}
    for path, window in origins:
        windows.setdefault(path, []).append(window)
    size = settings.batch_size
    chunks = (
        Chunk(FilePlan(path, -1, -1, "new"), part[start : start + size], True, True, 1.0)
        for path, part in windows.items()
        for start in range(0, len(part), size)
    )
    found = {}
    sampling = sampling_catalog(settings, manifest)
    for chunk, result in scheduler.run(sampling, chunks, settings.bands.select):
        if isinstance(result, EmbeddedTiles):
            for record, features in zip(result.records, result.raw, strict=True):
                found[(chunk.plan.path, record.window)] = features
    return found


def spread(plans: Sequence[FilePlan], most: int) -> list[FilePlan]:
    """Up to ``most`` of ``plans``, evenly spaced over them (first and last included)."""
    if len(plans) <= most:
        return list(plans)
    step = (len(plans) - 1) / (most - 1)
    return [plans[round(i * step)] for i in range(most)]


def ingest(
    paths: Sequence[Path],
    db: Path,
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
    """Ingest every image and scene under ``paths`` into database ``db`` (created if needed).

    Unreadable files are reported through ``progress.skipped`` and listed in the report; they
    never stop the ingest. A database holds georeferenced rasters or plain pictures: ``kind``
    (else the database's own, else most inputs') decides, and files of the other kind are
    skipped, each reported. ``include``/``exclude`` globs choose inputs (see
    ``select_inputs``). Re-running skips unchanged files, resumes half-done ones and
    replaces changed ones (``verify``: judged by content hash). ``dry_run`` only plans:
    the report's ``planned`` lists each file with what ingest would do, nothing is written.
    ``engine`` names where the per-tile work runs (``engines.ENGINES``: ``spark`` on Apache
    Spark, at ``master``, else config).
    """
    chosen = engine_named(engine)

    settings = settings or Settings()
    if bands:
        settings = settings.with_overrides({"bands.select": list(bands)})
    progress = progress or SilentProgress()
    started = time.perf_counter()
    files, excluded = select_inputs(paths, include, exclude)
    if not files:
        left_out = f" ({excluded} left out by --include/--exclude)" if excluded else ""
        raise InputError(
            f"nothing to ingest: no image file or scene in {', '.join(map(str, paths))}{left_out}"
        )
    report = IngestReport(
        db=str(db), files_found=len(files), files_excluded=excluded, engine=chosen.name
    )
    for path in [f for f in files if file_name_problem(Path(f))]:
        files.remove(path)
        report.skipped.append(Skipped(path, file_name_problem(Path(path))))
        progress.skipped(path, report.skipped[-1].reason)
    if dry_run:
        if Path(db).exists():
            with Store(db) as store:
                files = _of_kind(files, store, kind, report, progress)
                plans = plan_files(files, store, verify, touch=False)
        else:
            files = _of_kind(files, None, kind, report, progress)
            plans = plan_files(files, None, verify, touch=False)
        report.planned = [
            {"path": plan.path, "action": plan.action, "detail": plan.scene} for plan in plans
        ] + [{"path": s.path, "action": "skip", "detail": s.reason} for s in report.skipped]
        report.seconds = round(time.perf_counter() - started, 3)
        return report
    with Store(db, create=True) as store, store.writer("ingest"):
        files = _of_kind(files, store, kind, report, progress)
        plans = plan_files(files, store, verify)
        catalog = open_catalog(store, settings)
        unreadable: dict[str, str] = {}
        if catalog is None:
            scheduler = chosen.scheduler(settings, master)
            catalog, unreadable = create_catalog(store, settings, plans, progress, scheduler)
            report.skipped += [Skipped(path, reason) for path, reason in unreadable.items()]
        progress.begin(len(plans))
        if catalog is None:
            progress.advance(len(plans))
        else:
            todo = [plan for plan in plans if plan.path not in unreadable]
            progress.advance(len(plans) - len(todo))
            chosen.run(catalog, todo, settings, bands, report, progress, master)
        store.update_extent()
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def _of_kind(
    files: list[str],
    store: Store | None,
    requested: str | None,
    report: IngestReport,
    progress: IngestProgress,
) -> list[str]:
    """The files of the database's kind (decided here, into the report); the others are
    skipped, each reported."""
    manifest = store.meta("manifest") if store is not None else None
    name = store.path.name if store is not None else Path(report.db).name
    stored = manifest["kind"] if manifest else None
    report.kind, report.kind_reason = choose_kind(files, requested, stored, name)
    report.new_database = stored is None
    kept = []
    for path in files:
        if kind_of(path) == report.kind:
            kept.append(path)
        else:
            report.skipped.append(Skipped(path, other_kind_reason(report.kind, name)))
            progress.skipped(path, report.skipped[-1].reason)
    return kept
