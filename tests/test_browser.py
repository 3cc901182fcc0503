"""The map page end to end in real headless Chromium (Debian's /usr/bin/chromium, driven by
Playwright's Python package) against a real uvicorn server on 127.0.0.1.

Needs ``apt-get install -y chromium chromium-driver`` and ``pip install playwright`` (never
``playwright install``: the browser is Debian's). Without them the tests skip, except in CI
(CI=true), where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

import geosearch
from geosearch.config import Settings
from geosearch.serve import create_app
from geosearch.sessions import session_marks
from tests.conftest import shared
from tests.test_serve import copy_database, running_server

CHROMIUM = Path(os.environ.get("GEOSEARCH_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must install it: see tests/test_browser.py)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not (CHROMIUM.exists() and os.access(CHROMIUM, os.X_OK)):
        _unavailable(f"no Chromium at {CHROMIUM}: apt-get install -y chromium chromium-driver")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright's Python package is missing: pip install playwright")
    pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'geosearch[serve]'")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, request, tmp_path):
    """A fresh page; its console errors and failed requests fail the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    tab = context.new_page()
    problems: list[str] = []
    tab.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    tab.on(
        "console",
        lambda message: message.type == "error" and problems.append(f"console: {message.text}"),
    )
    tab.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} {r.failure}"))
    yield tab
    context.close()
    assert not problems, problems


def screenshot(page, tmp_path: Path, name: str) -> Path:
    """Save a screenshot as the test's artefact and print where it is."""
    folder = Path(os.environ.get("GEOSEARCH_TEST_ARTIFACTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    page.screenshot(path=str(path), full_page=False)
    print(f"screenshot: {path}")
    return path


def listed_ids(page) -> list[int]:
    return [
        int(i) for i in page.locator("#results li").evaluate_all("l => l.map(e => e.dataset.id)")
    ]


def test_click_a_tile_see_similar_mark_one_good_get_a_reranked_list(page, naip_db, tmp_path):
    from playwright.sync_api import expect

    db = copy_database(naip_db, tmp_path / "db")
    app = create_app(db, Settings(), allow_feedback=True)
    with running_server(app) as url:
        page.goto(url + "/")
        expect(page.locator("body")).to_have_attribute("data-ready", "true", timeout=20000)
        expect(page.locator("#db-info")).to_have_text("20 georeferenced tiles")
        expect(page.locator("#mode")).to_have_text("feedback sessions are saved")
        assert page.locator("path.tile-footprint").count() == 20
        page.locator("#top").fill("6")

        page.locator("path.tile-footprint").last.click()  # the top-most: the latest year
        results = page.locator("#results li")
        expect(results).to_have_count(6)
        expect(page.locator("#status")).to_have_text("6 most similar tiles")
        expect(page.locator("#query")).to_contain_text("2015-09-26")
        expect(page.locator("#here")).to_contain_text("5 tiles here:")
        expect(page.locator("path.result-outline")).to_have_count(6)
        expect(page.locator("path.query-outline")).to_have_count(1)
        for image in page.locator("#results li img").all():  # previews really loaded
            expect(image).to_have_js_property("complete", True)
            assert image.evaluate("i => i.naturalWidth") == 128
        before = listed_ids(page)
        ranks = results.locator(".rank").all_text_contents()
        assert ranks == ["#1", "#2", "#3", "#4", "#5", "#6"]
        shown = [float(s.split()[1]) for s in results.locator(".score").all_text_contents()]
        assert all(0 <= similarity <= 1 for similarity in shown)
        screenshot(page, tmp_path, "serve-map-results.png")

        with page.expect_download() as download:
            page.locator("#download").click()
        saved = json.loads(Path(download.value.path()).read_text())
        assert saved["type"] == "FeatureCollection" and len(saved["features"]) == 7

        good = before[1]
        results.nth(1).locator("button.good").click()
        expect(page.locator("#status")).to_have_text(
            "6 most similar tiles, re-ranked with your marks"
        )
        expect(page.locator("#marks")).to_contain_text("marked 1 good")
        after = listed_ids(page)
        assert len(after) == 6 and good not in after and after != before
        session = page.locator("#marks a").text_content()
        path = screenshot(page, tmp_path, "serve-map-reranked.png")
        assert path.stat().st_size > 20_000

    saved_session = session_marks(db, session)
    assert [(m["tile_id"], m["label"]) for m in saved_session["marks"]] == [(good, 1)]
    assert saved_session["last_results"] == after


def test_gallery_of_plain_images_read_only(page, tmp_path):
    from playwright.sync_api import expect

    images = tmp_path / "images"
    shutil.copytree(shared("images"), images)
    with Image.open(images / "hotdog.jpg") as picture:  # a near copy: cut a little, saved again
        w, h = picture.size
        picture.crop((8, 8, w - 8, h - 8)).save(images / "snack.jpg", quality=80)
    db = tmp_path / "gallery.gpkg"
    assert geosearch.ingest([images], db).tiles_added == 9
    with running_server(create_app(db, Settings())) as url:
        page.goto(url + "/")
        expect(page.locator("body")).to_have_attribute("data-ready", "true", timeout=20000)
        expect(page.locator("#map")).to_be_hidden()
        figures = page.locator("#grid figure")
        expect(figures).to_have_count(9)
        page.locator("#grid figure", has_text="hotdog.jpg").click()
        expect(page.locator("#results li")).to_have_count(5)
        expect(page.locator("#results li").first).to_contain_text("snack.jpg")
        expect(page.locator("#results li").first).to_contain_text("near copy")
        expect(page.locator("#results li").nth(1)).to_contain_text("hotdog_2.jpg")
        expect(page.locator("#results li").nth(1)).not_to_contain_text("near copy")
        expect(page.locator("#grid figure.query")).to_have_count(1)
        expect(page.locator("#grid figure.result")).to_have_count(5)
        first = listed_ids(page)[0]
        page.locator("#results li").first.locator("button.bad").click()
        expect(page.locator("#marks")).to_contain_text("marked 1 bad")
        assert first not in listed_ids(page)
        screenshot(page, tmp_path, "serve-gallery.png")
        with urllib.request.urlopen(url + "/api/sessions") as response:
            assert json.loads(response.read()) == []  # read-only: nothing was saved


def test_search_by_a_screenshot_draws_where_it_was_found(page, naip_db, tmp_path):
    import rasterio
    from PIL import Image
    from playwright.sync_api import expect
    from rasterio.windows import Window

    with rasterio.open(shared("naip", "m_4709963_se_14_1_20150926.tif")) as src:
        pixels = src.read([1, 2, 3], window=Window(500, 300, 150, 120))  # inside sample_tiles/
    shot = tmp_path / "screenshot.png"
    Image.fromarray(pixels.transpose(1, 2, 0)).save(shot)
    with running_server(create_app(naip_db, Settings())) as url:
        page.goto(url + "/")
        expect(page.locator("body")).to_have_attribute("data-ready", "true", timeout=20000)
        page.locator("#upload").set_input_files(str(shot))
        expect(page.locator("#results li")).to_have_count(5)
        expect(page.locator("#query .found")).to_contain_text("found in m_4709963_se_14_1_")
        expect(page.locator("path.location-outline")).to_have_count(1)
        screenshot(page, tmp_path, "serve-located-screenshot.png")


COVERAGE_TILES = "img.leaflet-tile[src*='api/coverage/']"
COVERAGE_LOADED = """() => [...document.querySelectorAll("%s")]
  .every((image) => image.classList.contains("leaflet-tile-loaded"))""".replace(
    "%s", COVERAGE_TILES
)
# How many pixels of the coverage map tiles in view show tiles (are not transparent).
COVERAGE_PIXELS = """() => {
  let covered = 0;
  for (const image of document.querySelectorAll("%s")) {
    const canvas = document.createElement("canvas");
    canvas.width = image.naturalWidth;
    canvas.height = image.naturalHeight;
    const context = canvas.getContext("2d");
    context.drawImage(image, 0, 0);
    const alpha = context.getImageData(0, 0, canvas.width, canvas.height).data;
    for (let i = 3; i < alpha.length; i += 4) covered += alpha[i] > 0;
  }
  return covered;
}""".replace("%s", COVERAGE_TILES)


def test_many_tiles_coverage_first_footprints_when_zoomed_in(page, tmp_path, stats_only):
    """More tiles than the page draws (1,089 > 1,000): the whole-extent view shows the coverage
    layer and no footprint, a click there searches the tile at that place, and zooming in draws
    the footprints of the tiles in view."""
    from playwright.sync_api import expect

    from tests.conftest import textured, write_geotiff

    write_geotiff(tmp_path / "images" / "grid.tif", textured((3, 1056, 1056), seed=3))
    settings = stats_only.with_overrides({"tile_size": 32})  # 33 x 33 tiles
    db = tmp_path / "many.gpkg"
    assert geosearch.ingest([tmp_path / "images"], db, settings=settings).tiles_added == 1089
    with running_server(create_app(db, settings)) as url:
        page.goto(url + "/")
        expect(page.locator("body")).to_have_attribute("data-ready", "true", timeout=20000)
        expect(page.locator(COVERAGE_TILES).first).to_be_attached()
        page.wait_for_function(COVERAGE_LOADED)
        assert page.evaluate(COVERAGE_PIXELS) > 100  # the tiles' centres are drawn
        expect(page.locator("#hint")).to_contain_text("1089 tiles in view: zoom in")
        assert page.locator("path.tile-footprint").count() == 0
        assert page.evaluate("FOOTPRINTS_IN_VIEW") < 1089

        box = page.locator("#map").bounding_box()
        centre = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.click(*centre)  # no footprint drawn: the server finds the tile there
        expect(page.locator("#results li")).to_have_count(5)
        expect(page.locator("#query")).to_contain_text("Query: tile ")
        assert page.locator("path.tile-footprint").count() == 0

        page.mouse.move(*centre)
        page.mouse.wheel(0, -200)  # zoom in 2 levels: about 1/16 of the tiles in view
        footprints = page.locator("path.tile-footprint")
        expect(footprints.first).to_be_attached(timeout=10000)
        drawn = footprints.count()
        assert 20 < drawn < 200
        expect(page.locator("#hint")).to_have_text("Click a tile to find the places most like it.")
        previews = page.locator("img.tile-preview")
        expect(previews).to_have_count(drawn)  # few enough tiles in view: previews too
        for image in previews.all():
            expect(image).to_have_js_property("complete", True)
        screenshot(page, tmp_path, "serve-map-zoomed-in.png")


DETECTION_TILES = "img.leaflet-tile[src*='/detections/']"
DETECTIONS_LOADED = """() => { const tiles = [...document.querySelectorAll("%s")];
  return tiles.length > 0 && tiles.every((t) => t.classList.contains("leaflet-tile-loaded")); }
""".replace("%s", DETECTION_TILES)


CHANGES_LOADED = DETECTIONS_LOADED.replace("/detections/", "api/changes/")


def test_mark_then_detect_draws_the_detections_lists_review_tiles_and_downloads(
    page, naip_db, tmp_path
):
    from playwright.sync_api import expect

    db = copy_database(naip_db, tmp_path / "db")
    with running_server(create_app(db, Settings(), allow_feedback=True)) as url:
        page.goto(url + "/")
        expect(page.locator("body")).to_have_attribute("data-ready", "true", timeout=20000)
        expect(page.locator("#detect-box")).to_be_hidden()
        page.locator("path.tile-footprint").last.click()
        results = page.locator("#results li")
        expect(results).to_have_count(5)
        query_card = page.locator("#query strong").text_content()
        results.first.locator("button.good").click()
        expect(page.locator("#marks")).to_contain_text("marked 1 good")
        page.locator("#results li").last.locator("button.bad").click()
        expect(page.locator("#marks")).to_contain_text("marked 1 good, 1 bad")
        expect(page.locator("#detect-box")).to_be_visible()
        expect(page.locator("path.mark-outline")).to_have_count(2)

        # a box dragged inside one place's footprint marks its tiles (every date) bad
        place = page.locator("path.tile-footprint").first.bounding_box()
        page.locator("#box-bad").click()
        expect(page.locator("#box-bad")).to_have_class("armed")
        x, y, w, h = place["x"], place["y"], place["width"], place["height"]
        page.mouse.move(x + 0.3 * w, y + 0.3 * h)
        page.mouse.down()
        page.mouse.move(x + 0.7 * w, y + 0.7 * h, steps=5)
        page.mouse.up()
        expect(page.locator("#status")).to_contain_text("tiles in the box marked bad")
        boxed = int(page.locator("#status").text_content().split()[0])
        session = page.locator("#marks a").text_content()
        saved = {m["tile_id"]: m["label"] for m in session_marks(db, session)["marks"]}
        assert boxed >= 1 and len(saved) >= 2 and sum(v < 0 for v in saved.values()) >= boxed
        expect(page.locator("path.mark-outline")).to_have_count(len(saved))
        expect(page.locator("path.mark-outline.bad")).to_have_count(
            sum(v < 0 for v in saved.values())
        )
        expect(page.locator("#box-bad")).not_to_have_class("armed")
        assert page.locator("#query strong").text_content() == query_card  # the box did not search

        page.locator("#detect").click()
        expect(page.locator("#detect-summary")).to_contain_text("20 tiles scored", timeout=30000)
        review = page.locator("#review li")
        expect(review).to_have_count(min(10, 20 - len(saved)))
        for image in page.locator("#review li img").all():
            expect(image).to_have_js_property("complete", True)
        page.wait_for_function(DETECTIONS_LOADED)
        screenshot(page, tmp_path, "serve-detect.png")
        with page.expect_download() as download:
            page.locator("#detect-downloads a.download-gpkg").click()
        assert Path(download.value.path()).read_bytes()[:16] == b"SQLite format 3\x00"
        with page.expect_download() as download:
            page.locator("#detect-downloads a.download-geojson").click()
        assert json.loads(Path(download.value.path()).read_text())["type"] == "FeatureCollection"

        reviewed = int(review.first.get_attribute("data-id"))
        review.first.locator("button.good").click()  # a review tile marked: saved
        good = sum(v > 0 for v in saved.values()) + 1
        bad = sum(v < 0 for v in saved.values())
        expect(page.locator("#marks")).to_contain_text(f"marked {good} good, {bad} bad")

        # the Changes panel: the layer drawn by the server, a click on the map shows a pair
        page.locator("#change-from").fill("2009")
        page.locator("#change-to").fill("2015")
        page.locator("#change-go").click()
        expect(page.locator("#results li.change-item")).to_have_count(4, timeout=60000)
        page.wait_for_function(CHANGES_LOADED)
        place = page.locator("path.tile-footprint").first.bounding_box()
        page.mouse.click(place["x"] + place["width"] / 2, place["y"] + place["height"] / 2)
        expect(page.locator(".change-pair img")).to_have_count(2)
        expect(page.locator("path.change-selected")).to_have_count(1)
        for image in page.locator(".change-pair img").all():
            expect(image).to_have_js_property("complete", True)
        captions = page.locator(".change-pair figcaption").all_text_contents()
        assert captions[0].startswith("2009-08-18") and captions[1].startswith("2015-09-26")
    marks = {m["tile_id"]: m["label"] for m in session_marks(db, session)["marks"]}
    assert marks[reviewed] == 1 and len(marks) == len(saved) + 1
