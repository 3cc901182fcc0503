"""The Spark engine in local mode: same database as the local engine, batch search, errors."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

import geosearch
from geosearch.config import Settings
from geosearch.store import Store
from tests.conftest import SAMPLE_TILES, run_cli, shared

pytest.importorskip("pyspark", reason="the spark extra is installed by make test")
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
MASTER = "local[2]"


def _contents(db):
    with Store(db) as store:
        ids, vectors = store.vectors()
        tiles = store.tiles(ids.tolist())
        _, raw = store.vectors(column="features")
    return tiles, vectors, raw


@pytest.fixture(scope="module")
def naip_pair(tmp_path_factory):
    """Two NAIP years ingested at 256 px by the local engine and by Spark (local[2])."""
    folder = tmp_path_factory.mktemp("naip2")
    for name in ("m_4709963_se_14_1_20090818.tif", "m_4709963_se_14_1_20150926.tif"):
        (folder / name).symlink_to(shared("naip", name))
    settings = Settings().with_overrides(
        {"batch_size": 8, "workers": 2, "vectors.raw_features": True}  # raw: compared below
    )
    local_db, spark_db = folder / "local.gpkg", folder / "spark.gpkg"
    local = geosearch.ingest([folder], local_db, settings)
    spark = geosearch.ingest([folder], spark_db, settings, engine="spark", master=MASTER)
    return folder, local, spark, local_db, spark_db


def test_spark_ingest_equals_local_ingest(naip_pair):
    _, local, spark, local_db, spark_db = naip_pair
    assert spark.engine == f"spark {MASTER}" and local.engine == "local"
    # 2 files x 12 tiles in chunks of 8: every chunk computed by an executor, not the driver
    assert spark.remote_chunks == 4
    assert spark.tiles_added == local.tiles_added == 24 and not spark.skipped
    local_tiles, local_vectors, local_raw = _contents(local_db)
    spark_tiles, spark_vectors, spark_raw = _contents(spark_db)
    assert [(t.path, t.window) for t in local_tiles] == [(t.path, t.window) for t in spark_tiles]
    for a, b in zip(local_tiles, spark_tiles, strict=True):
        assert a.footprint.equals_exact(b.footprint, 1e-12) and a.acquired == b.acquired
    # stored at float16: equal, or a float16 step apart where a value sat on a rounding edge
    np.testing.assert_allclose(spark_vectors, local_vectors, atol=1e-3)
    np.testing.assert_allclose(spark_raw, local_raw, atol=1e-5)
    again = geosearch.ingest([naip_pair[0]], spark_db, engine="spark", master=MASTER)
    assert again.files_unchanged == 2 and again.tiles_added == 0


def test_spark_batch_search_matches_local_search(naip_pair, tmp_path):
    folder, _, _, _, spark_db = naip_pair
    queries = sorted(folder.glob("*.tif"))
    vectors_only = Settings().with_overrides({"search.locate": False})  # as Spark searches
    local = geosearch.similar(spark_db, queries, top=4, settings=vectors_only)
    batch = geosearch.api.similar_batch(spark_db, [folder], top=4, master=MASTER)
    assert [r.query.path for r in batch] == [r.query.path for r in local]
    for a, b in zip(local, batch, strict=True):
        assert [m.tile.id for m in a.matches] == [m.tile.id for m in b.matches]
        np.testing.assert_allclose([m.score for m in a.matches], [m.score for m in b.matches],
                                   atol=1e-5)  # fmt: skip
    [turned_local] = geosearch.similar(
        spark_db, queries[:1], top=4, any_orientation=True, settings=vectors_only
    )
    [turned_batch] = geosearch.api.similar_batch(
        spark_db, queries[:1], top=4, master=MASTER, any_orientation=True
    )
    assert turned_batch.query.turned is not None
    assert [m.tile.id for m in turned_batch.matches] == [m.tile.id for m in turned_local.matches]
    new_file = tmp_path / "chip.tif"
    new_file.symlink_to(SAMPLE_TILES / "naip" / "m_4709963_se_14_1_20120731.tif")
    [embedded] = geosearch.api.similar_batch(spark_db, [new_file], top=3, master=MASTER)
    # A whole file of four tiles is a scene: one result per scene, and the database has two.
    assert not embedded.query.indexed and len(embedded.matches) == 2


def test_spark_all_tiles_cli_writes_parquet_and_geojson(naip_pair, tmp_path):
    _, _, _, _, spark_db = naip_pair
    out = tmp_path / "dupes"
    result = run_cli(
        "similar", "--engine", "spark", "--master", MASTER, "--all-tiles", "--top", "2",
        "--db", str(spark_db), "--out", str(out), env={"SPARK_LOCAL_IP": "127.0.0.1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    table = pq.read_table(out / "similar.parquet").to_pydict()
    assert len(table["id"]) == 24 * 2 and set(table["rank"]) == {1, 2}
    for query_ids, tile_id in zip(table["query_tile_ids"], table["id"], strict=True):
        assert tile_id not in query_ids
    assert (out / "similar.geojson").stat().st_size > 1000


def test_spark_engine_without_pyspark_says_what_to_install(tmp_path):
    db = tmp_path / "x.gpkg"
    code = (
        "import sys; sys.modules['pyspark'] = None\n"
        "import geosearch\n"
        "try:\n"
        f"    geosearch.ingest([{str(SAMPLE_TILES)!r}], {str(db)!r}, engine='spark')\n"
        "except geosearch.ConfigError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "pip install 'geosearch[spark]'" in done.stdout, done.stderr[-1000:]


def test_spark_on_an_embedding_database(alphaearth_db, tmp_path):
    """AlphaEarth rasters through Spark: the same vectors as the local engine, batch search."""
    raster, local_db = alphaearth_db
    spark_db = tmp_path / "aef-spark.gpkg"
    settings = Settings(tile_size=64, workers=2, batch_size=16)
    report = geosearch.ingest([raster], spark_db, settings, engine="spark", master=MASTER)
    assert report.tiles_added == 63 and report.remote_chunks == 4
    local_tiles, local_vectors, _ = _contents(local_db)
    spark_tiles, spark_vectors, _ = _contents(spark_db)
    assert [t.window for t in local_tiles] == [t.window for t in spark_tiles]
    np.testing.assert_allclose(spark_vectors, local_vectors, atol=1e-3)  # float16
    results = geosearch.api.similar_batch(spark_db, [], top=3, all_tiles=True, master=MASTER)
    assert len(results) == 63 and all(r.matches[0].score > 0.9 for r in results)
