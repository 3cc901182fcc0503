"""Read-only archives: every reading command works on a database where writing is refused, and
creates nothing beside it; every write fails with "permission denied: PATH" (exit 4).

The tests run as root, whom file permissions don't stop, so the commands run as the
unprivileged user nobody (uid 65534) on a database in a folder chmod 0555, outside pytest's
private temporary folder. A read-only bind mount (which stops root too) is tested where this
machine lets a test make one (``unshare -m`` and ``mount``).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT as REPO
from tests.conftest import run_cli, textured, write_geotiff

NOBODY = 65534
ROOT = os.geteuid() == 0


def as_nobody() -> None:
    """preexec_fn: drop root's privileges for good."""
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


@functools.cache
def unprivileged_python() -> tuple[list[str], dict[str, str], object]:
    """How to run Python without privileges: (command, extra environment, preexec_fn).

    As nobody, with this interpreter if nobody can run it, else with another Python of the
    same version given this environment's packages (here the interpreter lives under /root,
    which nobody can't enter); failing both, as root without any capability (setpriv), which
    file permissions stop like any user. Not root: as we are."""
    if not ROOT:
        return [sys.executable], {}, None
    packages = os.pathsep.join([str(REPO), sysconfig.get_paths()["purelib"]])
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    system = shutil.which(version, path=os.pathsep.join(["/usr/local/bin", "/usr/bin"]))
    for python, env in ((sys.executable, {}), (system, {"PYTHONPATH": packages})):
        if python is None:
            continue
        try:
            probe = subprocess.run(
                [python, "-c", "import geosearch.cli"], env={**os.environ, **env},
                preexec_fn=as_nobody, capture_output=True, cwd="/",
            )  # fmt: skip
        except OSError:  # nobody can't run it
            continue
        if probe.returncode == 0:
            return [python], env, as_nobody
    if shutil.which("setpriv"):
        return ["setpriv", "--bounding-set=-all", "--inh-caps=-all", sys.executable], {}, None
    pytest.skip("no way to run Python without privileges here")


def unprivileged(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m geosearch ARGS`` without privileges (see ``unprivileged_python``)."""
    python, env, preexec = unprivileged_python()
    return subprocess.run(
        [*python, "-m", "geosearch", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **env, "HOME": str(cwd / "home")},
        preexec_fn=preexec,
        timeout=300,
    )


def listing(folder: Path) -> dict[str, float]:
    return {path.name: path.stat().st_mtime for path in folder.iterdir()}


@pytest.fixture(scope="module")
def archive() -> Iterator[Path]:
    """base/archive/db.gpkg (three tiles, its index and a feedback session "kept") made
    read-only (0555), its query files in base/tiles, an output folder base/out anyone may
    write, and base/config.yaml (no CNN)."""
    base = Path(tempfile.mkdtemp(prefix="geosearch-readonly-"))
    base.chmod(0o755)
    for name in ("out", "home"):
        (base / name).mkdir()
        (base / name).chmod(0o777)
    for number in range(3):
        write_geotiff(base / "tiles" / f"t{number}.tif", textured((3, 64, 64), seed=number))
    (base / "config.yaml").write_text("workers: 1\nfeatures:\n  cnn:\n    weight: 0.0\n")
    db = base / "archive" / "db.gpkg"
    assert run_cli("ingest", "tiles", "--db", str(db), cwd=base).returncode == 0
    made = run_cli("similar", "tiles/t0.tif", "--db", str(db), "--session", "kept", cwd=base)
    assert made.returncode == 0, made.stderr
    assert run_cli("feedback", "kept", "--good", "1", "--db", str(db), cwd=base).returncode == 0
    (base / "archive").chmod(0o555)
    yield base
    (base / "archive").chmod(0o755)
    shutil.rmtree(base)


READING = [
    ("info",),
    ("similar", "tiles/t1.tif", "--top", "2", "--out", "out/similar"),
    ("similar", "tiles/t1.tif", "--good", "1", "--out", "out/good"),
    ("check",),
    ("feedback", "kept", "--export", "out/kept.geojson"),
]


@pytest.mark.parametrize("command", READING, ids=lambda c: " ".join(c[:2]))
def test_reading_commands_work_and_create_nothing(archive, command):
    before = listing(archive / "archive")
    result = unprivileged(*command, "--db", "archive/db.gpkg", cwd=archive)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert listing(archive / "archive") == before  # no -wal, -shm, lock or index file
    if command[0] == "similar":
        assert result.stderr.count("read-only here: searched without saving") == 1
        assert "(session" not in result.stdout


WRITING = [
    ("ingest", "tiles"),
    ("remove", "tiles/t2.tif"),
    ("feedback", "kept", "--good", "1"),
    ("check", "--repair"),
]


@pytest.mark.parametrize("command", WRITING, ids=lambda c: " ".join(c[:2]))
def test_writes_fail_with_permission_denied(archive, command):
    before = listing(archive / "archive")
    result = unprivileged(*command, "--db", "archive/db.gpkg", cwd=archive)
    assert result.returncode == 4
    assert result.stderr.startswith("error: permission denied: archive/db.gpkg")
    assert len(result.stderr.splitlines()) == 1
    assert listing(archive / "archive") == before


def test_creating_a_database_where_writing_is_refused_says_permission_denied(archive):
    result = unprivileged("ingest", "tiles", "--db", "archive/new.gpkg", cwd=archive)
    assert result.returncode == 4
    assert result.stderr.startswith("error: permission denied: archive/new.gpkg")
    assert not (archive / "archive" / "new.gpkg").exists()


def test_without_its_index_the_index_is_built_in_memory_not_written(archive, tmp_path):
    bare = archive / "bare"
    bare.mkdir()
    shutil.copy(archive / "archive" / "db.gpkg", bare / "db.gpkg")
    bare.chmod(0o555)
    try:
        for command in (("info",), ("similar", "tiles/t1.tif", "--out", "out/bare")):
            result = unprivileged(*command, "--db", "bare/db.gpkg", cwd=archive)
            assert result.returncode == 0, result.stderr
            assert os.listdir(bare) == ["db.gpkg"]
    finally:
        bare.chmod(0o755)


def test_serve_reads_a_read_only_database_and_refuses_to_save_feedback(archive):
    pytest.importorskip("uvicorn")
    refused = unprivileged("serve", "--db", "archive/db.gpkg", "--allow-feedback", cwd=archive)
    assert refused.returncode == 4 and "error: permission denied: archive/db.gpkg" in refused.stderr
    python, env, preexec = unprivileged_python()
    server = subprocess.Popen(
        [*python, "-m", "geosearch", "serve", "--db", "archive/db.gpkg", "--port", "0"],
        cwd=archive,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env, "HOME": str(archive / "home")},
        preexec_fn=preexec,
    )
    try:
        first = server.stderr.readline()  # geosearch serve: http://127.0.0.1:PORT/ (...)
        address = first.split()[2]
        for _ in range(50):
            try:
                with urllib.request.urlopen(f"{address}api/info", timeout=5) as response:
                    assert json.loads(response.read())["tiles"] == 3
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail(f"no answer from {address}")
        with urllib.request.urlopen(f"{address}api/similar?tile=1", timeout=5) as response:
            assert response.status == 200
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert sorted(os.listdir(archive / "archive"))[0] == "db.gpkg"


def _can_bind_mount() -> bool:
    if not ROOT or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs none /mnt && umount /mnt"],
        capture_output=True,
    )
    return probe.returncode == 0


@pytest.mark.skipif(not _can_bind_mount(), reason="needs root and unshare -m with mount here")
def test_a_read_only_mount_stops_root_too(archive):
    """A bind mount remounted read-only (as a DVD or a read-only NFS export): writes fail with
    EROFS even for root; reading commands work."""
    mount = archive / "mnt"
    mount.mkdir(exist_ok=True)
    script = (
        f"mount --bind {archive / 'archive'} {mount} && mount -o remount,bind,ro {mount} && "
        f'{sys.executable} -m geosearch "$@"'
    )
    for command, code in ((("info",), 0), (("ingest", "tiles"), 4)):
        result = subprocess.run(
            ["unshare", "-m", "sh", "-c", script, "sh", *command, "--db", "mnt/db.gpkg"],
            cwd=archive,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == code, result.stderr
        if code == 4:
            assert result.stderr.startswith("error: permission denied: mnt/db.gpkg")
