"""Incremental, resumable ingest: dry run, --verify, remove, and a real process killed mid-way."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

import geosearch
from geosearch.index import index_path, open_index
from geosearch.store import Store
from tests.conftest import run_cli, textured, write_geotiff


@pytest.fixture
def folder(tmp_path):
    for i in range(6):
        write_geotiff(tmp_path / "in" / f"f{i}.tif", textured((3, 300, 300), seed=i))  # 4 tiles
    return tmp_path / "in"


def test_dry_run_lists_actions_and_writes_nothing(folder, tmp_path, stats_only):
    db = tmp_path / "db.gpkg"
    report = geosearch.ingest([folder], db, stats_only, dry_run=True)
    assert [p["action"] for p in report.planned] == ["new"] * 6 and not db.exists()
    geosearch.ingest([folder / "f0.tif"], db, stats_only)
    write_geotiff(folder / "f7.tif", textured((3, 50, 50), seed=7))
    result = run_cli("ingest", str(folder), "--db", str(db), "--dry-run", "--json")
    planned = {
        p["path"].rsplit("/", 1)[-1]: p["action"] for p in json.loads(result.stdout)["planned"]
    }
    assert planned["f0.tif"] == "unchanged" and planned["f7.tif"] == "new"
    with Store(db) as store:
        assert store.tile_count() == 4


def test_verify_uses_content_not_mtime(folder, tmp_path, stats_only):
    db = tmp_path / "db.gpkg"
    geosearch.ingest([folder], db, stats_only, verify=True)
    target = folder / "f1.tif"
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched, same bytes
    report = geosearch.ingest([folder], db, stats_only, verify=True)
    assert report.files_unchanged == 6 and report.tiles_added == 0
    original = target.stat()
    write_geotiff(target, textured((3, 300, 300), seed=99))  # same size, new content
    os.utime(target, ns=(original.st_atime_ns, original.st_mtime_ns))
    assert target.stat().st_size == original.st_size
    assert geosearch.ingest([folder], db, stats_only).files_unchanged == 6  # size+mtime fooled
    report = geosearch.ingest([folder], db, stats_only, verify=True)
    assert report.files_replaced == 1 and report.tiles_added == 4


def test_remove_files_and_folders(folder, tmp_path, stats_only):
    db = tmp_path / "db.gpkg"
    write_geotiff(tmp_path / "in" / "sub" / "g.tif", textured((3, 100, 100), seed=8))
    geosearch.ingest([folder], db, stats_only)
    assert geosearch.remove(db, [folder / "f0.tif"]) == {"files_removed": 1, "tiles_removed": 4}
    result = run_cli("remove", str(folder / "sub"), "--db", str(db), "--json")
    assert json.loads(result.stdout) == {"files_removed": 1, "tiles_removed": 1}
    with Store(db) as store:
        assert store.tile_count() == 20 and open_index(store).count == 20
    missing = run_cli("remove", str(folder / "nope.tif"), "--db", str(db))
    assert missing.returncode == 3 and "nope.tif: not in db.gpkg" in missing.stderr


def _consistent(db):
    """Tiles = vectors = index entries; every tile's vector is a finite unit vector."""
    with Store(db) as store:
        ids, vectors = store.vectors()
        assert len(ids) == store.tile_count()
        assert np.isfinite(vectors).all()
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
        assert open_index(store).count == len(ids)
        return store.tile_count(), {f.path: f.status for f in store.files()}


@pytest.mark.parametrize("kill_after_tiles", [1, 60])
def test_killed_ingest_resumes_with_exact_counts(tmp_path, kill_after_tiles):
    folder = tmp_path / "many"
    for i in range(40):
        write_geotiff(folder / f"s{i:02d}.tif", textured((3, 256, 512), seed=i))  # 2 tiles
    (tmp_path / "config.yaml").write_text("batch_size: 4\nworkers: 1\n")
    db = tmp_path / "db.gpkg"
    process = subprocess.Popen(
        [sys.executable, "-m", "geosearch", "ingest", str(folder), "--db", str(db), "--quiet"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    committed = 0
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as connection:
                committed = connection.execute("SELECT count(*) FROM tiles").fetchone()[0]
        except sqlite3.Error:
            committed = 0  # not created yet
        if committed >= kill_after_tiles:
            break
        time.sleep(0.02)
    assert process.poll() is None, "ingest finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    tiles_before, statuses = _consistent(db)
    assert 0 < tiles_before < 80 and len(statuses) < 40
    resumed = run_cli("ingest", str(folder), "--db", str(db), "--json", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["tiles_added"] == 80 - tiles_before
    tiles_after, statuses = _consistent(db)
    assert tiles_after == 80 and set(statuses.values()) == {"done"} and len(statuses) == 40
    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert index_path(db).exists()


def test_second_writer_fails_fast_naming_the_holder(folder, tmp_path, stats_only):
    db = tmp_path / "db.gpkg"
    geosearch.ingest([folder / "f0.tif"], db, stats_only)
    with Store(db) as store, store.writer("ingest"):
        result = run_cli("ingest", str(folder), "--db", str(db))
    assert result.returncode == 4
    assert f"is being written by geosearch ingest (pid {os.getpid()}" in result.stderr
