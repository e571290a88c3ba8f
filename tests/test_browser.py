"""The report and the case page in a real browser: headless Chromium from the system packages.

Skipped, with the reason, where Chromium or Playwright's Python package is missing (nothing
here downloads a browser).  .ci/run installs Chromium first.  The pages are served by
`medae view`'s server from a real demo run (the session's ``demo_run``); every request a page
makes must go to that server.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import threading

import numpy as np
import pytest

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("MEDAE_CHROMIUM") or shutil.which("chromium") \
    or shutil.which("chromium-browser")
# software WebGL (no GPU on CI machines); Chromium ≥ 137 wants the SwiftShader opt-in
ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"]
WARM_MIN_RED = 180


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM:
        pytest.skip("no Chromium here (apt-get install chromium, or set MEDAE_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright's Python package is missing (pip install -e '.[test]')")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def served(demo_run):
    from medae.report.server import make_server, url_of

    out, _ = demo_run
    srv = make_server(out, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield out, url_of(srv)
    srv.shutdown()
    srv.server_close()


@pytest.fixture()
def page(browser, served):
    """A page that records every request and JavaScript error; checks them when done."""
    _, url = served
    pg = browser.new_page(viewport={"width": 1300, "height": 800})
    requests, errors = [], []
    pg.on("request", lambda r: requests.append(r.url))
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    pg.close()
    assert not errors
    outside = [u for u in requests if not u.startswith((url, "data:", "blob:", "file:"))]
    assert requests and not outside  # no request leaves the machine


def _cells(pg, col):
    return pg.eval_on_selector_all(
        "#cases tbody tr", f"rows => rows.map(r => r.cells[{col}].dataset.v)")


def test_report_table_sorts(page, served):
    _, url = served
    page.goto(url + "index.html")
    scores = [float(v) for v in _cells(page, 1)]
    assert len(scores) >= 2 and scores == sorted(scores, reverse=True)  # the default order
    page.click("th:text('score')")
    assert [float(v) for v in _cells(page, 1)] == sorted(scores, reverse=True)
    page.click("th:text('score')")
    assert [float(v) for v in _cells(page, 1)] == sorted(scores)
    page.click("th:text('candidates')")
    counts = [float(v) for v in _cells(page, 3)]
    assert counts == sorted(counts, reverse=True) and counts[0] >= 1
    page.click("th:text('case')")
    ids = _cells(page, 0)
    assert ids == sorted(ids, reverse=True)
    # thumbnails load (lazily) and are the case's real pictures
    page.wait_for_function("() => document.querySelector('#cases img').naturalWidth > 0")
    assert not page.is_visible("#fileNote")


def _flagged_case(out):
    import csv

    with open(out / "results" / "scores.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "ok"]
    return max(rows, key=lambda r: (int(r["n_candidates"]), float(r["score"])))["case_id"]


def _open_case(page, served):
    out, url = served
    case = _flagged_case(out)
    page.goto(f"{url}results/view.html?case={case}")
    page.wait_for_function("() => window.medae && (window.medae.ready || window.medae.error)",
                           timeout=120_000)
    assert page.evaluate("() => window.medae.error") is None
    return case


def _canvas(page) -> np.ndarray:
    from PIL import Image

    png = page.locator("#gl").screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def _warm(rgb: np.ndarray) -> np.ndarray:
    """Pixels of the 'warm' colour map (red to yellow): red high, blue far below; the
    background is grey (R = G = B) and the crosshair cyan."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return (r >= WARM_MIN_RED) & (r - b >= 100) & (g >= 40)


def _axial_pixel(page, mm) -> tuple[int, int]:
    """Canvas pixel of the axial tile nearest to world point ``mm`` (NiiVue's own mapping)."""
    return tuple(page.evaluate("""(mm) => {
        const nv = window.medae.nv;
        const tile = nv.screenSlices.find(s => s.axCorSag === 0).leftTopWidthHeight;
        const target = nv.mm2frac(mm);
        let best = null, bestD = Infinity;
        for (let y = tile[1]; y < tile[1] + tile[3]; y += 1)
          for (let x = tile[0]; x < tile[0] + tile[2]; x += 1) {
            const f = nv.canvasPos2frac([x, y]);
            if (f[0] < 0) continue;
            const d = (f[0] - target[0]) ** 2 + (f[1] - target[1]) ** 2;
            if (d < bestD) { bestD = d; best = [x, y]; }
          }
        const scale = nv.uiData.dpr || 1;
        return [Math.round(best[0] / scale), Math.round(best[1] / scale)];
    }""", mm))


def _axial_tile(page, rgb: np.ndarray) -> np.ndarray:
    """The axial view's pixels (not the colour bar, not the 3D render)."""
    x, y, w, h = page.evaluate("""() => {
        const nv = window.medae.nv, scale = nv.uiData.dpr || 1;
        const t = nv.screenSlices.find(s => s.axCorSag === 0).leftTopWidthHeight;
        return t.map(v => Math.round(v / scale));
    }""")
    return rgb[y:y + h, x:x + w]


def _high_and_low_points(folder):
    """World mm of the heat map's peak in the brain, and of a brain point in the same axial
    plane where the map (and its neighbourhood) stays under half the threshold; the number of
    voxels at or above the threshold."""
    import nibabel as nib
    from scipy import ndimage

    heat_img = nib.load(folder / "anomaly_map.nii.gz")
    heat = np.asanyarray(heat_img.dataobj).astype(float)
    brain = np.asanyarray(nib.load(folder / "brain_mask.nii.gz").dataobj) > 0
    thr = json.loads((folder / "result.json").read_text())["threshold"]
    aff = heat_img.affine
    peak = np.unravel_index(np.argmax(np.where(brain, heat, -np.inf)), heat.shape)
    peak_mm = (aff @ np.r_[peak, 1.0])[:3]
    assert heat[peak] > thr
    ijk = np.indices(heat.shape).reshape(3, -1)
    world = aff[:3, :3] @ ijk + aff[:3, 3:]
    half_voxel = 0.5 * np.abs(aff[2, :3]).max()
    quiet = (ndimage.maximum_filter(heat, size=7) < thr / 2) \
        & ndimage.binary_erosion(brain, iterations=3)
    ok = quiet.reshape(-1) & (np.abs(world[2] - peak_mm[2]) <= half_voxel + 1e-3)
    assert ok.any()
    dist = np.linalg.norm(world[:, ok] - peak_mm[:, None], axis=0)
    low_mm = world[:, ok][:, np.argmin(np.abs(dist - 30))]  # about 3 cm away
    n_above = int((heat >= thr).sum())  # in float64, as the page compares
    return [float(v) for v in peak_mm], [float(v) for v in low_mm], n_above


def _patch(rgb, xy, r=2):
    x, y = xy
    return rgb[y - r:y + r + 1, x - r:x + r + 1]


def test_case_page_shows_heat_map_where_it_is_high_and_slider_changes_it(page, served):
    out, _ = served
    case = _open_case(page, served)
    high_mm, low_mm, n_above = _high_and_low_points(out / "results" / case)
    page.evaluate("""(mm) => { const nv = window.medae.nv;
        nv.setCrosshairWidth(0); nv.scene.crosshairPos = nv.mm2frac(mm); nv.drawScene(); }""",
                  high_mm)
    page.wait_for_timeout(300)
    rgb = _canvas(page)
    assert rgb.std() > 20 and (rgb.sum(-1) > 60).mean() > 0.1  # anatomy drawn, not blank
    high_xy, low_xy = _axial_pixel(page, high_mm), _axial_pixel(page, low_mm)
    assert _warm(_patch(rgb, high_xy)).mean() >= 0.6, _patch(rgb, high_xy).tolist()
    low = _patch(rgb, low_xy)
    assert not _warm(low).any() and np.abs(low[..., 0] - low[..., 2]).max() < 30  # grey
    assert low.mean() > 20  # anatomy there, not background
    warm_at_calibrated = _warm(_axial_tile(page, rgb)).sum()
    above = page.evaluate("() => window.medae.voxelsAbove")
    assert above == n_above and page.evaluate("() => window.medae.threshold") == pytest.approx(
        json.loads((out / "results" / case / "result.json").read_text())["threshold"])
    # threshold up to the maximum: the heat colour is gone, even at the peak
    page.locator("#threshold").fill(page.get_attribute("#threshold", "max"))
    page.wait_for_timeout(300)
    rgb_high = _canvas(page)
    assert page.evaluate("() => window.medae.voxelsAbove") < above
    assert _warm(_patch(rgb_high, high_xy)).mean() <= 0.2
    assert _warm(_axial_tile(page, rgb_high)).sum() < warm_at_calibrated / 4
    # and down to the minimum: more of the brain coloured than at the calibrated threshold
    page.locator("#threshold").fill(page.get_attribute("#threshold", "min"))
    page.wait_for_timeout(300)
    assert _warm(_axial_tile(page, _canvas(page))).sum() > warm_at_calibrated
    assert page.evaluate("() => window.medae.voxelsAbove") > above


def test_candidate_click_moves_crosshair_to_its_centroid(page, served):
    _open_case(page, served)
    cands = page.evaluate("() => window.medae.candidates")
    for k, cand in enumerate(cands[:3], start=1):
        page.click(f"#candidates tbody tr:nth-child({k})")
        pos = page.evaluate("() => Array.from(window.medae.nv.frac2mm("
                            "window.medae.nv.scene.crosshairPos)).slice(0, 3)")
        np.testing.assert_allclose(pos, cand["centroid"], atol=0.05)
        assert page.text_content("#location")  # the location readout follows
    # the input's orientation is stated
    assert "voxel axes of the input" in page.text_content("#facts")


def test_pages_from_the_file_system(browser, served, tmp_path):
    """index.html works from file:// and says to use medae view; a 1,000-case report renders
    with its images loaded lazily."""
    from test_report import fake_scored_folder

    from medae.report import write_index

    out, _ = served
    pg = browser.new_page()
    case = _flagged_case(out)
    pg.goto((out / "results" / "view.html").as_uri() + f"?case={case}")
    assert "medae view" in pg.text_content("#fileNote") and pg.is_visible("#fileNote")
    big = tmp_path / "big"
    fake_scored_folder(big, 1000)
    png = (out / "results" / case / "overlay_ortho.png").read_bytes()
    for case in big.iterdir():
        if (case / "overlay_ortho.png").exists():
            (case / "overlay_ortho.png").write_bytes(png)
    write_index(big)
    pg.goto((big / "index.html").as_uri())
    assert pg.is_visible("#fileNote")
    assert pg.eval_on_selector_all("#cases tbody tr", "r => r.length") == 1000
    pg.wait_for_function("() => document.querySelector('#cases img').naturalWidth > 0")
    loaded = pg.eval_on_selector_all("#cases img", "imgs => imgs.filter(i => i.naturalWidth)"
                                     ".length")
    assert 0 < loaded < 200  # lazy: only those near the screen
    pg.click("th:text('score')")
    pg.click("th:text('score')")
    scores = [float(v) for v in _cells(pg, 1)]
    assert scores == sorted(scores)
    pg.close()
