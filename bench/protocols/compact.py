"""Compact vectors (issue 16): what is stored and searched per tile, the fused vector
projected by PCA at float16, against the full vector, on NAIP (same place, other year) and
Sentinel-2 (shifted copies)."""

from __future__ import annotations

from pathlib import Path

from bench.protocols.common import NAIP, emit, ingest_into, naip_truth, ranking_metrics, slug
from bench.protocols.satellite import copy_truths, sentinel2_scenes
from geosearch.store import Store

# (label, vectors settings): the fused vector in full (at float16), and projections to fewer
# dimensions with more or less whitening; the default is vectors.dims 128, whitening 0.25.
COMPACT_CONFIGS = (
    ("full fused vector", {"vectors.dims": 0}),
    ("pca 128, whitening 0", {"vectors.dims": 128, "vectors.whitening": 0.0}),
    ("pca 128, whitening 0.25 (default)", {}),
    ("pca 128, whitening 0.5", {"vectors.dims": 128, "vectors.whitening": 0.5}),
    ("pca 64, whitening 0.25", {"vectors.dims": 64}),
    ("pca 256, whitening 0.25", {"vectors.dims": 256}),
)


def run_compact(work: Path, quick: bool) -> None:
    """Compact vectors. NAIP, same place in another year: at 64 px (900 tiles, a creation
    sample of 640, projected by default) every setting of COMPACT_CONFIGS; at 128 px (240
    tiles: too few to project by default) the default fusion unprojected and projected by
    force (``vectors.min_sample`` 2: 120 dimensions, half its 240-tile sample). Sentinel-2 at
    128 px (12 bands, 4,276-d fused, 405 tiles with the shifted copies: projected by default),
    each shifted copy against the original, for the whitening settings."""
    runs = [(64, label, overrides) for label, overrides in COMPACT_CONFIGS[: 3 if quick else None]]
    runs += [
        (128, "full fused vector (default at this size)", {}),
        (128, "pca 120 forced, whitening 0.25", {"vectors.min_sample": 2}),
    ]
    for tile_size, label, overrides in runs:
        db = work / f"compact_naip{tile_size}_{slug(label)}.gpkg"
        ingested = ingest_into(db, [NAIP], {"tile_size": tile_size} | overrides)
        with Store(db) as store:
            truth = naip_truth(store)
            dim = store.vectors([int(truth.ids[0])])[1].shape[1]
        metrics, _ = ranking_metrics(truth)
        emit(
            {"dataset": "naip", "part": "compact", "protocol": "same place, other year"}
            | {"tile_size": tile_size, "vectors": label, "dim": dim}
            | metrics
            | ingested
            | {"db_bytes_per_tile": round(db.stat().st_size / ingested["tiles"])}
        )
    folder = work / "compact_s2_128"
    folder.mkdir(exist_ok=True)
    original, copies, offset = sentinel2_scenes(folder, 128)
    for label, overrides in COMPACT_CONFIGS[: 3 if quick else 4]:
        db = work / f"compact_s2_128_{slug(label)}.gpkg"
        ingested = ingest_into(db, [folder], {"tile_size": 128} | overrides)
        for protocol, truth in copy_truths(db, original, copies, offset):
            metrics, _ = ranking_metrics(truth)
            emit(
                {"dataset": "sentinel2", "part": "compact", "protocol": protocol}
                | {"tile_size": 128, "vectors": label, "dim": truth.vectors.shape[1]}
                | metrics
                | ingested
            )
