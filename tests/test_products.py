"""Scenes, not files: Landsat, Sentinel-2 (SAFE, STAC) and band-file folders read as one scene.

The Landsat 8 and Sentinel-2 scenes of ../shared/data are read as they are. A SAFE product is
bigger than a test should read, so one is written here in SAFE's layout (JPEG 2000 bands at
three resolutions, the metadata GDAL's SENTINEL2 driver reads) from crops of the real bands.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window as RasterWindow

import geosearch
from geosearch.errors import InputError
from geosearch.products import masked_pixels, product_at
from geosearch.sources import find_images, open_source
from geosearch.store import Store
from tests.conftest import SHARED_DATA, run_cli, shared, textured, write_geotiff

LANDSAT = ("landsat8", "LC08_L1TP_016037_20170813")
SENTINEL2 = ("sentinel2", "S2A_29RKH_20200219_L2A")
LANDSAT_BANDS = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B9", "B10", "B11"]


@pytest.fixture
def settings(stats_only):
    """No CNN, in this process, 64 px tiles: the Landsat fixture is 255 x 259 px."""
    return stats_only.with_overrides({"workers": 1, "tile_size": 64})


def crop(band: str, size: int, path: Path, transform: rasterio.Affine, **profile) -> Path:
    """The top-left ``size`` x ``size`` pixels of a real Sentinel-2 band, written at
    ``transform`` (GeoTIFF, or JPEG 2000 when ``path`` ends in .jp2)."""
    with rasterio.open(shared(*SENTINEL2, f"{band}.tif")) as source:
        data = source.read(window=RasterWindow(0, 0, size, size))
        crs = source.crs
    driver = "JP2OpenJPEG" if path.suffix == ".jp2" else "GTiff"
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path, "w", driver=driver, width=size, height=size, count=1, dtype=data.dtype, crs=crs,
        transform=transform, **profile,
    ) as target:  # fmt: skip
        target.write(data)
    return path


# -- Landsat --------------------------------------------------------------------------------


def test_a_landsat_folder_is_one_scene_with_its_quality_band_as_mask(tmp_path, settings):
    folder = shared(*LANDSAT)
    db = tmp_path / "landsat.gpkg"
    report = geosearch.ingest([folder.parent], db, settings)

    assert (report.files_found, report.files_ingested, report.scenes_ingested) == (1, 1, 1)
    assert not report.skipped  # its band files are not ingested one by one
    bands = geosearch.info(db)["bands"]
    assert bands["names"] == LANDSAT_BANDS and bands["dtype"] == "uint16"
    assert [bands["names"][i] for i in bands["rgb"]] == ["B4", "B3", "B2"]
    with Store(db) as store:
        tiles = store.tiles_of_file(str(folder))
    assert len(tiles) == report.tiles_added > 10
    assert {(t.acquired, t.acquired_source) for t in tiles} == {("2017-08-13", "metadata")}
    # BQA is a mask, not data: a tile's invalid share is its fill + cloud + shadow + cirrus
    with rasterio.open(folder / "BQA.TIF") as quality:
        for tile in tiles:
            w = tile.window
            values = quality.read(1, window=RasterWindow(w.col, w.row, w.width, w.height))
            expected = masked_pixels("landsat-bqa", values).mean()
            assert tile.nodata_fraction == pytest.approx(expected, abs=0.02)
    assert max(t.nodata_fraction for t in tiles) > 0.5  # clouds masked


def test_quality_values_mean_what_their_products_document():
    """Values from USGS's and ESA's tables: clear pixels stay, fill and clouds are masked."""
    assert masked_pixels("landsat-bqa", [2720, 2752, 1, 2800, 6816]).tolist() == [
        False,
        False,
        True,
        True,
        True,
    ]  # fmt: skip  (clear, medium-confidence cloud only, fill, cloud, high-confidence cirrus)
    assert masked_pixels("landsat-qa-pixel", [21824, 21952, 1, 22280, 23888]).tolist() == [
        False,
        False,
        True,
        True,
        True,
    ]  # fmt: skip  (clear, water, fill, high-confidence cloud, cloud shadow)
    assert np.flatnonzero(masked_pixels("sentinel2-scl", range(12))).tolist() == [0, 1, 3, 8, 9, 10]


def test_a_collection_2_scene_with_mtl_json_and_qa_pixel(tmp_path, settings):
    """Landsat Collection 2 Level-2 as delivered: SR_B1..SR_B7, ST_B10, QA_PIXEL, MTL.json
    (bands copied from the Collection 1 scene; QA_PIXEL: cloud over the top 100 rows)."""
    product_id = "LC08_L2SP_016037_20170813_20200903_02_T1"
    folder = tmp_path / product_id
    folder.mkdir()
    contents = {"LANDSAT_PRODUCT_ID": product_id, "PROCESSING_LEVEL": "L2SP",
                "COLLECTION_NUMBER": "02"}  # fmt: skip
    for number in (1, 2, 3, 4, 5, 6, 7, 10):
        name = f"{product_id}_{'ST' if number == 10 else 'SR'}_B{number}.TIF"
        shutil.copy(shared(*LANDSAT, f"B{number}.TIF"), folder / name)
        contents["FILE_NAME_BAND_ST_B10" if number == 10 else f"FILE_NAME_BAND_{number}"] = name
    with rasterio.open(shared(*LANDSAT, "BQA.TIF")) as quality:
        profile, shape = quality.profile, quality.shape
    pixel_qa = np.full((1, *shape), 21824, "uint16")  # clear
    pixel_qa[0, :100] = 22280  # cloud, high confidence
    with rasterio.open(folder / f"{product_id}_QA_PIXEL.TIF", "w", **profile) as target:
        target.write(pixel_qa)
    contents["FILE_NAME_QUALITY_L1_PIXEL"] = f"{product_id}_QA_PIXEL.TIF"
    attributes = {"SPACECRAFT_ID": "LANDSAT_8", "DATE_ACQUIRED": "2017-08-13"}
    metadata = {"PRODUCT_CONTENTS": contents, "IMAGE_ATTRIBUTES": attributes}
    (folder / f"{product_id}_MTL.json").write_text(json.dumps({"LANDSAT_METADATA_FILE": metadata}))

    product = product_at(folder)
    assert product.kind == "Landsat 8 Collection 2 L2SP" and product.mask.name == "QA_PIXEL"
    assert product.names == ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B10")
    with open_source(folder / f"{product_id}_MTL.json") as source:
        tile = source.read(source.windows(512)[0], list(range(1, 9)))
    image = (tile.pixels != 0).all(axis=0)  # the scene's fill: DN 0 (documented, untagged)
    assert not tile.valid[:100].any()
    assert (tile.valid[100:] == image[100:]).all() and image[100:].mean() > 0.5


def test_a_scene_is_a_query_by_its_folder_or_its_mtl(tmp_path, settings):
    folder = shared(*LANDSAT)
    db = tmp_path / "landsat.gpkg"
    geosearch.ingest([folder], db, settings)
    for query in (folder, folder / "MTL.txt"):
        [result] = geosearch.similar(db, [query], top=3, tile=2, settings=settings)
        assert result.query.indexed and result.query.path == str(folder)  # stored vectors
        found = {match.tile.id for match in result.matches}
        assert len(found) == 3 and result.query.tiles[0].id not in found


def test_a_scene_is_ingested_again_only_when_a_member_file_changes(tmp_path, settings):
    folder = shutil.copytree(shared(*LANDSAT), tmp_path / LANDSAT[1])
    db = tmp_path / "landsat.gpkg"
    first = geosearch.ingest([folder], db, settings)
    again = geosearch.ingest([folder / "MTL.txt"], db, settings)  # the same scene, by its MTL
    assert (again.files_unchanged, again.tiles_added) == (1, 0)

    band = folder / "B5.TIF"
    stat = band.stat()
    os.utime(band, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    changed = geosearch.ingest([folder], db, settings)
    assert changed.files_replaced == 1 and changed.tiles_added == first.tiles_added

    with Store(db) as store:  # as `check --repair` leaves a scene: some tiles gone, partial
        ids = [tile.id for tile in store.tiles_of_file(str(folder))][-3:]
        store.repair([], ids, [str(folder)], [])
    resumed = geosearch.ingest([folder], db, settings)
    assert (resumed.files_resumed, resumed.tiles_added) == (1, 3)
    assert geosearch.info(db)["tiles"] == first.tiles_added


# -- Sentinel-2 -------------------------------------------------------------------------------


def test_a_sentinel2_stac_folder_is_one_scene_with_its_item_band_names(tmp_path):
    folder = shared(*SENTINEL2)
    config = tmp_path / "config.yaml"
    config.write_text("workers: 1\nfeatures:\n  cnn:\n    weight: 0.0\n")
    db = tmp_path / "s2.gpkg"
    result = run_cli("ingest", str(folder.parent), "--db", str(db), "--config", str(config))

    assert result.returncode == 0, result.stderr
    assert "25 tiles added from 1 scene " in result.stderr and "skipped " not in result.stderr
    facts = geosearch.info(db)
    names = facts["bands"]["names"]
    assert names == [
        "coastal",
        "blue",
        "green",
        "red",
        "rededge1",
        "rededge2",
        "rededge3",
        "nir",
        "nir08",
        "nir09",
        "swir16",
        "swir22",
    ]  # fmt: skip  (eo:bands, by wavelength: B01..B12 with B8A; not TCI, not SCL)
    assert [names[i] for i in facts["bands"]["rgb"]] == ["red", "green", "blue"]
    assert facts["dates"] == {"metadata": 25}
    query = run_cli(
        "similar", str(folder / "stac_item.json"), "--tile", "12", "--db", str(db), "--json",
        "--config", str(config), "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert query.returncode == 0, query.stderr
    answer = json.loads(query.stdout)
    assert answer["query"]["indexed"] and answer["query"]["path"] == str(folder)
    assert answer["results"][0]["acquired_source"] == "metadata"


def test_a_stac_item_reads_relative_absolute_and_downloaded_assets(tmp_path):
    item_folder = tmp_path / "item"
    grid = from_origin(199980, 3000000, 100, 100)
    crop("B04", 200, item_folder / "bands" / "red.tif", grid)
    crop("B03", 200, item_folder / "bands" / "green.tif", grid)
    crop("B02", 200, item_folder / "B02.tif", grid)  # a remote href, downloaded beside
    nir08 = crop(
        "B8A", 100, tmp_path / "elsewhere" / "nir08.tif", from_origin(199980, 3000000, 200, 200)
    )

    def asset(href: str, name: str, wavelength: float, roles=("data",)) -> dict:
        band = {"name": name, "common_name": name, "center_wavelength": wavelength}
        return {"href": href, "roles": list(roles), "eo:bands": [band]}

    item = {
        "type": "Feature", "stac_version": "1.0.0", "id": "crop",
        "properties": {"datetime": "2020-02-19T11:34:25.405Z"},
        "assets": {
            "red": asset("bands/red.tif", "red", 0.665),
            "green": asset("./bands/green.tif", "green", 0.56),
            "blue": asset("https://example.com/tiles/B02.tif", "blue", 0.49),
            "nir08": asset(str(nir08), "nir08", 0.865),
            "nir": asset("https://example.com/tiles/B08.tif", "nir", 0.842),  # not downloaded
            "visual": asset("bands/red.tif", "red", 0.665, roles=("visual",)),
        },
    }  # fmt: skip
    (item_folder / "item.json").write_text(json.dumps(item))

    product = product_at(item_folder)
    assert product.names == ("blue", "green", "red", "nir08") and product.acquired == "2020-02-19"
    assert product.rgb == ("red", "green", "blue") and product.path == str(item_folder)
    assert [path.name for path in find_images(tmp_path)] == ["item"]  # nir08.tif: its asset
    with open_source(item_folder / "item.json") as source:
        assert (source.width, source.height, source.band_names) == (200, 200, product.names)
        tile = source.read(source.windows(256)[0], [1, 2, 3, 4])
        assert tile.pixels.shape == (4, 200, 200) and tile.valid.mean() > 0.9

    item["assets"] = {"nir": item["assets"]["nir"]}
    (item_folder / "item.json").write_text(json.dumps(item))
    with pytest.raises(InputError, match=r"none of its data assets .* is on disk \(first: https"):
        open_source(item_folder / "item.json")


def write_safe(root: Path, cloud: tuple[slice, slice]) -> Path:
    """A Sentinel-2 L2A SAFE folder in the layout GDAL's SENTINEL2 driver reads: JPEG 2000 bands
    at 10/20/60 m (crops of the real bands: 120, 60 and 20 px), the L2A layers (AOT, WVP, and SCL
    all "not vegetated" but class 9, cloud high probability, over ``cloud`` in 20 m pixels),
    the cloud and snow probability masks, MTD_MSIL2A.xml and the granule's MTD_TL.xml."""
    granule = root / "GRANULE" / "L2A_T29RKH_A024344_20200219T113105"
    per_resolution = {
        10: ["B02", "B03", "B04", "B08", "AOT", "WVP"],
        20: ["B05", "B06", "B07", "B8A", "B11", "B12", "AOT", "WVP", "SCL"],
        60: ["B01", "B09", "AOT", "WVP", "SCL"],
    }
    names = []
    for resolution, bands in per_resolution.items():
        size = 1200 // resolution
        transform = from_origin(199980, 3000000, resolution, resolution)
        layers = {
            name: np.full((1, size, size), 5, "uint8") for name in ("SCL", "CLDPRB", "SNWPRB")
        }
        layers["SCL"][0][cloud if resolution == 20 else (slice(0, 10), slice(0, 20))] = 9
        for band in bands:
            path = (
                granule
                / "IMG_DATA"
                / f"R{resolution}m"
                / f"T29RKH_20200219T112111_{band}_{resolution}m.jp2"
            )
            if band.startswith("B"):
                crop(band, size, path, transform)
            else:
                data = layers.get(band, np.full((1, size, size), 100, "uint16"))
                write_jp2(path, data, transform)
            names.append(str(path.relative_to(root).with_suffix("")))
        if resolution > 10:
            for mask in ("CLDPRB", "SNWPRB"):
                write_jp2(
                    granule / "QI_DATA" / f"MSK_{mask}_{resolution}m.jp2",
                    layers[mask] * 0,
                    transform,
                )
    files = "".join(f"<IMAGE_FILE>{name}</IMAGE_FILE>" for name in names)
    (root / "MTD_MSIL2A.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?><n1:Level-2A_User_Product xmlns:n1="https://psd-14'
        '.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd"><n1:General_Info><Product_Info>'
        "<PRODUCT_START_TIME>2020-02-19T11:21:11.024Z</PRODUCT_START_TIME>"
        f"<PRODUCT_URI>{root.name}</PRODUCT_URI><PROCESSING_LEVEL>Level-2A</PROCESSING_LEVEL>"
        "<PRODUCT_TYPE>S2MSI2A</PRODUCT_TYPE><Datatake datatakeIdentifier='x'>"
        "<SPACECRAFT_NAME>Sentinel-2A</SPACECRAFT_NAME></Datatake><Query_Options>"
        "<PRODUCT_FORMAT>SAFE_COMPACT</PRODUCT_FORMAT></Query_Options><Product_Organisation>"
        f"<Granule_List><Granule imageFormat='JPEG2000'>{files}</Granule></Granule_List>"
        "</Product_Organisation></Product_Info></n1:General_Info></n1:Level-2A_User_Product>"
    )
    sizes = "".join(
        f'<Size resolution="{r}"><NROWS>{1200 // r}</NROWS><NCOLS>{1200 // r}</NCOLS></Size>'
        f'<Geoposition resolution="{r}"><ULX>199980</ULX><ULY>3000000</ULY><XDIM>{r}</XDIM>'
        f"<YDIM>-{r}</YDIM></Geoposition>"
        for r in (10, 20, 60)
    )
    (granule / "MTD_TL.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?><n1:Level-2A_Tile_ID xmlns:n1="https://psd-14'
        '.sentinel2.eo.esa.int/PSD/S2_PDI_Level-2A_Tile_Metadata.xsd"><n1:Geometric_Info>'
        "<Tile_Geocoding><HORIZONTAL_CS_CODE>EPSG:32629</HORIZONTAL_CS_CODE>"
        f"{sizes}</Tile_Geocoding></n1:Geometric_Info></n1:Level-2A_Tile_ID>"
    )
    return root


def write_jp2(path: Path, data: np.ndarray, transform: rasterio.Affine) -> Path:
    """(1, h, w) ``data`` as a JPEG 2000 file in UTM 29N."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path, "w", driver="JP2OpenJPEG", width=data.shape[2], height=data.shape[1], count=1,
        dtype=data.dtype, crs="EPSG:32629", transform=transform,
    ) as target:  # fmt: skip
        target.write(data)
    return path


def test_a_sentinel2_safe_folder_and_its_zip_are_one_scene_on_the_10m_grid(tmp_path, settings):
    safe = write_safe(
        tmp_path / "S2A_MSIL2A_20200219T112111_N0214_R037_T29RKH_20200219T123947.SAFE",
        cloud=(slice(0, 30), slice(0, 60)),  # the top half, in 20 m pixels
    )
    zipped = safe.with_suffix(".zip")
    with zipfile.ZipFile(zipped, "w") as archive:
        for path in sorted(safe.rglob("*")):
            archive.write(path, path.relative_to(tmp_path))

    for path in (safe, zipped):
        product = product_at(path)
        assert product.names == (
            "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12",
        )  # fmt: skip
        assert (product.rgb, product.acquired, product.mask.name) == (
            ("B04", "B03", "B02"), "2020-02-19", "SCL",
        )  # fmt: skip
        with open_source(path) as source:
            assert (source.width, source.height, source.crs_label) == (120, 120, "EPSG:32629")
            tile = source.read(source.windows(256)[0], list(range(1, 13)))
        assert not tile.valid[:60].any() and tile.valid[60:].mean() > 0.9  # SCL 9: cloud

    assert [p.name for p in find_images(tmp_path)] == [safe.name, zipped.name]
    db = tmp_path / "s2.gpkg"
    report = geosearch.ingest([safe], db, settings)
    assert (report.scenes_ingested, report.tiles_added, report.tiles_nodata) == (1, 2, 2)
    with Store(db) as store:
        assert store.file_record(str(safe)).status == "done"
    [result] = geosearch.similar(db, [zipped], top=1, tile=0, settings=settings)
    assert not result.query.indexed  # read and embedded like any new file
    [best] = result.matches  # the same pixels, ingested from the folder
    assert (best.tile.path, best.tile.window, best.cosine) == (
        str(safe), result.query.tiles[0].window, pytest.approx(1.0, abs=1e-3),  # float16
    )  # fmt: skip


# -- band files ---------------------------------------------------------------------------------


def test_band_files_of_one_scene_on_one_grid_are_one_scene(tmp_path, settings):
    folder = tmp_path / "S2A_29RKH_20200219_bands"
    grid100, grid200 = (
        from_origin(199980, 3000000, 100, 100),
        from_origin(199980, 3000000, 200, 200),
    )
    for band in ("B02", "B03", "B04"):
        crop(band, 160, folder / f"{band}.tif", grid100)
    crop("B8A", 80, folder / "B8A.tif", grid200)
    crop("SCL", 80, folder / "SCL.tif", grid200)
    mixed = tmp_path / "mixed"
    for prefix in (
        "LC08_L1TP_016037_20170813_20170814_01_T1",
        "LE07_L1TP_016037_20030810_20160928_01_T1",
    ):
        for number in (1, 2, 3):
            write_geotiff(
                mixed / f"{prefix}_B{number}.TIF",
                textured((1, 40, 40), seed=number, dtype="uint16"),
            )
    write_geotiff(mixed / "other.tif", textured((1, 40, 40), seed=9))

    found = [str(path.relative_to(tmp_path)) for path in find_images(tmp_path)]
    assert found == [
        "S2A_29RKH_20200219_bands",
        "mixed/LC08_L1TP_016037_20170813_20170814_01_T1_B*.TIF",
        "mixed/LE07_L1TP_016037_20030810_20160928_01_T1_B*.TIF",
        "mixed/other.tif",
    ]
    assert product_at(mixed / "LE07_L1TP_016037_20030810_20160928_01_T1_B*.TIF").rgb == (
        "B3",
        "B2",
        "B1",
    )  # fmt: skip  (Landsat 7: its own RGB)
    db = tmp_path / "bands.gpkg"
    report = geosearch.ingest([folder], db, settings.with_overrides({"tile_size": 256}))
    assert (report.scenes_ingested, report.tiles_added) == (1, 1)
    bands = geosearch.info(db)["bands"]
    assert bands["names"] == ["B02", "B03", "B04", "B8A"]
    assert [bands["names"][i] for i in bands["rgb"]] == ["B04", "B03", "B02"]
    with Store(db) as store:
        [tile] = store.tiles_of_file(str(folder))
    assert (tile.window.width, tile.acquired, tile.acquired_source) == (160, "2020-02-19", "name")


def test_the_shared_data_folder_yields_each_scene_once():
    found = [str(path) for path in find_images(SHARED_DATA)]
    if not found:
        pytest.skip(f"{SHARED_DATA} not available")
    assert str(shared(*LANDSAT)) in found and str(shared(*SENTINEL2)) in found
    assert not [path for path in found if "/landsat8/" in path and path.endswith(".TIF")]
    assert not [path for path in found if "/sentinel2/" in path and path.endswith(".tif")]
