"""What a person reads: help, version, one exit code per kind of mistake, readable scores,
labelled contact sheets, a results folder holding one run, notes that point at the setting;
and whole scenes as queries (ranked by how well their tiles match)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import geosearch
from geosearch.config import Settings
from tests.conftest import SAMPLE_TILES, run_cli, shared, textured, write_geotiff

YEARS = sorted((SAMPLE_TILES / "naip").glob("*.tif"))


def test_help_and_version_read_cleanly():
    help_text = run_cli("similar", "--help").stdout
    assert "<bool>" not in help_text and "geosearch[spark]" in help_text
    assert "geosearch.gpkg]" in help_text  # "[default: geosearch.gpkg]", maybe wrapped
    version = run_cli("--version")
    assert version.returncode == 0
    assert version.stdout.strip() == f"geosearch {geosearch.__version__}"


def test_previews_are_transparent_where_nodata_and_opaque_rgb_elsewhere(stats_only, tmp_path):
    pixels = np.maximum(textured((3, 300, 300), seed=4), 1)  # 0 is nodata
    pixels[:, :, 200:] = 0  # no data east of column 200
    raster = write_geotiff(tmp_path / "in" / "half.tif", pixels, nodata=0)
    db = tmp_path / "half.gpkg"
    geosearch.ingest([raster.parent], db, settings=stats_only)
    out = tmp_path / "r"
    geosearch.write_results(geosearch.similar(db, [raster], tile=0, top=1), db, out, previews="all")
    with Image.open(out / "previews" / "query1.png") as full:  # tile 0: 256 x 256, data to 200
        alpha = np.asarray(full.convert("RGBA"))[..., 3]
        assert full.mode == "RGBA" and alpha[:, :200].min() == 255 and alpha[:, 200:].max() == 0
    whole = write_geotiff(tmp_path / "whole.tif", textured((3, 300, 300), seed=4))  # all data
    geosearch.write_results(geosearch.similar(db, [whole], tile=0, top=1), db, out)
    with Image.open(out / "previews" / "query1.png") as opaque:
        assert opaque.mode == "RGB" and opaque.size == (256, 256)


def test_a_preview_shows_the_tile_in_its_own_colours_stretched_2_to_98_percent(naip_db, tmp_path):
    import rasterio

    out = tmp_path / "r"
    result = geosearch.similar(naip_db, [YEARS[0]], tile=0, top=1)
    geosearch.write_results(result, naip_db, out, previews="all")
    w = result[0].query.tiles[0].window
    with rasterio.open(YEARS[0]) as src:  # bands 1-3 are red, green, blue
        rgb = src.read((1, 2, 3), window=((w.row, w.row + w.height), (w.col, w.col + w.width)))
    values = rgb.reshape(3, -1).astype(np.float64)
    low, high = np.percentile(values, (2, 98), axis=1)[:, :, None, None]
    expected = np.clip((rgb - low) / (high - low) * 255, 0, 255).astype(np.uint8)
    with Image.open(out / "previews" / "query1.png") as preview:
        shown = np.moveaxis(np.asarray(preview.convert("RGB")), 2, 0).astype(int)
    assert shown.shape == expected.shape
    assert np.abs(shown - expected).max() <= 1  # red stays red: channels in order, not BGR
    assert not np.array_equal(shown[0], shown[2])


@pytest.mark.parametrize(
    "arguments",
    [
        ["--lonlat", "200,10"],  # out of range
        ["--bbox", "1,2,3"],  # not four numbers
        [],  # no query at all
        ["x.tif", "--exclude-near", "-5"],
        ["--date", "2014-07-20", "x.tif"],  # --date without --lonlat
    ],
)
def test_every_mistake_in_a_command_is_exit_2(naip_db, arguments):
    result = run_cli("similar", *arguments, "--db", str(naip_db))
    assert result.returncode == 2, result.stderr


def test_an_empty_folder_is_an_error_and_makes_no_database(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_cli("ingest", str(tmp_path / "empty"), "--db", str(tmp_path / "db.gpkg"))
    assert result.returncode == 3
    assert result.stderr.strip().startswith("error: nothing to ingest: no image file or scene in")
    assert not list(tmp_path.glob("db.gpkg*"))


def test_a_file_with_no_tile_to_index_points_at_the_setting(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "empty.tif").symlink_to(shared("rasterio", "all-nodata.tif"))
    result = run_cli("ingest", str(folder), "--db", str(tmp_path / "db.gpkg"))
    assert result.returncode == 0, result.stderr
    assert (
        f"note: {folder / 'empty.tif'}: no tile indexed: every tile is more than 90% nodata "
        "(max_nodata_fraction 0.9)"
    ) in result.stderr


def test_similarity_is_readable_and_the_results_folder_holds_one_run(naip_db, tmp_path):
    out = tmp_path / "results"
    first = run_cli("similar", str(YEARS[0]), "--tile", "0", "--db", str(naip_db), "--top", "5",
                    "--out", str(out), "--json")  # fmt: skip
    assert first.returncode == 0, first.stderr
    for item in json.loads(first.stdout)["results"]:
        assert 0 <= item["similarity"] <= 1 and item["similarity"] == pytest.approx(
            (1 + item["cosine"]) / 2, abs=1e-4
        )
    second = run_cli("similar", str(YEARS[1]), "--tile", "1", "--db", str(naip_db), "--top", "2",
                     "--out", str(out))  # fmt: skip
    assert second.returncode == 0, second.stderr
    assert "similarity" in second.stdout  # the table's column
    assert sorted(p.name for p in (out / "previews").iterdir()) == sorted(
        ["query1.png"] + [f.name for f in (out / "previews").glob("query1_rank*_tile*.png")]
    )
    assert len(list((out / "previews").glob("query1_rank*.png"))) == 2  # not the 5 of before


def test_contact_sheet_labels_give_rank_similarity_date_and_file(naip_db, tmp_path):
    from PIL import Image

    from geosearch.render import _label

    [result] = geosearch.similar(naip_db, [YEARS[0]], top=3, tile=2)
    best = result.matches[0]
    rank, date, name = _label(best)
    assert rank.startswith(f"#1  similarity {best.similarity:.2f}")
    assert (date, name) == (best.tile.acquired, Path(best.tile.path).name)
    files = geosearch.write_results([result], naip_db, tmp_path / "r", preview_size=128)
    with Image.open(files.contact_sheets[0]) as sheet:
        assert sheet.width == 4 * 128 and sheet.height > 128 + 3 * 12  # three lines of label


def test_a_whole_scene_finds_the_other_scenes_one_result_each(naip_db):
    vectors_only = Settings().with_overrides({"search.locate": False})
    [result] = geosearch.similar(naip_db, [YEARS[0]], top=10, settings=vectors_only)
    found = [match.tile.path for match in result.matches]
    assert sorted(found) == sorted(str(year) for year in YEARS[1:])  # each other year, once
    assert [m.score for m in result.matches] == sorted((m.score for m in result.matches),
                                                       reverse=True)  # fmt: skip


def test_a_chip_with_an_alpha_band_is_explained_to_ingest_and_searched_on_rgb(naip_db, tmp_path):
    import rasterio

    chip = tmp_path / "in" / "alpha.tif"
    chip.parent.mkdir()
    with rasterio.open(YEARS[-1]) as src:  # as many tools write it: RGB + an alpha band
        profile, pixels = src.profile | {"photometric": "RGB", "alpha": "YES"}, src.read()
    with rasterio.open(chip, "w", **profile) as dst:
        dst.write(pixels)
    copy = tmp_path / "db.gpkg"
    copy.write_bytes(Path(naip_db).read_bytes())
    ingest = run_cli("ingest", str(chip.parent), "--db", str(copy))
    assert ingest.returncode == 6
    assert "found 3 (red,green,blue) uint8; its band 4 is flagged alpha (a mask, never data)" in (
        ingest.stderr
    )
    assert "--bands" not in ingest.stderr  # choosing bands cannot help here
    search = run_cli("similar", str(chip), "--tile", "0", "--db", str(copy), "--json",
                     "--out", str(tmp_path / "r"))  # fmt: skip
    assert search.returncode == 0, search.stderr
    assert json.loads(search.stdout)["query"]["compared_on"]["missing"] == ["band4"]


def test_previews_are_rendered_for_the_top_results_and_the_rest_say_null(naip_db, tmp_path):
    out = tmp_path / "results"
    run = run_cli("similar", str(YEARS[0]), "--tile", "1", "--db", str(naip_db), "--top", "5",
                  "--previews", "2", "--out", str(out), "--json")  # fmt: skip
    assert run.returncode == 0, run.stderr
    shown = json.loads(run.stdout)
    previews = [item["preview"] for item in shown["results"]]
    assert previews[2:] == [None, None, None] and None not in previews[:2]
    assert all((out / path).stat().st_size > 0 for path in previews[:2])
    assert (out / shown["query"]["preview"]).exists()
    assert len(list((out / "previews").iterdir())) == 3  # the query and its top 2
    collection = json.loads((out / "similar.geojson").read_text())
    results = [f["properties"] for f in collection["features"]]
    results = [properties for properties in results if properties["role"] == "result"]
    assert [p["preview"] for p in results] == previews and len(results) == 5
    assert (out / "contact_sheet.png").exists()


def test_no_previews_writes_no_picture_but_every_result(naip_db, tmp_path):
    out = tmp_path / "results"
    run = run_cli("similar", str(YEARS[0]), "--tile", "1", "--db", str(naip_db), "--top", "4",
                  "--previews", "none", "--out", str(out), "--json")  # fmt: skip
    assert run.returncode == 0, run.stderr
    shown = json.loads(run.stdout)
    assert [item["preview"] for item in shown["results"]] == [None] * 4
    assert shown["query"]["preview"] is None
    assert not list((out / "previews").iterdir()) and not list(out.glob("contact_sheet*"))
    bad = run_cli("similar", str(YEARS[0]), "--db", str(naip_db), "--previews", "some")
    assert bad.returncode == 2
    assert bad.stderr.strip().endswith("expected a number of previews (0 or more), all or none "
                                       "(got 'some')")  # fmt: skip


def test_a_batch_of_queries_gets_one_contact_sheet_a_row_each(naip_db, tmp_path):
    from PIL import Image

    from geosearch.render import BATCH_SHEET_CELL

    results = geosearch.similar(naip_db, [YEARS[0]] * 4, top=3, tile=2)
    few = geosearch.write_results(results[:2], naip_db, tmp_path / "few", preview_size=128)
    assert [p.name for p in few.contact_sheets] == ["contact_sheet_1.png", "contact_sheet_2.png"]
    files = geosearch.write_results(results, naip_db, tmp_path / "r", preview_size=256)
    assert [p.name for p in files.contact_sheets] == ["contact_sheet.png"]
    assert len(files.previews) == 4 * (1 + 3)  # each query and its results, as named before
    with Image.open(files.contact_sheets[0]) as sheet, Image.open(few.contact_sheets[0]) as one:
        assert sheet.width == 4 * BATCH_SHEET_CELL  # the query and 3 results a row
        row = BATCH_SHEET_CELL + 3 * 14 + 4  # a cell and three lines of label
        assert sheet.height == 4 * row and one.height == 128 + 3 * 14 + 4


def test_a_window_is_rendered_once_and_an_unreadable_file_gets_no_preview(naip_db, tmp_path):
    from geosearch.catalog import open_database
    from geosearch.pixels import Window
    from geosearch.render import render_previews, tile_preview

    window = Window(0, 256, 256, 256)
    wanted = [(str(YEARS[1]), window), (str(tmp_path / "gone.tif"), window)] * 3
    with open_database(naip_db) as catalog:
        rendered = render_previews(catalog, wanted, 128)
        alone = tile_preview(catalog, str(YEARS[1]), window, 128)
    assert len(rendered) == 2
    assert rendered[(str(YEARS[1]), window)] == alone
    assert rendered[(str(tmp_path / "gone.tif"), window)] is None
