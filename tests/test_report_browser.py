"""Open the HTML report in real headless Chromium: no broken image, no console error, no empty table.

The screenshot is kept as a test artifact in ``test-artifacts/`` (or $ANOBENCH_TEST_ARTIFACTS).
"""

import os
import shutil
from pathlib import Path

import pytest

from anobench.reports import write_reports
from tests.conftest import REPO
from tests.test_reports import run_dir  # noqa: F401  (the fixture: fixed records with artifacts)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_html_report_in_chromium(run_dir):  # noqa: F811
    report = write_reports(run_dir, ["html"])[0]
    out = Path(os.environ.get("ANOBENCH_TEST_ARTIFACTS", REPO / "test-artifacts"))
    out.mkdir(parents=True, exist_ok=True)
    errors = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("requestfailed", lambda request: errors.append(f"request failed: {request.url}"))
        page.goto(report.as_uri(), wait_until="load")
        broken = page.evaluate("Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0)"
                               ".map(i => i.alt)")
        n_images = page.evaluate("document.images.length")
        empty_tables = page.evaluate(
            "Array.from(document.querySelectorAll('table')).filter(t => t.tBodies[0].rows.length === 0"
            " || !Array.from(t.tBodies[0].rows).some(r => Array.from(r.cells).some(c => c.textContent.trim())))"
            ".map(t => t.dataset.table)")
        n_tables = page.evaluate("document.querySelectorAll('table').length")
        page.click("table[data-table='per-class-synthetic'] th:nth-child(4)")  # sorting runs without errors
        page.screenshot(path=str(out / "report-html.png"), full_page=True)
        browser.close()
    assert errors == []
    assert n_images >= 4 and broken == []
    assert n_tables >= 2 and empty_tables == []
    assert (out / "report-html.png").stat().st_size > 10_000
