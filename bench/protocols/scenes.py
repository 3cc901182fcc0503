"""Whole scenes as queries (NAIP 128 px): each year's four quadrants, every scene queries the
others through ``geosearch.similar`` with the whole file."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from bench.protocols.common import NAIP, K, emit, ingest_into, naip_year, unit_rows, write_raster
from geosearch.store import Store, normalise_path


def naip_quadrants(folder: Path) -> dict[Path, tuple[str, int]]:
    """Each NAIP year cut into its four quadrants, written once in ``folder``: 20 scenes of
    about 467 x 362 px; scene -> (year, quadrant)."""
    import rasterio
    from rasterio.windows import Window as RioWindow

    folder.mkdir(parents=True, exist_ok=True)
    scenes = {}
    for source in sorted(NAIP.glob("*.tif")):
        with rasterio.open(source) as src:
            half_w, half_h = src.width // 2, src.height // 2
            for quadrant, (row, col) in enumerate(
                ((0, 0), (0, half_w), (half_h, 0), (half_h, half_w))
            ):
                path = folder / f"{source.stem}_q{quadrant}.tif"
                window = RioWindow(col, row, half_w, half_h)
                if not path.exists():
                    write_raster(
                        path, src.profile, src.read(window=window), src.window_transform(window)
                    )
                scenes[path] = (naip_year(source), quadrant)
    return scenes


def run_scenes(work: Path, quick: bool) -> None:
    """Whole scenes as queries (NAIP 128 px): 20 scenes (five years x four quadrants), every
    scene queries the others; relevant = the same quadrant in the four other years (chance
    P@4 4/19). ``tiles matched`` is the search (``geosearch.similar`` with a whole file: each
    scene scored by how well its tiles match the query's); ``mean vector`` ranks scenes by
    their best tile's cosine to the mean of the query's tile vectors (the rule before)."""
    from geosearch import similar

    scenes = naip_quadrants(work / "naip_quadrants")
    db = work / "naip128_quadrants.gpkg"
    if not db.exists():
        ingest_into(db, list(scenes), {"tile_size": 128})
    with Store(db) as store:
        ids, vectors = store.vectors()
        paths = np.array([t.path for t in store.tiles(ids.tolist())])
    queries = list(scenes)[:: 2 if quick else 1]
    outcomes: dict[str, list[tuple[bool, float]]] = {"tiles matched": [], "mean vector": []}
    times = []
    for query in queries:
        year, quadrant = scenes[query]
        relevant = {str(p) for p, (y, q) in scenes.items() if q == quadrant and y != year}
        started = time.perf_counter()
        [result] = similar(db, [query], top=K)
        times.append((time.perf_counter() - started) * 1000)
        found = [match.tile.path for match in result.matches]
        own = paths == normalise_path(query)
        order = np.argsort(-(vectors @ unit_rows(vectors[own].mean(axis=0))), kind="stable")
        mean_ranked = list(dict.fromkeys(p for p in paths[order] if p != normalise_path(query)))
        for rule, ranked in (("tiles matched", found), ("mean vector", mean_ranked[:K])):
            outcomes[rule].append((ranked[0] in relevant, len(relevant & set(ranked)) / K))
    for rule, values in outcomes.items():
        hits, precision = zip(*values, strict=True)
        emit(
            {"dataset": "naip", "part": "scenes", "tile_size": 128, "rule": rule}
            | {
                "top1": round(float(np.mean(hits)), 4),
                f"p_at_{K}": round(float(np.mean(precision)), 4),
            }
            | {"queries": len(values), "scenes": len(scenes), f"chance_p_at_{K}": round(4 / 19, 4)}
            | ({"ms_p50": round(float(np.median(times)), 2)} if rule == "tiles matched" else {})
        )


# -- compact vectors ------------------------------------------------------------------------
