"""The database: one GeoPackage holding tiles, their vectors, the files ingested and metadata.

Layers (all readable by QGIS/GDAL as they are):
- ``tiles``: footprint polygons in EPSG:4326 (NULL for plain images and rasters without a CRS)
  with source path, pixel window, native CRS and footprint, acquisition date and where it was
  read (``acquired_source``), nodata fraction, the ``vector`` searched (little-endian float16
  BLOB; float32 in databases made before, as the metadata's ``vector_dtype`` says) and, with
  ``vectors.raw_features``, the raw ``features`` (float32 BLOB, else NULL);
- ``files``: every file ingested, with size, mtime and whether all its tiles are in;
- ``geosearch_meta``: band manifest, feature fusion, settings, versions (JSON values);
- ``feedback_sessions``, ``feedback_marks``: feedback sessions (``geosearch.session_store``).

Rows are written through sqlite3 in transactions, a batch at a time: a tile and its vector are
one row, so one is never visible without the other. How the file itself is made and how
geometries are encoded: ``geosearch.geopackage``. One writer at a time holds ``<db>.lock``
(``filelock``: an OS lock, released when the process ends however it ends).

A database where this process can't write (a read-only folder, file or medium) is opened
read-only and immutable: reading commands work and nothing is created beside it (no lock,
WAL or shared-memory file); anything that writes fails with "permission denied: PATH".
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout
from shapely.geometry.base import BaseGeometry

from geosearch import session_store
from geosearch.errors import DatabaseError, DiskFullError
from geosearch.geopackage import (
    SQL_NOW,
    add_attributes_table,
    connect,
    create_geopackage,
    decode_geometries,
    encode_geometry,
    has_table,
    transaction,
)
from geosearch.pixels import Window
from geosearch.session_store import SessionStore

SCHEMA_VERSION = 1
TILES = "tiles"
DAMAGE_LINES = 20  # problems ``check`` lists of a damaged SQLite file
FULL_DISK_BYTES = 256 << 10  # a failed open with less free space than this: a full disk
IDS_PER_STATEMENT = 16_384  # SQLite binds at most 32,766 parameters a statement by default
WGS84_SRS_ID = 4326
_TIMESTAMPS = (("files", "ingested_at"), ("feedback_sessions", "created"),
               ("feedback_marks", "marked_at"))  # fmt: skip


@dataclass(frozen=True)
class TileRecord:
    """One tile as stored: where it comes from and where it lies."""

    id: int | None
    path: str
    window: Window
    crs: str | None
    footprint_native: str | None
    footprint: BaseGeometry | None  # lon/lat, EPSG:4326
    acquired: str | None
    nodata_fraction: float
    acquired_source: str | None = None  # where the date was read: see dates.DATE_SOURCES


@dataclass(frozen=True)
class FileRecord:
    """A file seen by ingest: identity (path, size, mtime) and progress."""

    path: str
    size: int
    mtime_ns: int
    status: str  # "partial" while tiles are still coming, "done" when all are in
    tiles: int = 0
    sha256: str | None = None  # content hash, when ingest ran with --verify

    def same_identity(self, size: int, mtime_ns: int) -> bool:
        """Whether a file of this size and modification time is the one recorded: the rule for
        "unchanged" (ingest skips it, a query uses its stored vectors)."""
        return (self.size, self.mtime_ns) == (size, mtime_ns)


@dataclass(frozen=True)
class BatchResult:
    """Tile ids a committed batch added and removed (the index follows both)."""

    added: list[int]
    removed: list[int]


def normalise_path(path: str | os.PathLike[str]) -> str:
    """The absolute form of a path as stored (symlinks kept, not resolved)."""
    return os.path.abspath(os.fspath(path))


# Vectors are stored at float16 (half the bytes; cosines move by ~1e-4) in databases that say
# so in their metadata; databases made before hold float32. Raw features are always float32.
VECTOR_DTYPE = "<f2"
RAW_DTYPE = "<f4"


def vector_blob(vector: np.ndarray, dtype: str = RAW_DTYPE) -> bytes:
    return np.ascontiguousarray(vector, dtype=dtype).tobytes()


def _origins(
    paths: list[str], ids: list[np.ndarray], packed: list[np.ndarray]
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """``Store.tile_origins``'s batch of files: paths, each tile's file, ids and (col, row) of
    the (row << 32) | col of each file's tiles."""
    origins = np.concatenate(packed)
    file_of = np.repeat(np.arange(len(paths)), [len(part) for part in ids])
    return (
        paths,
        file_of,
        np.concatenate(ids),
        np.column_stack([origins & 0xFFFFFFFF, origins >> 32]),
    )


def blob_vectors(blobs: Sequence[bytes], dtype: str = RAW_DTYPE) -> np.ndarray:
    """(len(blobs), dim) float32 from stored BLOBs of one dimension and ``dtype``."""
    if not blobs:
        return np.zeros((0, 0), dtype=np.float32)
    values = np.frombuffer(b"".join(blobs), dtype=dtype)
    return values.reshape(len(blobs), -1).astype(np.float32)


class Store:
    """A geosearch GeoPackage, opened for reading or (with ``writer()``) for writing.

    ``readonly`` is True where this process can't write the database or its folder: it is then
    opened read-only and immutable, and every write raises "permission denied: PATH". On a full
    disk (``full``), where SQLite can't even make its shared-memory file, it is read the same
    way and a write raises ``DiskFullError``.
    """

    def __init__(self, path: Path, *, create: bool = False) -> None:
        self.path = Path(path)
        exists = self.path.exists()
        if not exists and not create:
            raise DatabaseError(
                f"no database at {self.path}: run 'geosearch ingest FOLDER --db {self.path}' first"
            )
        if not exists:
            self._create_atomically()
        self.readonly = not writable(self.path)
        self.full = False
        try:
            self._connection = self._connect(self.path, self.readonly)
        except DatabaseError:
            if self.readonly or not disk_full(self.path):
                raise
            self.readonly = self.full = True
            self._connection = self._connect(self.path, readonly=True)
        self._check_is_ours()
        columns = {row[1] for row in self._connection.execute(f"PRAGMA table_info({TILES})")}
        self._has_date_source = "acquired_source" in columns
        self._current = self._has_date_source and has_table(self._connection, "feedback_marks")
        self.sessions = SessionStore(self._connection, self.transaction)
        self._vector_dtype: str | None = None

    def _create_atomically(self) -> None:
        """Build the empty database beside its final name, then rename it into place, so a
        crash or a concurrent reader never meets a half-made database."""
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseError(f"cannot create database {self.path}: {_os_reason(exc)}") from None
        if not os.access(folder, os.W_OK | os.X_OK):
            raise DatabaseError(f"permission denied: {self.path} (can't write in {folder})")
        building = self.path.with_name(f".{self.path.stem}.{os.getpid()}.creating.gpkg")
        create_geopackage(building, TILES)
        connection = self._connect(building)
        try:
            self._create_tables(connection)
            connection.execute("PRAGMA journal_mode=DELETE")  # fold the WAL in before moving
        finally:
            connection.close()
        os.replace(building, self.path)

    # -- connection and schema -------------------------------------------------------------

    def _connect(self, path: Path, readonly: bool = False) -> sqlite3.Connection:
        try:
            return connect(path, readonly)
        except sqlite3.DatabaseError as exc:
            raise DatabaseError(f"{self.path}: not a GeoPackage/SQLite database ({exc})") from None

    def _create_tables(self, connection: sqlite3.Connection) -> None:
        with transaction(connection) as db:
            for column, kind in (
                ("path", "TEXT NOT NULL"),
                ("row", "INTEGER NOT NULL"),
                ("col", "INTEGER NOT NULL"),
                ("width", "INTEGER NOT NULL"),
                ("height", "INTEGER NOT NULL"),
                ("crs", "TEXT"),
                ("footprint_native", "TEXT"),
                ("acquired", "DATE"),
                ("acquired_source", "TEXT"),
                ("nodata_fraction", "REAL"),
                ("vector", "BLOB NOT NULL"),
                ("features", "BLOB"),  # NULL unless vectors.raw_features
            ):
                db.execute(f'ALTER TABLE {TILES} ADD COLUMN "{column}" {kind}')
            db.execute(f"CREATE UNIQUE INDEX tiles_window ON {TILES}(path, row, col)")
            db.execute(
                "CREATE TABLE files (path TEXT PRIMARY KEY NOT NULL, size INTEGER NOT NULL, "
                "mtime_ns INTEGER NOT NULL, status TEXT NOT NULL, tiles INTEGER NOT NULL, "
                "ingested_at DATETIME NOT NULL, sha256 TEXT)"
            )
            db.execute(
                "CREATE TABLE geosearch_meta (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL)"
            )
            add_attributes_table(db, "files", "files ingested into this geosearch database")
            add_attributes_table(
                db, "geosearch_meta", "geosearch settings, band manifest and feature fusion"
            )
            session_store.create_tables(db)
            self._set_meta(db, "schema_version", SCHEMA_VERSION)
            self._set_meta(db, "generation", 0)
            self._set_meta(db, "last_delete_generation", 0)

    def _check_is_ours(self) -> None:
        try:
            row = self._connection.execute(
                "SELECT value FROM geosearch_meta WHERE key = 'schema_version'"
            ).fetchone()
        except sqlite3.DatabaseError:
            row = None
        if row is None:
            raise DatabaseError(f"{self.path}: not a geosearch database (no geosearch_meta table)")
        if json.loads(row[0]) != SCHEMA_VERSION:
            raise DatabaseError(
                f"{self.path}: made by another geosearch version (schema {row[0]}, this "
                f"version reads {SCHEMA_VERSION}); re-ingest into a new --db"
            )

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any error. The first write to a database
        made by an older geosearch brings it up to date first (``_upgrade``)."""
        self.refuse_if_readonly()
        if not self._current:
            self._upgrade()
        return transaction(self._connection)

    def refuse_if_readonly(self) -> None:
        """``DatabaseError`` "permission denied: PATH" when the database can't be written here
        (``DiskFullError`` on a full disk)."""
        if self.full:
            raise DiskFullError(self.path)
        if self.readonly:
            raise DatabaseError(
                f"permission denied: {self.path} (read-only here; reading commands work, "
                "changes need a writable copy)"
            )

    @contextmanager
    def writer(self, command: str = "ingest") -> Iterator[Store]:
        """Hold the database's writer lock; a second writer fails fast naming the holder.

        Brings a database made by an older geosearch up to date first (date-source column,
        ISO 8601 timestamps, feedback tables)."""
        self.refuse_if_readonly()
        lock_path = self.path.with_name(self.path.name + ".lock")
        lock = FileLock(lock_path, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            holder = ""
            with suppress(OSError):  # a lock that can't be read (Windows) names no one
                holder = lock_path.read_text().strip()
            raise DatabaseError(
                f"{self.path} is being written by {holder or 'another process'}; "
                "wait for it to finish"
            ) from None
        try:
            with suppress(OSError):
                lock_path.write_text(
                    f"geosearch {command} (pid {os.getpid()}, since {time.strftime('%H:%M:%S')})"
                )
            if not self._current:
                self._upgrade()
            yield self
        finally:
            lock.release()

    def _upgrade(self) -> None:
        """Add what older databases lack; each step is a no-op on an up-to-date one."""
        with transaction(self._connection) as db:
            if not self._has_date_source:
                db.execute(f'ALTER TABLE {TILES} ADD COLUMN "acquired_source" TEXT')
                # 'YYYY-MM-DD HH:MM:SS' (sqlite's datetime()) -> ISO 8601 with T and Z
                for table, column in _TIMESTAMPS:
                    if has_table(db, table):
                        db.execute(
                            f"UPDATE {table} SET {column} = strftime('%Y-%m-%dT%H:%M:%fZ', "
                            f"{column}) WHERE {column} NOT LIKE '%T%'"
                        )
            session_store.create_tables(db)
        self._has_date_source = self._current = True

    # -- metadata --------------------------------------------------------------------------

    @staticmethod
    def _set_meta(db: sqlite3.Connection, key: str, value: Any) -> None:
        db.execute(
            "INSERT OR REPLACE INTO geosearch_meta (key, value) VALUES (?, ?)",
            (key, json.dumps(value)),
        )

    def meta(self, key: str, default: Any = None) -> Any:
        text = self.meta_text(key)
        return json.loads(text) if text is not None else default

    def meta_text(self, key: str) -> str | None:
        """A metadata value as stored (JSON text), or None."""
        row = self._connection.execute(
            "SELECT value FROM geosearch_meta WHERE key = ?", (key,)
        ).fetchone()
        return row[0] if row else None

    def set_meta(self, values: dict[str, Any]) -> None:
        with self.transaction() as db:
            for key, value in values.items():
                self._set_meta(db, key, value)

    @property
    def generation(self) -> int:
        """Bumped by every committed change; the index records the one it reflects."""
        return int(self.meta("generation", 0))

    # -- files -----------------------------------------------------------------------------

    def file_record(self, path: str) -> FileRecord | None:
        row = self._connection.execute(
            "SELECT path, size, mtime_ns, status, tiles, sha256 FROM files WHERE path = ?", (path,)
        ).fetchone()
        return FileRecord(*row) if row else None

    def files(self) -> list[FileRecord]:
        rows = self._connection.execute(
            "SELECT path, size, mtime_ns, status, tiles, sha256 FROM files ORDER BY path"
        )
        return [FileRecord(*row) for row in rows]

    def windows_done(self, path: str) -> set[tuple[int, int]]:
        rows = self._connection.execute(f"SELECT row, col FROM {TILES} WHERE path = ?", (path,))
        return {(row, col) for row, col in rows}

    # -- writing ---------------------------------------------------------------------------

    def write_batch(
        self,
        tiles: Sequence[tuple[TileRecord, np.ndarray, np.ndarray]],
        started: Iterable[FileRecord] = (),
        finished: Iterable[FileRecord] = (),
        failed: Iterable[str] = (),
    ) -> BatchResult:
        """Commit tiles (record, fused vector, raw features) and file progress at once.

        ``started`` files get a "partial" row if they have none; ``finished`` ones become
        "done"; ``failed`` ones lose every tile written so far.
        """
        ids: list[int] = []
        with self.transaction() as db:
            for record in started:
                db.execute(
                    f"INSERT OR IGNORE INTO files VALUES (?, ?, ?, 'partial', 0, {SQL_NOW}, ?)",
                    (record.path, record.size, record.mtime_ns, record.sha256),
                )
            vector_dtype = self.vector_dtype
            for tile, vector, features in tiles:
                cursor = db.execute(
                    f"INSERT INTO {TILES} (geom, path, row, col, width, height, crs, "
                    "footprint_native, acquired, nodata_fraction, vector, features, "
                    "acquired_source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        encode_geometry(tile.footprint),
                        tile.path,
                        tile.window.row,
                        tile.window.col,
                        tile.window.width,
                        tile.window.height,
                        tile.crs,
                        tile.footprint_native,
                        tile.acquired,
                        tile.nodata_fraction,
                        vector_blob(vector, vector_dtype),
                        vector_blob(features) if features is not None else None,
                        tile.acquired_source,
                    ),
                )
                ids.append(int(cursor.lastrowid))
            for record in finished:
                db.execute(
                    "INSERT OR REPLACE INTO files VALUES (?, ?, ?, 'done', "
                    f"(SELECT count(*) FROM {TILES} WHERE path = ?), {SQL_NOW}, ?)",
                    (record.path, record.size, record.mtime_ns, record.path, record.sha256),
                )
            removed = [tid for path in failed for tid in self._delete_file(db, path)]
            self._bump_generation(db, deleted=bool(removed))
        return BatchResult(added=ids, removed=removed)

    def touch_file(self, record: FileRecord) -> None:
        """Record a file's size, mtime and hash when its content is unchanged (--verify)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE files SET size = ?, mtime_ns = ?, sha256 = ? WHERE path = ?",
                (record.size, record.mtime_ns, record.sha256, record.path),
            )

    def remove_files(self, paths: Iterable[str]) -> list[int]:
        """Delete files' tiles and records; returns the ids of the tiles removed."""
        removed: list[int] = []
        with self.transaction() as db:
            for path in paths:
                removed += self._delete_file(db, path)
            self._bump_generation(db, deleted=True)
        return removed

    def _delete_file(self, db: sqlite3.Connection, path: str) -> list[int]:
        ids = [row[0] for row in db.execute(f"SELECT id FROM {TILES} WHERE path = ?", (path,))]
        db.execute(f"DELETE FROM {TILES} WHERE path = ?", (path,))
        db.execute("DELETE FROM files WHERE path = ?", (path,))
        return ids

    def _bump_generation(self, db: sqlite3.Connection, deleted: bool) -> None:
        generation = json.loads(
            db.execute("SELECT value FROM geosearch_meta WHERE key = 'generation'").fetchone()[0]
        )
        self._set_meta(db, "generation", generation + 1)
        if deleted:
            self._set_meta(db, "last_delete_generation", generation + 1)

    def update_extent(self) -> None:
        """Record the tiles layer's extent in gpkg_contents (QGIS zooms to it)."""
        has_rtree = self._connection.execute(
            "SELECT 1 FROM sqlite_master WHERE name = 'rtree_tiles_geom'"
        ).fetchone()
        source = (
            "SELECT min(minx), max(maxx), min(miny), max(maxy) FROM rtree_tiles_geom"
            if has_rtree
            else f"SELECT min(ST_MinX(geom)), max(ST_MaxX(geom)), min(ST_MinY(geom)), "
            f"max(ST_MaxY(geom)) FROM {TILES}"
        )
        with self.transaction() as db:
            db.execute(
                f"UPDATE gpkg_contents SET (min_x, max_x, min_y, max_y) = ({source}), "
                "last_change = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE table_name = ?",
                (TILES,),
            )

    # -- spatial and date look-ups ----------------------------------------------------------

    def ids_in_bbox(self, minx: float, miny: float, maxx: float, maxy: float) -> set[int]:
        """Tiles whose footprint's bounding box meets the lon/lat box (GeoPackage R-tree)."""
        rows = self._connection.execute(
            "SELECT id FROM rtree_tiles_geom WHERE maxx >= ? AND minx <= ? AND maxy >= ? "
            "AND miny <= ?",
            (minx, maxx, miny, maxy),
        )
        return {row[0] for row in rows}

    def bbox_page(
        self, bbox: tuple[float, float, float, float], limit: int, offset: int = 0
    ) -> tuple[list[int], int]:
        """(ids of one page, in id order; how many in all) of the tiles whose footprint's
        bounding box meets the lon/lat box (R-tree; no list of every id is built)."""
        minx, miny, maxx, maxy = bbox
        where = "FROM rtree_tiles_geom WHERE maxx >= ? AND minx <= ? AND maxy >= ? AND miny <= ?"
        box = (minx, maxx, miny, maxy)
        total = self._connection.execute(f"SELECT count(*) {where}", box).fetchone()[0]
        rows = self._connection.execute(
            f"SELECT id {where} ORDER BY id LIMIT ? OFFSET ?", (*box, limit, offset)
        )
        return [row[0] for row in rows], int(total)

    def footprint_centres(self) -> tuple[np.ndarray, np.ndarray]:
        """(lon, lat) of the centre of every footprint's bounding box (from the R-tree)."""
        rows = self._connection.execute(
            "SELECT (minx + maxx) / 2, (miny + maxy) / 2 FROM rtree_tiles_geom"
        ).fetchall()
        centres = np.asarray(rows, dtype=np.float64).reshape(-1, 2)
        return centres[:, 0], centres[:, 1]

    def ids_acquired(self, after: str | None, before: str | None) -> set[int]:
        """Tiles acquired on or after ``after`` and on or before ``before`` (ISO dates)."""
        rows = self._connection.execute(
            f"SELECT id FROM {TILES} WHERE acquired IS NOT NULL "
            "AND (? IS NULL OR acquired >= ?) AND (? IS NULL OR acquired <= ?)",
            (after, after, before, before),
        )
        return {row[0] for row in rows}

    # -- checking --------------------------------------------------------------------------

    def integrity(self) -> str:
        """SQLite's own integrity check: "ok" or the first problem found."""
        return str(self._connection.execute("PRAGMA integrity_check").fetchone()[0])

    def damage(self, limit: int = DAMAGE_LINES) -> list[str]:
        """SQLite's integrity check, one line a problem, each damaged page named with the
        table or index it belongs to (where SQLite's dbstat can still say); [] if whole."""
        found = self._connection.execute(f"PRAGMA integrity_check({limit})").fetchall()
        lines = [line for (text,) in found for line in str(text).splitlines()]
        if lines == ["ok"]:
            return []
        try:
            owners = dict(self._connection.execute("SELECT pageno, name FROM dbstat"))
        except sqlite3.DatabaseError:
            owners = {}
        named = []
        for line in lines:
            if line.startswith("*** in database"):
                continue
            page = re.search(r"\bpage (\d+)", line)
            owner = owners.get(int(page[1])) if page else None
            named.append(f"{line} (page of {owner})" if owner else line)
        return named

    def salvage(self) -> tuple[Path, dict[str, int]]:
        """Every row of geosearch's tables that can still be read, copied into a new database
        beside this one: (its path, rows copied per table). ``check --repair`` of a damaged
        file puts it in this one's place."""
        target = self.path.with_name(f".{self.path.stem}.{os.getpid()}.salvaged.gpkg")
        target.unlink(missing_ok=True)
        copied: dict[str, int] = {}
        with Store(target, create=True) as salvaged, transaction(salvaged._connection) as db:
            for table in (TILES, "files", "geosearch_meta", *session_store.TABLES):
                if not has_table(self._connection, table):
                    continue
                ours = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                theirs = [row[1] for row in self._connection.execute(f"PRAGMA table_info({table})")]
                columns = [column for column in theirs if column in ours]
                names = ", ".join(f'"{column}"' for column in columns)
                insert = (
                    f"INSERT OR REPLACE INTO {table} (rowid, {names}) "
                    f"VALUES (?{', ?' * len(columns)})"
                )
                copied[table] = 0
                for row in self._readable_rows(table, names):
                    with suppress(sqlite3.IntegrityError):  # garbage read off a damaged page
                        db.execute(insert, row)
                        copied[table] += 1
        return target, copied

    def _readable_rows(self, table: str, names: str) -> list[tuple]:
        """The rows of ``table`` that read (rowid and ``names``): in blocks, a failed block
        row by row, an unreadable run of rowids stepped over."""
        read = self._connection.execute
        rows: list[tuple] = []
        after = -(1 << 62)
        try:
            last = read(f"SELECT max(rowid) FROM {table}").fetchone()[0]
        except sqlite3.DatabaseError:
            last = None
        while last is None or after < last:
            try:
                block = read(f"SELECT rowid, {names} FROM {table} WHERE rowid > ? ORDER BY rowid "
                             "LIMIT 256", (after,)).fetchall()  # fmt: skip
            except sqlite3.DatabaseError:
                block = None
            if block == []:
                return rows
            if block:
                rows += block
                after = block[-1][0]
                continue
            try:  # rowids (a smaller read) of the block that failed, then each row alone
                ids = [r[0] for r in read(f"SELECT rowid FROM {table} WHERE rowid > ? "
                                          "ORDER BY rowid LIMIT 256", (after,))]  # fmt: skip
            except sqlite3.DatabaseError:
                if last is None:  # nothing says how far the damage goes: the rest is lost
                    return rows
                ids = [after + 1]
            for rowid in ids:
                with suppress(sqlite3.DatabaseError):  # else this row is lost
                    rows += read(f"SELECT rowid, {names} FROM {table} WHERE rowid = ?",
                                 (rowid,)).fetchall()  # fmt: skip
            after = ids[-1]
        return rows

    def tile_blobs(self) -> Iterator[tuple[int, str, bytes, bytes, bytes | None]]:
        """(id, path, vector, features, geometry) of every tile, as stored."""
        yield from self._connection.execute(
            f"SELECT id, path, vector, features, geom FROM {TILES} ORDER BY id"
        )

    def tile_counts(self) -> dict[str, int]:
        """Tiles per file path, as found in the tiles layer."""
        return dict(self._connection.execute(f"SELECT path, count(*) FROM {TILES} GROUP BY path"))

    def repair(
        self,
        vectors: Sequence[tuple[int, bytes]],
        delete: Sequence[int],
        reingest: Iterable[str],
        recount: Iterable[str],
    ) -> None:
        """Apply ``geosearch check --repair`` fixes in one transaction: replace vectors, delete
        tiles, mark files for re-ingest (their missing windows are read again), recount."""
        with self.transaction() as db:
            for tile_id, blob in vectors:
                db.execute(f"UPDATE {TILES} SET vector = ? WHERE id = ?", (blob, tile_id))
            for tile_id in delete:
                db.execute(f"DELETE FROM {TILES} WHERE id = ?", (tile_id,))
            for path in reingest:
                marked = db.execute("UPDATE files SET status = 'partial' WHERE path = ?", (path,))
                if marked.rowcount == 0:  # unknown size/mtime: the next ingest replaces it
                    db.execute(
                        f"INSERT INTO files VALUES (?, -1, -1, 'partial', 0, {SQL_NOW}, NULL)",
                        (path,),
                    )
            for path in recount:
                db.execute(
                    f"UPDATE files SET tiles = (SELECT count(*) FROM {TILES} WHERE path = ?) "
                    "WHERE path = ?",
                    (path, path),
                )
            self._bump_generation(db, deleted=True)

    def rewrite_vectors(
        self, vectors: Sequence[tuple[int, np.ndarray]], dtype: str, drop_raw: bool
    ) -> None:
        """Replace tiles' vectors (stored as ``dtype``), dropping their raw features if asked,
        in one transaction."""
        with self.transaction() as db:
            _update_vectors(db, vectors, dtype, drop_raw)

    def convert_vectors(
        self,
        convert: Callable[[np.ndarray], np.ndarray],
        dtype: str,
        drop_raw: bool,
        meta: dict[str, Any],
        batch: int,
    ) -> int:
        """Every tile's vector replaced by ``convert`` of it (stored as ``dtype``, ``batch`` at a
        time), raw features dropped if asked, ``meta`` recorded and a new generation (the index
        is rebuilt), all in one transaction: a process killed half-way leaves the database as
        it was (``geosearch migrate``). Then the space freed goes back to the file system
        (VACUUM, itself atomic). Returns the tiles rewritten."""
        tiles = 0
        with self.transaction() as db:
            for ids, stored in self.vector_batches(batch):  # rows not yet rewritten, in order
                _update_vectors(db, zip(ids.tolist(), convert(stored), strict=True), dtype,
                                drop_raw)  # fmt: skip
                tiles += len(ids)
            for key, value in meta.items():
                self._set_meta(db, key, value)
            self._bump_generation(db, deleted=True)
        self._vector_dtype = None
        self._connection.execute("VACUUM")
        return tiles

    # -- reading ---------------------------------------------------------------------------

    def vector_batches(self, size: int = 65_536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) of every tile, ``size`` at a time in id order (never all at once)."""
        after = 0
        while True:
            rows = self._connection.execute(
                f"SELECT id, vector FROM {TILES} WHERE id > ? ORDER BY id LIMIT ?", (after, size)
            ).fetchall()
            if not rows:
                return
            after = rows[-1][0]
            ids = np.asarray([row[0] for row in rows], dtype=np.int64)
            yield ids, blob_vectors([row[1] for row in rows], self.vector_dtype)

    def vector_dim(self) -> int:
        """The stored vectors' dimension (0 without tiles)."""
        row = self._connection.execute(f"SELECT length(vector) FROM {TILES} LIMIT 1").fetchone()
        return int(row[0]) // np.dtype(self.vector_dtype).itemsize if row else 0

    def sample_ids(self, size: int, seed: int = 0, leave_out: Iterable[int] = ()) -> list[int]:
        """``size`` tile ids drawn at random, sorted (all of them if there are fewer), none of
        ``leave_out``."""
        left_out = np.fromiter(set(leave_out), np.int64)
        # every id as one text parsed by numpy, in the order SELECT id gives them (the draw
        # depends on it): a Python row per tile cost ~1 s a million tiles
        [text] = self._connection.execute(f"SELECT group_concat(id) FROM {TILES}").fetchone()
        ids = np.fromstring(text or "", np.int64, sep=",")
        ids = ids[~np.isin(ids, left_out)] if len(left_out) else ids
        if len(ids) > size:
            ids = np.sort(np.random.default_rng(seed).choice(ids, size, replace=False))
        return ids.tolist()

    def vector_sample(self, size: int, seed: int = 0) -> np.ndarray:
        """The vectors of ``size`` tiles drawn at random (all of them if there are fewer)."""
        ids = self.sample_ids(size, seed)
        parts = [  # SQLite binds at most 32,766 parameters a statement
            self.vectors(ids[start : start + 16_384])[1] for start in range(0, len(ids), 16_384)
        ]
        return np.concatenate(parts) if parts else self.vectors([])[1]

    @property
    def _tile_columns(self) -> str:
        source = "acquired_source" if self._has_date_source else "NULL"
        return (
            "id, path, row, col, width, height, crs, footprint_native, geom, acquired, "
            f"nodata_fraction, {source}"
        )

    @staticmethod
    def _tiles(rows: Sequence[Sequence[Any]]) -> list[TileRecord]:
        """Rows of ``_tile_columns`` as records, their footprints decoded together."""
        footprints = decode_geometries([row[8] for row in rows])
        return [
            TileRecord(int(tid), path, Window(r, c, w, h), crs, native, footprint, acquired,
                       nodata, source)
            for (tid, path, r, c, w, h, crs, native, _, acquired, nodata, source), footprint
            in zip(rows, footprints, strict=True)
        ]  # fmt: skip

    def date_sources(self) -> dict[str, int]:
        """Tiles per date source ("undated": tiles without a date)."""
        source = "acquired_source" if self._has_date_source else "'unknown'"
        rows = self._connection.execute(
            f"SELECT CASE WHEN acquired IS NULL THEN 'undated' ELSE coalesce({source}, "
            f"'unknown') END, count(*) FROM {TILES} GROUP BY 1"
        )
        return dict(rows.fetchall())

    def tile_count(self) -> int:
        return int(self._connection.execute(f"SELECT count(*) FROM {TILES}").fetchone()[0])

    def max_tile_id(self) -> int:
        return int(
            self._connection.execute(f"SELECT coalesce(max(id), 0) FROM {TILES}").fetchone()[0]
        )

    def tiles(self, ids: Sequence[int]) -> list[TileRecord]:
        """Tiles by id, in the order asked (missing ids are left out); any number of ids."""
        by_id: dict[int, TileRecord] = {}
        for chunk in _id_chunks(ids):
            marks = ",".join("?" * len(chunk))
            rows = self._connection.execute(
                f"SELECT {self._tile_columns} FROM {TILES} WHERE id IN ({marks})", chunk
            )
            by_id.update((tile.id, tile) for tile in self._tiles(rows.fetchall()))
        return [by_id[i] for i in ids if i in by_id]

    def tiles_of_file(self, path: str) -> list[TileRecord]:
        rows = self._connection.execute(
            f"SELECT {self._tile_columns} FROM {TILES} WHERE path = ? ORDER BY row, col", (path,)
        )
        return self._tiles(rows.fetchall())

    def first_tile_of_each_file(self) -> list[TileRecord]:
        """One tile per file (its lowest id): enough to recover the file's geotransform."""
        rows = self._connection.execute(
            f"SELECT {self._tile_columns} FROM {TILES} WHERE id IN "
            f"(SELECT min(id) FROM {TILES} GROUP BY path)"
        )
        return self._tiles(rows.fetchall())

    def tile_origins(
        self, batch: int = 100_000
    ) -> Iterator[tuple[list[str], np.ndarray, np.ndarray, np.ndarray]]:
        """Every tile, whole files about ``batch`` tiles at a time: the files' paths, each
        tile's file (index in those paths), ids and (n, 2) window origins (col, row).

        Read from the ``tiles_window`` index alone (a covering index: no table row, geometry or
        vector is read), a file a row: its ids, and its rows and cols packed into one value
        each, joined into one text in SQL and parsed by numpy (a Python row a tile made 1M
        tiles cost ~8 s on a busy machine, this ~1.2 s)."""
        cursor = self._connection.execute(
            f"SELECT path, group_concat(id), group_concat((row << 32) | col) FROM {TILES} "
            "GROUP BY path"
        )
        paths: list[str] = []
        ids: list[np.ndarray] = []
        packed: list[np.ndarray] = []
        tiles = 0
        for path, id_text, origin_text in cursor:
            paths.append(path)
            ids.append(np.fromstring(id_text, np.int64, sep=","))
            packed.append(np.fromstring(origin_text, np.int64, sep=","))
            tiles += len(ids[-1])
            if tiles >= batch:
                yield _origins(paths, ids, packed)
                paths, ids, packed, tiles = [], [], [], 0
        if paths:
            yield _origins(paths, ids, packed)

    def paths_of(self, ids: Sequence[int]) -> list[str]:
        """The files (sorted) that the given tiles come from."""
        paths: set[str] = set()
        for chunk in _id_chunks(ids):
            marks = ",".join("?" * len(chunk))
            rows = self._connection.execute(
                f"SELECT DISTINCT path FROM {TILES} WHERE id IN ({marks})", chunk
            )
            paths.update(row[0] for row in rows)
        return sorted(paths)

    def vectors(
        self, ids: Sequence[int] | None = None, after_id: int = 0, column: str = "vector"
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of the given tiles, or of every tile with id > ``after_id``."""
        if column not in ("vector", "features"):
            raise ValueError(column)
        if ids is not None:
            rows = []
            for chunk in _id_chunks(sorted(ids)):
                marks = ",".join("?" * len(chunk))
                rows += self._connection.execute(
                    f"SELECT id, {column} FROM {TILES} WHERE id IN ({marks}) ORDER BY id", chunk
                ).fetchall()
        else:
            rows = self._connection.execute(
                f"SELECT id, {column} FROM {TILES} WHERE id > ? ORDER BY id", (after_id,)
            ).fetchall()
        rows = [row for row in rows if row[1] is not None]  # raw features may not be kept
        found = np.asarray([row[0] for row in rows], dtype=np.int64)
        dtype = self.vector_dtype if column == "vector" else RAW_DTYPE
        return found, blob_vectors([row[1] for row in rows], dtype)

    def vectors_in_order(self, ids: Sequence[int]) -> np.ndarray:
        """The vectors of ``ids``, a row per id in the order given (an id may repeat)."""
        found, vectors = self.vectors(sorted(set(ids)))
        row = {tile_id: n for n, tile_id in enumerate(found.tolist())}
        return vectors[[row[tile_id] for tile_id in ids]]

    @property
    def vector_dtype(self) -> str:
        """How this database stores vectors: float16, or float32 if made before that."""
        if self._vector_dtype is None:
            self._vector_dtype = self.meta("vector_dtype", RAW_DTYPE)
        return self._vector_dtype


def writable(path: Path) -> bool:
    """Whether this process may write the database and create files beside it (its journal,
    lock and index); False in a read-only folder, for a read-only file or on read-only media."""
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK | os.X_OK)


def _update_vectors(
    db: sqlite3.Connection, vectors: Iterable[tuple[int, np.ndarray]], dtype: str, drop_raw: bool
) -> None:
    for tile_id, vector in vectors:
        db.execute(
            f"UPDATE {TILES} SET vector = ?" + (", features = NULL" if drop_raw else "")
            + " WHERE id = ?",
            (vector_blob(vector, dtype), tile_id),
        )  # fmt: skip


def disk_full(path: Path) -> bool:
    """Whether the disk holding ``path`` has no room left for SQLite's journal files."""
    try:
        return shutil.disk_usage(path.parent).free < FULL_DISK_BYTES
    except OSError:
        return False


def _os_reason(exc: OSError) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission denied"
    return exc.strerror or str(exc)


def _id_chunks(ids: Sequence[int]) -> Iterator[list[int]]:
    """``ids`` as lists of at most ``IDS_PER_STATEMENT``: what one SQL statement can bind."""
    for start in range(0, len(ids), IDS_PER_STATEMENT):
        yield [int(i) for i in ids[start : start + IDS_PER_STATEMENT]]
