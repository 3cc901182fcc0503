"""Make the README's and the docs' pictures from sample_tiles/: ``make docs`` runs it.

- ``docs/img/contact_sheet.png``: ``geosearch similar`` on a tile of the 2009 image, its
  contact sheet as the command writes it;
- ``docs/img/map_page.png``: ``geosearch serve`` on the same database in Debian's headless
  Chromium (driven by Playwright's Python package, never a downloaded browser), a tile
  clicked and its results listed.

Both are saved as palette PNGs, small enough to commit (< 300 KB each).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "docs" / "img"
QUERY = ROOT / "sample_tiles" / "naip" / "m_4709963_se_14_1_20090818.tif"
CHROMIUM = Path(os.environ.get("GEOSEARCH_CHROMIUM", "/usr/bin/chromium"))
MAX_BYTES = 300_000


def geosearch(*args: str) -> None:
    """Run the geosearch command of this checkout, as a user would."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "geosearch", *args], check=True, env=env, cwd=ROOT)


def save_small(source: Path, target: Path, width: int | None = None) -> None:
    """Save ``source`` as a palette PNG at most ``width`` wide, under MAX_BYTES."""
    image = Image.open(source).convert("RGB")
    if width and image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
    for colours in (256, 128, 64):
        image.quantize(colours, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)
        if target.stat().st_size < MAX_BYTES:
            break
    print(f"{target.relative_to(ROOT)}: {image.width} x {image.height}, "
          f"{target.stat().st_size // 1000} KB")  # fmt: skip


def contact_sheet(db: Path, work: Path) -> None:
    out = work / "results"
    geosearch("similar", str(QUERY), "--tile", "3", "--top", "5", "--db", str(db),
              "--out", str(out))  # fmt: skip
    save_small(out / "contact_sheet.png", IMAGES / "contact_sheet.png", width=1200)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def map_page(db: Path, work: Path) -> None:
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        print("map_page.png kept as committed: pip install playwright to remake it")
        return
    if not CHROMIUM.exists():
        print(
            f"map_page.png kept as committed: no Chromium at {CHROMIUM} (apt-get install chromium)"
        )
        return
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(
        [sys.executable, "-m", "geosearch", "serve", "--db", str(db), "--port", str(port)],
        env=env, cwd=ROOT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url + "api/info", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("geosearch serve did not start") from None
                time.sleep(0.3)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox"]
            )
            page = browser.new_page(viewport={"width": 1200, "height": 720})
            page.goto(url)
            expect(page.locator("body")).to_have_attribute("data-ready", "true", timeout=30000)
            page.locator("#top").fill("5")
            page.locator("path.tile-footprint").last.click()  # the top-most: latest year
            expect(page.locator("#results li")).to_have_count(5, timeout=30000)
            for image in page.locator("#results li img").all():
                expect(image).to_have_js_property("complete", True)
            page.wait_for_timeout(1000)  # the map's own previews
            page.screenshot(path=str(work / "map_page.png"))
            browser.close()
    finally:
        server.terminate()
        server.wait(30)
    save_small(work / "map_page.png", IMAGES / "map_page.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["contact_sheet", "map_page"])
    args = parser.parse_args()
    IMAGES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        db = work / "sample.gpkg"
        geosearch("ingest", str(ROOT / "sample_tiles"), "--db", str(db), "--quiet")
        if args.only in (None, "contact_sheet"):
            contact_sheet(db, work)
        if args.only in (None, "map_page"):
            map_page(db, work)


if __name__ == "__main__":
    main()
