"""Refresh docs/report.png and docs/case.png from a demo output folder.

    python scripts/screenshots.py DEMO_OUTPUT [CASE]

Drives the system Chromium (Playwright, no browser download) against `medae view`'s server,
opens the report of results/ and one case page (default: the case with the most candidates) with its
strongest candidate selected, and saves both as palette PNGs.
"""

from __future__ import annotations

import csv
import io
import shutil
import sys
import threading
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

from medae.report.server import make_server, url_of

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"]


def save(png: bytes, path: Path) -> None:
    img = Image.open(io.BytesIO(png)).convert("RGB")
    img.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    print(f"{path}: {img.size[0]}x{img.size[1]}, {path.stat().st_size // 1024} KiB")


def main(out: Path, case: str | None) -> None:
    if case is None:
        with open(out / "results" / "scores.csv") as f:
            rows = [r for r in csv.DictReader(f) if r["status"] == "ok"]
        case = max(rows, key=lambda r: (int(r["n_candidates"]), float(r["score"])))["case_id"]
    srv = make_server(out, "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = url_of(srv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 760})
        page.goto(url + "results/index.html")  # the report `medae score` writes
        page.wait_for_function("() => [...document.images].slice(0, 4)"
                               ".every(i => i.complete && i.naturalWidth > 0)")
        page.wait_for_timeout(500)
        save(page.screenshot(), ROOT / "docs" / "report.png")
        page.goto(f"{url}results/view.html?case={case}")
        page.wait_for_function("() => window.medae && window.medae.ready", timeout=120_000)
        page.click("#candidates tbody tr:nth-child(1)")
        page.wait_for_timeout(500)
        save(page.screenshot(), ROOT / "docs" / "case.png")
        browser.close()
    srv.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None)
