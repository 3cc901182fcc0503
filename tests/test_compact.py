"""Compact vectors: a database projects its fused vectors (PCA, partly whitened) and stores
them at float16 without raw features; one made before is read as it is and `migrate`d."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

import geosearch
from geosearch.config import Settings
from geosearch.store import Store
from tests.conftest import run_cli, shared

STATS_AND_LAYOUT = {"features.cnn.weight": 0.0, "workers": 1, "tile_size": 64}


@pytest.fixture(scope="module")
def naip64(tmp_path_factory: pytest.TempPathFactory):
    """The five NAIP years at 64 px (900 tiles; a creation sample of 640), no CNN: quick."""
    db = tmp_path_factory.mktemp("compact") / "naip64.gpkg"
    report = geosearch.ingest([shared("naip")], db, Settings().with_overrides(STATS_AND_LAYOUT))
    assert report.tiles_added == 900
    return db


def same_place_top1(db) -> float:
    """Share of full tiles whose best match (other years only) is the same grid cell."""
    with Store(db) as store:
        ids, vectors = store.vectors()
        tiles = store.tiles(ids.tolist())
    years = np.array([t.acquired for t in tiles])
    cells = np.array([(t.window.row, t.window.col) for t in tiles])
    scores = vectors @ vectors.T
    scores[years[:, None] == years[None, :]] = -np.inf
    best = scores.argmax(axis=1)
    return float((cells[best] == cells).all(axis=1).mean())


def test_a_large_database_stores_projected_float16_vectors(naip64):
    facts = geosearch.info(naip64)
    assert facts["vectors"] == {
        "dim": 128,
        "fused_dim": 4 * 15 + 4 * 256,
        "projected": True,
        "dtype": "float16",
        "raw_features": False,
    }
    with sqlite3.connect(naip64) as connection:
        lengths = {row[0] for row in connection.execute("SELECT length(vector) FROM tiles")}
        raw = connection.execute("SELECT count(features) FROM tiles").fetchone()[0]
        row = connection.execute(
            "SELECT avg(length(geom) + length(footprint_native) + length(path) + length(vector)"
            " + length(crs) + length(acquired) + 40) FROM tiles"
        ).fetchone()[0]
    assert lengths == {128 * 2} and raw == 0
    assert row < 1_100  # a tile's row: footprints (two), path, vector...; before: 17.8 KB
    assert same_place_top1(naip64) > 0.5  # the same place in another year, among 720


def legacy_copy(db, folder):
    """``db`` rewritten as a database made before compact vectors: the fused vectors in full
    at float32, raw features kept, no projection and no vector_dtype in its metadata."""
    full = folder / "legacy.gpkg"
    settings = Settings().with_overrides(
        STATS_AND_LAYOUT | {"vectors.dims": 0, "vectors.raw_features": True}
    )
    geosearch.ingest([shared("naip")], full, settings)
    with Store(full) as store:
        ids, vectors = store.vectors()
        store.rewrite_vectors(list(zip(ids.tolist(), vectors, strict=True)), "<f4", False)
        connection = store._connection
        connection.execute("DELETE FROM geosearch_meta WHERE key = 'vector_dtype'")
        stored = store.meta("settings")
        del stored["vectors"]
        connection.execute(
            "UPDATE geosearch_meta SET value = ? WHERE key = 'settings'", (json.dumps(stored),)
        )
        connection.commit()
    return full


def test_a_database_made_before_is_read_as_it_is_then_migrated(naip64, tmp_path):
    legacy = legacy_copy(naip64, tmp_path)
    facts = geosearch.info(legacy)
    assert (facts["vectors"]["dim"], facts["vectors"]["dtype"]) == (1084, "float32")
    shown = run_cli("info", "--db", str(legacy))
    assert "1084 float32 (fused)" in shown.stdout and "'geosearch migrate'" in shown.stdout
    query = shared("naip", "m_4709963_se_14_1_20150926.tif")
    before = geosearch.similar(legacy, [query], tile=40, top=4)[0]
    size_before = legacy.stat().st_size
    result = run_cli("migrate", "--db", str(legacy), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["tiles"], report["dim_before"], report["dim_after"]) == (900, 1084, 128)
    assert report["bytes_after"] < size_before / 2
    facts = geosearch.info(legacy)
    assert facts["vectors"]["projected"] and facts["vectors"]["dtype"] == "float16"
    after = geosearch.similar(legacy, [query], tile=40, top=4)[0]
    assert after.matches[0].tile.id == before.matches[0].tile.id  # the same place first
    assert same_place_top1(legacy) >= same_place_top1(naip64) - 0.05
    again = run_cli("migrate", "--db", str(legacy))
    assert again.returncode == 4 and "nothing to migrate" in again.stderr
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_a_migration_killed_half_way_leaves_the_database_as_it_was(naip64, tmp_path):
    legacy = legacy_copy(naip64, tmp_path)
    with sqlite3.connect(legacy) as connection:  # an empty WAL: its growth is the migration's
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    wal = legacy.with_name(legacy.name + "-wal")
    process = subprocess.Popen(
        [sys.executable, "-m", "geosearch", "migrate", "--db", str(legacy)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if wal.exists() and wal.stat().st_size > 1 << 20:  # a quarter of the vectors rewritten
            break
        time.sleep(0.005)
    assert process.poll() is None, "migrate finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    check = run_cli("check", "--db", str(legacy), "--json")
    assert check.returncode == 0, check.stdout
    assert json.loads(check.stdout)["tiles"] == 900
    facts = geosearch.info(legacy)["vectors"]
    assert (facts["dim"], facts["dtype"], facts["projected"]) == (1084, "float32", False)
    again = run_cli("migrate", "--db", str(legacy), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["tiles"] == 900
    assert geosearch.info(legacy)["vectors"]["dtype"] == "float16"
