"""Dates from what the data says (metadata, tags, EXIF), then names; undated tiles said so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import rasterio
from PIL import ExifTags, Image
from pyproj import Transformer
from rasterio.transform import from_origin

import geosearch
from geosearch.dates import Acquired, acquisition_date
from geosearch.sources import open_source
from geosearch.store import Store
from tests.conftest import run_cli, textured, write_geotiff


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("LC08_L1TP_016037_20170813_20170814_01_RT_B4.TIF", ("2017-08-13", "name")),
        ("LC80160372017225LGN00_B4.TIF", ("2017-08-13", "name")),  # year + day of year
        (
            "S2A_MSIL2A_20200219T112111_N0214_R037_T29RKH_20200219T123947.zip",
            ("2020-02-19", "name"),
        ),
        ("m_4709963_se_14_1_20090818.tif", ("2009-08-18", "name")),
        ("survey_2014-07-20.tif", ("2014-07-20", "name")),
        ("1985.tif", ("1985-01-01", "year")),  # year precision
        ("1999/scene.tif", ("1999-01-01", "year")),  # ... from its folder
        ("tile_2048.tif", (None, None)),  # not a year yet
        ("scan_1920x1080.png", (None, None)),
        ("scene_016037.tif", (None, None)),
    ],
)
def test_dates_in_names(tmp_path, name, expected):
    assert acquisition_date(tmp_path / name) == expected


def test_what_the_file_says_comes_before_its_name(tmp_path):
    """IMAGERY metadata (acquisition) beats a name; a name beats TIFF DateTime (when the file
    was written: rasterio's all-nodata.tif says 2022, its processing day)."""
    data = textured((1, 32, 32), seed=1)
    imagery = write_geotiff(tmp_path / "m_4709963_se_14_1_20090818.tif", data)
    with rasterio.open(imagery, "r+") as dataset:
        dataset.update_tags(ns="IMAGERY", ACQUISITIONDATETIME="2015-03-04 10:20:30")
        dataset.update_tags(TIFFTAG_DATETIME="2021:05:03 10:00:00")
    year = write_geotiff(tmp_path / "1985.tif", data)
    written = write_geotiff(tmp_path / "scene.tif", data)
    for path in (year, written):
        with rasterio.open(path, "r+") as dataset:
            dataset.update_tags(TIFFTAG_DATETIME="2021:05:03 10:00:00")
    expected = {
        imagery: ("2015-03-04", "imagery"),
        year: ("1985-01-01", "year"),
        written: ("2021-05-03", "datetime-tag"),
    }
    for path, when in expected.items():
        with open_source(path) as source:
            assert (source.acquired, source.acquired_source) == when, path.name


def test_photos_are_dated_by_exif_date_time_original_from_the_exif_ifd(tmp_path, stats_only):
    exif = Image.Exif()
    exif[ExifTags.Base.DateTime] = "2021:01:01 12:00:00"  # IFD0: last edited
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = "2019:05:03 10:00:00"
    photo = tmp_path / "photos" / "holiday.jpg"
    photo.parent.mkdir()
    Image.fromarray(textured((3, 40, 60), seed=2).transpose(1, 2, 0)).save(photo, exif=exif)
    edited_only = Image.Exif()
    edited_only[ExifTags.Base.DateTime] = "2021:01:01 12:00:00"
    Image.fromarray(textured((3, 40, 60), seed=3).transpose(1, 2, 0)).save(
        photo.with_name("edited.jpg"), exif=edited_only
    )
    db = tmp_path / "photos.gpkg"
    geosearch.ingest([photo.parent], db, stats_only.with_overrides({"workers": 1}))
    with Store(db) as store:
        dated = {Path(t.path).name: (t.acquired, t.acquired_source) for t in store.tiles([1, 2])}
    assert dated == {
        "holiday.jpg": ("2019-05-03", "exif"),
        "edited.jpg": ("2021-01-01", "datetime-tag"),
    }
    assert Acquired(*dated["holiday.jpg"]).source == "exif"


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> tuple[Path, Path]:
    """A folder of a place in 1985 (a bare year), on 1990-05-01, and undated; and an undated
    raster elsewhere. Settings without the CNN."""
    tmp_path = tmp_path_factory.mktemp("series")
    folder = tmp_path / "series"
    here = from_origin(500000, 5200000, 10, 10)
    for number, name in enumerate(("1985.tif", "1990-05-01.tif", "undated.tif")):
        write_geotiff(folder / name, textured((1, 64, 64), seed=number), transform=here)
    elsewhere = from_origin(600000, 5200000, 10, 10)
    write_geotiff(
        folder / "far" / "undated_far.tif", textured((1, 64, 64), seed=7), transform=elsewhere
    )
    config = tmp_path / "config.yaml"
    config.write_text("workers: 1\nfeatures:\n  cnn:\n    weight: 0.0\n")
    db = tmp_path / "series.gpkg"
    assert run_cli("ingest", str(folder), "--db", str(db), "--config", str(config)).returncode == 0
    return db, config


def geosearch_cli(series: tuple[Path, Path], *args: str):
    db, config = series
    return run_cli(*args, "--db", str(db), "--config", str(config), "--out", str(db.parent / "out"))


def test_info_counts_undated_tiles(series):
    db, config = series
    result = run_cli("info", "--db", str(db), "--config", str(config))
    assert "dates       1 from file names, 1 from a year in file names, 2 undated" in result.stdout
    assert geosearch.info(db)["dates"] == {"name": 1, "year": 1, "undated": 2}


def test_date_filters_over_undated_tiles_say_so(series):
    db, _ = series
    query = str(db.parent / "series" / "1985.tif")
    result = geosearch_cli(series, "similar", query, "--after", "1980-01-01", "--json")
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: ")]
    assert notes == [
        "note: 2 of 4 tiles have no acquisition date and are left out by --after/--before "
        "(geosearch info shows where dates come from)"
    ]
    found = [(Path(r["path"]).name, r["acquired"]) for r in json.loads(result.stdout)["results"]]
    assert found == [("1990-05-01.tif", "1990-05-01")]


def lonlat(x: float, y: float) -> str:
    """LON,LAT of a UTM 33N point."""
    lon, lat = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True).transform(x, y)
    return f"{lon:.6f},{lat:.6f}"


def test_a_place_and_a_date(series):
    place = lonlat(500320, 5199680)  # the series' 640 m square
    latest = geosearch_cli(series, "similar", "--lonlat", place, "--json")
    assert latest.returncode == 0, latest.stderr
    assert '"acquired": "1990-05-01"' in latest.stdout.split('"results"')[0]
    old = geosearch_cli(series, "similar", "--lonlat", place, "--date", "1985-01-01", "--json")
    assert '"acquired": "1985-01-01"' in old.stdout.split('"results"')[0]

    alone = geosearch_cli(series, "similar", "--date", "1985-01-01")
    assert alone.returncode == 2 and alone.stderr.startswith("error: --date needs --lonlat")

    far = lonlat(600320, 5199680)  # the undated raster 100 km east
    undated = geosearch_cli(series, "similar", "--lonlat", far)
    assert undated.returncode == 0, undated.stderr
    assert "has no acquisition date: it is the last ingested there" in undated.stderr
    missing = geosearch_cli(series, "similar", "--lonlat", far, "--date", "2000-01-01")
    assert missing.returncode == 3 and "(there are: undated)" in missing.stderr
