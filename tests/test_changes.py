"""``geosearch changes``: planted changes found, radiometric-only copies left alone, outputs that
GDAL opens, the per-pixel change of two embedding years, and one line + exit code for bad input.

One small NAIP database (a 384 px crop of 2015: 36 tiles of 64 px) holds three years: 2015 as
it is, 2016 = 2015 x 1.15 with noise, shifted 1 px (radiometric only), 2017 = the 2016 copy with
four patches of other ground pasted (a quarter to a whole tile)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio

from geosearch.changes import Period, pair_places, spread_threshold
from geosearch.config import Settings
from geosearch.errors import ConfigError
from tests.conftest import (
    alphaearth_quantize,
    planted_embeddings,
    run_cli,
    shared,
    write_alphaearth,
)

TILE = 64
CROP = 384  # 6 x 6 tiles
# (tile row, tile col, side in px) of the patches planted in 2017, and where each is taken from
PATCHES = [(1, 1, 64, (600, 700)), (4, 2, 48, (620, 40)), (2, 4, 40, (40, 800)),
           (5, 5, 32, (650, 820))]  # fmt: skip
PLANTED = {(r * TILE, c * TILE) for r, c, _, _ in PATCHES}


def _radiometric(image: np.ndarray, seed: int = 0) -> np.ndarray:
    """x 1.15, noise of sigma 2 DN, moved 1 px right and down (the same geotransform)."""
    copy = image.astype(np.float64) * 1.15
    copy += np.random.default_rng(seed).normal(0, 2, image.shape)
    moved = copy.copy()
    moved[:, 1:, 1:] = copy[:, :-1, :-1]
    return np.clip(np.rint(moved), 1, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def naip_years(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three-year NAIP crop database (see the module docstring)."""
    import geosearch

    source = shared("naip", "m_4709963_se_14_1_20150926.tif")
    folder = tmp_path_factory.mktemp("changes_naip")
    with rasterio.open(source) as src:
        whole = src.read()
        profile = src.profile | {"width": CROP, "height": CROP, "tiled": False}
        profile.pop("blockxsize", None), profile.pop("blockysize", None)
    image = whole[:, :CROP, :CROP]
    copy = _radiometric(image)
    planted = copy.copy()
    for row, col, side, (top, left) in PATCHES:
        r, c = row * TILE + (TILE - side) // 2, col * TILE + (TILE - side) // 2
        planted[:, r : r + side, c : c + side] = whole[:, top : top + side, left : left + side]
    for year, data in ((2015, image), (2016, copy), (2017, planted)):
        with rasterio.open(folder / f"naip_{year}0926.tif", "w", **profile) as dst:
            dst.write(data)
    db = folder / "naip.gpkg"
    report = geosearch.ingest([folder], db, Settings(tile_size=TILE, workers=1))
    assert report.tiles_added == 3 * 36 and not report.skipped
    return db


def test_planted_changes_lead_and_are_flagged(naip_years: Path) -> None:
    import geosearch

    result = geosearch.changes(naip_years, "2015", "2017", top=36)
    assert result.pairs == 36
    top = [(p.pair.after.window.row, p.pair.after.window.col) for p in result.places[:4]]
    assert len(PLANTED & set(top)) >= 3, top
    flagged = {(p.pair.after.window.row, p.pair.after.window.col) for p in result.places
               if p.significant}  # fmt: skip
    assert len(flagged & PLANTED) >= 3 and len(flagged - PLANTED) <= 1, flagged
    assert [p.rank for p in result.places] == list(range(1, 37))
    assert all(0.0 <= p.change <= 1.0 for p in result.places)


def test_radiometric_only_copy_flags_nothing(naip_years: Path) -> None:
    import geosearch

    result = geosearch.changes(naip_years, "2015", "2016", top=36)
    assert result.pairs == 36
    assert result.significant == sum(p.significant for p in result.places) <= 1


def test_cli_writes_geojson_sheet_and_map_gdal_opens(naip_years: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = run_cli(
        "changes", "--from", "2015", "--to", "2017-09", "--db", str(naip_years), "--top", "5",
        "--out", str(out), "--map", str(tmp_path / "change.tif"), "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["rank"] for line in lines] == [1, 2, 3, 4, 5]
    collection = json.loads((out / "changes.geojson").read_text())
    first = collection["features"][0]
    assert first["geometry"]["type"] == "Polygon"
    props = first["properties"]
    assert props["before_date"] == "2015-09-26" and props["after_date"] == "2017-09-26"
    assert props["before_file"].endswith("naip_20150926.tif") and props["significant"] in (
        True, False)  # fmt: skip
    assert (out / "contact_sheet.png").stat().st_size > 1000
    assert len(list((out / "previews").glob("change*_before.png"))) == 5
    with rasterio.open(tmp_path / "change.tif") as dataset:
        values = dataset.read(1, masked=True)
        assert dataset.count == 1 and values.count() == 36  # one cell a place
        assert dataset.descriptions[0] == "change"
    assert (tmp_path / "change.qml").exists()
    if shutil.which("ogrinfo") is None or shutil.which("gdalinfo") is None:
        pytest.skip("ogrinfo/gdalinfo (Debian's gdal-bin) not installed")
    ogr = subprocess.run(["ogrinfo", "-ro", "-so", "-al", str(out / "changes.geojson")],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert ogr.returncode == 0 and "Feature Count: 5" in ogr.stdout, ogr.stdout + ogr.stderr
    gdal = subprocess.run(["gdalinfo", str(tmp_path / "change.tif")], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert gdal.returncode == 0 and "Size is 6, 6" in gdal.stdout, gdal.stdout + gdal.stderr


def test_bad_input_one_line_and_exit_code(naip_years: Path, tmp_path: Path) -> None:
    db = str(naip_years)
    cases = [
        (("--from", "2017", "--to", "2015"), 2, "starts after"),
        (("--from", "2015-13", "--to", "2017"), 2, "--from: expected a year"),
        (("--from", "2015", "--to", "2017", "--map-pixels", str(tmp_path / "p.tif")), 2,
         "needs an embedding database"),
        (("--from", "2001", "--to", "2002"), 3, "2001 holds no tile"),
    ]  # fmt: skip
    for args, code, words in cases:
        done = run_cli("changes", *args, "--db", db, "--out", str(tmp_path / "o"))
        assert done.returncode == code, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], (args, done.stderr)


def test_periods_parse_and_pairs_take_the_latest_tile() -> None:
    assert Period.parse("2018") == Period("2018", "2018-01-01", "2018-12-31")
    assert Period.parse("2020-02").last == "2020-02-29"
    assert Period.parse("2018-07-20").first == "2018-07-20"
    for bad in ("18", "2018-7", "2018-02-30", "last year"):
        with pytest.raises(ConfigError):
            Period.parse(bad)
    assert spread_threshold(np.array([1.0, 1.0, 1.0, 1.0, 9.0]), 3) < 9.0
    assert pair_places([], []) == []


def test_pixel_change_map_of_two_embedding_years(tmp_path: Path) -> None:
    """A synthetic AlphaEarth raster of 2019 and a 2020 copy where one 128 px block (2 x 2
    tiles) holds other vectors: the pixel map is ~0 outside it and ~0.5 (unrelated) inside; the
    block's tiles lead the ranking."""
    labels = np.random.default_rng(5).integers(0, 4, (4, 4))
    earlier = alphaearth_quantize(planted_embeddings(labels, TILE, 64, seed=2))
    later = earlier.copy()
    other = alphaearth_quantize(planted_embeddings(labels, TILE, 64, seed=9))
    later[:, 64:192, 128:256] = other[:, 64:192, 128:256]
    write_alphaearth(tmp_path / "data" / "aef_2019.tif", earlier)
    write_alphaearth(tmp_path / "data" / "aef_2020.tif", later)
    db = tmp_path / "aef.gpkg"
    out = tmp_path / "out"
    ingest = run_cli("ingest", str(tmp_path / "data"), "--db", str(db), "--tile-size", "64", "-q")
    assert ingest.returncode == 0, ingest.stderr
    done = run_cli(
        "changes", "--from", "2019", "--to", "2020", "--db", str(db), "--top", "4", "--json",
        "--out", str(out), "--map-pixels", str(tmp_path / "pixels.tif"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    windows = {(p["window"][0], p["window"][1]) for p in map(json.loads, done.stdout.splitlines())}
    assert windows == {(64, 128), (64, 192), (128, 128), (128, 192)}
    with rasterio.open(tmp_path / "pixels.tif") as dataset:
        values = dataset.read(1)
        assert values.shape == (256, 256) and dataset.descriptions[0] == "change"
    inside = values[64:192, 128:256]
    outside = np.ones(values.shape, bool)
    outside[64:192, 128:256] = False
    assert np.abs(values[outside]).max() < 1e-3
    assert 0.35 < float(np.median(inside)) < 0.65 and inside.min() > 0.2
    assert (tmp_path / "pixels.qml").exists()


def test_http_changes_lists_places_with_before_and_after_previews(naip_years: Path) -> None:
    pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'geosearch[serve]'")
    from fastapi.testclient import TestClient

    from geosearch.serve import create_app

    with TestClient(create_app(naip_years)) as client:
        answer = client.get("/api/changes", params={"from": "2015", "to": "2017", "top": 4})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["pairs"] == 36 and len(body["features"]) == 4
        first = body["features"][0]["properties"]
        assert first["rank"] == 1 and first["after_date"] == "2017-09-26"
        for side in ("before", "after"):
            png = client.get(first[f"{side}_preview"])
            assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
        bad = client.get("/api/changes", params={"from": "2017", "to": "2015"})
        assert bad.status_code == 400 and "starts after" in bad.json()["error"]


def test_map_page_changes_panel_shows_before_and_after(naip_years: Path, tmp_path: Path) -> None:
    """In Chromium: two periods in, the places drawn and listed; a click on the first place's
    outline shows its before and after previews side by side."""
    from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, _unavailable

    if not CHROMIUM.exists():
        _unavailable(f"no Chromium at {CHROMIUM}: apt-get install -y chromium chromium-driver")
    playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'geosearch[serve]'")
    from geosearch.serve import create_app
    from tests.test_serve import running_server

    expect = playwright_api.expect
    with playwright_api.sync_playwright() as playwright, running_server(
        create_app(naip_years)
    ) as url:  # fmt: skip
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = chromium.new_page(viewport={"width": 1280, "height": 800})
        problems: list[str] = []
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.goto(url + "/")
        expect(page.locator("body")).to_have_attribute("data-ready", "true", timeout=20000)
        page.locator("#top").fill("4")
        page.locator("#change-from").fill("2015")
        page.locator("#change-to").fill("2017")
        page.locator("#change-go").click()
        expect(page.locator("#results li.change-item")).to_have_count(4, timeout=60000)
        expect(page.locator("#status")).to_contain_text("of 36 places significant")
        expect(page.locator("path.change-outline")).to_have_count(4)
        assert page.locator("path.change-outline.significant").count() >= 3
        page.locator("path.change-outline").first.click(force=True)
        pair = page.locator(".change-pair img")
        expect(pair).to_have_count(2)
        for image in pair.all():
            expect(image).to_have_js_property("complete", True)
            assert image.evaluate("i => i.naturalWidth") == TILE
        captions = page.locator(".change-pair figcaption").all_text_contents()
        assert captions[0].startswith("2015-09-26") and captions[1].startswith("2017-09-26")
        page.screenshot(path=str(tmp_path / "changes-panel.png"))
        chromium.close()
        assert not problems, problems


def test_spark_gives_the_local_ranking(naip_years: Path) -> None:
    """``--engine spark`` (local[2]): places paired and their vectors scored on executors, the
    same places in the same order with the same change and flags as the local run."""
    pytest.importorskip("pyspark", reason="the spark extra is installed by make test")
    import os

    import geosearch

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    runs = [geosearch.changes(naip_years, "2015", "2017", top=36, engine=engine,
                              master="local[2]") for engine in ("local", "spark")]  # fmt: skip
    local, spark = runs
    from pyspark.sql import SparkSession

    tracker = SparkSession.getActiveSession().sparkContext.statusTracker()
    assert len(tracker.getJobIdsForGroup()) >= 2  # the pairing and the scoring ran as jobs
    assert spark.pairs == local.pairs == 36 and spark.significant == local.significant
    assert [pair.before.id for pair in spark.all_pairs] == [p.before.id for p in local.all_pairs]
    np.testing.assert_allclose(spark.scores, local.scores, atol=1e-6)
    assert [(p.pair.before.id, p.pair.after.id, p.significant) for p in spark.places] == [
        (p.pair.before.id, p.pair.after.id, p.significant) for p in local.places
    ]
    np.testing.assert_allclose([p.change for p in spark.places],
                               [p.change for p in local.places], atol=1e-6)  # fmt: skip


def test_pixel_change_map_windows_meet_odd_edges_and_split_rasters(tmp_path: Path) -> None:
    """A 197 x 300 px year against the next year cut into two overlapping files, in windows of
    64 px (neither side a multiple; windows straddle both files): every pixel is (1 - cos) / 2
    of its two de-quantised vectors as numpy computes it on the whole raster, NoData where a
    year has none (an AlphaEarth -128 in any band)."""
    import rasterio.warp
    from rasterio.transform import from_origin

    import geosearch
    from geosearch.request import SearchFilters

    height, width = 197, 300
    labels = np.random.default_rng(1).integers(0, 4, (4, 5))
    earlier = alphaearth_quantize(planted_embeddings(labels, TILE, 64, seed=3))[:, :height, :width]
    later = earlier.copy()
    other = alphaearth_quantize(planted_embeddings(labels, TILE, 64, seed=8))
    later[:, 100:160, 100:200] = other[:, 100:160, 100:200]
    earlier[:, 10:20, 290:] = -128  # no vector in 2019
    later[5, 100:103, 40:45] = -128  # one band's NoData: no vector in 2020
    data = tmp_path / "data"
    write_alphaearth(data / "aef_2019.tif", earlier)
    write_alphaearth(data / "aef_2020_west.tif", np.ascontiguousarray(later[:, :, :180]))
    write_alphaearth(data / "aef_2020_east.tif", np.ascontiguousarray(later[:, :, 150:]),
                     transform=from_origin(500000 + 150 * 10, 5200000, 10, 10))  # fmt: skip
    db = tmp_path / "aef.gpkg"
    settings = Settings(tile_size=TILE).with_overrides({"maps.window": 64, "maps.threads": 2})
    geosearch.ingest([data], db, settings)
    with rasterio.open(data / "aef_2019.tif") as src:
        bbox = rasterio.warp.transform_bounds(src.crs, "EPSG:4326", *src.bounds)
    filters = SearchFilters(bbox=bbox)
    result = geosearch.changes(db, "2019", "2020", filters=filters, pixel_map=True,
                               settings=settings)  # fmt: skip
    geosearch.write_changes(result, db, tmp_path / "out", pixels_map=tmp_path / "pixels.tif",
                            filters=filters, settings=settings)  # fmt: skip
    with rasterio.open(tmp_path / "pixels.tif") as dataset:
        assert (dataset.height, dataset.width) == (height, width)
        values = dataset.read(1, masked=True)
    a, b = (np.sign(v) * (v / 127.5) ** 2 for v in (earlier.astype(np.float64), later))
    cosines = (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))
    none = (earlier == -128).any(0) | (later == -128).any(0)
    np.testing.assert_array_equal(values.mask, none)
    assert none.sum() == 10 * 10 + 3 * 5
    np.testing.assert_allclose(values.filled(0)[~none], ((1 - cosines) / 2)[~none], atol=2e-6)
    assert values[100:160, 100:200].min() > 0.2 and values[:100].max() < 1e-3
