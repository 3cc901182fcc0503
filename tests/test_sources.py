"""Readers and tiling on real GeoTIFFs and images written in the test."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import rasterio
from PIL import Image
from pyproj import Transformer
from rasterio.transform import from_origin

from geosearch.dates import acquisition_date
from geosearch.errors import InputError
from geosearch.pixels import tile_windows
from geosearch.sources import open_source
from tests.conftest import shared, textured, write_geotiff


def test_windows_cover_the_raster_and_keep_edge_remainders():
    windows = tile_windows(width=600, height=300, tile_size=256)
    assert [(w.row, w.col, w.width, w.height) for w in windows] == [
        (0, 0, 256, 256), (0, 256, 256, 256), (0, 512, 88, 256),
        (256, 0, 256, 44), (256, 256, 256, 44), (256, 512, 88, 44),
    ]  # fmt: skip
    assert sum(w.width * w.height for w in windows) == 600 * 300


@pytest.mark.parametrize("size", [1, 100, 256])
def test_raster_no_larger_than_a_tile_is_one_tile(tmp_path, size):
    path = write_geotiff(tmp_path / "small.tif", textured((3, size, size), seed=1))
    with open_source(path) as source:
        assert [(w.width, w.height) for w in source.windows(256)] == [(size, size)]


def test_footprint_matches_the_corners_in_lonlat(tmp_path):
    path = write_geotiff(
        tmp_path / "utm.tif", textured((1, 300, 500), seed=2), crs="EPSG:32633",
        transform=from_origin(500000, 5200000, 10, 10),
    )  # fmt: skip
    with open_source(path) as source:
        window = source.windows(256)[1]  # row 0, col 256: 244 x 256 px
        footprint = source.footprint(window)
    to_lonlat = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    west, north = to_lonlat.transform(500000 + 2560, 5200000)
    east, south = to_lonlat.transform(500000 + 5000, 5200000 - 2560)
    minx, miny, maxx, maxy = footprint.wgs84.bounds
    assert minx == pytest.approx(west, abs=1e-4) and maxy == pytest.approx(north, abs=1e-4)
    assert maxx == pytest.approx(east, abs=1e-3) and miny == pytest.approx(south, abs=1e-3)
    assert "POLYGON" in footprint.native_wkt and 14.9 < minx < 15.1  # UTM 33N: 15 deg E


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32", "float64"])
def test_any_dtype_reads_with_its_nodata_mask(tmp_path, dtype):
    data = textured((2, 40, 50), seed=3, dtype="uint8").astype(dtype)
    data[:, :10, :] = 7
    path = write_geotiff(tmp_path / f"{dtype}.tif", data, nodata=7)
    with open_source(path) as source:
        tile = source.read(source.windows(256)[0], [1, 2])
    assert tile.pixels.dtype == np.dtype(dtype)
    assert not tile.valid[:10].any() and tile.nodata_fraction == pytest.approx(0.25)


def test_nan_pixels_are_invalid(tmp_path):
    data = np.ones((1, 20, 20), dtype="float32")
    data[0, 0, :] = np.nan
    data[0, 1, :] = np.inf
    path = write_geotiff(tmp_path / "nan.tif", data)
    with open_source(path) as source:
        tile = source.read(source.windows(256)[0], [1])
    assert tile.valid.sum() == 18 * 20


def test_alpha_band_is_mask_not_data():
    with open_source(shared("rasterio", "RGBA.uint16.tif")) as source:
        assert source.data_bands == (1, 2, 3)
        assert source.band_names[:3] == ("blue", "green", "red")
        tile = source.read(source.windows(256)[0], source.data_bands)
        assert 0 < tile.valid.mean() < 1


def test_big_raster_is_read_by_windows_not_whole(tmp_path):
    height = width = 4096
    data = np.broadcast_to(np.arange(width, dtype="uint16") % 1000, (1, height, width))
    path = write_geotiff(
        tmp_path / "big.tif", np.ascontiguousarray(data), compress="deflate", tiled=True,
        blockxsize=256, blockysize=256,
    )  # fmt: skip
    whole_bytes = height * width * 2
    with open_source(path) as source:
        tracemalloc.start()
        windows = source.windows(256)
        for window in windows:
            source.read(window, [1])
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert len(windows) == 256
    assert peak < whole_bytes / 20, f"peak {peak} bytes: the raster was read whole"


def test_plain_images_become_rgb_with_orientation_and_alpha(tmp_path):
    gradient = np.tile(np.arange(64, dtype=np.uint8) * 4, (32, 1))  # 32 rows x 64 cols
    Image.fromarray(gradient, "L").save(tmp_path / "gray.png")
    rgba = np.zeros((32, 64, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[:, :16, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(gradient, "L").convert("P").save(tmp_path / "palette.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    Image.fromarray(np.dstack([gradient] * 3), "RGB").save(tmp_path / "rotated.jpg", exif=exif)
    Image.fromarray(gradient.astype("<u2") * 256).save(tmp_path / "sixteen.png")

    for name in ("gray.png", "palette.png", "sixteen.png"):
        with open_source(tmp_path / name) as source:
            tile = source.read(source.windows(256)[0], [1, 2, 3])
            assert tile.pixels.shape == (3, 32, 64) and tile.valid.all(), name
            assert tile.pixels[0, 0, -1] > tile.pixels[0, 0, 0], name
    with open_source(tmp_path / "rgba.png") as source:
        assert source.read(source.windows(256)[0], [1, 2, 3]).valid[:, :16].sum() == 0
    with open_source(tmp_path / "rotated.jpg") as source:
        assert (source.width, source.height) == (32, 64)  # EXIF orientation applied


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.tif", b"", "empty file"),
        ("text.tif", b"this is not a raster\n" * 10, "not a readable raster"),
        ("text.jpg", b"this is not a jpeg\n" * 10, "not a readable image"),
    ],
)
def test_unreadable_files_raise_one_clear_input_error(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=reason) as caught:
        open_source(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_acquisition_date_from_names_and_tags(tmp_path):
    assert acquisition_date(tmp_path / "m_4709963_se_14_1_20090818.tif") == ("2009-08-18", "name")
    assert acquisition_date(tmp_path / "S2A_29RKH_20200219_L2A" / "B04.tif").date == "2020-02-19"
    stamp = {"TIFFTAG_DATETIME": "2021:05:03 10:00:00"}
    assert acquisition_date(tmp_path / "x.tif", stamp) == ("2021-05-03", "datetime-tag")
    assert acquisition_date(tmp_path / "scene_016037.tif") == (None, None)


def test_band_names_from_file_names_and_colour_interpretation():
    with open_source(shared("sentinel2", "S2A_29RKH_20200219_L2A", "B04.tif")) as source:
        assert source.band_names == ("B04",) and source.acquired == "2020-02-19"
    with rasterio.open(shared("rasterio", "RGB.byte.tif")) as dataset:
        assert dataset.count == 3
    with open_source(shared("rasterio", "RGB.byte.tif")) as source:
        assert source.band_names == ("red", "green", "blue")
