"""Products: satellite scenes delivered as one file per band, read as one multi-band scene.

Users download Landsat and Sentinel-2 the way the agencies ship them: a folder (or zip) of
single-band files at different resolutions, a metadata file naming them, and a quality band.
A ``Product`` says which files hold which bands, which band is a cloud/QA mask, which bands
make the RGB composite, and when the scene was taken; ``scene_vrt`` stacks its bands on one
grid (the finest band's; coarser bands resampled bilinearly, the mask by nearest neighbour) as
an in-memory GDAL VRT that rasterio opens like any raster.

Recognised, in this order, in a folder:
- Landsat Collection 1 and 2 (``*MTL.txt`` / ``*MTL.json``): the bands the MTL names (not the
  15 m panchromatic band, which would quadruple every other band's pixels), BQA or QA_PIXEL as
  the mask, RGB B4,B3,B2 (Landsat 8/9) or B3,B2,B1 (Landsat 4-7), DATE_ACQUIRED;
- Sentinel-2 L1C/L2A SAFE (a ``.SAFE`` folder or its ``.zip``), through GDAL's SENTINEL2
  driver: the spectral bands at their native resolutions, SCL (L2A) as the mask, RGB
  B04,B03,B02, the sensing start time;
- a STAC Item (``*.json``): assets with ``eo:bands`` (relative or absolute hrefs; a remote
  href is looked for by its file name beside the item), ``scl``/``qa_pixel`` assets as masks,
  RGB by common name, ``datetime``;
- single-band files of one scene on one grid named ``…B01``/``…B1``/``…band1`` (plus SCL, BQA
  or QA_PIXEL as a mask), grouped by the rest of their names.

A folder that holds one product and no other image is that product (its path is the folder's);
otherwise each product is named by its metadata file, or by a pattern of its band files
(``folder/LC08_…_B*.TIF``). A product's identity for incremental ingest is its member files'
sizes and modification times.
"""

from __future__ import annotations

import json
import os
import re
import warnings
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import unquote, urlparse
from xml.sax.saxutils import escape, quoteattr

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from geosearch.dates import first_date
from geosearch.errors import InputError
from geosearch.formats import GEO_SUFFIXES, is_image_name

# Documented fill value of Landsat and Sentinel-2 bands whose files carry no nodata tag.
PRODUCT_NODATA = 0.0
# STAC items are small; a larger .json beside images is something else (GeoJSON...).
MAX_ITEM_BYTES = 4 * 1024 * 1024

# Quality bands: which pixels are fill or cloud, per the products' documentation.
#   landsat-bqa (Collection 1 BQA, USGS Landsat QA tools): bit 0 designated fill, bit 4 cloud,
#     bits 7-8 cloud shadow confidence (3 = high), bits 11-12 cirrus confidence (3 = high).
#   landsat-qa-pixel (Collection 2 QA_PIXEL): bit 0 fill, 1 dilated cloud, 2 cirrus (high
#     confidence; unused before Landsat 8), 3 cloud, 4 cloud shadow.
#   sentinel2-scl (L2A scene classification): 0 no data, 1 saturated or defective, 3 cloud
#     shadows, 8 cloud medium probability, 9 cloud high probability, 10 thin cirrus.
_SCL_MASKED = (0, 1, 3, 8, 9, 10)

_MTL_NAME = re.compile(r"(?:^|_)MTL\.(?:txt|json)$", re.IGNORECASE)
_SAFE_ZIP_NAME = re.compile(r"^S2[A-D]_MSIL(?:1C|2A)_.*\.zip$", re.IGNORECASE)
_SAFE_METADATA = ("MTD_MSIL2A.xml", "MTD_MSIL1C.xml")
# A band file: a prefix and separator, a band token (B01, B1, B8A, band1) or a quality band,
# an optional resolution (_10m). rgb1.tif is no band file: the token must start the name or
# follow _ . or -.
_BAND_FILE = re.compile(
    r"^(?:(?P<prefix>.*?)(?P<sep>[_.-]))?(?P<token>B\d{1,2}A?|BAND\d{1,2}|SCL|BQA|QA_PIXEL)"
    r"(?:_\d{2}m)?$",
    re.IGNORECASE,
)
_MASK_TOKENS = {"SCL": "sentinel2-scl", "BQA": "landsat-bqa", "QA_PIXEL": "landsat-qa-pixel"}
# Files that come with a scene but are no band of it (not ingested on their own either).
_AUXILIARY_TOKENS = (
    "TCI", "PVI", "AOT", "WVP", "CLD", "SNW", "QA_RADSAT", "SR_QA_AEROSOL", "QA_AEROSOL",
    "ST_QA", "ST_TRAD", "ST_URAD", "ST_DRAD", "ST_ATRAN", "ST_EMIS", "ST_EMSD", "ST_CDIST",
    "SAA", "SZA", "VAA", "VZA", "SR_ATMOS_OPACITY", "SR_CLOUD_QA", "ANG",
)  # fmt: skip
_GDAL_TYPES = {
    "uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
    "int32": "Int32", "float32": "Float32", "float64": "Float64",
}  # fmt: skip


@dataclass(frozen=True)
class BandRef:
    """One band of a product: its name and where GDAL reads it (a file or subdataset)."""

    name: str
    dataset: str
    band: int = 1


@dataclass(frozen=True)
class Product:
    """A scene delivered as several files, read as one multi-band raster (see module doc)."""

    path: str  # what the database calls it: a folder, MTL, STAC item, SAFE, or band pattern
    kind: str  # e.g. "Landsat 8 Collection 1 L1TP"
    bands: tuple[BandRef, ...]
    members: tuple[str, ...]  # files read: their sizes and mtimes are the product's identity
    claimed: tuple[str, ...] = ()  # every file of the product, read or not
    mask: BandRef | None = None
    mask_rule: str | None = None
    rgb: tuple[str, str, str] | None = None
    acquired: str | None = None
    default_nodata: float | None = PRODUCT_NODATA

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(band.name for band in self.bands)

    def describe(self) -> str:
        """One line for users: what the scene is and how it will be read."""
        mask = f"cloud mask from {self.mask.name}" if self.mask else "no cloud mask"
        when = f", acquired {self.acquired}" if self.acquired else ""
        return f"{self.kind}: {len(self.bands)} bands ({','.join(self.names)}), {mask}{when}"


@dataclass(frozen=True)
class _Grid:
    """What a band's dataset says about its pixels and where they lie."""

    width: int
    height: int
    count: int
    transform: rasterio.Affine
    crs: rasterio.crs.CRS | None
    dtype: str
    nodata: float | None


# -- finding products ----------------------------------------------------------------------


def is_safe_folder(path: Path) -> bool:
    """A Sentinel-2 SAFE folder: named *.SAFE or holding its MTD_MSIL1C/2A.xml."""
    try:
        return path.is_dir() and (
            path.suffix.upper() == ".SAFE"
            or any((path / name).is_file() for name in _SAFE_METADATA)
        )
    except OSError:  # a folder we may not enter: reported when read
        return False


def is_safe_zip(path: Path) -> bool:
    """A zipped Sentinel-2 SAFE product (named S2?_MSIL1C/2A_…zip, with its metadata)."""
    if not (_SAFE_ZIP_NAME.match(path.name) and path.is_file()):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith(_SAFE_METADATA) for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


@dataclass
class FolderScan:
    """A folder's products, the file names they claim, and metadata files that name a scene
    which can't be read (reported when read, like any unreadable image)."""

    products: list[Product] = field(default_factory=list)
    claimed: set[str] = field(default_factory=set)
    unreadable: list[str] = field(default_factory=list)

    def take(self, product: Product, folder: Path) -> None:
        self.products.append(product)
        self.claimed.update(Path(p).name for p in product.claimed if Path(p).parent == folder)


def folder_products(folder: Path, names: Sequence[str] | None = None) -> FolderScan:
    """The products among a folder's files (not its subfolders) and the file names they claim.

    ``names`` lists the folder's files (read from disk when None). A product that is the
    folder's only image content takes the folder's path.
    """
    folder = Path(os.path.abspath(folder))
    if names is None:
        try:
            names = sorted(entry.name for entry in os.scandir(folder) if entry.is_file())
        except OSError:
            return FolderScan()
    scan = FolderScan()
    seen_ids: set[str] = set()
    for name in names:
        if _MTL_NAME.search(name):
            try:
                product, scene_id = landsat_product(folder / name)
            except InputError:
                scan.unreadable.append(str(folder / name))
                continue
            if scene_id in seen_ids:  # MTL.txt and MTL.json of one scene
                scan.claimed.add(name)
                continue
            seen_ids.add(scene_id)
            scan.take(product, folder)
    for name in names:
        if name in scan.claimed:
            continue
        if name.lower().endswith(".json") and (item := _stac_item(folder / name)) is not None:
            try:
                product = stac_product(folder / name, item)
            except InputError:
                scan.unreadable.append(str(folder / name))
                continue
            if {Path(m).name for m in product.members[1:]} <= scan.claimed:
                scan.claimed.add(name)  # e.g. a Landsat _stac.json beside its MTL: one scene
                continue
            scan.take(product, folder)
        elif _SAFE_ZIP_NAME.match(name) and is_safe_zip(folder / name):
            scan.products.append(_named_safe_zip(folder / name))
            scan.claimed.add(name)
    for product in band_file_products(folder, [n for n in names if n not in scan.claimed]):
        scan.take(product, folder)
    others = [name for name in names if name not in scan.claimed and is_image_name(name)]
    alone = len(scan.products) == 1 and not others and not scan.unreadable
    if alone and scan.products[0].bands:  # (not a SAFE zip: it keeps its name)
        scan.products[0] = replace(scan.products[0], path=os.path.abspath(folder))
    return scan


def _named_safe_zip(path: Path) -> Product:
    """A SAFE zip found by a folder walk: named only (it is read when ingested), and always
    called by its own name."""
    return Product(path=str(path), kind="Sentinel-2 SAFE", bands=(), members=(str(path),),
                   claimed=(str(path),))  # fmt: skip


def product_at(path: Path) -> Product | None:
    """The product ``path`` names — a product folder, an MTL, a STAC item, a SAFE folder or
    zip, or a band-file pattern — or None if it names none (an ordinary file or folder).

    ``InputError`` for a folder holding several products (which one is meant?) and for a
    product whose files can't be read; None for a path that can't even be looked at (its
    reader says why).
    """
    try:
        return _product_at(Path(os.path.abspath(path)))
    except InputError:
        raise
    except OSError:  # permission denied on the way, a link loop...
        return None


def _product_at(path: Path) -> Product | None:
    if is_safe_folder(path) or is_safe_zip(path):
        return safe_product(path)
    if path.is_dir():
        products = folder_products(path).products
        if len(products) == 1 and products[0].path == str(path):
            return products[0]
        if products:
            raise InputError(
                f"{path}: a folder of {len(products)} scene(s) and other images; give one of: "
                + ", ".join(Path(p.path).name for p in products[:5])
            )
        return None
    metadata = path.is_file() and bool(_MTL_NAME.search(path.name) or path.suffix == ".json")
    if not (metadata or "*" in path.name):
        return None
    scan = folder_products(path.parent)
    for product in scan.products:
        if product.path == str(path) or (metadata and str(path) in product.claimed):
            return product
    if str(path) in scan.unreadable:  # read it again, for its error
        landsat_product(path) if _MTL_NAME.search(path.name) else stac_product(path)
    return None


def canonical_path(path: Path | str) -> str:
    """The path the database stores for ``path``: the product it names, else itself."""
    try:
        product = product_at(Path(path))
    except InputError:
        product = None
    return product.path if product is not None else os.path.abspath(os.fspath(path))


# -- Landsat ----------------------------------------------------------------------------


def read_mtl(path: Path) -> dict[str, str]:
    """An MTL file (text ``KEY = VALUE`` groups, or JSON) as a flat dict, first value of a key
    winning (Collection 2 repeats some keys in its Level-1 record)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise InputError(f"{path}: can't be read ({exc.strerror})") from None
    values: dict[str, str] = {}
    if path.suffix.lower() == ".json":
        try:
            _flatten(json.loads(text), values)
        except ValueError:
            raise InputError(f"{path}: not a Landsat MTL (invalid JSON)") from None
        return values
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        key = key.strip()
        if sep and key not in ("GROUP", "END_GROUP"):
            values.setdefault(key, value.strip().strip('"'))
    return values


def _flatten(node: object, into: dict[str, str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, dict | list):
                _flatten(value, into)
            else:
                into.setdefault(str(key), str(value))
    elif isinstance(node, list):
        for value in node:
            _flatten(value, into)


def landsat_product(mtl: Path) -> tuple[Product, str]:
    """The scene an MTL file describes, and its product id."""
    meta = read_mtl(mtl)
    scene_id = meta.get("LANDSAT_PRODUCT_ID") or meta.get("LANDSAT_SCENE_ID") or mtl.stem
    spacecraft = meta.get("SPACECRAFT_ID", "")
    number = int(re.sub(r"\D", "", spacecraft) or 0)
    folder = mtl.parent
    listing = _listing(folder)
    bands: list[BandRef] = []
    claimed = [str(mtl)]
    mask = mask_rule = None
    for key, value in meta.items():
        if not key.startswith(("FILE_NAME_", "METADATA_FILE_NAME", "ANGLE_COEFFICIENT")):
            continue
        found = _find_member(folder, listing, value, scene_id)
        if found is None:
            continue
        claimed.append(found)
        band = re.fullmatch(r"FILE_NAME_BAND_(?:ST_B)?(\d+)(_VCID_\d)?", key)
        if key == "FILE_NAME_BAND_QUALITY":  # Collection 1
            mask, mask_rule = BandRef("BQA", found), "landsat-bqa"
        elif key == "FILE_NAME_QUALITY_L1_PIXEL":  # Collection 2
            mask, mask_rule = BandRef("QA_PIXEL", found), "landsat-qa-pixel"
        elif band and not (band.group(1) == "8" and number >= 7):  # panchromatic: left out
            bands.append(BandRef(f"B{band.group(1)}{band.group(2) or ''}", found))
    if not bands:
        raise InputError(f"{mtl}: none of the band files this MTL names is in {folder}")
    rgb = ("B4", "B3", "B2") if number >= 8 else ("B3", "B2", "B1")
    names = {band.name for band in bands}
    level = meta.get("PROCESSING_LEVEL") or meta.get("DATA_TYPE") or ""
    collection = int(meta.get("COLLECTION_NUMBER", "1") or 1)
    members = (str(mtl), *(b.dataset for b in bands), *([mask.dataset] if mask else []))
    product = Product(
        path=str(mtl),
        kind=f"Landsat {number} Collection {collection} {level}".strip(),
        bands=tuple(bands),
        members=members,
        claimed=tuple(dict.fromkeys(claimed)),
        mask=mask,
        mask_rule=mask_rule,
        rgb=rgb if set(rgb) <= names and "MSS" not in meta.get("SENSOR_ID", "") else None,
        acquired=first_date([meta.get("DATE_ACQUIRED"), meta.get("ACQUISITION_DATE")]),
    )
    return product, scene_id


def _listing(folder: Path) -> dict[str, str]:
    """A folder's file names by lower-case name."""
    try:
        return {entry.name.lower(): entry.name for entry in os.scandir(folder) if entry.is_file()}
    except OSError:
        return {}


def _find_member(folder: Path, listing: dict[str, str], name: str, scene_id: str) -> str | None:
    """A file an MTL names, in its folder: by its name, or by the part after the product id
    (downloads are often renamed ``B4.TIF``), ignoring case."""
    candidates = [name]
    if scene_id and name.upper().startswith(scene_id.upper()):
        candidates.append(name[len(scene_id) :].lstrip("_"))
    for candidate in candidates:
        found = listing.get(candidate.lower())
        if found:
            return str(folder / found)
    return None


# -- STAC ----------------------------------------------------------------------------------


def _stac_item(path: Path) -> dict | None:
    """The STAC Item a .json file holds, or None if it holds something else."""
    try:
        if path.stat().st_size > MAX_ITEM_BYTES:
            return None
        item = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(item, dict) and item.get("type") == "Feature" and "stac_version" in item:
        return item if isinstance(item.get("assets"), dict) else None
    return None


def stac_product(path: Path, item: dict | None = None) -> Product:
    """The scene a local STAC Item describes: its data assets that are on disk."""
    item = item if item is not None else _stac_item(path)
    if item is None:
        raise InputError(f"{path}: not a STAC Item (no type Feature, stac_version and assets)")
    bands: list[tuple[float | None, BandRef]] = []
    claimed = [str(path)]
    mask = mask_rule = None
    missing: list[str] = []
    names: set[str] = set()
    common: dict[str, str] = {}
    for key, asset in item["assets"].items():
        href = str(asset.get("href", ""))
        local = _local_asset(path.parent, href)
        roles = set(asset.get("roles") or [])
        rule = {"scl": "sentinel2-scl", "qa_pixel": "landsat-qa-pixel"}.get(key.lower())
        if local is None:
            if asset.get("eo:bands") and "visual" not in roles and href:
                missing.append(href)
            continue
        claimed.append(local)
        if rule and mask is None:
            mask, mask_rule = BandRef(key.upper(), local), rule
            continue
        if "visual" in roles or "thumbnail" in roles or "overview" in roles:
            continue
        for number, band in enumerate(asset.get("eo:bands") or [], start=1):
            name = str(band.get("name") or band.get("common_name") or f"{key}{number}")
            if name in names:
                continue
            names.add(name)
            if band.get("common_name"):
                common.setdefault(str(band["common_name"]), name)
            bands.append((band.get("center_wavelength"), BandRef(name, local, number)))
    if not bands:
        first = f" (first: {missing[0]})" if missing else ""
        raise InputError(
            f"{path}: none of its data assets (with eo:bands) is on disk{first}; download them "
            "beside the item"
        )
    if all(wavelength is not None for wavelength, _ in bands):
        bands.sort(key=lambda pair: float(pair[0]))
    properties = item.get("properties") or {}
    rgb = tuple(common.get(name) for name in ("red", "green", "blue"))
    refs = tuple(ref for _, ref in bands)
    members = (
        str(path),
        *dict.fromkeys(r.dataset for r in refs),
        *([mask.dataset] if mask else []),
    )
    platform = str(properties.get("platform") or properties.get("constellation") or "").strip()
    return Product(
        path=str(path),
        kind=f"STAC item {item.get('id', path.stem)}" + (f" ({platform})" if platform else ""),
        bands=refs,
        members=tuple(dict.fromkeys(members)),
        claimed=tuple(dict.fromkeys(claimed)),
        mask=mask,
        mask_rule=mask_rule,
        rgb=rgb if all(rgb) else None,  # type: ignore[arg-type]
        acquired=first_date([properties.get("datetime"), properties.get("start_datetime")]),
        default_nodata=None,
    )


def _local_asset(folder: Path, href: str) -> str | None:
    """Where an asset's file is on disk: its relative or absolute path, or (for a remote
    href) a file of the same name beside the item; None if it isn't here."""
    if not href:
        return None
    parsed = urlparse(href)
    if parsed.scheme in ("", "file"):
        candidate = Path(unquote(parsed.path) if parsed.scheme == "file" else href)
        candidate = candidate if candidate.is_absolute() else folder / candidate
    else:
        candidate = folder / Path(unquote(parsed.path)).name
    return os.path.abspath(candidate) if candidate.is_file() else None


# -- Sentinel-2 SAFE -------------------------------------------------------------------------


def safe_product(path: Path) -> Product:
    """The scene of a Sentinel-2 L1C/L2A SAFE folder or zip, read with GDAL's SENTINEL2 driver:
    each spectral band at its native resolution, SCL (L2A) as the mask."""
    path = Path(os.path.abspath(path))
    opened = path
    if path.is_dir():
        metadata = [path / name for name in _SAFE_METADATA if (path / name).is_file()]
        if not metadata:
            raise InputError(f"{path}: a .SAFE folder without MTD_MSIL1C.xml or MTD_MSIL2A.xml")
        opened = metadata[0]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(opened) as dataset:
                tags = dataset.tags()
                subdatasets = dataset.subdatasets
    except (RasterioError, OSError) as exc:
        raise InputError(f"{path}: not a readable Sentinel-2 product ({exc})") from None
    resolutions = [s for s in subdatasets if re.search(r":(10|20|60)m:", s)]
    if not resolutions:
        raise InputError(f"{path}: GDAL's SENTINEL2 driver found no 10/20/60 m bands in it")
    zone = resolutions[0].rsplit(":", 1)[-1]
    bands: dict[str, BandRef] = {}
    mask = None
    members: list[str] = [str(path)] if path.is_file() else [str(opened)]
    for name in [s for s in resolutions if s.endswith(f":{zone}")]:
        with rasterio.open(name) as subdataset:
            if path.is_dir():
                members += [os.path.abspath(f) for f in subdataset.files]
            for index in range(1, subdataset.count + 1):
                label = subdataset.tags(index).get("BANDNAME", "")
                spectral = re.fullmatch(r"B(\d{1,2})(A?)", label)
                if spectral:
                    number, narrow = int(spectral.group(1)), spectral.group(2)
                    esa = f"B{number}A" if narrow else f"B{number:02d}"  # ESA's names: B8A
                    bands.setdefault(esa, BandRef(esa, name, index))
                elif label == "SCL" and mask is None:
                    mask = BandRef("SCL", name, index)
    order = sorted(bands, key=_band_order)
    level = tags.get("PROCESSING_LEVEL", "").replace("Level-", "L")
    spacecraft = tags.get("DATATAKE_1_SPACECRAFT_NAME", "Sentinel-2")
    names = set(order)
    return Product(
        path=str(path),
        kind=f"{spacecraft} {level}".strip(),
        bands=tuple(bands[b] for b in order),
        members=tuple(dict.fromkeys(members)),
        claimed=(str(path),),
        mask=mask,
        mask_rule="sentinel2-scl" if mask else None,
        rgb=("B04", "B03", "B02") if {"B04", "B03", "B02"} <= names else None,
        acquired=first_date(
            [tags.get("DATATAKE_1_DATATAKE_SENSING_START"), tags.get("PRODUCT_START_TIME")]
        ),
    )


# -- band files -------------------------------------------------------------------------------


def band_file_products(folder: Path, names: Iterable[str]) -> list[Product]:
    """Groups of single-band files of one scene on one grid (B01.tif, LC08_…_B4.TIF, band1.tif),
    grouped by the rest of their names; a group needs two data bands."""
    groups: dict[tuple[str, str, str], list[tuple[str, str]]] = {}
    auxiliary: dict[tuple[str, str], list[str]] = {}
    for name in names:
        stem, suffix = os.path.splitext(name)
        if suffix.lower() not in GEO_SUFFIXES:
            continue
        match = _BAND_FILE.match(stem)
        if match:
            key = ((match["prefix"] or "").lower(), match["sep"] or "", suffix.lower())
            groups.setdefault(key, []).append((match["token"].upper(), name))
            continue
        for token in _AUXILIARY_TOKENS:
            if stem.upper().endswith(token):
                prefix = stem[: len(stem) - len(token)].rstrip("_.-").lower()
                auxiliary.setdefault((prefix, suffix.lower()), []).append(name)
                break
    products = []
    for (prefix, _, suffix), files in groups.items():
        data = [(token, name) for token, name in files if token not in _MASK_TOKENS]
        masks = [(token, name) for token, name in files if token in _MASK_TOKENS]
        if len(data) < 2 or not _one_grid([folder / name for _, name in data]):
            continue
        data.sort(key=lambda pair: _band_order(pair[0]))
        stem, suffix_as_written = os.path.splitext(data[0][1])
        first = _BAND_FILE.match(stem)
        letters = re.match(r"[A-Za-z]+", first["token"]).group()  # B, b, band
        pattern = f"{first['prefix'] or ''}{first['sep'] or ''}{letters}*{suffix_as_written}"
        refs = tuple(BandRef(_band_name(token), str(folder / name)) for token, name in data)
        mask = BandRef(masks[0][0], str(folder / masks[0][1])) if masks else None
        names_here = [name for _, name in files] + auxiliary.get((prefix, suffix), [])
        rgb_names = _scene_rgb(prefix, [ref.name for ref in refs])
        products.append(
            Product(
                path=str(folder / pattern),
                kind="band files",
                bands=refs,
                members=tuple(ref.dataset for ref in refs) + ((mask.dataset,) if mask else ()),
                claimed=tuple(str(folder / n) for n in names_here),
                mask=mask,
                mask_rule=_MASK_TOKENS[mask.name] if mask else None,
                rgb=rgb_names,
                default_nodata=None,
            )
        )
    return products


def _band_name(token: str) -> str:
    """B04, B4, B8A as written; band1 → band1."""
    return token.lower() if token.startswith("BAND") else token


def _band_order(token: str) -> tuple[int, bool]:
    number = int(re.sub(r"\D", "", token))
    return number, token.endswith("A")


def _scene_rgb(prefix: str, names: Sequence[str]) -> tuple[str, str, str] | None:
    """RGB of Landsat 4-7 band files named by their product id (B3,B2,B1); others: None (the
    band manifest's defaults then pick B04,B03,B02 or B4,B3,B2 by name)."""
    if re.match(r"l[te]0[4-7]_", prefix) and {"B3", "B2", "B1"} <= set(names):
        return ("B3", "B2", "B1")
    return None


def _one_grid(paths: Sequence[Path]) -> bool:
    """Whether rasters are single-band and share a CRS and an extent (not a resolution)."""
    try:
        grids = [_grid(str(path)) for path in paths]
    except InputError:
        return False
    first = grids[0]
    coarsest = max(abs(g.transform.a) for g in grids)
    for grid in grids:
        if grid.count != 1 or grid.crs != first.crs or grid.transform.b or grid.transform.d:
            return False
        extent = np.array(_extent(grid))
        if np.abs(extent - np.array(_extent(first))).max() > coarsest:
            return False
    return True


def _extent(grid: _Grid) -> tuple[float, float, float, float]:
    t = grid.transform
    return t.c, t.f, t.c + t.a * grid.width, t.f + t.e * grid.height


# -- reading: one VRT on the finest grid ----------------------------------------------------


def _grid(dataset: str) -> _Grid:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(dataset) as opened:
                return _Grid(
                    opened.width, opened.height, opened.count, opened.transform, opened.crs,
                    str(np.dtype(opened.dtypes[0])), opened.nodata,
                )  # fmt: skip
    except (RasterioError, OSError) as exc:
        raise InputError(f"{dataset}: not a readable raster ({exc})") from None


def scene_vrt(product: Product) -> tuple[str, str | None]:
    """VRT XML of the product's data bands on the finest band's grid, and of its mask band on
    the same grid (None without a mask). ``InputError`` if its bands don't share a CRS."""
    grids = {ref.dataset: _grid(ref.dataset) for ref in (*product.bands, *_mask_list(product))}
    finest = min((grids[ref.dataset] for ref in product.bands), key=lambda g: abs(g.transform.a))
    for ref in (*product.bands, *_mask_list(product)):
        grid = grids[ref.dataset]
        if grid.crs != finest.crs or grid.transform.b or grid.transform.d:
            raise InputError(
                f"{product.path}: band {ref.name} ({Path(ref.dataset).name}) is not on the same "
                "CRS as the others, or its grid is rotated"
            )
    dtype = np.result_type(*(grids[ref.dataset].dtype for ref in product.bands)).name
    data = _vrt(product, product.bands, grids, finest, dtype, "bilinear", with_nodata=True)
    mask = None
    if product.mask is not None:
        mask_type = grids[product.mask.dataset].dtype
        mask = _vrt(product, (product.mask,), grids, finest, mask_type, "nearest", False)
    return data, mask


def _mask_list(product: Product) -> list[BandRef]:
    return [product.mask] if product.mask is not None else []


def _vrt(
    product: Product,
    refs: Sequence[BandRef],
    grids: dict[str, _Grid],
    target: _Grid,
    dtype: str,
    resampling: str,
    with_nodata: bool,
) -> str:
    t = target.transform
    crs = escape(target.crs.to_wkt()) if target.crs else ""
    lines = [
        f'<VRTDataset rasterXSize="{target.width}" rasterYSize="{target.height}">',
        f"<SRS>{crs}</SRS>" if crs else "",
        f"<GeoTransform>{t.c!r}, {t.a!r}, {t.b!r}, {t.f!r}, {t.d!r}, {t.e!r}</GeoTransform>",
    ]
    gdal_type = _GDAL_TYPES.get(dtype, "Float64")
    for number, ref in enumerate(refs, start=1):
        grid = grids[ref.dataset]
        nodata = grid.nodata if grid.nodata is not None else product.default_nodata
        x_off = (grid.transform.c - t.c) / t.a
        y_off = (grid.transform.f - t.f) / t.e
        x_size = grid.width * grid.transform.a / t.a
        y_size = grid.height * grid.transform.e / t.e
        nodata_tags = ("", "")
        if with_nodata and nodata is not None:
            nodata_tags = (f"<NoDataValue>{nodata!r}</NoDataValue>", f"<NODATA>{nodata!r}</NODATA>")
        lines += [
            f'<VRTRasterBand dataType="{gdal_type}" band="{number}">',
            f"<Description>{escape(ref.name)}</Description>",
            nodata_tags[0],
            f"<ComplexSource resampling={quoteattr(resampling)}>",
            f'<SourceFilename relativeToVRT="0">{escape(ref.dataset)}</SourceFilename>',
            f"<SourceBand>{ref.band}</SourceBand>",
            f'<SrcRect xOff="0" yOff="0" xSize="{grid.width}" ySize="{grid.height}"/>',
            f'<DstRect xOff="{x_off!r}" yOff="{y_off!r}" xSize="{x_size!r}" ySize="{y_size!r}"/>',
            nodata_tags[1],
            "</ComplexSource>",
            "</VRTRasterBand>",
        ]
    lines.append("</VRTDataset>")
    return "\n".join(line for line in lines if line)


def masked_pixels(rule: str, values: np.ndarray) -> np.ndarray:
    """True where a quality band marks a pixel as fill, cloud or cloud shadow (``MASK_RULES``)."""
    v = np.asarray(values).astype(np.uint32)
    if rule == "landsat-bqa":
        return ((v & 0b1_0001) != 0) | ((v >> 7 & 0b11) == 3) | ((v >> 11 & 0b11) == 3)
    if rule == "landsat-qa-pixel":
        return (v & 0b1_1111) != 0
    if rule == "sentinel2-scl":
        return np.isin(v, _SCL_MASKED)
    raise ValueError(f"unknown mask rule {rule!r}")


def member_identity(paths: Iterable[str]) -> tuple[int, int]:
    """(total bytes, latest mtime in ns) of files: a product's identity for incremental
    ingest. ``OSError`` if one is missing."""
    size = mtime = 0
    for member in paths:
        stat = os.stat(member)
        size += stat.st_size
        mtime = max(mtime, stat.st_mtime_ns)
    return size, mtime
