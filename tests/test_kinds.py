"""The user decides what a database holds: georeferenced rasters or plain pictures, and which
inputs (--kind, --include, --exclude); --dry-run says so before anything is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

import geosearch
from tests.conftest import run_cli, shared, textured


@pytest.fixture
def folder(tmp_path) -> Path:
    """rasterio's four RGB quadrants beside a quick-look JPEG that sorts first, and a PNG in a
    subfolder: the case where the first file used to decide (and all GeoTIFFs were skipped)."""
    folder = tmp_path / "scenes"
    folder.mkdir()
    picture = Image.fromarray(textured((3, 40, 60), seed=1).transpose(1, 2, 0))
    picture.save(folder / "a_quicklook.jpg")
    (folder / "browse").mkdir()
    picture.save(folder / "browse" / "overview.png")
    for name in ("rgb1.tif", "rgb2.tif", "rgb3.tif", "rgb4.tif"):
        shutil.copy(shared("rasterio", name), folder / name)
    return folder


def cli(tmp_path: Path, *args: str):
    config = tmp_path / "config.yaml"
    config.write_text("workers: 1\nfeatures:\n  cnn:\n    weight: 0.0\n")
    return run_cli(*args, "--db", str(tmp_path / "db.gpkg"), "--config", str(config))


def test_the_majority_decides_and_pictures_are_skipped_one_line_each(tmp_path, folder):
    result = cli(tmp_path, "ingest", str(folder), "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 6  # files skipped, each reported
    assert (report["kind"], report["files_ingested"]) == ("geo", 4)
    assert report["kind_reason"].startswith("4 of 6 inputs are georeferenced rasters")
    skipped = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert skipped.keys() == {"a_quicklook.jpg", "overview.png"}
    assert all(
        reason.startswith("db.gpkg holds georeferenced rasters, this file is one of the plain")
        for reason in skipped.values()
    )
    lines = [line for line in result.stderr.splitlines() if line.startswith("skipped ")]
    assert len(lines) == 2


def test_excluded_files_are_left_out_quietly(tmp_path, folder):
    result = cli(tmp_path, "ingest", str(folder), "--exclude", "*.jpg", "--exclude", "browse/*")
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith(
        "new database of georeferenced rasters (4 of 4 inputs are georeferenced rasters"
    )
    assert "4 tiles added from 4 files" in result.stderr
    assert not [line for line in result.stderr.splitlines() if line.startswith("skipped ")]
    only = cli(tmp_path, "ingest", str(folder), "--include", "rgb[12].TIF", "--json")
    report = json.loads(only.stdout)
    assert (report["files_found"], report["files_excluded"], report["files_unchanged"]) == (2, 4, 2)


def test_the_user_chooses_plain_and_the_rasters_are_skipped(tmp_path, folder, stats_only):
    settings = stats_only.with_overrides({"workers": 1})
    report = geosearch.ingest([folder], tmp_path / "gallery.gpkg", settings, kind="plain")
    assert (report.kind, report.kind_reason, report.files_ingested) == ("plain", "--kind plain", 2)
    assert sorted(Path(s.path).name for s in report.skipped) == [
        f"rgb{n}.tif" for n in (1, 2, 3, 4)
    ]
    with pytest.raises(geosearch.ConfigError, match="--kind geo: gallery.gpkg holds plain images"):
        geosearch.ingest([folder], tmp_path / "gallery.gpkg", settings, kind="geo")


def test_dry_run_says_what_the_database_will_be_and_what_is_skipped(tmp_path, folder):
    result = cli(tmp_path, "ingest", str(folder), "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == (
        f"{tmp_path / 'db.gpkg'}: new database of georeferenced rasters (4 of 6 inputs are "
        "georeferenced rasters; --kind to choose)"
    )
    assert sum(line.startswith("new        ") for line in lines) == 4
    skips = [line for line in lines if line.startswith("skip ")]
    assert len(skips) == 2 and all("holds georeferenced rasters" in line for line in skips)
    assert not (tmp_path / "db.gpkg").exists()
