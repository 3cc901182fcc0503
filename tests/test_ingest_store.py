"""Ingest into the GeoPackage: what lands in it, read back with GDAL (pyogrio) as QGIS would."""

from __future__ import annotations

import sqlite3

import numpy as np
import pyogrio
import pytest
import shapely

import geosearch
from geosearch.index import index_path
from geosearch.store import Store
from tests.conftest import SAMPLE_TILES, shared, textured, write_geotiff


def test_geopackage_opens_in_gdal_with_tiles_files_and_metadata(naip_db):
    layers = dict(pyogrio.list_layers(naip_db))
    assert layers["tiles"] == "MultiPolygon"
    assert {"files", "geosearch_meta"} <= set(layers)
    meta = pyogrio.read_info(naip_db, layer="tiles")
    assert meta["features"] == 20 and meta["crs"] == "EPSG:4326"
    assert {"path", "row", "col", "width", "height", "crs", "acquired", "vector"} <= set(
        meta["fields"]
    )


def test_vectors_round_trip_bit_exactly_through_gdal(naip_db):
    frame = pyogrio.read_dataframe(naip_db, layer="tiles", use_arrow=True, fid_as_index=True)
    with Store(naip_db) as store:
        ids, vectors = store.vectors()
    by_id = dict(zip(frame.index, frame["vector"], strict=True))
    assert len(by_id) == len(ids) == 20
    for tile_id, vector in zip(ids, vectors, strict=True):
        blob = by_id[tile_id]
        assert isinstance(blob, bytes)
        assert np.array_equal(np.frombuffer(blob, store.vector_dtype), vector)  # float16
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)


def test_tiles_and_vectors_by_more_ids_than_sqlite_binds_at_once(naip_db):
    """A period, a detection or a page layer can ask for 100k+ tiles by id: more than the
    parameters SQLite binds in one statement (32,766 by default; 250,000 in Debian's build)."""
    with Store(naip_db) as store:
        all_ids, all_vectors = store.vectors()
        asked = [*range(130_000, 0, -1), *range(130_001, 260_000)]  # stored ids and absent ones
        tiles = store.tiles(asked)
        ids, vectors = store.vectors(asked)
        paths = store.paths_of(asked)
    assert [t.id for t in tiles] == sorted(all_ids.tolist(), reverse=True)  # in the order asked
    assert np.array_equal(ids, all_ids) and np.array_equal(vectors, all_vectors)
    assert paths == sorted({t.path for t in tiles})


def test_footprints_lie_where_the_naip_scene_is(naip_db):
    frame = pyogrio.read_dataframe(naip_db, layer="tiles")
    # m_4709963_se: North Dakota, about 99.15 W, 47.02 N; 256 px at 5 m = 1.28 km
    for geometry in frame.geometry:
        minx, miny, maxx, maxy = geometry.bounds
        assert -99.18 < minx < maxx < -99.13 and 47.0 < miny < maxy < 47.04
        assert 0.015 < maxx - minx < 0.02 and 0.010 < maxy - miny < 0.013
    assert sorted(set(frame["acquired"].astype(str))) == [
        "2009-08-18", "2010-06-29", "2012-07-31", "2014-07-20", "2015-09-26",
    ]  # fmt: skip


def test_reingest_skips_unchanged_files(naip_db, tmp_path):
    report = geosearch.ingest([SAMPLE_TILES], naip_db)
    assert report.files_unchanged == 5 and report.tiles_added == 0
    with Store(naip_db) as store:
        assert store.tile_count() == 20


def test_changed_file_is_replaced_and_index_follows(tmp_path, stats_only):
    folder = tmp_path / "tiles"
    a = write_geotiff(folder / "a.tif", textured((3, 300, 300), seed=1))
    write_geotiff(folder / "b.tif", textured((3, 200, 200), seed=2))
    db = tmp_path / "db.gpkg"
    first = geosearch.ingest([folder], db, stats_only)
    assert first.tiles_added == 4 + 1
    write_geotiff(a, textured((3, 100, 100), seed=3))  # now one tile
    second = geosearch.ingest([folder], db, stats_only)
    assert (second.files_replaced, second.tiles_removed, second.tiles_added) == (1, 4, 1)
    with Store(db) as store:
        assert store.tile_count() == 2
    assert geosearch.info(db, stats_only)["index"]["vectors"] == 2


def test_bad_files_are_reported_and_skipped_and_the_rest_ingested(tmp_path, stats_only):
    folder = tmp_path / "mixed"
    write_geotiff(folder / "good.tif", textured((3, 64, 64), seed=1))
    (folder / "empty.tif").write_bytes(b"")
    (folder / "notes.tif").write_text("not a raster")
    (folder / "dir.tif").mkdir()
    write_geotiff(folder / "sub" / "five_bands.tif", textured((5, 64, 64), seed=2))
    db = tmp_path / "db.gpkg"
    report = geosearch.ingest([folder], db, stats_only)
    reasons = {p.rsplit("/", 1)[-1]: r for p, r in ((s.path, s.reason) for s in report.skipped)}
    assert report.tiles_added == 1 and report.files_ingested == 1
    assert reasons["empty.tif"] == "empty file (0 bytes)"
    assert reasons["notes.tif"].startswith("not a readable raster")
    assert reasons["five_bands.tif"].startswith(
        "expected 3 bands (band1,band2,band3) uint8 as stored"
    )
    assert "found 5" in reasons["five_bands.tif"] and "--bands" in reasons["five_bands.tif"]
    assert "dir.tif" not in reasons  # a directory is walked into, not read


def test_bands_option_selects_and_reorders(tmp_path, stats_only):
    path = write_geotiff(tmp_path / "s.tif", textured((4, 64, 64), seed=5))
    db = tmp_path / "db.gpkg"
    geosearch.ingest([path], db, stats_only, bands=[4, 3, 2])
    manifest = geosearch.info(db)["bands"]
    assert manifest["bands"] == [4, 3, 2] and manifest["names"] == ["band4", "band3", "band2"]
    rgb = write_geotiff(tmp_path / "rgb.tif", textured((3, 64, 64), seed=6))
    report = geosearch.ingest([rgb], db, stats_only, bands=[3, 2, 1])
    assert report.tiles_added == 1 and not report.skipped


def test_sentinel2_stack_picks_b04_b03_b02_for_rgb(tmp_path, stats_only):
    folder = shared("sentinel2", "S2A_29RKH_20200219_L2A")
    import rasterio

    names = ["B02", "B03", "B04", "B08"]
    arrays = []
    for name in names:
        with rasterio.open(folder / f"{name}.tif") as src:
            profile = src.profile
            arrays.append(src.read(1, window=((0, 300), (0, 300))))
    stack = tmp_path / "S2A_29RKH_20200219_stack.tif"
    with rasterio.open(
        stack, "w", driver="GTiff", width=300, height=300, count=4, dtype="uint16",
        crs=profile["crs"], transform=profile["transform"], nodata=0,
    ) as dst:  # fmt: skip
        dst.write(np.stack(arrays))
        dst.descriptions = tuple(names)
    db = tmp_path / "s2.gpkg"
    geosearch.ingest([stack], db, stats_only)
    manifest = geosearch.info(db)["bands"]
    assert [manifest["names"][i] for i in manifest["rgb"]] == ["B04", "B03", "B02"]
    assert manifest["scaling"] == "percentile" and all(
        0 < low < high < 20000 for low, high in zip(manifest["low"], manifest["high"], strict=True)
    )


def test_index_file_rebuilt_when_missing_or_damaged(naip_db):
    path = index_path(naip_db)
    path.unlink()
    assert geosearch.info(naip_db)["index"]["vectors"] == 20
    assert path.exists()
    path.write_bytes(path.read_bytes()[:100])  # truncated
    results = geosearch.similar(naip_db, [SAMPLE_TILES / "naip" / "m_4709963_se_14_1_20120731.tif"])
    assert len(results[0].matches) == 5


def test_mostly_nodata_tiles_are_skipped(tmp_path, stats_only):
    data = textured((3, 512, 256), seed=4)
    data[:, 256:, :] = 0
    data[:, 256:260, :10] = 50  # a few valid pixels in an otherwise empty tile
    path = write_geotiff(tmp_path / "half.tif", data, nodata=0)
    report = geosearch.ingest([path], tmp_path / "db.gpkg", stats_only)
    assert (report.tiles_added, report.tiles_nodata) == (1, 1)


def test_database_of_another_schema_is_refused(tmp_path):
    db = tmp_path / "other.gpkg"
    sqlite3.connect(db).execute("CREATE TABLE x (a)").connection.close()
    with pytest.raises(geosearch.DatabaseError, match="not a geosearch database"):
        geosearch.info(db)


def test_geometry_blobs_are_geopackage_binary(naip_db):
    connection = sqlite3.connect(naip_db)
    blob = connection.execute("SELECT geom FROM tiles LIMIT 1").fetchone()[0]
    assert blob[:2] == b"GP" and int.from_bytes(blob[4:8], "little") == 4326
    assert shapely.from_wkb(blob[40:]).geom_type == "MultiPolygon"
