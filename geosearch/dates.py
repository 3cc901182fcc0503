"""When an image was taken, and how we know: from what the data says, then from its name.

Sources, most trusted first (``DATE_SOURCES``): a product's metadata (Landsat MTL
DATE_ACQUIRED, Sentinel-2 sensing time, STAC ``datetime``), GDAL's IMAGERY metadata
(ACQUISITIONDATETIME, read from the sidecar files of commercial imagery), EXIF
DateTimeOriginal (from the Exif IFD, where cameras write it), a date in the file or folder name
(Landsat and Sentinel-2 product ids, NAIP names, YYYY-MM-DD, YYYYMMDD, a Landsat scene id's
year and day of year), a bare year in the name (``1985.tif``: stored as 1985-01-01, a
year-precision date), and last the TIFF/EXIF DateTime tag. That tag says when the *file* was
written (TIFF 6.0, tag 306): GDAL and cameras' editors set it on processing (rasterio's
``all-nodata.tif`` carries 2022-01-17, its processing day), so a name beats it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

# Where a date was read (the ``acquired_source`` column), in the words ``geosearch info`` uses.
DATE_SOURCES = {
    "metadata": "product metadata",  # Landsat MTL, Sentinel-2 SAFE, STAC item
    "imagery": "IMAGERY tags",  # GDAL IMAGERY metadata ACQUISITIONDATETIME
    "exif": "EXIF DateTimeOriginal",
    "name": "file names",  # a date or product id in the file or folder name
    "year": "a year in file names",  # year precision, stored as YYYY-01-01
    "datetime-tag": "TIFF DateTime tags",  # when the file was written
    "unknown": "an older geosearch (source not recorded)",
}

# YYYYMMDD, YYYY-MM-DD, YYYY_MM_DD, YYYY.MM.DD: not inside a longer number.
_DATE_IN_NAME = re.compile(
    r"(?<!\d)((?:19|20)\d{2})([-_.]?)(0[1-9]|1[0-2])\2(0[1-9]|[12]\d|3[01])(?!\d)"
)
# Pre-collection Landsat scene id: LC80160372017225LGN00 = path 016, row 037, 2017, day 225.
_LANDSAT_SCENE_ID = re.compile(r"(?<![A-Za-z0-9])L[COTEM]\d{7}((?:19|20)\d{2})(\d{3})[A-Z]{3}\d{2}")
# A year on its own between separators: 1985.tif, ndvi_2001, "1999 survey".
_YEAR_IN_NAME = re.compile(r"(?<![0-9A-Za-z])((?:19|20)\d{2})(?![0-9A-Za-z])")
_STAMP = re.compile(r"((?:19|20)\d{2})[:-](\d{2})[:-](\d{2})")
EARLIEST_YEAR = 1900


class Acquired(NamedTuple):
    """An acquisition date (ISO YYYY-MM-DD) and where it was read (a ``DATE_SOURCES`` key)."""

    date: str | None
    source: str | None


UNDATED = Acquired(None, None)


def date_from_stamp(stamp: object) -> str | None:
    """ISO date of a timestamp like '2021:05:03 10:00:00', '2017-08-13' or
    '2020-02-19T11:34:25.4Z'; None if it holds no valid date."""
    match = _STAMP.search(str(stamp or ""))
    if not match:
        return None
    try:
        return date(*(int(group) for group in match.groups())).isoformat()
    except ValueError:
        return None


def date_in_name(path: Path) -> Acquired:
    """The date a file's name (or one of its three nearest folders') says, if any."""
    parts = [Path(path).stem, *(parent.name for parent in Path(path).parents[:3])]
    for part in parts:
        match = _DATE_IN_NAME.search(part)
        while match:
            year, _, month, day = match.groups()
            try:
                return Acquired(date(int(year), int(month), int(day)).isoformat(), "name")
            except ValueError:
                match = _DATE_IN_NAME.search(part, match.start() + 1)
        scene = _LANDSAT_SCENE_ID.search(part)
        if scene and 1 <= int(scene.group(2)) <= 366:
            day = date(int(scene.group(1)), 1, 1) + timedelta(days=int(scene.group(2)) - 1)
            return Acquired(day.isoformat(), "name")
    this_year = datetime.now().year
    for part in parts:
        for match in _YEAR_IN_NAME.finditer(part):
            if EARLIEST_YEAR <= int(match.group(1)) <= this_year:
                return Acquired(f"{match.group(1)}-01-01", "year")
    return UNDATED


def acquisition_date(
    path: Path,
    tags: Mapping[str, str] | None = None,
    product_date: str | None = None,
) -> Acquired:
    """When an image was taken and how we know (see the module docstring for the order).

    ``tags`` holds what the file says: ``ACQUISITIONDATETIME`` (IMAGERY), ``DateTimeOriginal``
    (EXIF), ``TIFFTAG_DATETIME`` or ``DateTime``; ``product_date`` a product's metadata date.
    """
    tags = tags or {}
    found = date_from_stamp(product_date)
    if found:
        return Acquired(found, "metadata")
    for key, source in (("ACQUISITIONDATETIME", "imagery"), ("DateTimeOriginal", "exif")):
        found = date_from_stamp(tags.get(key))
        if found:
            return Acquired(found, source)
    named = date_in_name(path)
    if named.date:
        return named
    for key in ("TIFFTAG_DATETIME", "DateTime"):
        found = date_from_stamp(tags.get(key))
        if found:
            return Acquired(found, "datetime-tag")
    return UNDATED


def first_date(stamps: Iterable[object]) -> str | None:
    """The first valid ISO date among ``stamps``."""
    for stamp in stamps:
        found = date_from_stamp(stamp)
        if found:
            return found
    return None
