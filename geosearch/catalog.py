"""A database opened for work: its store with the band manifest, fusion and settings it holds.

Settings that shape the vectors (tile size, nodata threshold, bands, extractors and their
weights) are written into the database when it is created and read back from it afterwards;
run-time settings (threads, batch sizes, where weights files lie) come from the caller and are
merged in here only (``open_catalog``; ``Catalog.for_workers`` for worker processes).

``with open_database(db, settings) as catalog:`` is how every command opens a database.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from geosearch.bands import BandManifest, QueryBands
from geosearch.config import FeatureSettings, Settings
from geosearch.embeddings import dequantization_for
from geosearch.errors import DatabaseError
from geosearch.features import (
    Extractor,
    Fusion,
    block_weights,
    build_extractors,
    prepare_batch,
    raw_features,
)
from geosearch.orientation import ALL_ORIENTATIONS, invariance_copies, turned
from geosearch.pixels import RawTile, Window
from geosearch.sources import ImageSource, file_identity, open_source
from geosearch.store import VECTOR_DTYPE, FileRecord, Store, TileRecord
from geosearch.version import __version__


@dataclass
class Catalog:
    """An initialised geosearch database and what it takes to compute vectors for it."""

    store: Store | None
    manifest: BandManifest
    fusion: Fusion
    tile_size: int
    max_nodata_fraction: float
    features: FeatureSettings
    _extractors: list[Extractor] | None = field(default=None, repr=False)
    keeps_raw_features: bool = True  # databases made before vectors.raw_features kept them
    # The creation sample's raw features, reused by the ingest that creates the database
    sample_features: SampleFeatures | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.name = self.store.path.name if self.store is not None else ""

    def __getstate__(self) -> dict:
        """Pickled for worker processes: without the open database and loaded models."""
        return {**self.__dict__, "store": None, "_extractors": None}

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    def for_workers(self, cnn_threads: int) -> Catalog:
        """A copy for worker processes or executors (pickled without the database; models are
        loaded there), the CNN on ``cnn_threads`` threads each."""
        features = self.features.model_copy(deep=True)
        features.cnn.threads = cnn_threads
        return replace(self, features=features, _extractors=None)

    def unchanged_file(self, path: str) -> FileRecord | None:
        """The database's record of a file it holds whole and that is unchanged on disk since
        (``FileRecord.same_identity``; a scene: its member files'); a file gone from disk
        counts as unchanged, the database still knows it. None otherwise."""
        record = self.store.file_record(path)
        if record is None or record.status != "done":
            return None
        try:
            size, mtime_ns = file_identity(path)
        except OSError:
            return record
        return record if record.same_identity(size, mtime_ns) else None

    @property
    def dim(self) -> int:
        """Dimension of the vectors searched (projected when the database projects them)."""
        return self.fusion.dim

    @property
    def raw_dim(self) -> int:
        return self.fusion.raw_dim

    def extractors(self) -> list[Extractor]:
        """The database's extractors, loaded on first use and checked against its versions."""
        if self._extractors is None:
            extractors = build_extractors(self.features, self.manifest)
            stored = [(b.name, b.version) for b in self.fusion.blocks]
            found = [(e.name, e.version) for e in extractors]
            if stored != found:
                raise DatabaseError(
                    f"{self.name} was made with extractors "
                    f"{', '.join(f'{n}[{v}]' for n, v in stored)}; this set-up has "
                    f"{', '.join(f'{n}[{v}]' for n, v in found)}: use the same model and "
                    "weights, or ingest into a new --db"
                )
            self._extractors = extractors
        return self._extractors

    def pad_to(self) -> int | None:
        return self.tile_size if self.manifest.kind == "geo" else None

    def compute(
        self,
        tiles: Sequence[RawTile],
        bands: QueryBands | None = None,
        known: Sequence[np.ndarray | None] = (),
    ) -> tuple[np.ndarray, np.ndarray]:
        """(fused vectors, raw features) of raw tiles: the one way a tile's vector is made.

        ``bands``: the tiles are a query's, read with this mapping onto the database's bands
        (see ``read_query``); features of bands it lacks are left out of the comparison.
        ``known``: per tile, its raw features if already computed (else None)."""
        manifest = bands.manifest if bands is not None else self.manifest
        todo = [i for i in range(len(tiles)) if not known or known[i] is None]
        if len(todo) == len(tiles):
            raw = raw_features(prepare_batch(tiles, manifest, self.pad_to()), self.extractors())
        else:
            raw = np.empty((len(tiles), self.raw_dim), dtype=np.float32)
            for i, features in enumerate(known):
                if features is not None:
                    raw[i] = features
            if todo:
                batch = prepare_batch([tiles[i] for i in todo], manifest, self.pad_to())
                raw[todo] = raw_features(batch, self.extractors())
        return self.fusion.fuse(raw, self.absent_features(bands)), raw

    def absent_features(self, bands: QueryBands | None) -> np.ndarray | None:
        """The features a query read with ``bands`` can't compute (None: it has them all)."""
        if bands is None:
            return None
        return self.fusion.absent_features(bands.missing, len(bands.read), self.manifest.rgb)

    def windows(self, source: ImageSource) -> list[Window]:
        return source.windows(self.tile_size)

    def read(
        self,
        path: str,
        windows: Sequence[Window] | None = None,
        select: Sequence[int] | None = None,
    ) -> tuple[list[TileRecord], list[RawTile], int]:
        """Read ``windows`` of a file (all by default): the records and pixels of the tiles worth
        indexing, and how many were too empty. ``InputError`` if the file can't be read."""
        with open_source(Path(path)) as source:
            bands = self.manifest.bands_for(source, select, self.name)
            return self._read_tiles(source, path, windows, bands)

    def read_query(
        self, path: str, windows: Sequence[Window] | None = None
    ) -> tuple[list[TileRecord], list[RawTile], QueryBands]:
        """Like ``read``, for a query file that may lack some of the database's bands (a PNG
        screenshot, an RGB chip of a 4-band database): its tiles carry every database band,
        zeros where it has none, and the mapping says which (``BandManifest.query_bands``)."""
        with open_source(Path(path)) as source:
            bands = self.manifest.query_bands(source, self.name)
            records, tiles, _ = self._read_tiles(source, path, windows, bands.read)
        return records, tiles, bands

    def _read_tiles(
        self,
        source: ImageSource,
        path: str,
        windows: Sequence[Window] | None,
        bands: Sequence[int | None],
    ) -> tuple[list[TileRecord], list[RawTile], int]:
        records, tiles, too_empty = [], [], 0
        present = [band for band in bands if band is not None]
        for window in self.windows(source) if windows is None else windows:
            tile = source.read(window, present)
            if len(present) < len(bands):
                tile = _with_missing_bands(tile, bands)
            if self.manifest.scaling == "none":  # embedding rasters: fill pixels are nodata
                tile = dequantization_for(self.features.embedding, self.manifest).masked(tile)
            if not tile.worth_indexing(self.max_nodata_fraction):
                too_empty += 1
                continue
            footprint = source.footprint(window)
            records.append(
                TileRecord(
                    id=None,
                    path=path,
                    window=window,
                    crs=source.crs_label,
                    footprint_native=footprint.native_wkt if footprint else None,
                    footprint=footprint.wgs84 if footprint else None,
                    acquired=source.acquired,
                    nodata_fraction=round(tile.nodata_fraction, 6),
                    acquired_source=source.acquired_source,
                )
            )
            tiles.append(tile)
        return records, tiles, too_empty

    def embed(
        self,
        path: str,
        windows: Sequence[Window] | None = None,
        select: Sequence[int] | None = None,
    ) -> EmbeddedTiles:
        """Read and embed the tiles of a file worth indexing (see ``read``).

        Used by ingest (in worker processes, a chunk of windows at a time) and by queries with
        files the database doesn't hold.
        """
        records, tiles, too_empty = self.read(path, windows, select)
        if not tiles:
            empty = np.zeros((0, self.dim), dtype=np.float32)
            return EmbeddedTiles(records, empty, empty, too_empty)
        known = ()
        if self.sample_features is not None:
            known = [
                self.sample_features.get(path, record.window, tile)
                for record, tile in zip(records, tiles, strict=True)
            ]
        vectors, raw = self.compute(tiles, known=known)
        return EmbeddedTiles(records, vectors, raw, too_empty)

    def compute_orientations(
        self, tiles: Sequence[RawTile], bands: QueryBands | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(8, len(tiles), dim) vectors and (8, len(tiles), raw_dim) raw features of the tiles
        under the eight dihedral orientations, computed as one batch."""
        turned_tiles = [turned(tile, o) for o in ALL_ORIENTATIONS for tile in tiles]
        vectors, raw = self.compute(turned_tiles, bands)
        shape = (len(ALL_ORIENTATIONS), len(tiles))
        return vectors.reshape(*shape, -1), raw.reshape(*shape, -1)

    def block_vectors(
        self, raw: np.ndarray, bands: QueryBands | None, block: str
    ) -> np.ndarray | None:
        """The vectors of raw features as one feature ``block`` alone sees them (in the space
        of the searched vectors), or None if the database has no such block."""
        if not self.fusion.has_block(block):
            return None
        return self.fusion.fuse(raw, self.absent_features(bands), only=block)


def _with_missing_bands(tile: RawTile, bands: Sequence[int | None]) -> RawTile:
    """A tile read from the present ``bands``, with zero rows where a band is missing."""
    pixels = np.zeros((len(bands), *tile.valid.shape), dtype=tile.pixels.dtype)
    rows = [i for i, band in enumerate(bands) if band is not None]
    pixels[rows] = tile.pixels
    return RawTile(pixels=pixels, valid=tile.valid)


@dataclass(frozen=True)
class SampleFeatures:
    """Raw features computed for the creation sample, by file and window, each with a digest
    of the pixels it was computed from: the ingest that creates a database reuses them for
    those tiles (a plain database's sample is up to 1,024 of its pictures) when it reads the
    same pixels there, rather than running the extractors on them a second time."""

    features: dict[tuple[str, Window], tuple[bytes, np.ndarray]]

    @classmethod
    def of(
        cls, origins: Sequence[tuple[str, Window]], tiles: Sequence[RawTile], raw: np.ndarray
    ) -> SampleFeatures:
        """``raw[i]`` computed from ``tiles[i]``, read at ``origins[i]`` (file, window)."""
        return cls({
            origin: (_pixels_digest(tile), features)
            for origin, tile, features in zip(origins, tiles, raw, strict=True)
        })  # fmt: skip

    def get(self, path: str, window: Window, tile: RawTile) -> np.ndarray | None:
        """The raw features of ``tile``, read at ``window`` of ``path``, if the sample holds
        them for exactly these pixels; None otherwise."""
        found = self.features.get((path, window))
        if found is None or found[0] != _pixels_digest(tile):
            return None
        return found[1]


def _pixels_digest(tile: RawTile) -> bytes:
    """A digest of a tile's pixels, valid mask, shape and dtype."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{tile.pixels.shape}{tile.pixels.dtype}".encode())
    digest.update(np.ascontiguousarray(tile.pixels).tobytes())
    digest.update(np.packbits(tile.valid).tobytes())
    return digest.digest()


@dataclass
class EmbeddedTiles:
    """Tiles of one file with their fused vectors and raw features, and how many of its tiles
    were left out for too much nodata (``too_empty``; the report's ``tiles_nodata``)."""

    records: list[TileRecord]
    vectors: np.ndarray
    raw: np.ndarray
    too_empty: int


def stored_settings(settings: Settings) -> dict:
    """The part of the settings a database keeps because its vectors depend on it."""
    return {
        "tile_size": settings.tile_size,
        "max_nodata_fraction": settings.max_nodata_fraction,
        "features": settings.features.model_dump(mode="json"),
        "vectors": settings.vectors.model_dump(mode="json"),
    }


def open_catalog(store: Store, runtime: Settings) -> Catalog | None:
    """The catalog of an initialised database, or None if nothing was ingested yet."""
    manifest = store.meta("manifest")
    if manifest is None:
        return None
    stored = store.meta("settings")
    features = FeatureSettings.model_validate(stored["features"])
    # Run-time knobs come from the caller's settings; the rest is the database's.
    cnn_runtime = runtime.features.cnn
    features.cnn.threads = cnn_runtime.threads
    features.cnn.batch_size = cnn_runtime.batch_size
    features.cnn.download = cnn_runtime.download
    if cnn_runtime.weights is not None:
        features.cnn.weights = cnn_runtime.weights
    return Catalog(
        store=store,
        manifest=BandManifest.from_dict(manifest),
        fusion=_stored_fusion(store.meta_text("fusion")),
        tile_size=stored["tile_size"],
        max_nodata_fraction=stored["max_nodata_fraction"],
        features=features,
        keeps_raw_features=stored.get("vectors", {}).get("raw_features", True),
    )


def creation_settings(settings: Settings, manifest: BandManifest) -> Settings:
    """The settings a new database of ``manifest``'s kind is made with: plain pictures leave
    out the layout block (``features.layout.plain_weight``)."""
    if manifest.kind == "plain":  # photos: content matters, where things lie in frame does not
        layout = settings.features.layout
        settings = settings.with_overrides({"features.layout.weight": layout.plain_weight})
    return settings


def sampling_catalog(settings: Settings, manifest: BandManifest) -> Catalog:
    """A catalog (no database) whose ``embed`` gives the raw features a new database of
    ``manifest`` will have, so that an engine's workers compute its creation sample's; the
    vectors it gives are not the database's (its fusion is not fitted yet)."""
    settings = creation_settings(settings, manifest)
    extractors = build_extractors(settings.features, manifest)
    unfitted = np.zeros((1, sum(e.dim for e in extractors)), dtype=np.float32)
    return Catalog(
        store=None,
        manifest=manifest,
        fusion=Fusion.fit(extractors, block_weights(settings.features), unfitted),
        tile_size=settings.tile_size,
        max_nodata_fraction=settings.max_nodata_fraction,
        features=settings.features.model_copy(deep=True),
        _extractors=extractors,
    )


@lru_cache(maxsize=8)
def _stored_fusion(text: str) -> Fusion:
    """A database's fusion from its stored JSON, decoded once per process for the same text
    (a query opens its database each time: decoding a 128-d projection took 2-3 ms of a
    plain database's 6 ms query; bench/README.md "Kinds of places")."""
    return Fusion.from_dict(json.loads(text))


def initialise_catalog(
    store: Store,
    settings: Settings,
    manifest: BandManifest,
    sample: Sequence[RawTile],
    origins: Sequence[tuple[str, Window]] = (),
    raw: np.ndarray | None = None,
) -> Catalog:
    """Fit the fusion's standardisation on ``sample`` tiles; write manifest, fusion, settings.
    ``origins``: each sample tile's file and window, so that the returned catalog reuses the
    sample's features when it embeds those tiles (``SampleFeatures``); ``raw``: the sample's
    raw features if already computed (by ``sampling_catalog``'s workers), else computed here."""
    settings = creation_settings(settings, manifest)
    extractors = build_extractors(settings.features, manifest)
    pad_to = settings.tile_size if manifest.kind == "geo" else None

    def features_of(tiles: Sequence[RawTile]) -> np.ndarray:
        """Raw features batch by batch: the prepared pixels of one batch in memory at a time."""
        size = settings.batch_size
        return np.concatenate([
            raw_features(prepare_batch(tiles[start : start + size], manifest, pad_to), extractors)
            for start in range(0, len(tiles), size)
        ] or [np.zeros((0, sum(e.dim for e in extractors)), dtype=np.float32)])  # fmt: skip

    raw = features_of(sample) if raw is None else raw
    copies = None
    projected = settings.vectors.dims > 0 and len(sample) >= settings.vectors.min_sample
    if projected and settings.vectors.learn_from_copies and manifest.scaling != "none":
        copied = [copy for tile in sample for copy in invariance_copies(tile)]
        per_tile = len(copied) // max(len(sample), 1)
        copies = (np.repeat(raw, per_tile, axis=0), features_of(copied))
    fusion = Fusion.fit(extractors, block_weights(settings.features), raw, settings.vectors, copies)
    store.set_meta(
        {
            "manifest": manifest.to_dict(),
            "fusion": fusion.to_dict(),
            "vector_dtype": VECTOR_DTYPE,
            "settings": stored_settings(settings),
            "fusion_fitted_on_tiles": len(sample),
            "geosearch_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    )
    return Catalog(
        store=store,
        manifest=manifest,
        fusion=fusion,
        tile_size=settings.tile_size,
        max_nodata_fraction=settings.max_nodata_fraction,
        features=settings.features.model_copy(deep=True),
        _extractors=extractors,
        keeps_raw_features=settings.vectors.raw_features,
        sample_features=SampleFeatures.of(origins, sample, raw) if origins else None,
    )


def open_database(db: Path, settings: Settings | None = None) -> Catalog:
    """An existing, initialised database ready for work, the caller's run-time settings merged
    in; a context manager that closes it: ``with open_database(db, settings) as catalog:``."""
    store = Store(Path(db))
    catalog = open_catalog(store, settings or Settings())
    if catalog is None:
        store.close()
        raise DatabaseError(f"{db} holds no tiles yet: run 'geosearch ingest FOLDER --db {db}'")
    return catalog
