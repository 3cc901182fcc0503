"""Find image files and scenes, and read them as tiles.

Two readers share one interface: ``GeoRasterSource`` (GeoTIFF and anything else GDAL reads,
through rasterio, read window by window; also a product — a Landsat, Sentinel-2 or STAC scene
of one file per band — stacked as one multi-band raster, its cloud/QA band a mask: see
``products``) and ``PlainImageSource`` (JPEG/PNG through Pillow: one tile per image, no
geography). Both hand out ``RawTile`` objects (pixels + validity mask) that the rest of the
pipeline treats alike.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import stat
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from pyproj import CRS, Transformer
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import NodataShadowWarning, NotGeoreferencedWarning, RasterioError
from shapely.affinity import translate
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.geometry.base import BaseGeometry

from geosearch.dates import Acquired, acquisition_date
from geosearch.errors import InputError
from geosearch.formats import GEO_SUFFIXES, IMAGE_SUFFIXES, PLAIN_SUFFIXES, kind_of
from geosearch.pixels import RawTile, Window, tile_windows
from geosearch.products import (
    Product,
    canonical_path,
    folder_products,
    is_safe_folder,
    masked_pixels,
    member_identity,
    product_at,
    scene_vrt,
)

# Plain images are searched as whole pictures; larger ones are shrunk on read to this side.
PLAIN_MAX_SIDE = 1024
# Points per footprint edge when reprojecting, so curved edges stay close in lon/lat.
FOOTPRINT_EDGE_POINTS = 4

# A nodata value beside an alpha band: rasterio uses the nodata value, as we want; no warning.
warnings.filterwarnings("ignore", category=NodataShadowWarning)
# Set by ``gdal_messages`` so that worker processes show GDAL's messages alike.
VERBOSE_VARIABLE = "GEOSEARCH_VERBOSE"


@dataclass(frozen=True)
class Footprint:
    """Where a tile lies: WKT in the file's CRS and a lon/lat (EPSG:4326) geometry."""

    native_wkt: str
    wgs84: BaseGeometry


def gdal_messages(verbose: bool | None = None) -> None:
    """Show GDAL's warnings (which rasterio logs) and rasterio's Python warnings only when
    ``verbose``; None: as ``$GEOSEARCH_VERBOSE`` says (in worker processes, as their parent)."""
    if verbose is None:
        verbose = bool(os.environ.get(VERBOSE_VARIABLE))
    os.environ[VERBOSE_VARIABLE] = "1" if verbose else ""
    logging.getLogger("rasterio").setLevel(logging.WARNING if verbose else logging.ERROR)
    warnings.filterwarnings("default" if verbose else "ignore", module="rasterio")


def find_images(root: Path) -> Iterator[Path]:
    """Images and scenes under ``root`` (or ``root`` itself), recursively, in sorted order.

    A product (a Landsat or Sentinel-2 scene, a STAC item, band files of one scene) is yielded
    once, by the path that names it, and its files (wherever they are under ``root``) are not
    yielded on their own. Directories are not followed through symlinks, so a symlink loop
    cannot trap the walk; symlinked files are yielded and judged when read. A folder that can't
    be listed is yielded too, so that reading it reports why its images are missing.
    """
    root = Path(root)
    if not root.is_dir() or is_safe_folder(root):
        yield root
        return
    unlisted: list[OSError] = []
    found: list[Path] = []
    claimed: set[str] = set()  # files of the scenes found (a STAC item's assets may be afar)
    for folder, dirnames, filenames in os.walk(root, onerror=unlisted.append):
        dirnames.sort()
        while unlisted:
            found.append(Path(unlisted.pop(0).filename))
        here = Path(folder)
        units = [here / d for d in dirnames if is_safe_folder(here / d)]
        dirnames[:] = [d for d in dirnames if here / d not in units]
        scan = folder_products(here, sorted(filenames))
        claimed.update(path for product in scan.products for path in product.claimed)
        claimed.difference_update(product.path for product in scan.products)
        units += [Path(product.path) for product in scan.products]
        units += [Path(path) for path in scan.unreadable]
        units += [
            here / name
            for name in filenames
            if name not in scan.claimed and Path(name).suffix.lower() in IMAGE_SUFFIXES
        ]
        found += sorted(dict.fromkeys(units))
    found += [Path(error.filename) for error in unlisted]
    yield from (path for path in found if os.path.abspath(path) not in claimed)


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


def pixel_footprint(ring: np.ndarray, transform: rasterio.Affine, crs_wkt: str) -> Footprint | None:
    """The footprint of a closed ring of pixel (col, row) points under ``transform`` in
    ``crs_wkt``: native WKT and lon/lat geometry; None where it can't be projected."""
    t = transform
    px, py = ring[:, 0], ring[:, 1]
    xs, ys = t.a * px + t.b * py + t.c, t.d * px + t.e * py + t.f
    native = _valid(Polygon(np.column_stack([xs, ys])))
    try:
        lon, lat = _to_wgs84(crs_wkt).transform(np.asarray(xs), np.asarray(ys))
    except Exception:  # pyproj raises several types for points off the projection
        return None
    wgs84 = _lonlat_geometry(np.asarray(lon), np.asarray(lat))
    if wgs84 is None or wgs84.is_empty:
        return None
    return Footprint(native_wkt=native.wkt, wgs84=wgs84)


class GeoRasterSource:
    """A raster opened with rasterio; tiles are read window by window, never the whole scene.

    With a ``product``, the raster is the product's bands stacked on one grid (an in-memory
    VRT) and its quality band, read alongside, marks cloud and fill pixels invalid.
    """

    kind = "geo"

    def __init__(self, path: Path, product: Product | None = None) -> None:
        self.path = Path(path)
        self.product = product
        self._mask_dataset = None
        opened: Any = self.path
        mask_vrt = None
        if product is not None:
            opened, mask_vrt = scene_vrt(product)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", NotGeoreferencedWarning)
                self._dataset = rasterio.open(opened)
                if mask_vrt is not None:
                    self._mask_dataset = rasterio.open(mask_vrt)
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
        self.rgb_names = product.rgb if product is not None else None
        tags = {**ds.tags(), **ds.tags(ns="IMAGERY")}
        if "EXIF_DateTimeOriginal" in tags:  # GDAL's name for EXIF in JPEG/TIFF/WEBP
            tags["DateTimeOriginal"] = tags["EXIF_DateTimeOriginal"]
        dated = acquisition_date(self.path, tags, product.acquired if product else None)
        self.acquired, self.acquired_source = dated

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

    @property
    def transform(self) -> rasterio.Affine | None:
        """Pixel (col, row) to the CRS's coordinates; None without a CRS."""
        return self._dataset.transform if self.crs_wkt else None

    def windows(self, tile_size: int) -> list[Window]:
        return tile_windows(self.width, self.height, tile_size)

    def read(self, window: Window, bands: Sequence[int]) -> RawTile:
        """Read ``bands`` (1-based) of ``window`` with the dataset's own nodata/mask/alpha
        (and a product's cloud/QA mask)."""
        tile = self._read(window, bands)
        if self._mask_dataset is not None:
            quality = self._read_mask(
                f"at row {window.row}, col {window.col}", window=window.as_rasterio()
            )
            tile.valid &= ~masked_pixels(self.product.mask_rule, quality)
        return tile

    def _read_mask(self, where: str, **how: Any) -> np.ndarray:
        """The product's quality band (a window, or the whole decimated)."""
        try:
            return self._mask_dataset.read(1, resampling=Resampling.nearest, **how)
        except (RasterioError, OSError) as exc:
            raise InputError(
                f"{self.path}: quality band {self.product.mask.name} unreadable {where}; "
                f"the file may be truncated or damaged ({_reason(exc, self.path)})"
            ) from None

    def _read(self, window: Window, bands: Sequence[int]) -> RawTile:
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
        tile = _masked_to_tile(data)
        if self._mask_dataset is not None:
            quality = self._read_mask("", out_shape=shape[1:])
            tile.valid &= ~masked_pixels(self.product.mask_rule, quality)
        return tile

    def footprint(self, window: Window) -> Footprint | None:
        """The window's outline in the file's CRS and in lon/lat; None without a CRS."""
        if self.crs_wkt is None:
            return None
        ring = window_ring(window.width, window.height)
        ring += (window.col, window.row)
        return pixel_footprint(ring, self._dataset.transform, self.crs_wkt)

    def close(self) -> None:
        self._dataset.close()
        if self._mask_dataset is not None:
            self._mask_dataset.close()

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
    transform = None
    rgb_names = None
    product = None

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            with warnings.catch_warnings():
                # Pillow warns of what it tolerates ("Truncated File Read"); decoding decides.
                warnings.simplefilter("ignore", UserWarning)
                rgb, valid, tags = _decode_plain(self.path)
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
        self.acquired, self.acquired_source = acquisition_date(self.path, tags)

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
    """Open ``path`` with the reader it calls for (a product's folder, MTL, STAC item or SAFE
    is read as its scene); ``InputError`` if it can't be read."""
    path = Path(path)
    problem = file_name_problem(path)
    if problem:
        raise InputError(f"{path}: {problem}")
    product = product_at(path)
    if product is not None:
        return GeoRasterSource(Path(product.path), product)
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


def _product_or_none(path: str | os.PathLike[str]) -> Product | None:
    try:
        return product_at(Path(path))
    except InputError:
        return None  # reported when the product is read


def file_identity(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(size, mtime in ns) of a file; of a product, its member files' total size and latest
    mtime. Incremental ingest compares them with what was recorded. ``OSError`` if missing."""
    product = _product_or_none(path)
    if product is not None:
        return member_identity(product.members)
    info = os.stat(path)
    return info.st_size, info.st_mtime_ns


def identity_files(path: str | os.PathLike[str]) -> list[str]:
    """The files whose bytes make ``path``'s content: itself, or a product's members."""
    product = _product_or_none(path)
    return list(product.members) if product is not None else [os.fspath(path)]


def content_hash(path: str | os.PathLike[str]) -> str | None:
    """SHA-256 of a file's bytes (a scene's: its member files' in turn), or None if one can't
    be read (reported later)."""
    digest = hashlib.sha256()
    for member in identity_files(path):
        if not os.path.isfile(member):  # a FIFO would block; anything else is reported later
            return None
        try:
            _hash_file(digest, member)
        except OSError:
            return None
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of one file's bytes, in hex."""
    digest = hashlib.sha256()
    _hash_file(digest, path)
    return digest.hexdigest()


def _hash_file(digest: Any, path: str | os.PathLike[str]) -> None:
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)


def window_grid(path: str, tile_size: int) -> list[Window] | None:
    """A raster's (or scene's) tile windows from its header, or None for a plain image or
    something that can't be opened here (the reader says why, later)."""
    if kind_of(path) == "plain":
        return None
    try:
        info = os.stat(path)
    except OSError:
        info = None
    if info is None and "*" not in Path(path).name:
        return None
    if info is not None and not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
        return None  # a named pipe would block GDAL
    try:
        with open_source(Path(path)) as source:
            return source.windows(tile_size)
    except InputError:
        return None


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


def _decode_plain(path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """RGB pixels, validity and EXIF dates of a picture, EXIF orientation applied.

    DateTimeOriginal (when the picture was taken) is in the Exif IFD, not in IFD0, which holds
    DateTime (when the file was last written)."""
    with Image.open(path) as image:
        exif = image.getexif()
        original = exif.get_ifd(ExifTags.IFD.Exif).get(ExifTags.Base.DateTimeOriginal)
        tags = {"DateTimeOriginal": original, "DateTime": exif.get(ExifTags.Base.DateTime)}
        image.draft("RGB", (PLAIN_MAX_SIDE, PLAIN_MAX_SIDE))
        rgb, valid = _to_rgb(ImageOps.exif_transpose(image))
    return rgb, valid, {key: str(value) for key, value in tags.items() if value}


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
    "GEO_SUFFIXES",
    "IMAGE_SUFFIXES",
    "PLAIN_SUFFIXES",
    "Acquired",
    "Footprint",
    "GeoRasterSource",
    "ImageSource",
    "PlainImageSource",
    "canonical_path",
    "content_hash",
    "file_identity",
    "file_name_problem",
    "file_sha256",
    "find_images",
    "gdal_messages",
    "identity_files",
    "kind_of",
    "open_source",
    "pixel_footprint",
    "window_grid",
    "window_ring",
]
