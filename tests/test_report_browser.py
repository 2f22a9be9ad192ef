"""Open the HTML report in real headless Chromium: no broken image, no console error, no empty table.

The screenshot is kept as a test artifact in ``test-artifacts/`` (or $ANOBENCH_TEST_ARTIFACTS).
"""

import contextlib
import os
import shutil
from pathlib import Path

import pytest

from anobench.reports import write_reports
from tests.conftest import REPO
from tests.test_reports import run_dir, seeds_run_dir  # noqa: F401  (fixtures: records with artifacts)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def artifacts_dir() -> Path:
    out = Path(os.environ.get("ANOBENCH_TEST_ARTIFACTS", REPO / "test-artifacts"))
    out.mkdir(parents=True, exist_ok=True)
    return out


@contextlib.contextmanager
def opened(report: Path):
    """The report loaded in headless Chromium: the page, and the list of errors it reports (console, page,
    failed requests)."""
    errors = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("requestfailed", lambda request: errors.append(f"request failed: {request.url}"))
        page.goto(report.as_uri(), wait_until="load")
        yield page, errors
        browser.close()


def test_html_report_in_chromium(run_dir):  # noqa: F811
    report = write_reports(run_dir, ["html"])[0]
    out = artifacts_dir()
    with opened(report) as (page, errors):
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
    assert errors == []
    assert n_images >= 4 and broken == []
    assert n_tables >= 2 and empty_tables == []
    assert (out / "report-html.png").stat().st_size > 10_000


def test_html_report_with_seeds_intervals_per_defect_and_paired_tables_in_chromium(seeds_run_dir):  # noqa: F811
    """Mean ± std with intervals under each number, the paired table, and per-defect tables that open on click."""
    with opened(seeds_run_dir / "report.html") as (page, errors):
        paired = page.locator("table[data-table='paired-synthetic']")
        assert paired.is_visible() and paired.locator("tbody tr").count() == 3
        assert "[" in paired.locator("tbody tr").first.locator("td").nth(3).inner_text()
        first_mean = page.locator("table[data-table='accuracy-synthetic'] tbody td").nth(4)
        assert "±" in first_mean.inner_text() and first_mean.locator("span.interval").is_visible()
        per_defect = page.locator("table[data-table='per-defect-synthetic-a']")
        assert not per_defect.is_visible()  # collapsed by default
        page.locator("details", has=per_defect).locator("summary").click()
        assert per_defect.is_visible() and per_defect.locator("tbody tr").count() == 4
        page.click("table[data-table='paired-synthetic'] th:nth-child(4)")  # sorting numbers with intervals
        page.screenshot(path=str(artifacts_dir() / "report-seeds-html.png"), full_page=True)
    assert errors == []


def test_leaderboard_in_chromium_filters_sorts_and_links_each_row_to_its_report(folders, tmp_path):
    from anobench.reports import write_results

    page_file, _ = write_results([folders["first"], folders["second_seed"], folders["gpu"]], "html",
                                 tmp_path / "board" / "leaderboard.html")
    with opened(page_file) as (page, errors):
        ranking = page.locator("table[data-table='synthetic-image_auroc']")
        assert ranking.locator("tbody tr").count() == 3  # PaDiM on two devices, SPADE
        links = page.evaluate("Array.from(document.querySelectorAll('td a')).map(a => a.href)")
        page.fill("#filter", "GPU: test")
        visible = ranking.locator("tbody tr:not(.hidden)")
        assert visible.count() == 1 and "GPU: test" in visible.first.inner_text()
        page.fill("#filter", "")
        page.click("table[data-table='synthetic-image_auroc'] th:nth-child(10)")  # sort by value, ascending
        first_value = ranking.locator("tbody tr").first.locator("td").nth(9).inner_text()
        values = [float(t.split()[0]) for t in ranking.locator("tbody tr td:nth-child(10)").all_inner_texts()]
        page.screenshot(path=str(artifacts_dir() / "leaderboard-html.png"), full_page=True)
    assert errors == []
    assert values == sorted(values) and first_value.startswith(f"{values[0]:.2f}")
    assert links and all(Path(link.removeprefix("file://")).is_file() for link in links)
    assert {Path(link).parent.name for link in links} == {"first", "second_seed", "gpu"}
