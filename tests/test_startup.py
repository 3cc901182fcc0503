"""Start-up: the command loads a library when a command uses it, not before (README "Start-up";
the import table in bench/README.md)."""

from __future__ import annotations

import json
import subprocess
import sys

import geosearch
from tests.conftest import ROOT, SAMPLE_TILES

HEAVY = ("tensorflow", "faiss", "pyspark", "fastapi", "cv2")
LATER = ("numpy", "rasterio", "pyogrio", "geopandas", "pandas", "geosearch.api")
# other commands' modules: a search does not import them
OTHER_COMMANDS = (
    "geosearch.changes", "geosearch.detection", "geosearch.chips", "geosearch.migrate"
)  # fmt: skip


def loaded_after(code: str) -> tuple[str, list[str]]:
    """What a fresh interpreter prints running ``code``, and which of the heavy modules it has
    loaded by its exit (told by an atexit handler: ``cli.main`` ends the process itself)."""
    probe = (
        "import atexit, json, sys\n"
        f"watched = {HEAVY + LATER + OTHER_COMMANDS!r}\n"
        "loaded = lambda: sorted(m for m in watched if m in sys.modules)\n"
        "atexit.register(lambda: print(json.dumps(loaded())))\n"
        f"{code}"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    *printed, loaded = run.stdout.splitlines()
    return "\n".join(printed), json.loads(loaded)


def test_importing_the_command_loads_no_heavy_library():
    assert loaded_after("import geosearch.cli") == ("", [])


def test_the_version_is_answered_before_any_library_loads():
    printed, loaded = loaded_after(
        "import sys\nfrom geosearch.cli import main\nsys.argv = ['geosearch', '--version']\nmain()"
    )
    assert printed == f"geosearch {geosearch.__version__}"
    assert loaded == []


def test_the_public_names_are_the_api_functions_even_after_their_namesake_modules_load():
    printed, loaded = loaded_after(
        "import geosearch.check, geosearch.feedback, geosearch.ingest\nimport geosearch\n"
        "print([getattr(geosearch, n).__module__ for n in ('check', 'feedback', 'ingest')])"
    )
    assert printed == "['geosearch.api', 'geosearch.api', 'geosearch.api']"
    assert "geosearch.api" in loaded


def test_an_indexed_search_loads_no_tensorflow_spark_fastapi_or_other_commands(naip_db, tmp_path):
    query = sorted((SAMPLE_TILES / "naip").glob("*.tif"))[0]
    argv = ["geosearch", "similar", str(query), "--tile", "3", "--top", "3", "--db",
            str(naip_db), "--out", str(tmp_path / "out"), "--json"]  # fmt: skip
    printed, loaded = loaded_after(
        f"import sys\nfrom geosearch.cli import main\nsys.argv = {argv!r}\nmain()"
    )  # exit status 0: loaded_after asserts it
    assert json.loads(printed)["results"][0]["rank"] == 1
    assert "faiss" in loaded  # the search ran on the index
    assert not {"tensorflow", "pyspark", "fastapi", "geopandas", "pandas"} & set(loaded)
    assert not set(OTHER_COMMANDS) & set(loaded)
