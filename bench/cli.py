"""The command as a person types it, against the library call and an earlier checkout.

Measures, each in a fresh process (median of ``--repeat`` runs):

- ``geosearch --version``;
- the demo's query (``make demo``: sample_tiles/ ingested, then ``similar ... --tile 3
  --top 5``);
- ``--queries`` EuroSAT images searched at once at ``--top 50 --json`` through ``similar``,
  against the same search through ``geosearch.similar(...)`` in Python (the call alone): once
  with images of the database (``batch``: their stored vectors, no CNN) and once with as many
  images it does not hold (``batch_new``: each embedded, as the issue's 1.7 s library call);
- with ``--baseline DIR`` (an earlier checkout, e.g. ``git archive 0ccdf3c | tar -x -C DIR``),
  the same commands with that code first on the path, in the same run.

The databases are made once per run by this checkout's ``ingest``. Prints one JSON line.
Run: ``.venv/bin/python bench/cli.py [--images 2000 --queries 200 --baseline DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EUROSAT = ROOT.parent / "shared" / "data" / "eurosat"
DEMO_FILE = ROOT / "sample_tiles" / "naip" / "m_4709963_se_14_1_20090818.tif"
DEMO_QUERY = [str(DEMO_FILE), "--tile", "3", "--top", "5"]
# -P: the checkout under test comes from PYTHONPATH, not from the working folder
GEOSEARCH = [
    sys.executable,
    "-P",
    "-c",
    "import sys; from geosearch.cli import main; sys.exit(main())",
]


def timed(code: Path, args: list[str], cwd: Path, repeat: int) -> float:
    """Median wall seconds of ``geosearch ARGS`` with ``code`` first on the path."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(GEOSEARCH + args, cwd=cwd, env=env, check=True, capture_output=True)
        seconds.append(time.perf_counter() - start)
    return round(statistics.median(seconds), 3)


def eurosat_images(count: int) -> list[Path]:
    """``count`` EuroSAT images, taken in turn from each class folder."""
    classes = [sorted(folder.glob("*.jpg")) for folder in sorted(EUROSAT.iterdir())]
    mixed = [image for group in zip(*classes, strict=False) for image in group]
    return mixed[:count]


def library_seconds(db: Path, queries: list[Path], top: int, repeat: int) -> float:
    """Median seconds of ``geosearch.similar(db, queries, top)`` in this process (warm)."""
    sys.path.insert(0, str(ROOT))
    import geosearch

    geosearch.similar(db, queries[:1], top)  # imports, index loaded once: not the call's cost
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        geosearch.similar(db, queries, top)
        seconds.append(time.perf_counter() - start)
    return round(statistics.median(seconds), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="EuroSAT images in the db")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--top", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="an earlier checkout to compare with")
    args = parser.parse_args()
    codes = {"now": ROOT} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        work = Path(tmp)
        demo, euro = work / "demo.gpkg", work / "euro.gpkg"
        images = eurosat_images(args.images)
        listed = work / "images"
        listed.mkdir()
        for image in images:
            (listed / f"{image.parent.name}_{image.name}").symlink_to(image)
        for db, source in ((demo, ROOT / "sample_tiles"), (euro, listed)):
            ingest = ["ingest", str(source), "--db", str(db), "--quiet"]
            timed(ROOT, ingest, work, 1)  # in ``work``: no config.yaml there, the defaults
        queries = {
            "batch": sorted(listed.iterdir())[: args.queries],
            "batch_new": eurosat_images(args.images + args.queries)[args.images :],
        }
        figures: dict[str, object] = {"images": len(images), "queries": args.queries}
        for name, code in codes.items():
            out = ["--db", str(demo), "--out", str(work / f"demo-{name}")]
            figures[name] = {
                "version_s": timed(code, ["--version"], work, args.repeat * 2),
                "demo_query_s": timed(code, ["similar", *DEMO_QUERY, *out], work, args.repeat),
            }
            for batch, paths in queries.items():
                command = ["similar", *map(str, paths), "--top", str(args.top), "--json",
                           "--db", str(euro), "--out", str(work / f"{batch}-{name}")]  # fmt: skip
                figures[name][f"{batch}_cli_s"] = timed(code, command, work, 1)
        for batch, paths in queries.items():
            library = library_seconds(euro, paths, args.top, args.repeat)
            figures[f"{batch}_library_s"] = library
            for name in codes:
                ratio = figures[name][f"{batch}_cli_s"] / library
                figures[name][f"{batch}_vs_library"] = round(ratio, 1)
        figures["load_average"] = round(os.getloadavg()[0], 2)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
