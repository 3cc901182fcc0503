"""GeoPackage plumbing the store builds on: geometry blobs, GDAL-made files, SQL helpers.

GDAL creates the file as GeoPackage 1.2 (so its bookkeeping is GDAL's own, and GDAL 3.6 / QGIS
3.22 read it without warnings); rows are then written through sqlite3. Geometries are
GeoPackage binary (header + envelope + WKB); timestamps are ISO 8601 UTC
(``YYYY-MM-DDTHH:MM:SS.SSSZ``), as GeoPackage DATETIME requires.
"""

from __future__ import annotations

import os
import sqlite3
import struct
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from geosearch.errors import DatabaseError

WGS84_SRS_ID = 4326
_GP_HEADER = struct.Struct("<2sBBi4d")  # magic, version, flags, srs_id, minx maxx miny maxy
_GP_FLAGS = 0b0000_0011  # little-endian, envelope [minx, maxx, miny, maxy]
_GP_EMPTY_FLAG = 0b0001_0000
# The oldest GeoPackage that holds what we store (features, attributes tables, R-tree) with the
# 'GPKG' application id: GDAL 3.6 and QGIS 3.22 (Debian 12) warn about 1.4, GDAL's default.
GPKG_VERSION = "1.2"
# GeoPackage DATETIME: ISO 8601 in UTC with milliseconds and Z.
SQL_NOW = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"


def encode_geometry(geometry: BaseGeometry | None) -> bytes | None:
    """GeoPackage binary geometry (EPSG:4326) of a polygon, always as a MultiPolygon."""
    if geometry is None:
        return None
    if isinstance(geometry, Polygon):
        geometry = MultiPolygon([geometry])
    minx, miny, maxx, maxy = geometry.bounds
    header = _GP_HEADER.pack(b"GP", 0, _GP_FLAGS, WGS84_SRS_ID, minx, maxx, miny, maxy)
    return header + shapely.to_wkb(geometry, byte_order=1, output_dimension=2)


def decode_geometry(blob: bytes | None) -> BaseGeometry | None:
    """The shapely geometry of a GeoPackage binary geometry."""
    return None if blob is None else shapely.from_wkb(_wkb(blob))


def decode_geometries(blobs: Sequence[bytes | None]) -> list[BaseGeometry | None]:
    """``decode_geometry`` of each, the WKB parsed in one call (a call a blob costs ~10 us)."""
    wkb = [None if blob is None else _wkb(blob) for blob in blobs]
    return shapely.from_wkb(np.array(wkb, dtype=object)).tolist() if wkb else []


def _wkb(blob: bytes) -> bytes:
    """The WKB of a GeoPackage binary geometry (after its header and envelope)."""
    envelope_doubles = (0, 4, 6, 6, 8)[(blob[3] >> 1) & 0b111]
    return bytes(blob[8 + 8 * envelope_doubles :])


def _envelope(blob: bytes | None, which: int) -> float | None:
    if blob is None:
        return None
    geometry = decode_geometry(blob)
    minx, miny, maxx, maxy = geometry.bounds
    return (minx, maxx, miny, maxy)[which]


def _is_empty(blob: bytes | None) -> int:
    return 1 if blob is None or blob[3] & _GP_EMPTY_FLAG else 0


def connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    """A connection to a GeoPackage: WAL for writers; read-only (and immutable unless a
    writer's WAL is beside it) otherwise. It knows the SQL functions GDAL's R-tree triggers
    call. ``sqlite3.DatabaseError`` if the file is no SQLite database."""
    if readonly:
        connection = sqlite3.connect(
            _readonly_uri(path), uri=True, timeout=60, isolation_level=None
        )
        connection.execute("PRAGMA query_only=ON")
    else:
        connection = sqlite3.connect(path, timeout=60, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
    connection.create_function("ST_IsEmpty", 1, _is_empty, deterministic=True)
    for name, which in (("ST_MinX", 0), ("ST_MaxX", 1), ("ST_MinY", 2), ("ST_MaxY", 3)):
        connection.create_function(
            name, 1, lambda blob, w=which: _envelope(blob, w), deterministic=True
        )
    return connection


def _readonly_uri(path: Path) -> str:
    """SQLite URI opening ``path`` read-only; immutable (no locks, no -wal/-shm files) unless
    a writer's WAL is beside it, whose committed pages must then be read."""
    wal = path.with_name(path.name + "-wal")
    immutable = not (wal.exists() and wal.stat().st_size > 0)
    quoted = urllib.parse.quote(os.fspath(path.resolve()))
    return f"file:{quoted}?mode=ro" + ("&immutable=1" if immutable else "")


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        if db.in_transaction:  # SQLite may have rolled back itself (a full disk, for one)
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def has_table(db: sqlite3.Connection, name: str) -> bool:
    return bool(db.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (name,)).fetchone())


def add_attributes_table(db: sqlite3.Connection, table: str, description: str) -> None:
    """List a table in gpkg_contents, so GDAL and QGIS show it as an attribute table."""
    db.execute(
        "INSERT OR IGNORE INTO gpkg_contents (table_name, data_type, identifier, description) "
        "VALUES (?, 'attributes', ?, ?)",
        (table, table, description),
    )


def create_geopackage(path: Path, layer: str) -> None:
    """An empty GeoPackage (version ``GPKG_VERSION``) with one MultiPolygon layer in EPSG:4326
    (feature id ``id``, geometry ``geom``), created by GDAL itself.

    pyogrio is imported here, not with the module: its package imports geopandas and pandas
    when they are installed (0.3 s), and only a new database needs it. It must come before
    TensorFlow (whose SQLite lacks R-tree): the Keras extractor imports it first."""
    from pyogrio.raw import write

    try:
        write(
            str(path),
            geometry=np.array([], dtype=object),
            field_data=[],
            fields=[],
            layer=layer,
            driver="GPKG",
            geometry_type="MultiPolygon",
            crs="EPSG:4326",
            layer_options={"FID": "id", "GEOMETRY_NAME": "geom"},
            dataset_options={"VERSION": GPKG_VERSION},
        )
    except Exception as exc:
        path.unlink(missing_ok=True)
        raise DatabaseError(f"cannot create database {path}: {exc}") from None
