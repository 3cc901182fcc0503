"""The GeoPackage opens without warnings where users have it (GDAL 3.6 / QGIS 3.22, Debian 12):
version 1.2, ISO 8601 timestamps; databases made by older versions still open and are brought
up to date by the next write."""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

import geosearch
from geosearch.store import Store
from tests.conftest import textured, write_geotiff

ISO_8601 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


@pytest.fixture
def db(tmp_path, stats_only) -> Path:
    """Two tiles, a feedback session with a mark: every table geosearch writes."""
    for number in range(2):
        write_geotiff(tmp_path / "in" / f"t{number}.tif", textured((3, 64, 64), seed=number))
    db = tmp_path / "db.gpkg"
    settings = stats_only.with_overrides({"workers": 1})
    geosearch.ingest([tmp_path / "in"], db, settings)
    [result] = geosearch.similar(db, [tmp_path / "in" / "t0.tif"], settings=settings)
    geosearch.feedback(db, result.session, good=[1], settings=settings)
    return db


def timestamps(db: Path) -> list[str]:
    with sqlite3.connect(db) as connection:
        return [
            value
            for query in (
                "SELECT ingested_at FROM files",
                "SELECT created FROM feedback_sessions",
                "SELECT marked_at FROM feedback_marks",
            )
            for (value,) in connection.execute(query)
        ]


def test_geopackage_1_2_with_iso_8601_timestamps(db):
    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA application_id").fetchone()[0] == 0x47504B47  # GPKG
        assert connection.execute("PRAGMA user_version").fetchone()[0] == 10200
    stamps = timestamps(db)
    assert len(stamps) == 4 and all(ISO_8601.match(stamp) for stamp in stamps), stamps


def ogrinfo(*args: str) -> str:
    """What ogrinfo (read-only) prints, stdout and stderr together."""
    result = subprocess.run(["ogrinfo", "-ro", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("ogrinfo") is None, reason="ogrinfo (gdal-bin) not installed")
def test_gdal_reads_every_layer_without_a_warning(db):
    version = ogrinfo("--version")
    layers = ogrinfo(
        "-al", str(db), "files", "geosearch_meta", "feedback_sessions", "feedback_marks"
    )
    summary = ogrinfo("-al", "-so", str(db))
    assert "Warning" not in layers + summary, f"{version}: {layers + summary}"
    assert "ingested_at (DateTime) = " in layers and "Feature Count: 2" in summary


def test_a_database_made_before_dates_had_sources_opens_and_is_upgraded(db, tmp_path, stats_only):
    with Store(db) as store, store.transaction() as connection:  # as older versions left it
        connection.execute("ALTER TABLE tiles DROP COLUMN acquired_source")
        connection.execute("UPDATE files SET ingested_at = '2026-11-29 19:01:39'")
        connection.execute("UPDATE feedback_marks SET marked_at = '2026-11-29 19:01:40'")
    assert geosearch.info(db)["dates"] == {"undated": 2}  # t0, t1: no date in their names
    settings = stats_only.with_overrides({"workers": 1})
    [result] = geosearch.similar(db, [tmp_path / "in" / "t1.tif"], top=1, settings=settings)
    assert result.matches[0].tile.acquired_source is None

    write_geotiff(tmp_path / "in" / "t2_2015-06-01.tif", textured((3, 64, 64), seed=2))
    assert geosearch.ingest([tmp_path / "in"], db, settings).tiles_added == 1
    assert geosearch.info(db)["dates"] == {"undated": 2, "name": 1}
    assert all(ISO_8601.match(stamp) for stamp in timestamps(db))
