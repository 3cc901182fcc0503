"""Feature extraction and fusion: from raw tiles to one L2-normalised vector per tile.

``Catalog.compute`` (in ``catalog.py``) is the single place a tile's vector is computed, with
``prepare_batch``, ``raw_features`` and ``Fusion.fuse`` from here; ingest, queries with new
files and every engine use it alike.

The stored vector fuses the extractors' blocks: each block standardised (mean/std fitted on a
sample when the database is created), L2-normalised, weighted, concatenated, L2-normalised
again, so that inner product is cosine similarity.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from geosearch.bands import BandManifest
from geosearch.config import FeatureSettings, VectorSettings
from geosearch.embeddings import dequantization_for
from geosearch.errors import ConfigError
from geosearch.features.band_stats import BandStatsExtractor
from geosearch.features.base import Extractor, TileBatch
from geosearch.features.cnn import TfliteCnnExtractor, cnn_extractor
from geosearch.features.embedding import EmbeddingExtractor
from geosearch.features.layout import LayoutExtractor
from geosearch.pixels import RawTile

_EPSILON = 1e-12
# Which bands each block's features depend on (see ``Extractor.band_use``), by block name.
BAND_USE = {
    extractor.name: extractor.band_use
    for extractor in (BandStatsExtractor, LayoutExtractor, TfliteCnnExtractor)
}


def build_extractors(settings: FeatureSettings, manifest: BandManifest) -> list[Extractor]:
    """The extractors whose weight is above zero, in fixed order; for embedding rasters (scaling
    ``none``) the embedding block alone."""
    if manifest.scaling == "none":
        dequantization = dequantization_for(settings.embedding, manifest)
        return [EmbeddingExtractor(len(manifest.bands), dequantization)]
    extractors: list[Extractor] = []
    if settings.band_stats.weight > 0:
        extractors.append(
            BandStatsExtractor(len(manifest.bands), settings.band_stats.histogram_bins)
        )
    if settings.layout.weight > 0:
        extractors.append(LayoutExtractor(len(manifest.bands), settings.layout.side))
    if settings.cnn.weight > 0:
        cnn = settings.cnn
        extractors.append(
            cnn_extractor(cnn.model, cnn.weights, cnn.download, cnn.threads, cnn.batch_size)
        )
    if not extractors:
        raise ConfigError("features: every weight is 0; give at least one extractor a weight")
    return extractors


def block_weights(settings: FeatureSettings) -> dict[str, float]:
    return {
        "band_stats": settings.band_stats.weight,
        "layout": settings.layout.weight,
        "cnn": settings.cnn.weight,
        "embedding": 1.0,  # always alone in its database
    }


@dataclass(frozen=True)
class Block:
    """One extractor's part of the fused vector, with its standardisation and weight."""

    name: str
    version: str
    dim: int
    weight: float
    mean: np.ndarray
    std: np.ndarray


@dataclass(frozen=True)
class Projection:
    """The fused vectors' principal components, fitted on the creation sample: ``matrix``
    holds the first ``dims`` of them, each divided by (its eigenvalue + the mean of the kept
    eigenvalues) ** whitening. Partial whitening (rarer directions count more) measured better
    than plain PCA; adding the mean keeps it from amplifying the weakest, least well estimated
    directions, where noise lives (bench/quality.py --only compact: without it a noisy
    Sentinel-2 copy found its place first 0.47 of the time instead of 0.65)."""

    mean: np.ndarray  # (fused dim,)
    matrix: np.ndarray  # (fused dim, dims)

    @property
    def dims(self) -> int:
        return int(self.matrix.shape[1])

    @classmethod
    def fit(
        cls,
        fused: np.ndarray,
        dims: int,
        whitening: float,
        copies: tuple[np.ndarray, np.ndarray] | None = None,
        learned: slice = slice(0, 0),
    ) -> Projection:
        """PCA of ``fused`` (n, d) unit vectors to ``dims`` components.

        With ``copies`` (the fused vectors of tiles and of their turned, mirrored and zoomed
        copies, row by row), the ``learned`` part of the vector (the CNN block) is first
        whitened against them: directions along which a tile and its copies differ are divided
        by that spread, so what a turn or a zoom changes counts less and what the picture shows
        counts more (Radenović et al.'s learned whitening, with the copies as matching pairs:
        bench/README.md "Kinds of places"). Blocks that a turn does not change (band
        statistics) are left out of it: whitened, they would be amplified without bound."""
        from threadpoolctl import threadpool_limits

        sample = np.asarray(fused, dtype=np.float64)
        mean = sample.mean(axis=0)
        # One BLAS thread: on a busy machine OpenBLAS's threads spin against each other, and
        # the SVD of 1,000 x 1,069 took 4-12 s instead of 0.7 (bench/README.md "Ingest")
        with threadpool_limits(1):
            whiten = np.eye(sample.shape[1])
            if copies is not None and learned.stop > learned.start:
                whiten = _copy_whitening(*copies, learned)
            centred = (sample - mean) @ whiten
            _, singular, directions = np.linalg.svd(centred, full_matrices=False)
        variance = singular[:dims] ** 2 / len(sample)
        matrix = directions[:dims].T / np.maximum(variance + variance.mean(), _EPSILON) ** whitening
        return cls(mean.astype(np.float32), (whiten @ matrix).astype(np.float32))

    def apply(self, fused: np.ndarray) -> np.ndarray:
        """(n, fused dim) -> (n, dims) unit vectors."""
        # np.einsum, not @: no BLAS threads, which in every ingest worker at once spin against
        # each other (2 workers on 2 cores: 170 tiles/s with @, see bench/README.md Ingest)
        centred = np.asarray(fused, dtype=np.float32) - self.mean
        projected = np.einsum("nd,dk->nk", centred, self.matrix)
        norms = np.linalg.norm(projected, axis=1, keepdims=True)
        return (projected / np.maximum(norms, _EPSILON)).astype(np.float32)


# The copies' spread is regularised by this share of its mean eigenvalue (EuroSAT: 0.01 to 0.1
# measured alike, 1.0 lost 0.01 of mAP@R).
_COPY_SHRINK = 0.05


def _copy_whitening(tiles: np.ndarray, copies: np.ndarray, part: slice) -> np.ndarray:
    """(d, d): identity but for the ``part`` of the vector, where it is the inverse square root
    of the covariance of tile - copy differences, scaled to keep that part's share of the
    sample's variance."""
    tiles = np.asarray(tiles, dtype=np.float64)
    differences = tiles[:, part] - np.asarray(copies, dtype=np.float64)[:, part]
    spread = differences.T @ differences / len(differences)
    spread += _COPY_SHRINK * np.trace(spread) / len(spread) * np.eye(len(spread))
    eigenvalues, eigenvectors = np.linalg.eigh(spread)
    inverse_root = eigenvectors / np.sqrt(np.maximum(eigenvalues, _EPSILON))
    centred = tiles[:, part] - tiles[:, part].mean(axis=0)
    before = np.sum(centred**2)
    after = np.sum((centred @ inverse_root) ** 2)
    whiten = np.eye(tiles.shape[1])
    whiten[part, part] = inverse_root * np.sqrt(before / max(after, _EPSILON))
    return whiten


@dataclass(frozen=True)
class Fusion:
    """How raw feature blocks become one unit vector; stored in the database. Each block is
    standardised, L2-normalised and weighted; the blocks are concatenated, L2-normalised and,
    with a ``projection``, projected to fewer dimensions and normalised again."""

    blocks: tuple[Block, ...]
    projection: Projection | None = None

    @property
    def raw_dim(self) -> int:
        return sum(block.dim for block in self.blocks)

    @property
    def dim(self) -> int:
        """The dimension of the vectors searched and stored."""
        return self.projection.dims if self.projection is not None else self.raw_dim

    @classmethod
    def fit(
        cls,
        extractors: Sequence[Extractor],
        weights: dict[str, float],
        raw: np.ndarray,
        vectors: VectorSettings | None = None,
        copies: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> Fusion:
        """Standardisation fitted on ``raw`` (a sample of tiles' concatenated raw features),
        then, with ``vectors.dims`` and a sample of at least ``vectors.min_sample`` tiles,
        the projection of the fused sample to ``vectors.dims`` dimensions, at most half the
        sample's size (more over-fits the sample: bench/README.md "Compact vectors").
        ``copies``: raw features of sample tiles and of copies of them, row by row, for the
        projection's learned whitening (``Projection.fit``)."""
        fusion = cls._standardised(extractors, weights, raw)
        vectors = vectors or VectorSettings()
        dims = min(vectors.dims, len(raw) // 2)
        if 0 < dims < fusion.raw_dim and len(raw) >= vectors.min_sample:
            fused_copies = None
            if copies is not None and len(copies[0]):
                fused_copies = (fusion.fuse(copies[0]), fusion.fuse(copies[1]))
            projection = Projection.fit(
                fusion.fuse(raw), dims, vectors.whitening, fused_copies, fusion.span("cnn")
            )
            fusion = replace(fusion, projection=projection)
        return fusion

    @classmethod
    def _standardised(
        cls, extractors: Sequence[Extractor], weights: dict[str, float], raw: np.ndarray
    ) -> Fusion:
        blocks, start = [], 0
        for extractor in extractors:
            part = raw[:, start : start + extractor.dim].astype(np.float64)
            std = part.std(axis=0) if len(part) > 1 else np.ones(extractor.dim)
            mean = part.mean(axis=0) if len(part) > 1 else np.zeros(extractor.dim)
            std = np.where(std > 1e-6, std, 1.0)
            if extractor.standardisation != "standard":
                std = np.ones(extractor.dim)
            if extractor.standardisation == "none":
                mean = np.zeros(extractor.dim)
            blocks.append(
                Block(
                    extractor.name,
                    extractor.version,
                    extractor.dim,
                    weights[extractor.name],
                    mean.astype(np.float32),
                    std.astype(np.float32),
                )
            )
            start += extractor.dim
        return cls(tuple(blocks))

    def fuse(
        self, raw: np.ndarray, absent: np.ndarray | None = None, only: str | None = None
    ) -> np.ndarray:
        """(n, raw_dim) raw features to (n, dim) unit vectors, float32.

        ``absent`` (bool, raw_dim) marks features a query could not compute (bands it lacks):
        they are set to the sample mean, so the comparison rests on the others. ``only``: the
        vector of that one block (the others at their mean), in the same space."""
        parts, start = [], 0
        for block in self.blocks:
            part = (raw[:, start : start + block.dim] - block.mean) / block.std
            if absent is not None:
                part[:, absent[start : start + block.dim]] = 0.0
            if only is not None and block.name != only:
                part[:] = 0.0
            norms = np.linalg.norm(part, axis=1, keepdims=True)
            parts.append(block.weight * part / np.maximum(norms, _EPSILON))
            start += block.dim
        fused = np.hstack(parts)
        norms = np.linalg.norm(fused, axis=1, keepdims=True)
        fused = (fused / np.maximum(norms, _EPSILON)).astype(np.float32)
        return self.projection.apply(fused) if self.projection is not None else fused

    def span(self, name: str) -> slice:
        """Where block ``name`` lies in the fused vector (empty if it has none)."""
        start = 0
        for block in self.blocks:
            if block.name == name:
                return slice(start, start + block.dim)
            start += block.dim
        return slice(0, 0)

    def has_block(self, name: str) -> bool:
        return any(block.name == name for block in self.blocks)

    def absent_features(
        self, missing: Sequence[int], band_count: int, rgb: Sequence[int]
    ) -> np.ndarray | None:
        """The (raw_dim,) mask of features that depend on the ``missing`` bands (0-based
        positions among ``band_count``; ``rgb``: the composite's), or None if none is."""
        if not missing:
            return None
        absent = np.zeros(self.raw_dim, dtype=bool)
        start = 0
        for block in self.blocks:
            use = BAND_USE.get(block.name, "all")
            if use == "each":
                per_band = block.dim // band_count
                for band in missing:
                    absent[start + band * per_band : start + (band + 1) * per_band] = True
            elif use == "all" or set(rgb) & set(missing):
                absent[start : start + block.dim] = True
            start += block.dim
        return absent

    def blocks_present(self, absent: np.ndarray | None) -> list[str]:
        """Names of the blocks that keep some features under the ``absent`` mask."""
        names, start = [], 0
        for block in self.blocks:
            if absent is None or not absent[start : start + block.dim].all():
                names.append(block.name)
            start += block.dim
        return names

    def to_dict(self) -> dict[str, Any]:
        projection = self.projection
        return {
            "blocks": [
                {
                    "name": b.name,
                    "version": b.version,
                    "dim": b.dim,
                    "weight": b.weight,
                    "mean": _packed(b.mean),
                    "std": _packed(b.std),
                }
                for b in self.blocks
            ],
            "projection": None
            if projection is None
            else {"mean": _packed(projection.mean), "matrix": _packed(projection.matrix)},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fusion:
        projection = data.get("projection")  # None: made before projections, or unprojected
        return cls(
            tuple(
                Block(
                    b["name"],
                    b["version"],
                    b["dim"],
                    b["weight"],
                    _unpacked(b["mean"]),
                    _unpacked(b["std"]),
                )  # fmt: skip
                for b in data["blocks"]
            ),
            None
            if projection is None
            else Projection(_unpacked(projection["mean"]), _unpacked(projection["matrix"])),
        )


def _packed(values: np.ndarray) -> dict[str, Any]:
    """An array for the database's JSON metadata: float32 bytes in base64 (a 1084 x 128
    projection is 0.7 MB so, against 2.8 MB as a JSON list of numbers)."""
    values = np.ascontiguousarray(values, dtype="<f4")
    return {"shape": list(values.shape), "float32": base64.b64encode(values.tobytes()).decode()}


def _unpacked(stored: dict[str, Any] | list) -> np.ndarray:
    """``_packed``'s array back (a plain list in databases made before)."""
    if isinstance(stored, list):
        values = np.array(stored, dtype=np.float32)
    else:
        values = np.frombuffer(base64.b64decode(stored["float32"]), dtype="<f4")
        values = values.reshape(stored["shape"]).astype(np.float32)
    values.flags.writeable = False  # a decoded fusion is shared by the catalogs that open it
    return values


def prepare_batch(
    tiles: Sequence[RawTile], manifest: BandManifest, pad_to: int | None
) -> TileBatch:
    """Scale raw tiles to 0..1; edge tiles of rasters are padded with invalid pixels to
    ``pad_to`` so the CNN sees every tile at the same scale."""
    pixels, valid = [], []
    for tile in tiles:
        scaled = manifest.scale(tile)
        mask = tile.valid
        height, width = mask.shape
        if pad_to and (height < pad_to or width < pad_to):
            padded = np.zeros(
                (scaled.shape[0], max(pad_to, height), max(pad_to, width)), np.float32
            )
            padded[:, :height, :width] = scaled
            padded_mask = np.zeros(padded.shape[1:], dtype=bool)
            padded_mask[:height, :width] = mask
            scaled, mask = padded, padded_mask
        pixels.append(scaled)
        valid.append(mask)
    return TileBatch(pixels=pixels, valid=valid, rgb=manifest.rgb)


def raw_features(batch: TileBatch, extractors: Sequence[Extractor]) -> np.ndarray:
    """(len(batch), sum of dims) float32: every extractor's block, concatenated."""
    return np.hstack([extractor.extract(batch) for extractor in extractors]).astype(np.float32)


__all__ = [
    "Block",
    "Extractor",
    "Fusion",
    "TileBatch",
    "block_weights",
    "build_extractors",
    "prepare_batch",
    "raw_features",
]
