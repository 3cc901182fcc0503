"""geosearch check: damage is found, --repair fixes it without losing tiles it can keep."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

import geosearch
from geosearch.index import index_path
from geosearch.store import Store
from tests.conftest import run_cli, textured, write_geotiff


def _db(tmp_path, stats_only):
    folder = tmp_path / "in"
    for i in range(3):
        write_geotiff(folder / f"f{i}.tif", textured((3, 200, 300), seed=i))  # 2 tiles each
    db = tmp_path / "db.gpkg"
    geosearch.ingest([folder], db, stats_only)
    return folder, db


def test_a_fresh_database_checks_ok(tmp_path, stats_only):
    _, db = _db(tmp_path, stats_only)
    result = run_cli("check", "--db", str(db), "--json")
    assert result.returncode == 0
    report = json.loads(result.stdout)
    assert report["ok"] and report["tiles"] == 6 and report["files"] == 3 and not report["problems"]


@pytest.mark.parametrize("raw_features", [True, False])
def test_damage_is_found_and_repaired(tmp_path, stats_only, raw_features):
    """With raw features kept, a damaged vector is fused again from them (and tiles whose raw
    features are damaged are read again); without (the default), a damaged vector's tile is
    deleted and its window read again by the next ingest."""
    settings = stats_only.with_overrides({"vectors.raw_features": raw_features})
    folder, db = _db(tmp_path, settings)
    with Store(db) as store:  # its connection knows the GeoPackage R-tree trigger functions
        connection = store._connection
        ids = [row[0] for row in connection.execute("SELECT id FROM tiles ORDER BY id")]
        dim = geosearch.info(db)["dim"]
        bad_vector = np.full(dim, np.nan, store.vector_dtype)
        connection.execute(
            "UPDATE tiles SET vector = ? WHERE id = ?", (bad_vector.tobytes(), ids[0])
        )
        if raw_features:
            connection.execute("UPDATE tiles SET features = x'00' WHERE id = ?", (ids[1],))
        connection.execute("UPDATE files SET tiles = 7 WHERE path LIKE '%f2.tif'")
    index_path(db).unlink()
    result = run_cli("check", "--db", str(db))
    assert result.returncode == 4
    problems = [line for line in result.stdout.splitlines() if line.startswith("problem:")]
    kinds = {line.split(":")[1].strip() for line in problems}
    assert kinds == {"vector", "files", "index"} | ({"features"} if raw_features else set())
    assert "NOT ok" in result.stdout
    repaired = run_cli("check", "--db", str(db), "--repair", "--json")
    assert repaired.returncode == 0, repaired.stdout
    assert run_cli("check", "--db", str(db)).returncode == 0
    with Store(db) as store:
        _, vectors = store.vectors()
        assert len(vectors) == 5 and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-3)
    report = geosearch.ingest([folder], db, settings)  # the deleted tile comes back
    assert report.files_resumed == 1 and report.tiles_added == 1
    with Store(db) as store:
        assert store.tile_count() == 6
    assert run_cli("check", "--db", str(db)).returncode == 0


def test_database_from_another_extractor_is_refused(tmp_path, stats_only):
    folder, db = _db(tmp_path, stats_only)
    with sqlite3.connect(db) as connection:
        fusion = json.loads(
            connection.execute("SELECT value FROM geosearch_meta WHERE key = 'fusion'").fetchone()[
                0
            ]
        )
        fusion["blocks"][0]["version"] = "0-old"
        connection.execute(
            "UPDATE geosearch_meta SET value = ? WHERE key = 'fusion'", (json.dumps(fusion),)
        )
    write_geotiff(folder / "new.tif", textured((3, 64, 64), seed=5))
    result = run_cli("ingest", str(folder), "--db", str(db), "--config", "/dev/null")
    assert result.returncode == 4
    assert "was made with extractors band_stats[0-old]" in result.stderr


def test_results_to_an_unwritable_place_is_a_clear_error_and_db_untouched(tmp_path, stats_only):
    folder, db = _db(tmp_path, stats_only)
    before = db.read_bytes()
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    result = run_cli(
        "similar", str(folder / "f0.tif"), "--db", str(db), "--out", str(blocker / "out")
    )
    assert result.returncode == 7 and result.stderr.startswith("error: cannot write results to")
    assert db.read_bytes() == before


def test_a_damaged_sqlite_page_is_named_and_repair_keeps_what_can_be_read(tmp_path, stats_only):
    folder, db = _db(tmp_path, stats_only)
    with sqlite3.connect(db) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = connection.execute("PRAGMA page_size").fetchone()[0]
        [page] = connection.execute(
            "SELECT pageno FROM dbstat WHERE name = 'tiles' AND pagetype = 'leaf' LIMIT 1"
        ).fetchone()
    with open(db, "r+b") as f:  # garbage over the page's cell pointers
        f.seek((page - 1) * page_size + 8)
        f.write(b"\xff" * 64)
    found = run_cli("check", "--db", str(db))
    assert found.returncode == 4
    assert f"problem: sqlite: On tree page {page} " in found.stdout
    assert "(page of tiles)" in found.stdout
    repaired = run_cli("check", "--repair", "--db", str(db))
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "copied into a new db.gpkg" in repaired.stdout
    assert (tmp_path / "db.gpkg.damaged").exists()
    report = json.loads(run_cli("check", "--db", str(db), "--json").stdout)
    assert report["ok"] and report["files"] == 3 and report["tiles"] < 6
    resumed = run_cli("ingest", str(folder), "--db", str(db), "--json",
                      "--config", str(_stats_config(tmp_path)))  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["tiles_added"] == 6 - report["tiles"]
    assert json.loads(run_cli("check", "--db", str(db), "--json").stdout)["tiles"] == 6


def _stats_config(folder):
    """The settings ``stats_only`` gives the library, as a file for the command."""
    config = folder / "stats.yaml"
    config.write_text("features:\n  cnn:\n    weight: 0\n")
    return config
