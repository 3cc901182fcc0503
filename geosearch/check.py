"""Verify a database, and repair what can be repaired without losing data.

Checks: SQLite integrity; metadata present; every tile's vector (and raw features, where the
database keeps them) the right length, finite, the vector of unit length; footprints valid;
per-file tile counts; tiles of files the database doesn't list; the FAISS index in sync.
Repairs: vectors re-fused from their raw features where kept; tiles beyond repair (no raw
features to fuse again, or damaged ones) deleted and their files marked for re-ingest (the
next ``ingest`` reads those windows again), file counts corrected, the index rebuilt.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geosearch.catalog import open_catalog
from geosearch.config import Settings
from geosearch.errors import DatabaseError
from geosearch.geopackage import decode_geometry
from geosearch.index import VectorIndex, index_path, open_index
from geosearch.store import RAW_DTYPE, Store, vector_blob

UNIT_TOLERANCE = 1e-3
DAMAGED_SUFFIX = ".damaged"  # a repaired file's damaged original, kept beside it


@dataclass
class Problem:
    kind: str
    detail: str
    fixed: bool = False


@dataclass
class CheckReport:
    db: str
    tiles: int = 0
    files: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(problem.fixed for problem in self.problems)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"ok": self.ok}


def check_database(db: Path, repair: bool = False, settings: Settings | None = None) -> CheckReport:
    """Check ``db``; with ``repair``, fix what can be fixed (holding the writer lock). A
    damaged SQLite file is repaired by copying what can still be read into a new one, which
    takes its place (the damaged file is kept beside it, ``DAMAGED_SUFFIX``)."""
    settings = settings or Settings()
    with Store(Path(db)) as store:
        if not repair:
            return _check(store, repair=False, settings=settings)
        with store.writer("check --repair"):
            damage = store.damage()
            if not damage:
                return _check(store, repair=True, settings=settings)
            salvaged, copied = store.salvage()
            store.close()
            _put_in_place(salvaged, store.path)
    with Store(Path(db)) as store, store.writer("check --repair"):
        report = _check(store, repair=True, settings=settings, salvaged=True)
    rows = ", ".join(f"{n} rows of {table}" for table, n in copied.items())
    kept = (
        f"what could be read ({rows}) copied into a new {store.path.name}, files missing tiles "
        f"marked for the next ingest; the damaged file is kept as {store.path.name}"
        f"{DAMAGED_SUFFIX}"
    )
    report.problems[:0] = [Problem("sqlite", line, fixed=True) for line in damage]
    report.problems.insert(len(damage), Problem("sqlite", kept, fixed=True))
    return report


def _put_in_place(salvaged: Path, db: Path) -> None:
    """The salvaged copy becomes ``db``; the damaged file (and its WAL) move aside first, so
    that no journal of the damaged file is ever read with the new one."""
    for suffix in ("", "-wal", "-shm"):
        old = db.with_name(db.name + suffix)
        if old.exists():
            os.replace(old, db.with_name(db.name + DAMAGED_SUFFIX + suffix))
    os.replace(salvaged, db)


def _check(store: Store, repair: bool, settings: Settings, salvaged: bool = False) -> CheckReport:
    """The checks (and with ``repair`` the fixes) of a whole SQLite file; ``salvaged``: rows
    were lost, so files missing tiles are read again by the next ingest."""
    report = CheckReport(db=str(store.path))
    damage = store.damage()
    if damage:
        report.problems += [Problem("sqlite", line) for line in damage]
        return report  # nothing else can be trusted
    catalog = open_catalog(store, settings)
    if catalog is None:
        if store.tile_count():
            report.problems.append(Problem("metadata", "tiles present but no band manifest"))
        return report
    beyond_repair: list[int] = []  # tiles beyond repair
    files_to_reingest: set[str] = set()
    fused_again: list[tuple[int, bytes]] = []
    for tile_id, path, vector_bytes, feature_bytes, geom in store.tile_blobs():
        report.tiles += 1
        vector = _floats(vector_bytes, catalog.dim, store.vector_dtype)
        raw = _floats(feature_bytes, catalog.raw_dim, RAW_DTYPE)
        damaged = vector is None or abs(float(np.linalg.norm(vector)) - 1.0) > UNIT_TOLERANCE
        if catalog.keeps_raw_features and raw is None:
            beyond_repair.append(tile_id)
            files_to_reingest.add(path)
            report.problems.append(Problem("features", f"tile {tile_id}: raw features damaged"))
        elif damaged and raw is not None:
            fused = catalog.fusion.fuse(raw[None, :])[0]
            fused_again.append((tile_id, vector_blob(fused, store.vector_dtype)))
            report.problems.append(
                Problem("vector", f"tile {tile_id}: vector damaged or not unit length")
            )
        elif damaged:  # no raw features kept to fuse it again: its window is read again
            beyond_repair.append(tile_id)
            files_to_reingest.add(path)
            report.problems.append(
                Problem("vector", f"tile {tile_id}: vector damaged or not unit length")
            )
        if geom is not None:
            try:
                shape = decode_geometry(geom)
                valid = shape is not None and shape.is_valid
            except Exception:  # any decoding failure is damage
                valid = False
            if not valid:
                report.problems.append(Problem("footprint", f"tile {tile_id}: invalid footprint"))
    files = store.files()
    report.files = len(files)
    known = {f.path for f in files}
    counts = store.tile_counts()
    for path in sorted(set(counts) - known):
        files_to_reingest.add(path)
        report.problems.append(Problem("files", f"{path}: tiles without a files record"))
    miscounted = [f for f in files if f.status == "done" and f.tiles != counts.get(f.path, 0)]
    if salvaged:
        files_to_reingest.update(record.path for record in miscounted)
    for record in miscounted:
        report.problems.append(
            Problem("files", f"{record.path}: recorded {record.tiles} tiles, has "
                    f"{counts.get(record.path, 0)}")
        )  # fmt: skip
    index_ok = _index_in_sync(store)
    if not index_ok:
        report.problems.append(Problem("index", f"{index_path(store.path)} missing or out of sync"))
    if repair:
        _repair(store, beyond_repair, files_to_reingest, fused_again, miscounted, report)
    return report


def _floats(blob: bytes | None, dim: int, dtype: str) -> np.ndarray | None:
    """The stored values, or None if missing, of the wrong size or not finite."""
    if blob is None or len(blob) != dim * np.dtype(dtype).itemsize:
        return None
    values = np.frombuffer(blob, dtype).astype(np.float32)
    return values if np.isfinite(values).all() else None


def _index_in_sync(store: Store) -> bool:
    loaded = VectorIndex.load(index_path(store.path))
    if loaded is None:
        return False
    index, state = loaded
    return state.generation == store.generation and index.count == store.tile_count()


def _repair(
    store: Store,
    beyond_repair: list[int],
    files_to_reingest: set[str],
    fused_again: list[tuple[int, bytes]],
    miscounted: list,
    report: CheckReport,
) -> None:
    """Apply the fixes in one transaction, then rebuild the index from the result."""
    store.repair(
        fused_again, beyond_repair, files_to_reingest, [record.path for record in miscounted]
    )
    if store.tile_count() and not store.vector_dim():
        raise DatabaseError(f"{store.path}: vectors unreadable; re-ingest into a new --db")
    index_path(store.path).unlink(missing_ok=True)
    open_index(store)  # rebuilt from the repaired tiles
    for problem in report.problems:
        problem.fixed = problem.kind in ("vector", "features", "files", "index")
