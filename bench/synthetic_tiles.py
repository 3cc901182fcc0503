"""Synthetic tile vectors made like geosearch's stored ones, calibrated against real ones.

The database stores each tile's fused vector projected by PCA to 128 dimensions with partial
whitening (components divided by eigenvalue**0.25, then L2-normalised), at float16. Such
vectors are hard for approximate search: nearly flat spectrum, nearest neighbours at cosine
0.3–0.6. ``tiles`` makes vectors of that kind at any size, in chunks; ``python
bench/synthetic_tiles.py`` prints the statistics that calibrate it next to those of the real
bench databases (and ``--fit`` repeats the search that chose ``PARAMS``).

The model, per tile (``dim`` = 128, then L2-normalised):

    a·landscape + b·place + d·date + c·exp(h·g_tile + p·g_place)·noise

- landscapes: ``lam``·√places of them, each a Gaussian vector; a place belongs to one;
- places: each seen on ``DATES`` = 5 dates (NAIP years), all its tiles sharing its vector;
- dates: one Gaussian vector per date shared by every tile of that date (a year's look);
- noise: Gaussian, its scale log-normal per tile (``het``) and per place (``hetp``): some
  places hardly change between dates, others (crops, water) change a lot.

Fitted (``--fit``) to the real NAIP bench database at 64 px (/tmp/pca/naip64.gpkg, 180 places
× 5 dates) projected as above, at 900 tiles and at a 300-tile subset: median cosine of the
1st and 10th neighbour, how often the k-th neighbour is another date of the same place, and
IVFFlat recall@10 (nlist 4·√N) at 3, 7 and 15 % of the lists probed. What the model assumes
beyond that data: how the structure grows with size (landscapes ∝ √places), which no real set
here is large enough to check (the largest has 900 tiles).
"""

from __future__ import annotations

import argparse
import re
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DIM = 128
DATES = 5
# fitted with --fit (seed 0; see the module docstring)
PARAMS = {"a": 0.6, "b": 0.7, "c": 0.94, "d": 0.34, "het": 0.65, "hetp": 0.5, "lam": 0.54}
PLACES_PER_CHUNK = 100_000
REAL_DATABASES = {
    "naip64": "/tmp/pca/naip64.gpkg",
    "naip128_quadrants": "/tmp/scenes/naip128_quadrants.gpkg",
}


def tiles(
    n: int,
    queries: int = 0,
    seed: int = 1,
    params: dict[str, float] = PARAMS,
    dim: int = DIM,
    places_per_chunk: int = PLACES_PER_CHUNK,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(vectors, place numbers) of ``n`` unit vectors, float32, in chunks of about
    ``DATES·places_per_chunk`` rows, the rows of a chunk shuffled.

    With ``queries``: the first chunk is preceded by ``queries`` held-out tiles, one date of
    each of the first ``queries`` places (the others of its dates are in the data): a query is
    a new picture of a place the database holds. Landscapes and dates are the same for every
    ``seed`` (the seed draws places and noise)."""
    places = -(-(n + queries) // DATES)
    landscapes = max(1, int(params["lam"] * np.sqrt(places)))
    structure = np.random.default_rng(7)
    landscape = structure.standard_normal((landscapes, dim), dtype=np.float32) * params["a"]
    date = structure.standard_normal((DATES, dim), dtype=np.float32) * params["d"]
    date -= date.mean(0)  # the projection centres the data: dates differ, no common offset
    rng = np.random.default_rng(seed)
    left = n
    for first in range(0, places, places_per_chunk):
        count = min(places_per_chunk, places - first)
        place = landscape[rng.integers(0, landscapes, count)]
        place += rng.standard_normal((count, dim), dtype=np.float32) * params["b"]
        spread = params["het"] * rng.standard_normal(count * DATES) + np.repeat(
            params["hetp"] * rng.standard_normal(count), DATES
        )
        noise = rng.standard_normal((count * DATES, dim), dtype=np.float32)
        noise *= (params["c"] * np.exp(spread)).astype(np.float32)[:, None]
        vectors = np.repeat(place, DATES, axis=0) + np.tile(date, (count, 1)) + noise
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        numbers = np.repeat(np.arange(first, first + count), DATES)
        if first == 0 and queries:
            held_out = np.arange(queries) * DATES + DATES - 1
            yield vectors[held_out], numbers[held_out]
            vectors, numbers = np.delete(vectors, held_out, 0), np.delete(numbers, held_out)
        order = rng.permutation(len(vectors))[:left]
        left -= len(order)
        yield vectors[order], numbers[order]


def synthetic_sample(
    n: int, seed: int = 0, params: dict[str, float] = PARAMS
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` synthetic tiles (a multiple of ``DATES``) and their place numbers, in memory."""
    parts = list(tiles(n, seed=seed, params=params))
    return np.vstack([v for v, _ in parts]), np.concatenate([p for _, p in parts])


def project(vectors: np.ndarray, sample: np.ndarray, dim: int = DIM) -> np.ndarray:
    """The database's projection: PCA fitted on ``sample`` to ``dim`` components, each divided
    by its eigenvalue**0.25 (partial whitening), L2-normalised; float32."""
    mean = sample.mean(0)
    _, singular, components = np.linalg.svd(sample - mean, full_matrices=False)
    eigenvalues = singular**2 / len(sample)
    projected = ((vectors - mean) @ components[:dim].T) / eigenvalues[:dim] ** 0.25
    return (projected / np.linalg.norm(projected, axis=1, keepdims=True)).astype(np.float32)


def real_tiles(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(projected float32 vectors, place numbers) of a real bench database: the PCA is fitted
    on a third of the tiles (at least 256); a place is a window of the same scene name
    without its date (``_YYYYMMDD``)."""
    from geosearch.store import Store

    with Store(Path(path)) as store:
        ids, vectors = store.vectors()
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    where = dict(
        (tile, (re.sub(r"_\d{8}", "", name), row, col))
        for tile, name, row, col in connection.execute("SELECT id, path, row, col FROM tiles")
    )
    connection.close()
    keys = [where[tile] for tile in ids.tolist()]
    numbers = {key: number for number, key in enumerate(sorted(set(keys)))}
    vectors = vectors.astype(np.float64)
    sample = vectors[: max(256, len(vectors) // 3)]
    return project(vectors, sample), np.array([numbers[key] for key in keys])


def statistics(vectors: np.ndarray, place: np.ndarray, seed: int = 0) -> dict[str, float]:
    """What calibrates the model: median cosine of the 1st and 10th neighbour, how often the
    k-th neighbour is another date of the same place, the top eigenvalue's share, and IVFFlat
    recall@10 (nlist 4·√N, every tile a query, itself left out) at 3, 7, 15 % of lists."""
    import faiss

    count, dim = vectors.shape
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -2)
    order = np.argsort(-similarity, axis=1)[:, :10]
    nearest = np.take_along_axis(similarity, order, 1)
    same = (place[order] == place[:, None]).mean(0)
    eigenvalues = np.linalg.eigvalsh(np.cov(vectors.T))
    nlist = max(1, int(4 * np.sqrt(count)))
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.min_points_per_centroid, ivf.cp.seed = 1, seed
    ivf.train(vectors)
    ivf.add(vectors)
    recall = {}
    for share in (0.03, 0.07, 0.15):
        ivf.nprobe = max(1, round(share * nlist))
        _, found = ivf.search(vectors, 11)
        recall[f"ivf_recall_{round(share * 100)}pct"] = float(
            np.mean(
                [
                    len(set(truth) & set(row[row != i])) / 10
                    for i, (truth, row) in enumerate(zip(order, found, strict=True))
                ]
            )
        )
    return {
        "n": count,
        "nn1_cos": float(np.median(nearest[:, 0])),
        "nn10_cos": float(np.median(nearest[:, 9])),
        "mean_pair_cos": float(similarity[similarity > -2].mean()),
        "top_eigenvalue_share": float(eigenvalues[-1] / eigenvalues.sum()),
        **{f"same_place_rank{k + 1}": float(same[k]) for k in range(4)},
        "same_place_rank5_10": float(same[4:].sum()),
        **recall,
    }


FIT_KEYS = [
    ("nn1_cos", 2),
    ("nn10_cos", 2),
    ("mean_pair_cos", 1),
    ("same_place_rank1", 1),
    ("same_place_rank2", 1),
    ("same_place_rank3", 1),
    ("same_place_rank4", 1),
    ("same_place_rank5_10", 0.5),
    ("ivf_recall_3pct", 2),
    ("ivf_recall_7pct", 2),
    ("ivf_recall_15pct", 2),
]


def fit(iterations: int = 300, seed: int = 0) -> dict[str, float]:
    """Random search then a local search for ``PARAMS``: the weighted squared distance of the
    statistics (``FIT_KEYS``, mean of 3 seeds) to the real ones at 900 tiles, plus the 10th
    neighbour's cosine and the IVF recalls at the 300-tile subset (how they grow with N)."""
    vectors, place = real_tiles(REAL_DATABASES["naip64"])
    real = statistics(vectors, place)
    subset = np.isin(place, np.random.default_rng(0).choice(place.max() + 1, 60, replace=False))
    real_small = statistics(vectors[subset], place[subset])
    small_keys = ["nn10_cos", "ivf_recall_3pct", "ivf_recall_7pct", "ivf_recall_15pct"]

    def loss(params: dict[str, float]) -> float:
        big = [statistics(*synthetic_sample(900, s, params), seed=s) for s in range(3)]
        small = [statistics(*synthetic_sample(300, s, params), seed=s) for s in range(3)]
        total = sum(w * (np.mean([b[key] for b in big]) - real[key]) ** 2 for key, w in FIT_KEYS)
        return total + sum(
            (np.mean([s[key] for s in small]) - real_small[key]) ** 2 for key in small_keys
        )

    rng = np.random.default_rng(seed)
    ranges = {
        "a": (0.2, 1.5), "b": (0.3, 1.5), "c": (0.5, 1.6), "d": (0, 0.8),
        "het": (0, 0.8), "hetp": (0, 0.8), "lam": (0.25, 4),
    }  # fmt: skip
    best, best_loss = None, np.inf
    for _ in range(iterations // 2):
        params = {key: float(rng.uniform(*span)) for key, span in ranges.items()}
        if (value := loss(params)) < best_loss:
            best, best_loss = params, value
    for _ in range(iterations - iterations // 2):
        params = {
            key: float(np.clip(value * np.exp(0.1 * rng.standard_normal()), *ranges[key]))
            for key, value in best.items()
        }
        if (value := loss(params)) < best_loss:
            best, best_loss = params, value
            print(round(best_loss, 4), {k: round(v, 3) for k, v in best.items()}, flush=True)
    return best


def calibration_table() -> list[dict[str, object]]:
    """The statistics of each real database (and of naip64's 300-tile subset) beside the
    model's at the same size (mean of 3 seeds)."""
    rows = []
    for name, path in REAL_DATABASES.items():
        if not Path(path).exists():
            continue
        vectors, place = real_tiles(path)
        sets = [(name, vectors, place)]
        if len(vectors) >= 900:
            chosen = np.random.default_rng(0).choice(place.max() + 1, 60, replace=False)
            subset = np.isin(place, chosen)
            sets.append((f"{name}[300]", vectors[subset], place[subset]))
        for label, v, p in sets:
            rows.append({"data": label} | statistics(v, p))
            size = len(v) - len(v) % DATES
            model = [statistics(*synthetic_sample(size, s), seed=s) for s in range(3)]
            rows.append(
                {"data": f"model at {size}"}
                | {key: float(np.mean([m[key] for m in model])) for key in model[0]}
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fit", type=int, metavar="ITERATIONS", help="search PARAMS again")
    args = parser.parse_args()
    if args.fit:
        print(fit(args.fit))
        return
    rows = calibration_table()
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
