"""``geosearch detect`` benchmark (issue 22): one JSON line per measurement on stdout.

Quality, on EuroSAT RGB (``../shared/data/eurosat``: a seeded sample of N pictures a class,
ingested as a plain-image database with the default settings): for a seeded sample of queries
(``--queries`` a class), the analyst is simulated as the issue says: ``similar`` (top 10)
marked by label, a ``feedback`` round (the next 10) marked by label: 20 marks; then ``detect``
on the session, and 3 rounds of ``--review 10`` marked by label, each followed by ``detect``.
After each: AP of the query's class over every unmarked picture ranked by the classifier's
probability, and precision/recall at the default threshold. Beside it in the same run, Rocchio
(1, 0.75, 0.25) on the stored vectors with the same marks; and ``detect`` from marks no search
chose (``RANDOM_MARKS``: as many pictures of the class and of the others drawn at random),
which says how far a classifier on these vectors can go however the marks are chosen.

Scale: a synthetic geo database of N tiles (``bench/map_page.py``'s: 128-d vectors, 64 x 64
tiles a file), 10 tiles marked good (the nearest to one tile) and 10 bad; the whole
``geosearch.detect`` (train, stream and score every tile, merge, write the GeoPackage, GeoJSON,
probability.tif and contact sheet) timed in a fresh process, with its peak RSS (VmHWM).

    .venv/bin/python bench/detect.py                          # 200 a class, 1M tiles
    .venv/bin/python bench/detect.py --per-class 500 --scale 1000000,10000000
    .venv/bin/python bench/detect.py --scale 0 --set detect.background=1000
    git archive main | tar -x -C /tmp/old && \
        .venv/bin/python bench/detect.py --per-class 0 --baseline /tmp/old  # old vs this
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench.protocols.kinds import (  # noqa: E402
    average_precision,
    eurosat_sample,
    feedback_queries,
    rocchio_ranking,
    rows_by_path,
    stored,
)

TOP = 10
REVIEW_ROUNDS = 3
REVIEW = 10
SWEEP = (0.3, 0.5, 0.6, 0.7)  # thresholds whose precision and recall are also reported
RANDOM_MARKS = (10, 25, 100)  # marks of each label drawn at random: what the vectors allow


def emit(line: dict[str, Any]) -> None:
    print(json.dumps({"bench": "detect"} | line), flush=True)


def eurosat_db(work: Path, per_class: int) -> tuple[Path, Any]:
    """The sample as a plain-image database (ingested once, kept in ``work``)."""
    from geosearch import ingest

    kinds = eurosat_sample(per_class)
    folder = work / f"eurosat{per_class}"
    db = work / f"eurosat{per_class}.gpkg"
    for path in kinds.paths:
        link = folder / path.parent.name / path.name
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path)
    linked = [folder / p.parent.name / p.name for p in kinds.paths]
    if not db.exists():
        started = time.perf_counter()
        report = ingest([folder], db)
        emit({"ingested": str(db), "tiles": report.tiles_added,
              "seconds": round(time.perf_counter() - started, 1)})  # fmt: skip
    return db, type(kinds)(kinds.name, linked)


def unmarked_figures(
    order: np.ndarray, scores: np.ndarray | None, labels: np.ndarray, row: int, marked: set[int],
    threshold: float,
) -> dict[str, float]:  # fmt: skip
    """AP of the query's class over the unmarked rows ranked by ``order``; with ``scores`` (per
    row) precision and recall of the rows at or above ``threshold``."""
    left = np.array([r for r in order.tolist() if r != row and r not in marked])
    hits = labels[left] == labels[row]
    relevant = int(hits.sum())
    figures = {"ap": average_precision(hits, relevant)}
    if scores is not None:
        for cut in sorted({threshold, *SWEEP}):
            detected = scores[left] >= cut
            found = int((detected & hits).sum())
            suffix = "" if cut == threshold else f"_at_{cut:g}"
            figures[f"precision{suffix}"] = found / max(1, int(detected.sum()))
            figures[f"recall{suffix}"] = found / max(1, relevant)
    return figures


def quality(work: Path, per_class: int, queries_per_class: int, overrides: dict) -> None:
    """The simulated analyst on EuroSAT; one line per method and stage (means over queries)."""
    from geosearch import feedback, similar
    from geosearch.catalog import open_database
    from geosearch.config import Settings
    from geosearch.detection import detect
    from geosearch.request import SearchFilters

    db, kinds = eurosat_db(work, per_class)
    settings = Settings().with_overrides(overrides)
    detect_settings = settings.detect
    threshold = detect_settings.threshold
    labels = kinds.labels
    ids, vectors, paths = stored(db)
    rows = rows_by_path(kinds.paths, paths)
    picture_of = {int(ids[r]): n for n, r in enumerate(rows)}
    row_of_id = np.full(int(ids.max()) + 1, -1)
    row_of_id[ids[rows]] = np.arange(len(rows))
    unit = vectors[rows]
    stamp = time.strftime("%H%M%S")
    stages: dict[str, list[dict[str, float]]] = {}
    seconds = []

    def add(stage: str, figures: dict[str, float]) -> None:
        stages.setdefault(stage, []).append(figures)

    for number, row in enumerate(feedback_queries(labels, queries_per_class)):
        session = f"detect-{stamp}-{number}"

        def by_label(tile_ids: list[int], row: int = row) -> dict[int, int]:
            return {t: 1 if labels[picture_of[t]] == labels[row] else -1 for t in tile_ids}

        [first] = similar(db, [kinds.paths[row]], top=TOP, session=session, settings=settings)
        page = by_label([m.tile.id for m in first.matches])
        good = [m.rank for m in first.matches if page[m.tile.id] > 0]
        bad = [m.rank for m in first.matches if page[m.tile.id] < 0]
        second = feedback(db, session, good, bad, top=TOP, settings=settings)
        marks = page | by_label([m.tile.id for m in second.matches])
        every_mark = dict(marks)
        with open_database(db, settings) as catalog:
            for round_number in range(REVIEW_ROUNDS + 1):
                started = time.perf_counter()
                result = detect(
                    catalog, session, marks, SearchFilters(), threshold, REVIEW, detect_settings
                )
                scored_ids, probabilities = result.ids, result.probabilities
                seconds.append(time.perf_counter() - started)
                scores = np.zeros(len(rows), np.float32)
                scores[row_of_id[scored_ids]] = probabilities
                order = np.argsort(-scores, kind="stable")
                marked = {picture_of[t] for t in every_mark}
                stage = "20 marks" if not round_number else f"+{round_number} review rounds"
                add(f"detect, {stage}", unmarked_figures(order, scores, labels, row, marked,
                                                          threshold))  # fmt: skip
                if round_number == 0:
                    good_rows = [picture_of[t] for t, label in marks.items() if label > 0]
                    bad_rows = [picture_of[t] for t, label in marks.items() if label < 0]
                    moved = rocchio_ranking(unit, row, good_rows, bad_rows)
                    add("rocchio 1/0.75/0.25, 20 marks",
                        unmarked_figures(moved, None, labels, row, marked, threshold))  # fmt: skip
                    plain = np.argsort(-(unit @ unit[row]), kind="stable")
                    add("query alone", unmarked_figures(plain, None, labels, row, marked, 0))
                marks = by_label([tile.tile.id for tile in result.review])  # saved next round
                every_mark |= marks
        rng = np.random.default_rng(number)
        for count in RANDOM_MARKS:  # the same classifier from marks not chosen by any search
            same = np.flatnonzero(labels == labels[row])
            good = rng.choice(same[same != row], count, replace=False)
            bad = rng.choice(np.flatnonzero(labels != labels[row]), count, replace=False)
            random_marks = {int(ids[rows[r]]): 1 for r in good}
            random_marks |= {int(ids[rows[r]]): -1 for r in bad}
            similar(db, [kinds.paths[row]], top=1, session=f"{session}-random{count}",
                    settings=settings)  # fmt: skip
            with open_database(db, settings) as catalog:
                result = detect(catalog, f"{session}-random{count}", random_marks,
                                SearchFilters(), threshold, 0, detect_settings)  # fmt: skip
            scores = np.zeros(len(rows), np.float32)
            scores[row_of_id[result.ids]] = result.probabilities
            marked = {*good.tolist(), *bad.tolist()}
            add(f"detect, {count} + {count} random marks (the vectors' reach)",
                unmarked_figures(np.argsort(-scores, kind="stable"), scores, labels, row,
                                 marked, threshold))  # fmt: skip
    for stage, figures in stages.items():
        emit({
            "set": kinds.name, "method": stage, "queries": len(figures),
            **{key: round(float(np.mean([f[key] for f in figures])), 4) for key in figures[0]},
            "threshold": threshold if "precision" in figures[0] else None,
            "settings": detect_settings.model_dump(mode="json"),
        })  # fmt: skip
    emit({"set": kinds.name, "detect_call_ms_p50": round(float(np.median(seconds)) * 1000, 1)})


# -- scale -----------------------------------------------------------------------------------


def scale_db(work: Path, tiles: int) -> Path:
    from map_page import database

    return database(work, tiles)


def bench_marks(db: Path) -> tuple[list[int], list[int]]:
    """10 tiles marked good (the nearest to tile 1, by the index's exact inner products) and 10
    bad (ids 100-109), and the session "bench" they go to."""
    from geosearch.index import open_index
    from geosearch.store import Store

    with Store(db) as store:
        ids, scores = open_index(store).score_all(store.vectors([1])[1][0])
        good = ids[np.argsort(-scores, kind="stable")[:10]].tolist()
        if "bench" not in store.sessions.names():
            store.sessions.save("bench", "bench", {"path": "/bench/none.tif", "tile": 0}, [])
    return good, list(range(100, 110))


def timed_detect(db: Path, out: Path, good: list[int], bad: list[int]) -> dict[str, Any]:
    """Run in a fresh process: the whole ``geosearch.detect`` of the session "bench" with these
    marks (train, self-train, score every tile twice, merge, review 10, write every file);
    seconds, seconds per stage and peak RSS (VmHWM)."""
    from geosearch import detect

    started = time.perf_counter()
    result = detect(db, "bench", good=good, bad=bad, review=10, out=out)
    seconds = time.perf_counter() - started
    status = Path("/proc/self/status").read_text().splitlines()
    peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(peak / 1024), "scored":
            result.scored, "detected_tiles": result.detected,
            "detections": len(result.detections),
            "stages_s": {stage: round(value, 2) for stage, value in result.seconds.items()},
            "load_average": round(os.getloadavg()[0], 1)}  # fmt: skip


def run_detect(source: Path, db: Path, out: Path, marks: tuple[list[int], list[int]]) -> dict:
    """``timed_detect`` in a fresh process importing geosearch from ``source`` (a checkout)."""
    code = (
        f"import json, sys; sys.path.insert(0, {str(source)!r}); import geosearch; "
        f"sys.path.insert(0, {str(ROOT / 'bench')!r}); from pathlib import Path; "
        "from detect import timed_detect; "
        f"assert geosearch.__file__.startswith({str(source)!r}), geosearch.__file__; "
        f"print(json.dumps(timed_detect(Path({str(db)!r}), Path({str(out)!r}), *{marks!r})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd="/")  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def scale(work: Path, tiles: int, baseline: Path | None) -> None:
    """The scale run on ``tiles`` tiles: a first run warms the page cache, then (with
    ``baseline``, a checkout of older code) the old and this code alternately, twice each."""
    db = scale_db(work, tiles)
    marks = bench_marks(db)
    run_detect(ROOT, db, work / "out", marks)
    for _ in range(2 if baseline else 1):
        for code, source in ((("baseline", baseline),) if baseline else ()) + (("this", ROOT),):
            line = run_detect(source, db, work / f"out-{code}", marks)
            emit({"tiles": tiles, "code": code if baseline else None} | line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/geosearch-bench-detect"))
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--queries", type=int, default=3, help="queries a class")
    parser.add_argument("--scale", default="1000000", help="tile counts, comma-separated; 0: none")
    parser.add_argument("--set", action="append", default=[], help="setting=value, dotted")
    parser.add_argument("--baseline", type=Path, help="a checkout of older code to time beside")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    overrides = {}
    for item in args.set:
        key, value = item.split("=", 1)
        overrides[key] = json.loads(value)
    if args.per_class:
        quality(args.work, args.per_class, args.queries, overrides)
    for tiles in (int(t) for t in args.scale.split(",") if int(t)):
        scale(args.work, tiles, args.baseline)


if __name__ == "__main__":
    main()
