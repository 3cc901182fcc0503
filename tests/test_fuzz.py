"""Property: whatever lies in a folder, ingest finishes and accounts for every file.

Hypothesis writes rasters of any shape (1..300 px), dtype, nodata, band count and pixel values
(NaN and infinities included), and files of random or damaged bytes named as images. For each,
``geosearch.ingest`` raises nothing but a ``GeosearchError``, every file found is either
ingested or listed in ``report.skipped`` with a one-line reason, and every stored vector is
finite. Each example gets its own folder and database.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays, from_dtype
from PIL import Image

import geosearch
from geosearch.config import Settings
from geosearch.ingest import IngestReport
from geosearch.store import Store
from tests.conftest import textured, write_geotiff

DTYPES = ("uint8", "uint16", "int16", "float32", "float64")
SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".vrt", ".img", ".jp2")

fuzz = settings(
    max_examples=40,
    deadline=None,
    database=None,  # no .hypothesis/ folder in the repository; failures print their example
    # stats_only is a plain settings object: sharing it between examples is harmless.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def fuzz_settings(stats_only: Settings) -> Settings:
    """Stats only, in this process, with 128 px tiles so that larger rasters make several."""
    return stats_only.with_overrides({"workers": 1, "tile_size": 128})


@st.composite
def raster_cases(draw: st.DrawFn) -> tuple[np.ndarray, float | None]:
    """(bands, height, width) pixels and a nodata value (or None)."""
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = (draw(st.integers(1, 6)), draw(st.integers(1, 300)), draw(st.integers(1, 300)))
    values = from_dtype(dtype, allow_nan=True, allow_infinity=True)
    if draw(st.booleans()):  # a few values chosen by hypothesis on a constant background
        data = draw(arrays(dtype, shape, elements=values, fill=values))
    else:  # noise over the dtype's whole range, with NaN/inf sprinkled in for floats
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        if dtype.kind in "ui":
            info = np.iinfo(dtype)
            data = rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)
        else:
            scale = draw(st.sampled_from([1.0, 1e-30, 1e30]))
            data = (rng.standard_normal(shape) * scale).astype(dtype)
            for special in (np.nan, np.inf, -np.inf):
                data[rng.random(shape) < draw(st.sampled_from([0.0, 0.05, 0.5, 1.0]))] = special
    nodata = draw(st.none() | st.sampled_from(["present", "any", "nan"]))
    if nodata == "nan" and dtype.kind != "f":
        nodata = "present"
    if nodata == "present":  # a value the raster holds: some (maybe all) pixels are nodata
        nodata = data.flat[draw(st.integers(0, data.size - 1))].item()
    elif nodata == "any":  # any value of the dtype, held by the raster or not
        nodata = draw(values.filter(lambda v: not np.isnan(v)))
    elif nodata == "nan":
        nodata = float("nan")
    return data, nodata


def _template(kind: str) -> bytes:
    """A small valid file of ``kind`` to damage."""
    pixels = textured((3, 24, 32), seed=1)
    if kind == ".tif":
        with tempfile.TemporaryDirectory() as folder:
            path = write_geotiff(Path(folder) / "t.tif", pixels, compress="deflate", tiled=True,
                                 blockxsize=16, blockysize=16)  # fmt: skip
            return path.read_bytes()
    buffer = io.BytesIO()
    Image.fromarray(pixels.transpose(1, 2, 0)).save(buffer, "PNG" if kind == ".png" else "JPEG")
    return buffer.getvalue()


TEMPLATES = {kind: _template(kind) for kind in (".tif", ".png", ".jpg")}


@st.composite
def bad_files(draw: st.DrawFn) -> tuple[str, bytes]:
    """(suffix, content): random bytes, or a valid file truncated and with bytes changed."""
    if draw(st.booleans()):
        return draw(st.sampled_from(SUFFIXES)), draw(st.binary(max_size=2048))
    kind = draw(st.sampled_from(sorted(TEMPLATES)))
    data = bytearray(TEMPLATES[kind])
    for _ in range(draw(st.integers(0, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return draw(st.sampled_from([kind, *SUFFIXES])), bytes(data[:cut] if cut else data)


def ingest_accounts_for_every_file(folder: Path, settings_: Settings) -> IngestReport | None:
    """Ingest ``folder`` into a new database and check the properties; None if it refused."""
    db = folder.parent / "db.gpkg"
    try:
        report = geosearch.ingest([folder], db, settings_)
    except geosearch.GeosearchError:
        return None  # a clean refusal is allowed (the CLI prints it on one line)
    skipped = [s.path for s in report.skipped]
    assert len(skipped) == len(set(skipped)), report.skipped
    assert report.files_ingested + len(skipped) == report.files_found, report
    for item in report.skipped:
        assert item.reason and "\n" not in item.reason, item
    with Store(db) as store:
        assert np.isfinite(store.vectors()[1]).all()
    return report


@fuzz
@given(case=raster_cases())
def test_any_raster_is_ingested_or_skipped(fuzz_settings, case):
    data, nodata = case
    with tempfile.TemporaryDirectory() as folder:
        path = write_geotiff(Path(folder) / "in" / "raster.tif", data, nodata=nodata)
        report = ingest_accounts_for_every_file(path.parent, fuzz_settings)
        assert report is not None and report.files_found == 1


@fuzz
@given(files=st.lists(bad_files(), min_size=1, max_size=3), good_first=st.booleans())
def test_random_and_damaged_bytes_never_crash_ingest(fuzz_settings, files, good_first):
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder) / "in"
        good = "a_good.tif" if good_first else "z_good.tif"
        write_geotiff(folder / good, textured((3, 40, 40), seed=2))
        for number, (suffix, content) in enumerate(files):
            (folder / f"f{number}{suffix}").write_bytes(content)
        report = ingest_accounts_for_every_file(folder, fuzz_settings)
        assert report is not None and report.files_found == 1 + len(files)
