"""Plain-image mode on the team's real JPEG/PNG collection: same engine, no geometry."""

from __future__ import annotations

import json

import pytest

import geosearch
from tests.conftest import run_cli, shared, textured, write_geotiff


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    images = shared("images")
    db = tmp_path_factory.mktemp("gallery") / "gallery.gpkg"
    report = geosearch.ingest([images], db)
    assert report.tiles_added == 8 and not report.skipped
    return images, db


@pytest.mark.parametrize(
    ("query", "expected"), [("cat.jpg", "cat_2.png"), ("hotdog.jpg", "hotdog_2.jpg")]
)
def test_a_picture_finds_its_kind_first(gallery, query, expected, tmp_path):
    images, db = gallery
    result = run_cli(
        "similar", str(images / query), "--db", str(db), "--top", "3", "--json",
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["results"][0]["path"].endswith(expected)
    assert all(item["geometry"] is None for item in answer["results"])
    collection = json.loads((tmp_path / "out" / "similar.geojson").read_text())
    assert all(feature["geometry"] is None for feature in collection["features"])
    assert (tmp_path / "out" / "contact_sheet.png").stat().st_size > 1000


def test_gallery_refuses_a_geotiff_with_a_clear_reason(gallery, tmp_path):
    _, db = gallery
    raster = write_geotiff(tmp_path / "scene.tif", textured((3, 64, 64), seed=1))
    report = geosearch.ingest([raster], db)
    assert report.tiles_added == 0
    assert "holds plain images (JPEG/PNG), this file is one of the georeferenced rasters" in (
        report.skipped[0].reason
    )
