"""Bad and odd inputs: each is ingested or skipped with a one-line reason; the rest goes in.

A database holds one band layout, so cases are grouped by layout, one database per group.
Real files from ../shared/data/rasterio where they exist; the rest is written here with rasterio
and Pillow. The GeoPackage is read back with GDAL (pyogrio), as QGIS would read it.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from PIL import Image
from pyogrio.raw import read as read_layer
from pyproj import Transformer
from rasterio.transform import Affine, from_origin
from shapely.geometry import MultiPolygon, Point

import geosearch
from geosearch.config import Settings
from geosearch.ingest import IngestReport
from geosearch.sources import open_source
from geosearch.store import Store
from tests.conftest import run_cli, shared, textured, write_geotiff

SMALL = (1, 64, 64)  # the layout of the "good" files beside the bad ones: 1 band uint8
SMALL_DATA = textured(SMALL, seed=9)


@pytest.fixture
def settings(stats_only: Settings) -> Settings:
    """Stats-only, in this process: each case is a small folder, worker start-up would dominate."""
    return stats_only.with_overrides({"workers": 1})


def reasons(report: IngestReport) -> dict[str, str]:
    """Skipped files by name, with their reasons."""
    return {Path(s.path).name: s.reason for s in report.skipped}


def tiles_in(db: Path) -> list[dict]:
    """The ``tiles`` layer as GDAL reads it: one dict per tile, ``geometry`` a shapely or None."""
    columns = ["path", "row", "col", "width", "height", "crs", "footprint_native"]
    _, _, geometries, fields = read_layer(db, layer="tiles", columns=columns)
    rows = []
    for i, wkb in enumerate(geometries):
        row = {name: values[i] for name, values in zip(columns, fields, strict=True)}
        row["name"] = Path(row["path"]).name
        row["geometry"] = shapely.from_wkb(wkb) if wkb is not None else None
        rows.append(row)
    return rows


def stored_vectors(db: Path, column: str = "vector") -> np.ndarray:
    """Every tile's ``vector`` or raw ``features`` (where the database keeps them), as stored."""
    with Store(db) as store:
        return store.vectors(column=column)[1]


def truncated(path: Path, keep: float | int) -> Path:
    """Cut a file's bytes: ``keep`` is a fraction of its size, or a byte count."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    return path


def png_bomb(path: Path, side: int = 100_000) -> Path:
    """A tiny PNG whose header claims side x side pixels (its IHDR CRC recomputed)."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", side, side)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


# -- files that can't be read, beside good ones -----------------------------------------------


def make_bad_folder(folder: Path) -> dict[str, str]:
    """A folder of good 1-band uint8 rasters and bad files; returns bad name -> expected reason."""
    write_geotiff(folder / "good.tif", textured(SMALL, seed=1))
    write_geotiff(folder / "x.tif" / "inside.tif", textured(SMALL, seed=2))  # a folder x.tif
    write_geotiff(folder / ("L" * 246 + ".tif"), textured(SMALL, seed=3))  # 250-byte name
    write_geotiff(folder / "one_pixel.tif", textured((1, 1, 1), seed=4))
    write_geotiff(folder / "one_wide.tif", textured((1, 300, 1), seed=5))
    write_geotiff(folder / "one_high.tif", textured((1, 1, 300), seed=6))
    (folder / "zero.tif").write_bytes(b"")
    truncated(write_geotiff(folder / "truncated.tif", textured((1, 300, 300), seed=7)), 0.5)
    truncated(write_geotiff(folder / "truncated_header.tif", textured(SMALL, seed=8)), 64)
    (folder / "text.tif").write_text("not a raster\n" * 20)
    (folder / "broken.tif").symlink_to(folder / "missing.tif")
    (folder / "loop_a.tif").symlink_to(folder / "loop_b.tif")
    (folder / "loop_b.tif").symlink_to(folder / "loop_a.tif")
    (folder / "sub").mkdir()
    (folder / "sub" / "up").symlink_to(folder)  # a directory link to its parent: not followed
    os.mkfifo(folder / "pipe.tif")
    return {
        "zero.tif": "empty file (0 bytes)",
        "truncated.tif": "truncated or damaged",
        "truncated_header.tif": "not a readable raster",
        "text.tif": "not a readable raster (not recognized as being in a supported file format.)",
        "broken.tif": "broken symbolic link",
        "loop_a.tif": "symbolic link loop",
        "loop_b.tif": "symbolic link loop",
        "pipe.tif": "not a regular file",
    }


def test_bad_files_are_skipped_with_a_reason_and_the_rest_ingested(tmp_path, settings):
    folder = tmp_path / "in"
    expected = make_bad_folder(folder)
    report = geosearch.ingest([folder], tmp_path / "db.gpkg", settings)

    assert report.files_found == 6 + len(expected)
    assert report.files_ingested == 6  # good, inside, long name, 1x1, 1x300, 300x1
    found = reasons(report)
    assert found.keys() == expected.keys()
    for name, reason in expected.items():
        assert reason in found[name], (name, found[name])
        assert "\n" not in found[name] and str(folder) not in found[name].split("(to ")[0]
    assert "which does not exist" in found["broken.tif"]  # names the missing target
    assert "got" in found["truncated.tif"]  # GDAL's own words, not "see previous exception"
    names = {tile["name"] for tile in tiles_in(tmp_path / "db.gpkg")}
    assert names == {"good.tif", "inside.tif", "L" * 246 + ".tif"} | {
        "one_pixel.tif", "one_wide.tif", "one_high.tif",
    }  # fmt: skip


def test_cli_reports_each_skip_on_one_stderr_line_and_exits_6(tmp_path):
    folder = tmp_path / "in"
    expected = make_bad_folder(folder)
    result = run_cli(
        "ingest", str(folder), "--db", str(tmp_path / "db.gpkg"), cwd=tmp_path,
        env={"GEOSEARCH_CONFIG": str(tmp_path / "none.yaml")},
    )  # fmt: skip
    assert result.returncode == 6, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("skipped ")]
    assert len(lines) == len(expected)
    for name, reason in expected.items():
        assert any(
            line.startswith(f"skipped {folder / name}: ") and reason in line for line in lines
        ), name


def test_a_damaged_file_loses_the_tiles_it_had_committed(tmp_path, settings):
    """corrupt.tif: its header opens and its first tiles read, the one at row 512, col 512
    doesn't. Committed one tile at a time, its first tiles are in before the failure: they go."""
    settings = settings.with_overrides({"batch_size": 1})
    db = tmp_path / "db.gpkg"
    good = write_geotiff(tmp_path / "in" / "good.tif", textured((3, 64, 64), seed=1))
    geosearch.ingest([good], db, settings)
    shutil.copy(shared("rasterio", "corrupt.tif"), tmp_path / "in" / "corrupt.tif")

    report = geosearch.ingest([tmp_path / "in"], db, settings)

    assert report.files_unchanged == 1 and report.files_ingested == 0
    reason = reasons(report)["corrupt.tif"]
    assert reason.startswith("pixels unreadable at row 512, col 512; the file may be truncated")
    assert report.tiles_removed == report.tiles_added > 0  # written, then taken out again
    assert {tile["name"] for tile in tiles_in(db)} == {"good.tif"}
    assert geosearch.info(db)["files"] == 1


def test_a_damaged_first_file_does_not_decide_the_band_layout(tmp_path, settings):
    folder = tmp_path / "in"
    truncated(write_geotiff(folder / "a_damaged.tif", textured((1, 300, 300), seed=1)), 0.5)
    write_geotiff(folder / "b.tif", textured((3, 64, 64), seed=2))
    write_geotiff(folder / "c.tif", textured((3, 64, 64), seed=3))
    report = geosearch.ingest([folder], tmp_path / "db.gpkg", settings)
    assert reasons(report).keys() == {"a_damaged.tif"}
    assert report.files_ingested == 2


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="running as root (as in CI): file permissions don't stop root from reading",
)
def test_an_unreadable_file_and_folder_are_skipped(tmp_path, settings):
    write_geotiff(tmp_path / "in" / "good.tif", textured(SMALL, seed=1))
    locked = write_geotiff(tmp_path / "in" / "locked.tif", textured(SMALL, seed=2))
    write_geotiff(tmp_path / "in" / "closed" / "hidden.tif", textured(SMALL, seed=3))
    locked.chmod(0)
    (tmp_path / "in" / "closed").chmod(0)
    try:
        report = geosearch.ingest([tmp_path / "in"], tmp_path / "db.gpkg", settings)
    finally:
        (tmp_path / "in" / "closed").chmod(0o755)
    assert reasons(report) == {
        "locked.tif": "permission denied",
        "closed": "folder can't be read (permission denied); its images are left out",
    }
    assert report.files_ingested == 1


def non_utf8_name(folder: Path, name: bytes, make: Path) -> Path:
    """Rename ``make`` to ``name`` (bytes that aren't UTF-8) in ``folder``."""
    target = os.fsencode(folder) + b"/" + name
    os.rename(os.fsencode(make), target)
    return Path(os.fsdecode(target))


def test_a_non_utf8_file_name_is_refused_with_a_clear_reason(tmp_path):
    path = non_utf8_name(tmp_path, b"caf\xe9.tif", write_geotiff(tmp_path / "x.tif", SMALL_DATA))
    with pytest.raises(geosearch.InputError, match="file name is not valid UTF-8; rename it"):
        open_source(path)


def test_non_utf8_file_names_are_skipped_and_the_rest_ingested(tmp_path, settings):
    folder = tmp_path / "in"
    write_geotiff(folder / "good.tif", textured(SMALL, seed=1))
    bad = non_utf8_name(folder, b"caf\xe9.tif", write_geotiff(folder / "x.tif", SMALL_DATA))
    report = geosearch.ingest([folder], tmp_path / "db.gpkg", settings)
    assert report.files_ingested == 1
    assert [(s.path, s.reason) for s in report.skipped] == [
        (str(bad), "file name is not valid UTF-8; rename it")
    ]
    with pytest.raises(geosearch.InputError, match="not valid UTF-8"):
        geosearch.similar(tmp_path / "db.gpkg", [bad])


# -- queries that can't be read ---------------------------------------------------------------


def test_bad_query_files_are_input_errors_not_tracebacks(tmp_path, settings):
    folder = tmp_path / "in"
    make_bad_folder(folder)
    db = tmp_path / "db.gpkg"
    geosearch.ingest([folder / "good.tif"], db, settings)
    for name, reason in [
        ("zero.tif", "empty file"),
        ("text.tif", "not a readable raster"),
        ("truncated.tif", "truncated or damaged"),
        ("broken.tif", "broken symbolic link"),
        ("loop_a.tif", "symbolic link loop"),
        ("pipe.tif", "not a regular file"),
        ("x.tif", "is a directory"),
    ]:
        with pytest.raises(geosearch.InputError, match=reason) as caught:
            geosearch.similar(db, [folder / name], settings=settings)
        assert "\n" not in str(caught.value), name


# -- nodata ----------------------------------------------------------------------------------


def test_all_nodata_tiles_are_counted_not_indexed(tmp_path, settings):
    shutil.copy(shared("rasterio", "all-nodata.tif"), tmp_path / "all-nodata.tif")
    db = tmp_path / "db.gpkg"
    report = geosearch.ingest([tmp_path / "all-nodata.tif"], db, settings)
    assert (report.files_ingested, report.tiles_added, report.tiles_nodata) == (1, 0, 10)
    assert not report.skipped
    write_geotiff(tmp_path / "other.tif", textured((4, 64, 64), seed=1, dtype="uint16"))
    assert geosearch.ingest([tmp_path / "other.tif"], db, settings).tiles_added == 1
    with pytest.raises(geosearch.InputError, match="none of its tiles had enough valid pixels"):
        geosearch.similar(db, [tmp_path / "all-nodata.tif"], settings=settings)


@pytest.mark.parametrize(("threshold", "indexed"), [(0.9, False), (0.95, True), (0.96, True)])
def test_max_nodata_fraction_decides_for_mostly_nodata_tiles(
    tmp_path, settings, threshold, indexed
):
    data = textured((1, 100, 100), seed=1) | 1  # no zero but the nodata below
    data[:, :95, :] = 0  # 95 % nodata
    write_geotiff(tmp_path / "in" / "mostly_nodata.tif", data, nodata=0)
    write_geotiff(tmp_path / "in" / "good.tif", textured((1, 100, 100), seed=2) | 1, nodata=0)
    settings = settings.with_overrides({"max_nodata_fraction": threshold})
    report = geosearch.ingest([tmp_path / "in"], tmp_path / "db.gpkg", settings)
    assert report.files_ingested == 2 and not report.skipped
    assert report.tiles_nodata == (0 if indexed else 1)
    names = [tile["name"] for tile in tiles_in(tmp_path / "db.gpkg")]
    assert ("mostly_nodata.tif" in names) == indexed


def test_nan_and_inf_are_nodata_and_vectors_stay_finite(tmp_path, settings):
    shutil.copy(shared("rasterio", "float_nan.tif"), tmp_path / "float_nan.tif")  # nodata=nan
    data = textured((2, 80, 80), seed=1, dtype="float32")
    data[0, :10] = np.nan
    data[1, 10:20] = np.inf
    data[0, 20:30] = -np.inf
    write_geotiff(tmp_path / "inf.tif", data)
    write_geotiff(tmp_path / "only_nan.tif", np.full((2, 30, 30), np.nan, dtype="float32"))

    nan_db, inf_db = tmp_path / "nan.gpkg", tmp_path / "inf.gpkg"
    nan_report = geosearch.ingest([tmp_path / "float_nan.tif"], nan_db, settings)
    report = geosearch.ingest([tmp_path / "inf.tif", tmp_path / "only_nan.tif"], inf_db, settings)

    assert (nan_report.tiles_added, nan_report.skipped) == (1, [])
    assert (report.tiles_added, report.tiles_nodata, report.skipped) == (1, 1, [])
    assert np.isfinite(stored_vectors(nan_db)).all() and np.isfinite(stored_vectors(inf_db)).all()
    results = geosearch.similar(inf_db, [tmp_path / "inf.tif"], settings=settings)
    assert results[0].query.tiles[0].nodata_fraction == pytest.approx(30 / 80)


# -- geography: no CRS, rotation, projections, the antimeridian ----------------------------


def test_no_crs_is_accepted_with_null_footprints_and_searchable(tmp_path, settings):
    shutil.copy(shared("rasterio", "float.tif"), tmp_path / "float.tif")  # float64, no CRS
    write_geotiff(tmp_path / "other.tif", textured((1, 3, 2), seed=1) * 1.5, crs=None)
    with rasterio.open(  # a CRS but no geotransform: placed nowhere, not at pixel coordinates
        tmp_path / "no_transform.tif", "w", driver="GTiff", width=2, height=3, count=1,
        dtype="float64", crs="EPSG:32633",
    ) as dataset:  # fmt: skip
        dataset.write(textured((1, 3, 2), seed=2) * 1.5)
    db = tmp_path / "db.gpkg"
    report = geosearch.ingest([tmp_path], db, settings)
    assert (report.files_ingested, report.skipped) == (3, [])
    tiles = tiles_in(db)
    assert [(t["geometry"], t["crs"], t["footprint_native"]) for t in tiles] == [(None,) * 3] * 3

    results = geosearch.similar(db, [tmp_path / "float.tif"], top=3, settings=settings)
    found = results[0].to_dict()["results"]
    assert sorted(Path(r["path"]).name for r in found) == ["no_transform.tif", "other.tif"]
    assert [r["geometry"] for r in found] == [None, None]
    files = geosearch.write_results(results, db, tmp_path / "out", settings=settings)
    features = json.loads(files.geojson.read_text())["features"]
    assert len(features) == 3 and all(feature["geometry"] is None for feature in features)


def test_a_rotated_sheared_raster_has_its_rotated_footprint(tmp_path, settings):
    transform = Affine(10, 5, 500000, 3, -10, 5200000)  # sheared and rotated pixels
    path = write_geotiff(tmp_path / "rotated.tif", textured((1, 64, 64), 1), transform=transform)
    db = tmp_path / "db.gpkg"
    geosearch.ingest([path], db, settings)
    (tile,) = tiles_in(db)
    corners = [transform * xy for xy in [(0, 0), (64, 0), (64, 64), (0, 64)]]
    native = shapely.from_wkt(tile["footprint_native"])
    assert all(Point(c).distance(native.exterior) < 1e-6 for c in corners)
    assert native.area == pytest.approx(abs(transform.determinant) * 64 * 64)
    to_lonlat = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    lonlat = [to_lonlat.transform(*c) for c in corners]
    ring = tile["geometry"].geoms[0].exterior
    assert all(Point(c).distance(ring) < 1e-9 for c in lonlat)
    assert tile["geometry"].area < 0.95 * tile["geometry"].envelope.area  # not a north-up box


def test_geostationary_tiles_off_the_disk_have_no_footprint(tmp_path, settings):
    """goes.tif: the full disk, lon_0 -75, in 64 px tiles (9 x 9). Its mask hides space, so
    the corner tiles are not indexed; tiles on the limb hold Earth but part of their outline
    is off the disk: indexed, with a NULL footprint. Tiles within the disk have footprints."""
    shutil.copy(shared("rasterio", "goes.tif"), tmp_path / "goes.tif")
    db = tmp_path / "db.gpkg"
    settings = settings.with_overrides({"tile_size": 64})
    report = geosearch.ingest([tmp_path / "goes.tif"], db, settings)
    assert report.files_ingested == 1 and not report.skipped
    assert (report.tiles_added, report.tiles_nodata) == (67, 14)
    tiles = {(t["row"] // 64, t["col"] // 64): t for t in tiles_in(db)}
    assert (0, 0) not in tiles  # space
    limb = tiles[(0, 4)]
    assert (limb["geometry"], limb["footprint_native"]) == (None, None)
    assert limb["crs"].startswith("PROJCS") and "Geostationary_Satellite" in limb["crs"]
    centre = tiles[(4, 4)]["geometry"]  # pixels 256..320: the sub-satellite point is at 271
    assert centre is not None and centre.contains(Point(-75, 0))
    with_footprint = [t for t in tiles.values() if t["geometry"] is not None]
    assert len(with_footprint) == 39
    for tile in with_footprint:
        minx, miny, maxx, maxy = tile["geometry"].bounds
        assert -180 <= minx <= maxx <= 180 and -90 <= miny <= maxy <= 90


def test_web_mercator_footprints_match_the_corners(tmp_path, settings):
    path = shutil.copy(shared("rasterio", "rgb1_fake_nir_epsg3857.tif"), tmp_path / "m.tif")
    db = tmp_path / "db.gpkg"
    assert geosearch.ingest([path], db, settings).files_ingested == 1
    tiles = tiles_in(db)
    assert {t["crs"] for t in tiles} == {"EPSG:3857"}
    union = shapely.union_all([t["geometry"] for t in tiles if t["geometry"] is not None])
    to_lonlat = Transformer.from_crs("EPSG:3857", "EPSG:4326", always_xy=True)
    with rasterio.open(path) as dataset:
        west, north = to_lonlat.transform(*(dataset.transform * (0, 0)))
        east, south = to_lonlat.transform(*(dataset.transform * dataset.shape[::-1]))
    minx, miny, maxx, maxy = union.bounds
    assert (minx, miny, maxx, maxy) == pytest.approx((west, south, east, north), abs=0.01)


def test_a_raster_across_the_antimeridian_is_split_at_180(tmp_path, settings):
    for name, seed in (("east.tif", 1), ("other.tif", 2)):
        write_geotiff(
            tmp_path / name,
            textured((1, 100, 100), seed),
            crs="EPSG:4326",
            transform=from_origin(179.5, 10, 0.01, 0.01),
        )  # fmt: skip  179.5..180.5
    db = tmp_path / "db.gpkg"
    geosearch.ingest([tmp_path], db, settings)
    geometry = {t["name"]: t["geometry"] for t in tiles_in(db)}["east.tif"]
    assert isinstance(geometry, MultiPolygon) and len(geometry.geoms) == 2
    parts = sorted(part.bounds for part in geometry.geoms)
    assert parts[0] == pytest.approx((-180, 9, -179.5, 10))
    assert parts[1] == pytest.approx((179.5, 9, 180, 10))
    assert geometry.area == pytest.approx(1.0)
    found = geosearch.similar(db, [tmp_path / "east.tif"], settings=settings)[0].to_dict()
    result = found["results"][0]["geometry"]
    assert result["type"] == "MultiPolygon"
    longitudes = [x for polygon in result["coordinates"] for x, _ in polygon[0]]
    assert all(-180 <= x <= 180 for x in longitudes)


# -- dtypes and band counts -------------------------------------------------------------------


def test_int16_with_negative_values(tmp_path, settings):
    data = (textured((2, 64, 64), 1, "uint16") // 2).astype("int16") - 20000
    data[:, :8] = -32768
    write_geotiff(tmp_path / "neg.tif", data, nodata=-32768)
    db = tmp_path / "db.gpkg"
    report = geosearch.ingest([tmp_path / "neg.tif"], db, settings)
    assert (report.tiles_added, report.skipped) == (1, [])
    bands = geosearch.info(db)["bands"]
    assert bands["dtype"] == "int16" and max(bands["low"]) < 0
    assert np.isfinite(stored_vectors(db)).all()


def test_thirteen_float_bands_and_another_layout_beside_them(tmp_path, settings):
    data = textured((13, 300, 300), 1, "float32")
    data[:, :20] = np.nan
    write_geotiff(tmp_path / "in" / "a_s2.tif", data)
    write_geotiff(tmp_path / "in" / "b_twelve.tif", textured((12, 64, 64), 2, "float32"))
    db = tmp_path / "db.gpkg"
    report = geosearch.ingest([tmp_path / "in"], db, settings)
    assert (report.files_ingested, report.tiles_added) == (1, 4)
    assert reasons(report)["b_twelve.tif"].startswith(
        "expected 13 bands (band1,band2,band3,band4,band5,band6,band7,band8,band9,band10,"
        "band11,band12,band13) float32 as stored in db.gpkg, found 12"
    )
    assert np.isfinite(stored_vectors(db)).all()


def test_float_values_at_the_limits_of_their_dtype_keep_their_statistics(tmp_path, settings):
    """Uniform values over (almost) all of float64 and float32: scaling to 0..1 must not
    overflow (it did in float32: every pixel became 0 and numpy warned on every tile)."""
    rng = np.random.default_rng(1)
    cases = {
        "float64.tif": rng.uniform(-1, 1, (1, 50, 50)) * 1.7e308,
        "float32.tif": rng.uniform(-1, 1, (1, 50, 50)).astype("float32") * np.float32(3.4e38),
    }
    for name, data in cases.items():
        write_geotiff(tmp_path / name, data)
        db = tmp_path / f"{name}.gpkg"
        keeping_raw = settings.with_overrides({"vectors.raw_features": True})
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            report = geosearch.ingest([tmp_path / name], db, keeping_raw)
        assert (report.tiles_added, report.skipped) == (1, [])
        bands = geosearch.info(db)["bands"]
        assert np.isfinite(bands["low"] + bands["high"]).all()
        mean, std = stored_vectors(db, "features")[0][:2]  # band_stats: mean, std, ... of band 1
        assert mean == pytest.approx(0.5, abs=0.05) and std == pytest.approx(0.29, abs=0.05)


def test_complex_pixels_are_refused(tmp_path, settings):
    write_geotiff(tmp_path / "sar.tif", (textured((1, 32, 32), 1) + 1j).astype("complex64"))
    report = geosearch.ingest([tmp_path / "sar.tif"], tmp_path / "db.gpkg", settings)
    assert reasons(report)["sar.tif"].startswith("complex pixel values (complex64)")


# -- plain images -----------------------------------------------------------------------------


def test_plain_image_modes_and_an_image_bomb(tmp_path, settings):
    folder = tmp_path / "photos"
    folder.mkdir()
    rgb = textured((3, 40, 60), 1).transpose(1, 2, 0)
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(rgb[..., 0].astype("uint16") * 257).save(folder / "sixteen.png")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.png")
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    rgba[:10, :, 3] = 0
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees: 60 wide stored, 40 wide seen
    Image.fromarray(rgb).save(folder / "rotated.jpg", exif=exif)
    png_bomb(folder / "bomb.png")
    Image.fromarray(rgb).save(folder / "cut.jpg")
    truncated(folder / "cut.jpg", 0.3)
    (folder / "text.png").write_text("not a picture\n")
    write_geotiff(folder / "geo.tif", textured((3, 40, 60), 2))

    db = tmp_path / "gallery.gpkg"
    report = geosearch.ingest([folder], db, settings)

    found = reasons(report)
    assert (
        found["bomb.png"] == "image too large to decode safely (Pillow's decompression-bomb limit)"
    )
    assert found["cut.jpg"].startswith("not a readable image")
    assert found["text.png"].startswith("not a readable image")
    assert found["geo.tif"].startswith("gallery.gpkg holds plain images (JPEG/PNG)")
    assert report.files_ingested == 5
    tiles = {t["name"]: t for t in tiles_in(db)}
    assert tiles.keys() == {"cmyk.jpg", "sixteen.png", "palette.png", "rgba.png", "rotated.jpg"}
    assert (tiles["rotated.jpg"]["width"], tiles["rotated.jpg"]["height"]) == (40, 60)
    assert all(t["geometry"] is None for t in tiles.values())
    assert np.isfinite(stored_vectors(db)).all()
