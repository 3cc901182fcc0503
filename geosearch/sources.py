"""Find image files and read them as tiles.

Two readers share one interface: ``GeoRasterSource`` (GeoTIFF and anything else GDAL reads,
through rasterio, read window by window) and ``PlainImageSource`` (JPEG/PNG through Pillow:
one tile per image, no geography). Both hand out ``RawTile`` objects (pixels + validity mask)
that the rest of the pipeline treats alike.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from pathlib import Path

import numpy as np
import rasterio
import rasterio.windows
from PIL import Image, ImageOps, UnidentifiedImageError
from pyproj import CRS, Transformer
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import NodataShadowWarning, NotGeoreferencedWarning, RasterioError
from shapely.affinity import translate
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.geometry.base import BaseGeometry

from geosearch.errors import InputError

GEO_SUFFIXES = frozenset({".tif", ".tiff", ".gtiff", ".vrt", ".jp2", ".img"})
PLAIN_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
IMAGE_SUFFIXES = GEO_SUFFIXES | PLAIN_SUFFIXES

# Plain images are searched as whole pictures; larger ones are shrunk on read to this side.
PLAIN_MAX_SIDE = 1024
# Points per footprint edge when reprojecting, so curved edges stay close in lon/lat.
FOOTPRINT_EDGE_POINTS = 4

# A nodata value beside an alpha band: rasterio uses the nodata value, as we want; no warning.
warnings.filterwarnings("ignore", category=NodataShadowWarning)

_DATE_IN_NAME = re.compile(r"(?<!\d)((?:19|20)\d{2})-?(0[1-9]|1[0-2])-?(0[1-9]|[12]\d|3[01])(?!\d)")


@dataclass(frozen=True)
class Window:
    """A pixel window of a source: top row, left column, width and height."""

    row: int
    col: int
    width: int
    height: int

    def as_rasterio(self) -> rasterio.windows.Window:
        return rasterio.windows.Window(self.col, self.row, self.width, self.height)


@dataclass
class RawTile:
    """Pixels of one window as stored in the file, before band scaling.

    ``pixels`` is (bands, height, width) in the file's dtype; ``valid`` is (height, width),
    True where every selected band holds data (not nodata, not masked, finite).
    """

    pixels: np.ndarray
    valid: np.ndarray

    @property
    def nodata_fraction(self) -> float:
        return float(1.0 - self.valid.mean()) if self.valid.size else 1.0


@dataclass(frozen=True)
class Footprint:
    """Where a tile lies: WKT in the file's CRS and a lon/lat (EPSG:4326) geometry."""

    native_wkt: str
    wgs84: BaseGeometry


def find_images(root: Path) -> Iterator[Path]:
    """Image files under ``root`` (or ``root`` itself), recursively, in sorted order.

    Directories are not followed through symlinks, so a symlink loop cannot trap the walk;
    symlinked files are yielded and judged when read. A folder that can't be listed is
    yielded too, so that reading it reports why its images are missing.
    """
    root = Path(root)
    if not root.is_dir():
        yield root
        return
    unlisted: list[OSError] = []
    for folder, dirnames, filenames in os.walk(root, onerror=unlisted.append):
        dirnames.sort()
        while unlisted:
            yield Path(unlisted.pop(0).filename)
        for name in sorted(filenames):
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                yield Path(folder) / name
    for error in unlisted:
        yield Path(error.filename)


def tile_windows(width: int, height: int, tile_size: int) -> list[Window]:
    """A grid of windows covering the raster; edge remainders are kept as smaller windows."""
    return [
        Window(row, col, min(tile_size, width - col), min(tile_size, height - row))
        for row in range(0, height, tile_size)
        for col in range(0, width, tile_size)
    ]


def acquisition_date(path: Path, tags: dict[str, str] | None = None) -> str | None:
    """ISO date the image was taken, from its file or folder name, else its TIFF/EXIF tag."""
    for part in (path.name, *(parent.name for parent in path.parents[:3])):
        match = _DATE_IN_NAME.search(part)
        if match:
            try:
                return date(*(int(group) for group in match.groups())).isoformat()
            except ValueError:
                continue
    stamp = (tags or {}).get("TIFFTAG_DATETIME") or (tags or {}).get("DateTimeOriginal")
    if stamp:
        match = re.match(r"(\d{4})[:-](\d{2})[:-](\d{2})", stamp)
        if match:
            try:
                return date(*(int(group) for group in match.groups())).isoformat()
            except ValueError:
                return None
    return None


@lru_cache(maxsize=64)
def _to_wgs84(crs_wkt: str) -> Transformer:
    return Transformer.from_crs(CRS.from_wkt(crs_wkt), CRS.from_epsg(4326), always_xy=True)


def window_ring(width: int, height: int) -> np.ndarray:
    """Pixel (x, y) points around a width x height window, clockwise from the top-left: the
    ring of every native footprint (`footprint`), closed."""
    steps = np.linspace(0.0, 1.0, FOOTPRINT_EDGE_POINTS, endpoint=False)
    top = np.column_stack([steps * width, np.zeros_like(steps)])
    right = np.column_stack([np.full_like(steps, width), steps * height])
    bottom = np.column_stack([width - steps * width, np.full_like(steps, height)])
    left = np.column_stack([np.zeros_like(steps), height - steps * height])
    ring = np.vstack([top, right, bottom, left])
    return np.vstack([ring, ring[:1]])


def _lonlat_geometry(lon: np.ndarray, lat: np.ndarray) -> BaseGeometry | None:
    """A valid lon/lat polygon, split in two where it crosses the antimeridian.

    Longitudes are first brought into [-180, 180] (a raster in EPSG:4326 may run past 180);
    the ring crosses the antimeridian where two consecutive points jump by more than 180.
    """
    if not (np.all(np.isfinite(lon)) and np.all(np.isfinite(lat))):
        return None
    if np.ptp(lon) >= 360.0:  # all the way round (a global grid in one tile): a latitude band
        return box(-180.0, float(lat.min()), 180.0, float(lat.max()))
    lon = np.where(lon > 180.0, lon - 360.0, np.where(lon < -180.0, lon + 360.0, lon))
    if np.abs(np.diff(lon)).max(initial=0.0) > 180.0:
        shifted = np.where(lon < 0, lon + 360.0, lon)  # continuous in [0, 360)
        polygon = _valid(Polygon(np.column_stack([shifted, lat])))
        east = polygon.intersection(Polygon([(-180, -90), (180, -90), (180, 90), (-180, 90)]))
        west = polygon.intersection(Polygon([(180, -90), (540, -90), (540, 90), (180, 90)]))
        parts = [_polygons(east), [translate(p, xoff=-360.0) for p in _polygons(west)]]
        return MultiPolygon([p for part in parts for p in part])
    return _valid(Polygon(np.column_stack([lon, lat])))


def _valid(polygon: Polygon) -> BaseGeometry:
    return polygon if polygon.is_valid else polygon.buffer(0)


def _polygons(geometry: BaseGeometry) -> list[Polygon]:
    """The non-empty polygons of an intersection (which may also hold lines or points)."""
    parts = getattr(geometry, "geoms", [geometry])
    return [p for p in parts if isinstance(p, Polygon) and not p.is_empty]


class GeoRasterSource:
    """A raster opened with rasterio; tiles are read window by window, never the whole scene."""

    kind = "geo"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", NotGeoreferencedWarning)
                self._dataset = rasterio.open(self.path)
        except (RasterioError, OSError) as exc:
            raise InputError(
                f"{self.path}: not a readable raster ({_reason(exc, self.path)})"
            ) from None
        ds = self._dataset
        if ds.width < 1 or ds.height < 1 or ds.count < 1:
            self.close()
            raise InputError(f"{self.path}: raster has no pixels or no bands")
        if np.dtype(ds.dtypes[0]).kind == "c":
            self.close()
            raise InputError(
                f"{self.path}: complex pixel values ({ds.dtypes[0]}) are not supported; "
                "convert to amplitude or intensity first"
            )
        interps = list(ds.colorinterp)
        self.alpha_band = next(
            (i + 1 for i, ci in enumerate(interps) if ci == ColorInterp.alpha), None
        )
        # Data bands: every band but an alpha band, which only serves as mask.
        self.data_bands = tuple(i for i in range(1, ds.count + 1) if i != self.alpha_band)
        self.band_names = tuple(self._band_name(i) for i in range(1, ds.count + 1))
        self.width, self.height = ds.width, ds.height
        self.dtype = str(np.dtype(ds.dtypes[0]))
        # Without a geotransform rasterio returns the identity: a CRS alone places nothing.
        located = bool(ds.crs) and not any(w.category is NotGeoreferencedWarning for w in caught)
        self.crs_wkt = ds.crs.to_wkt() if located else None
        self.crs_label = _crs_label(ds.crs) if located else None
        self.acquired = acquisition_date(self.path, ds.tags())

    def _band_name(self, index: int) -> str:
        ds = self._dataset
        description = ds.descriptions[index - 1]
        if description:
            return description
        interp = ds.colorinterp[index - 1]
        if interp in (ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha):
            return interp.name
        # A single-band file named after its band (B04.tif, LC08_..._B4.TIF) names that band.
        if ds.count == 1:
            match = re.search(r"(?:^|_)(B\d{1,2}A?)$", self.path.stem, flags=re.IGNORECASE)
            if match:
                return match.group(1).upper()
        return f"band{index}"

    def windows(self, tile_size: int) -> list[Window]:
        return tile_windows(self.width, self.height, tile_size)

    def read(self, window: Window, bands: Sequence[int]) -> RawTile:
        """Read ``bands`` (1-based) of ``window`` with the dataset's own nodata/mask/alpha."""
        try:
            if not self._nodata_only(bands):
                data = self._dataset.read(list(bands), window=window.as_rasterio(), masked=True)
                return _masked_to_tile(data)
            # Fast path: validity follows from the values (one read instead of data + masks).
            pixels = self._dataset.read(list(bands), window=window.as_rasterio())
        except (RasterioError, OSError) as exc:
            raise InputError(
                f"{self.path}: pixels unreadable at row {window.row}, col {window.col}; "
                f"the file may be truncated or damaged ({_reason(exc, self.path)})"
            ) from None
        valid = np.ones(pixels.shape[1:], dtype=bool)
        nodata = self._dataset.nodata
        if nodata is not None:
            valid &= ~(np.isnan(pixels) if np.isnan(nodata) else pixels == nodata).any(axis=0)
        if pixels.dtype.kind == "f":
            valid &= np.isfinite(pixels).all(axis=0)
        return RawTile(pixels=pixels, valid=valid)

    def _nodata_only(self, bands: Sequence[int]) -> bool:
        """True when the bands' masks come from a nodata value or nothing (no mask, no alpha)."""
        flags = self._dataset.mask_flag_enums
        return all(set(flags[b - 1]) <= {MaskFlags.nodata, MaskFlags.all_valid} for b in bands)

    def overview(self, bands: Sequence[int], max_side: int) -> RawTile:
        """The whole raster decimated to at most ``max_side`` pixels (uses overviews if any)."""
        factor = max(1, -(-max(self.width, self.height) // max_side))
        shape = (len(bands), max(1, self.height // factor), max(1, self.width // factor))
        try:
            data = self._dataset.read(list(bands), out_shape=shape, masked=True)
        except (RasterioError, OSError) as exc:
            raise InputError(
                f"{self.path}: pixels unreadable; the file may be truncated or damaged "
                f"({_reason(exc, self.path)})"
            ) from None
        return _masked_to_tile(data)

    def footprint(self, window: Window) -> Footprint | None:
        """The window's outline in the file's CRS and in lon/lat; None without a CRS."""
        if self.crs_wkt is None:
            return None
        t = self._dataset.transform
        ring = window_ring(window.width, window.height)
        px, py = ring[:, 0] + window.col, ring[:, 1] + window.row
        xs, ys = t.a * px + t.b * py + t.c, t.d * px + t.e * py + t.f
        native = Polygon(np.column_stack([xs, ys]))
        try:
            lon, lat = _to_wgs84(self.crs_wkt).transform(np.asarray(xs), np.asarray(ys))
        except Exception:  # pyproj raises several types for points off the projection
            return None
        wgs84 = _lonlat_geometry(np.asarray(lon), np.asarray(lat))
        if wgs84 is None or wgs84.is_empty:
            return None
        return Footprint(native_wkt=native.wkt, wgs84=wgs84)

    def close(self) -> None:
        self._dataset.close()

    def __enter__(self) -> GeoRasterSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PlainImageSource:
    """A JPEG/PNG opened with Pillow: one tile per picture, RGB, no geography.

    EXIF orientation is applied; grayscale, palette, CMYK and 16-bit images become RGB; an alpha
    channel becomes the validity mask.
    """

    kind = "plain"
    alpha_band = None
    data_bands = (1, 2, 3)
    band_names = ("red", "green", "blue")
    dtype = "uint8"
    crs_wkt = None
    crs_label = None

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            with warnings.catch_warnings():
                # Pillow warns of what it tolerates ("Truncated File Read"); decoding decides.
                warnings.simplefilter("ignore", UserWarning)
                rgb, valid, exif = _decode_plain(self.path)
        except Image.DecompressionBombError:
            raise InputError(
                f"{self.path}: image too large to decode safely (Pillow's decompression-bomb limit)"
            ) from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise InputError(
                f"{self.path}: not a readable image ({_reason(exc, self.path)})"
            ) from None
        self._pixels = rgb
        self._valid = valid
        self.height, self.width = valid.shape
        tags = {"DateTimeOriginal": str(exif.get(0x9003) or exif.get(0x0132) or "")}
        self.acquired = acquisition_date(self.path, tags)

    def windows(self, tile_size: int) -> list[Window]:
        return [Window(0, 0, self.width, self.height)]

    def read(self, window: Window, bands: Sequence[int]) -> RawTile:
        rows = slice(window.row, window.row + window.height)
        cols = slice(window.col, window.col + window.width)
        pixels = self._pixels[[b - 1 for b in bands], rows, cols]
        return RawTile(pixels=pixels, valid=self._valid[rows, cols])

    def overview(self, bands: Sequence[int], max_side: int) -> RawTile:
        return self.read(Window(0, 0, self.width, self.height), bands)

    def footprint(self, window: Window) -> Footprint | None:
        return None

    def close(self) -> None:
        pass

    def __enter__(self) -> PlainImageSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


ImageSource = GeoRasterSource | PlainImageSource


def open_source(path: Path) -> ImageSource:
    """Open ``path`` with the reader its suffix calls for; ``InputError`` if it can't be read."""
    path = Path(path)
    problem = file_name_problem(path)
    if problem:
        raise InputError(f"{path}: {problem}")
    try:
        info = path.stat()
    except OSError as exc:
        raise InputError(f"{path}: {_stat_reason(path, exc)}") from None
    if stat.S_ISDIR(info.st_mode):
        if not os.access(path, os.R_OK | os.X_OK):
            raise InputError(
                f"{path}: folder can't be read (permission denied); its images are left out"
            )
        raise InputError(f"{path}: is a directory, not an image file")
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{path}: not a regular file (a named pipe, socket or device)")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: permission denied")
    if info.st_size == 0:
        raise InputError(f"{path}: empty file (0 bytes)")
    if path.suffix.lower() in PLAIN_SUFFIXES:
        return PlainImageSource(path)
    return GeoRasterSource(path)


def file_name_problem(path: Path) -> str | None:
    """Why a path can't be used as a file's name in the database, or None if it can.

    The database stores paths as SQLite TEXT, which is UTF-8; a name made of other bytes
    (decoded by Python with surrogate escapes) can't be stored, nor opened by GDAL.
    """
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8; rename it"
    return None


def _stat_reason(path: Path, exc: OSError) -> str:
    """Why ``stat`` failed, in words: broken link, link loop, missing, no permission."""
    if exc.errno == errno.ELOOP:
        return "symbolic link loop"
    if exc.errno == errno.ENOENT and path.is_symlink():
        try:
            return f"broken symbolic link (to {os.readlink(path)}, which does not exist)"
        except OSError:
            return "broken symbolic link"
    if exc.errno == errno.ENOENT:
        return "no such file"
    if exc.errno == errno.EACCES:
        return "permission denied"
    return exc.strerror or type(exc).__name__


def _decode_plain(path: Path) -> tuple[np.ndarray, np.ndarray, Image.Exif]:
    """RGB pixels, validity and EXIF of a picture, EXIF orientation applied."""
    with Image.open(path) as image:
        exif = image.getexif()
        image.draft("RGB", (PLAIN_MAX_SIDE, PLAIN_MAX_SIDE))
        rgb, valid = _to_rgb(ImageOps.exif_transpose(image))
    return rgb, valid, exif


def _to_rgb(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """(3, h, w) uint8 RGB and (h, w) validity from any Pillow mode; shrunk to PLAIN_MAX_SIDE."""
    if max(image.size) > PLAIN_MAX_SIDE:
        image = image.copy()
        image.thumbnail((PLAIN_MAX_SIDE, PLAIN_MAX_SIDE), Image.Resampling.LANCZOS)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grayscale
        values = np.asarray(image, dtype=np.float64)
        high = values.max() if values.size and values.max() > 255 else 255.0
        image = Image.fromarray(np.clip(values * 255.0 / high, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    has_alpha = image.mode in ("RGBA", "LA", "PA")
    valid_alpha = np.asarray(image.getchannel("A")) > 0 if has_alpha else None
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1).copy()
    valid = valid_alpha if valid_alpha is not None else np.ones(rgb.shape[1:], dtype=bool)
    return rgb, valid


def _masked_to_tile(data: np.ma.MaskedArray) -> RawTile:
    """A RawTile from rasterio's masked read: invalid where any band is masked or not finite."""
    pixels = np.asarray(data.data)
    invalid = np.ma.getmaskarray(data).any(axis=0)
    if pixels.dtype.kind == "f":
        invalid |= ~np.isfinite(pixels).all(axis=0)
    return RawTile(pixels=pixels, valid=~invalid)


def _crs_label(crs: rasterio.crs.CRS) -> str:
    epsg = crs.to_epsg(confidence_threshold=70)
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


def _reason(exc: BaseException, path: Path | None = None) -> str:
    """The first line of an exception's message, without the path repeated.

    rasterio's read errors say only "See previous exception for details": GDAL's own message
    (e.g. "got 4284 bytes, expected 8100") is the last in the exception's chain.
    """
    if "previous exception" in str(exc):
        while exc.__cause__ or exc.__context__:
            exc = exc.__cause__ or exc.__context__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if path is not None:
        for shown in (f"'{path}' ", f"{path}: ", f"{path.name}, ", str(path)):
            text = text.replace(shown, "")
    text = text.strip() or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


__all__ = [
    "Footprint",
    "GeoRasterSource",
    "ImageSource",
    "PlainImageSource",
    "RawTile",
    "Window",
    "acquisition_date",
    "file_name_problem",
    "find_images",
    "open_source",
    "tile_windows",
    "window_ring",
]
