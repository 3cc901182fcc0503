"""Queries cut anywhere: off the database's grid, without a georeference, without its bands,
turned; the second search stage places them and ``locate`` says where they lie.

The database holds four years of sample_tiles/ (2009-2014); queries are cut from the fifth
(2015), at offsets and sizes that are not the database's 256 px grid.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import shapely
from PIL import Image
from rasterio.enums import Resampling
from rasterio.windows import Window
from shapely.geometry import box

import geosearch
from geosearch.config import Settings
from geosearch.orientation import Orientation
from geosearch.register import QueryPicture, register
from tests.conftest import SAMPLE_TILES, run_cli, shared

YEARS = sorted((SAMPLE_TILES / "naip").glob("*.tif"))
QUERY_YEAR = YEARS[-1]  # 2015: never in the database
LOCATE_OFF = Settings().with_overrides({"search.locate": False})


@pytest.fixture(scope="module")
def four_years(tmp_path_factory: pytest.TempPathFactory):
    db = tmp_path_factory.mktemp("locate") / "four_years.gpkg"
    report = geosearch.ingest(YEARS[:-1], db)
    assert report.tiles_added == 16 and not report.skipped
    return db


def write_chip(path, window: Window, bands=(1, 2, 3, 4), source=QUERY_YEAR, **profile):
    """A GeoTIFF chip of ``source`` at ``window`` (georeferenced where it lies); its footprint."""
    with rasterio.open(source) as src:
        data = src.read(list(bands), window=window)
        layout = src.profile | {
            "width": window.width,
            "height": window.height,
            "count": len(bands),
            "transform": src.window_transform(window),
            "photometric": "MINISBLACK",
            "tiled": False,
        } | profile  # fmt: skip
        layout.pop("blockxsize"), layout.pop("blockysize")
        footprint = box(*rasterio.windows.bounds(window, src.transform))
    with rasterio.open(path, "w", **layout) as dst:
        dst.write(data)
    return footprint


def coverage(tile, footprint) -> float:
    """Share of ``footprint`` (EPSG:26914) that a result tile covers."""
    return shapely.from_wkt(tile.footprint_native).intersection(footprint).area / footprint.area


def iou(a, b) -> float:
    return a.intersection(b).area / a.union(b).area


def test_an_off_grid_chip_of_another_year_finds_its_place(four_years, tmp_path):
    chip = tmp_path / "chip.tif"
    footprint = write_chip(chip, Window(173, 301, 200, 150))  # straddles four 256 px tiles
    [plain] = geosearch.similar(four_years, [chip], top=4, settings=LOCATE_OFF)
    [result] = geosearch.similar(four_years, [chip], top=4)
    assert plain.location is None
    shown = [coverage(m.tile, footprint) for m in result.matches]
    assert min(shown) >= 0.25, shown  # each of the top 4 shows a quarter of the chip or more
    assert {m.tile.acquired[:4] for m in result.matches} == {"2009", "2010", "2012", "2014"}
    assert all(m.located is not None and m.score > 1 for m in result.matches)
    assert iou(result.location.footprint_native, footprint) > 0.9
    before = [coverage(m.tile, footprint) >= 0.25 for m in plain.matches]
    assert sum(before) < 4, "the vectors alone already placed it: this test shows nothing"


def test_locate_georeferences_a_screenshot(four_years, tmp_path):
    with rasterio.open(QUERY_YEAR) as src:
        window = Window(90, 200, 160, 120)
        pixels = src.read([1, 2, 3], window=window)
        truth = src.window_transform(window)
    shot = tmp_path / "screenshot.png"
    Image.fromarray(pixels.transpose(1, 2, 0)).save(shot)  # no georeference at all
    out = tmp_path / "where"
    result = run_cli("locate", str(shot), "--db", str(four_years), "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["located"] and report["query"]["compared_on"]["missing"] == ["band4"]
    assert (out / "screenshot_located.wld").exists()
    with rasterio.open(out / "screenshot_located.png") as copy:  # GDAL reads .wld + .aux.xml
        assert copy.crs.to_epsg() == 26914
        for col, row in ((0, 0), (160, 0), (160, 120), (0, 120)):
            found, expected = copy.transform * (col, row), truth * (col, row)
            assert np.hypot(*np.subtract(found, expected)) <= 2 * 5.0  # two 5 m pixels
    features = json.loads((out / "located.geojson").read_text())["features"]
    assert [f["properties"]["rank"] for f in features] == list(range(1, len(features) + 1))
    assert features[0]["properties"]["role"] == "location"


def test_a_query_without_the_nir_band_is_compared_on_what_it_has(four_years, tmp_path):
    chip = tmp_path / "rgb.tif"
    footprint = write_chip(chip, Window(40, 60, 256, 256), bands=(1, 2, 3), photometric="RGB")
    result = run_cli("similar", str(chip), "--db", str(four_years), "--top", "4", "--json",
                     "--out", str(tmp_path / "r"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "compared on bands band1,band2,band3 (band_stats, layout, cnn); it has no band4" in (
        result.stderr
    )
    found = json.loads(result.stdout)
    assert found["query"]["compared_on"] == {
        "bands": ["band1", "band2", "band3"],
        "missing": ["band4"],
        "blocks": ["band_stats", "layout", "cnn"],
    }
    best = found["results"][0]
    assert best["located"] is not None
    tile = shapely.from_wkt(_native(four_years, best["id"]))
    assert tile.intersection(footprint).area / footprint.area >= 0.25


def test_a_query_sharing_no_band_is_a_clear_error(four_years):
    result = run_cli("similar", str(shared("rasterio", "shade.tif")), "--db", str(four_years))
    assert result.returncode == 3
    assert "shares no band with four_years.gpkg (expected 4 bands" in result.stderr


def test_a_place_not_in_the_database_keeps_the_first_stage_ranking(four_years, tmp_path):
    # The full NAIP quarter-quad is larger than sample_tiles/: its north-west corner is not in it.
    chip = tmp_path / "elsewhere.tif"
    write_chip(chip, Window(20, 30, 256, 256), source=shared("naip", QUERY_YEAR.name))
    [plain] = geosearch.similar(four_years, [chip], top=8, settings=LOCATE_OFF)
    [result] = geosearch.similar(four_years, [chip], top=8)
    assert result.location is None
    assert [m.tile.id for m in result.matches] == [m.tile.id for m in plain.matches]
    assert [m.score for m in result.matches] == [m.score for m in plain.matches]


def test_a_turned_chip_is_placed_with_any_orientation(four_years, tmp_path):
    turn = Orientation(3, True)
    with rasterio.open(QUERY_YEAR) as src:
        window = Window(300, 120, 180, 180)
        pixels = turn.apply(src.read(window=window))
        footprint = box(*rasterio.windows.bounds(window, src.transform))
    turned = tmp_path / "turned.png"
    Image.fromarray(pixels[:3].transpose(1, 2, 0)).save(turned)
    [as_is] = geosearch.similar(four_years, [turned], top=4)
    [result] = geosearch.similar(four_years, [turned], top=4, any_orientation=True)
    assert as_is.location is None
    placed = result.location
    assert placed.orientation == turn.inverse()  # the turn that puts the picture back
    assert iou(placed.footprint_native, footprint) > 0.85


@pytest.mark.parametrize(
    "turn", [Orientation(0, False), Orientation(1, False), Orientation(2, True)]
)
def test_register_recovers_offset_scale_and_turn(turn):
    with rasterio.open(YEARS[0]) as src:
        scene = src.read([1, 2, 3], window=Window(0, 0, 400, 400)).mean(axis=0)
    chip = scene[150:250, 90:210]  # 100 x 120 px at (row 150, col 90)
    query = turn.apply(np.asarray(Image.fromarray(chip.astype(np.float32)).resize((96, 80))))
    found = register(QueryPicture(query), scene, None, [1.0, 1.25, 1.5], [turn.inverse()])
    assert found.orientation == turn.inverse()
    assert found.scale == pytest.approx(1.25, rel=0.05)
    assert (found.row, found.col) == pytest.approx((150, 90), abs=2)
    assert found.correlation > 0.9 and found.margin > 0.3


def _native(db, tile_id: int) -> str:
    from geosearch.store import Store

    with Store(db) as store:
        return store.tiles([tile_id])[0].footprint_native


LANDSAT_RGB = ("B4", "B3", "B2")


@pytest.fixture(scope="module")
def landsat_rgb(tmp_path_factory: pytest.TempPathFactory):
    """The Landsat 8 scene's B4,B3,B2 as one GeoTIFF, in a database of 64 px tiles."""
    folder = tmp_path_factory.mktemp("landsat")
    bands = []
    for name in LANDSAT_RGB:
        with rasterio.open(shared("landsat8", "LC08_L1TP_016037_20170813", f"{name}.TIF")) as src:
            bands.append(src.read(1))
            profile = src.profile | {"count": 3, "nodata": 0, "driver": "GTiff"}
    scene = folder / "LC08_016037_20170813_rgb.tif"
    with rasterio.open(scene, "w", **profile) as dst:
        dst.write(np.stack(bands))
        for number, name in enumerate(LANDSAT_RGB, start=1):
            dst.set_band_description(number, name)
    db = folder / "landsat.gpkg"
    geosearch.ingest([scene], db, Settings().with_overrides({"tile_size": 64}))
    return scene, db


def test_a_landsat_chip_whose_place_is_not_sure_leaves_the_vectors_ranking(landsat_rgb, tmp_path):
    scene, db = landsat_rgb
    chip = tmp_path / "turned.tif"
    with rasterio.open(scene) as src:  # turned, searched as it lies: its place can't be found
        window = Window(150, 120, 64, 64)
        pixels = Orientation(1, True).apply(src.read(window=window))
        profile = src.profile | {
            "width": 64,
            "height": 64,
            "transform": src.window_transform(window),
        }
    with rasterio.open(chip, "w", **profile) as dst:
        dst.write(pixels)
        for number, name in enumerate(LANDSAT_RGB, start=1):
            dst.set_band_description(number, name)
    [turned_back] = geosearch.similar(db, [chip], top=4, any_orientation=True)
    [plain] = geosearch.similar(db, [chip], top=4, settings=LOCATE_OFF)
    [result] = geosearch.similar(db, [chip], top=4)
    truth = box(*rasterio.windows.bounds(window, _transform(scene)))
    assert iou(turned_back.location.footprint_native, truth) > 0.8  # where its place is sure
    assert result.location is None
    assert [m.tile.id for m in result.matches] == [m.tile.id for m in plain.matches]
    assert [m.score for m in result.matches] == [m.score for m in plain.matches]


def _transform(path):
    with rasterio.open(path) as src:
        return src.transform


@pytest.fixture(scope="module")
def four_years_128(tmp_path_factory: pytest.TempPathFactory):
    """The shared NAIP scenes of 2010-2015 at 128 px tiles (the off-grid bench's database with
    2009 held out)."""
    years = sorted(shared("naip").glob("*.tif"))
    db = tmp_path_factory.mktemp("locate128") / "four_years_128.gpkg"
    report = geosearch.ingest(years[1:], db, settings=Settings().with_overrides({"tile_size": 128}))
    assert report.tiles_added == 4 * 48 and not report.skipped  # 934 x 723 px: 8 x 6 tiles
    return years[0], db


def test_a_place_unsure_in_the_shortlist_is_found_in_another_year(
    four_years_128, tmp_path, monkeypatch
):
    from geosearch import locate

    scene, db = four_years_128
    window = Window(158, 388, 102, 102)  # 2009 at 0.8x: 102 px of ground enlarged to 128
    chip = tmp_path / "scaled.tif"
    with rasterio.open(scene) as src:
        pixels = src.read(
            window=window, out_shape=(src.count, 128, 128), resampling=Resampling.bilinear
        )
        profile = src.profile | {
            "width": 128, "height": 128, "tiled": False,
            "transform": src.window_transform(window) * rasterio.Affine.scale(102 / 128),
        }  # fmt: skip
        profile.pop("blockxsize", None), profile.pop("blockysize", None)
        truth = box(*rasterio.windows.bounds(window, src.transform))
    with rasterio.open(chip, "w", **profile) as dst:
        dst.write(pixels)
    [result] = geosearch.similar(db, [chip], top=4)
    assert result.location is not None and iou(result.location.footprint_native, truth) > 0.9
    assert coverage(result.matches[0].tile, truth) >= 0.25
    monkeypatch.setattr(locate, "RECHECK", 0)  # only the scenes the shortlist led to
    [shortlist_only] = geosearch.similar(db, [chip], top=4)
    assert shortlist_only.location is None
