"""Faults said in one line, nothing lost: a full disk (a small tmpfs mounted for the test, as
root; skipped where mounting is impossible) during ingest and at the start of the commands that
write, and a search on a full disk."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SAMPLE_TILES, run_cli, shared

FULL = "free space and run the same command again; it resumes"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 400 KB tmpfs at ``tmp_path/disk``, unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs to fill needs root and mount(8)")
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(disk)], capture_output=True
    )
    if made.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def grow(disk: Path, size: str = "16m") -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(disk)], check=True)


def fill(disk: Path) -> None:
    """Fill ``disk`` to the last byte."""
    with open(disk / "filler", "wb") as filler:
        try:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        except OSError:
            pass


def stats_config(folder: Path) -> Path:
    """A settings file without the CNN: the test is about the disk, not the features."""
    config = folder / "config.yaml"
    config.write_text("features:\n  cnn:\n    weight: 0\n")
    return config


def test_a_full_disk_in_an_ingest_is_one_line_and_the_same_command_resumes(small_disk, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for image in sorted(shared("eurosat", "Residential").glob("*.jpg"))[:300]:
        (images / image.name).symlink_to(image)
    db = small_disk / "db.gpkg"
    command = ("ingest", str(images), "--db", str(db), "--config", str(stats_config(tmp_path)))
    full = run_cli(*command, "--quiet")
    assert full.returncode == 4
    assert full.stderr == f"error: no space left on device writing {db}: {FULL}\n"
    grow(small_disk)
    resumed = run_cli(*command, "--json")
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert 0 < report["files_unchanged"] < 300  # some were committed before the disk filled
    assert report["files_unchanged"] + report["tiles_added"] == 300
    check = run_cli("check", "--db", str(db), "--json")
    assert check.returncode == 0 and json.loads(check.stdout)["tiles"] == 300


@pytest.fixture
def full_demo(small_disk: Path, naip_db: Path) -> Path:
    """The demo's database (and its index) on a disk then filled up."""
    grow(small_disk, "4m")
    for path in (naip_db, *naip_db.parent.glob(naip_db.name + ".faiss*")):
        shutil.copy(path, small_disk / path.name.replace(naip_db.stem, "demo"))
    fill(small_disk)
    return small_disk / "demo.gpkg"


def test_a_search_on_a_full_disk_searches_and_says_once_no_session_was_saved(full_demo, tmp_path):
    query = sorted((SAMPLE_TILES / "naip").glob("*.tif"))[0]
    run = run_cli("similar", str(query), str(query), "--tile", "3", "--top", "3", "--db",
                  str(full_demo), "--out", str(tmp_path / "out"), "--json")  # fmt: skip
    assert run.returncode == 0, run.stderr
    results = [json.loads(line) for line in run.stdout.splitlines()]
    assert [len(result["results"]) for result in results] == [3, 3]
    assert [result["session"] for result in results] == [None, None]
    note = (
        f"note: {full_demo} has no space left on device: searched without saving a feedback session"
    )
    assert run.stderr.splitlines().count(note) == 1


@pytest.mark.parametrize(
    "command", [["migrate"], ["check", "--repair"], ["feedback", "any-session", "--good", "1"]]
)
def test_a_command_that_writes_on_a_full_disk_says_so_in_one_line(full_demo, command):
    run = run_cli(*command, "--db", str(full_demo))
    assert run.returncode == 4
    assert run.stderr == f"error: no space left on device writing {full_demo}: {FULL}\n"
