"""``geosearch migrate``: bring a database made before compact vectors up to date.

Such a database stores every tile's fused vector at float32 in full (2,108 numbers for 4-band
imagery) and its raw features beside it; one created from too small a sample to fit a
projection stores them in full at float16 and, once grown, migrates the same way. Migrating
fits the projection on a sample of the stored vectors (as a new database fits it on its
creation sample: ``vectors`` settings), rewrites every vector projected and at float16, drops
the raw features unless ``vectors.raw_features`` keeps them, gives the space back (VACUUM)
and lets the index be rebuilt. Searches give the same places; scores move a little. The
rewrite is one transaction: a migration killed at any point leaves the database as it was.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from geosearch.catalog import open_database
from geosearch.config import Settings
from geosearch.errors import DatabaseError
from geosearch.features import Projection
from geosearch.index import index_path, vectors_path
from geosearch.store import VECTOR_DTYPE

# Vectors the projection is fitted on (as a new database's creation sample, at most).
FIT_SAMPLE = 1024
REWRITE_BATCH = 8192


@dataclass
class MigrateReport:
    """What ``migrate`` did: tiles rewritten, the vector's dimension and bytes before/after."""

    db: str
    tiles: int
    dim_before: int
    dim_after: int
    bytes_before: int
    bytes_after: int
    raw_features_kept: bool

    def to_dict(self) -> dict:
        return asdict(self)


def migrate(db: Path, settings: Settings | None = None) -> MigrateReport:
    """Project and shrink the vectors of a database made before compact vectors (see above);
    DatabaseError if it already has them."""
    settings = settings or Settings()
    vectors = settings.vectors
    with open_database(Path(db), settings) as catalog:
        store = catalog.store
        if store.vector_dtype == VECTOR_DTYPE and catalog.fusion.projection is not None:
            raise DatabaseError(f"{db} already stores compact vectors: nothing to migrate")
        size_before = Path(db).stat().st_size
        with store.writer("migrate"):
            sample = store.vector_sample(FIT_SAMPLE)
            dims = min(vectors.dims, len(sample) // 2)
            fusion = catalog.fusion
            if 0 < dims < fusion.raw_dim and len(sample) >= vectors.min_sample:
                projection = Projection.fit(sample, dims, vectors.whitening)
                fusion = replace(fusion, projection=projection)
            settings_stored = store.meta("settings") | {"vectors": vectors.model_dump(mode="json")}
            tiles = store.convert_vectors(
                fusion.projection.apply if fusion.projection else lambda stored: stored,
                VECTOR_DTYPE,
                drop_raw=not vectors.raw_features,
                meta={
                    "fusion": fusion.to_dict(),
                    "vector_dtype": VECTOR_DTYPE,
                    "settings": settings_stored,
                },
                batch=REWRITE_BATCH,
            )
        for path in (index_path(store.path), vectors_path(index_path(store.path))):
            path.unlink(missing_ok=True)  # rebuilt for the new vectors at the next search
    return MigrateReport(
        db=str(db),
        tiles=tiles,
        dim_before=catalog.fusion.raw_dim,
        dim_after=fusion.dim,
        bytes_before=size_before,
        bytes_after=Path(db).stat().st_size,
        raw_features_kept=vectors.raw_features,
    )
