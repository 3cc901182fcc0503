"""The README's and the docs' examples, run as a user would run them.

Every fenced ``sh`` or ``python`` block of README.md and docs/*.md runs and must exit 0, unless
it is preceded by ``<!-- not run: REASON -->``: then it is reported as skipped with that reason
(``pytest -rs``, as ``make test`` runs), so not running an example is a visible choice.

The examples use ``sample_tiles/`` and ``../shared/data`` as a clone would have them: they run in
one temporary project folder holding both, where the sample tiles are ingested once. Pages run
side by side (two at a time), each page's blocks in order; each page has its own copy of that
database as its default (``db``, through ``$GEOSEARCH_CONFIG``) and its own results folder, so
pages don't write to each other's files.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, SAMPLE_TILES, SHARED_DATA

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = ("sh", "python")
LANES = 2  # pages run at once
FENCE = re.compile(r"^```(?P<lang>[\w-]*)\s*$")
NOT_RUN = re.compile(r"^<!-- not run: (?P<reason>.+?) -->$")
README_LINES = 150


@dataclass(frozen=True)
class Example:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    not_run: str | None  # the reason given in <!-- not run: ... -->, if any

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.not_run is None


def fenced_blocks(page: Path) -> list[Example]:
    """Every fenced block of a Markdown page, with the not-run reason written just before it."""
    lines = page.read_text().splitlines()
    blocks: list[Example] = []
    index = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        end = next((i for i in range(index + 1, len(lines)) if lines[i].strip() == "```"), None)
        assert end is not None, f"{page}:{index + 1}: a fence that is never closed"
        before = next((lines[i] for i in range(index - 1, -1, -1) if lines[i].strip()), "")
        reason = NOT_RUN.match(before.strip())
        blocks.append(
            Example(
                page, index + 1, match["lang"], "\n".join(lines[index + 1 : end]) + "\n",
                reason["reason"] if reason else None,
            )
        )  # fmt: skip
        index = end + 1
    return blocks


BLOCKS = [block for page in PAGES for block in fenced_blocks(page)]
EXAMPLES = [block for block in BLOCKS if block.lang in RUNNABLE]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str | None]:
    """Run every runnable example; for each, None if it passed, else what went wrong."""
    base = tmp_path_factory.mktemp("docs")
    project = base / "project"
    project.mkdir()
    (project / "sample_tiles").symlink_to(SAMPLE_TILES, target_is_directory=True)
    if SHARED_DATA.exists():
        (base / "shared").symlink_to(SHARED_DATA.parent, target_is_directory=True)
    done = run(["geosearch", "ingest", "sample_tiles/", "--quiet"], project, {})
    assert done.returncode == 0, done.stderr
    pages = {}
    for example in EXAMPLES:
        if example.runs:
            pages.setdefault(example.page, []).append(example)
    configs = {page: page_database(project, page) for page in pages}  # before any page runs
    with ThreadPoolExecutor(LANES) as lanes:
        results = lanes.map(lambda page: run_page(project, configs[page], pages[page]), pages)
    return {name: outcome for page in results for name, outcome in page.items()}


def page_database(project: Path, page: Path) -> Path:
    """A settings file making a copy of the sample database the page's default, with its own
    results folder."""
    stem = re.sub(r"\W", "-", page.stem)
    for file in project.glob("geosearch.gpkg*"):
        if not file.name.endswith(".lock"):
            shutil.copy2(file, project / file.name.replace("geosearch", f"page-{stem}", 1))
    config = project / f"page-{stem}.yaml"
    config.write_text(f"db: page-{stem}.gpkg\nsearch:\n  out: results-{stem}\n")
    return config


def run_page(project: Path, config: Path, examples: list[Example]) -> dict[str, str | None]:
    """Run a page's examples in order, with ``config`` as its settings."""
    outcomes: dict[str, str | None] = {}
    failed = None
    for example in examples:
        if failed:
            outcomes[example.name] = f"not reached: {failed} failed before it on the page"
            continue
        if example.lang == "python":
            script = project / f"example_{config.stem}_{example.line}.py"
            script.write_text(example.code)
            command = ["python", script.name]
        else:
            command = ["bash", "-e", "-o", "pipefail", "-c", example.code]
        done = run(command, project, {"GEOSEARCH_CONFIG": str(config)})
        if done.returncode == 0:
            outcomes[example.name] = None
        else:
            failed = example.name
            outcomes[example.name] = (
                f"{example.name} exited {done.returncode}:\n{example.code}\n"
                f"stdout:\n{done.stdout[-2000:]}\nstderr:\n{done.stderr[-3000:]}"
            )
    return outcomes


def run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run as a user whose shell has the project's venv active: ``geosearch``, ``rio`` and
    ``python`` are the ones beside this interpreter, importing this checkout."""
    bin_dir = str(Path(sys.executable).parent)
    environment = {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        **env,
    }
    if "GEOSEARCH_CONFIG" not in env:
        environment.pop("GEOSEARCH_CONFIG", None)
    return subprocess.run(
        command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=600
    )


@pytest.mark.parametrize("example", EXAMPLES, ids=[example.name for example in EXAMPLES])
def test_example_runs(example: Example, request: pytest.FixtureRequest) -> None:
    if example.not_run is not None:
        pytest.skip(f"{example.name}: not run: {example.not_run}")
    uses_shared = "../shared/data" in example.code
    if uses_shared and not SHARED_DATA.exists() and os.environ.get("CI"):
        pytest.fail(f"{SHARED_DATA} missing: CI must have ../shared beside the clone")
    outcome = request.getfixturevalue("outcomes")[example.name]
    if outcome is not None and uses_shared and not SHARED_DATA.exists():
        pytest.skip(f"{example.name}: {SHARED_DATA} not available")
    assert outcome is None, outcome


def test_every_fence_names_its_language() -> None:
    """Output is ``text``, commands ``sh``, code ``python``: a bare fence is neither run nor
    listed, so it is not allowed."""
    bare = [block.name for block in BLOCKS if not block.lang]
    assert not bare, f"fenced blocks without a language (use text for output): {bare}"


def test_the_examples_not_run_are_few_and_say_why() -> None:
    """Most examples run; those that don't give a reason (listed by -rs as skips)."""
    not_run = [example for example in EXAMPLES if example.not_run is not None]
    assert all(len(example.not_run) > 10 for example in not_run), [e.name for e in not_run]
    assert len([e for e in EXAMPLES if e.runs]) > len(not_run)


def test_the_readme_is_short_and_links_every_docs_page() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= README_LINES
    linked = set(re.findall(r"\]\((docs/[\w./-]+\.md)\)", readme))
    pages = {f"docs/{page.name}" for page in (ROOT / "docs").glob("*.md")}
    assert pages - linked == set(), "pages the README does not link"
    assert linked - pages == set(), "README links to pages that do not exist"
    for picture in re.findall(r"!\[[^]]*\]\(([^)]+\.png)\)", readme):
        size = (ROOT / picture).stat().st_size
        assert 10_000 < size < 300_000, f"{picture}: {size} bytes"


def test_the_api_reference_lists_every_api_function() -> None:
    """docs/python.md names each public function of geosearch/api.py for mkdocstrings."""
    import ast

    tree = ast.parse((ROOT / "geosearch" / "api.py").read_text())
    public = {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_")
    }
    listed = set(re.findall(r"^ +- (\w+)$", (ROOT / "docs" / "python.md").read_text(), re.M))
    assert public - listed == set(), "API functions missing from docs/python.md"
