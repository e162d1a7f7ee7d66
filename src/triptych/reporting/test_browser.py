"""Open the report in headless Chromium the way a person would, and keep a screenshot.

Uses Debian's ``chromium`` package through Playwright (no Playwright browser download). Without
``/usr/bin/chromium`` the test is skipped on a workstation but fails on CI (``CI=true``), so a CI
image that forgot the package cannot pass silently.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.fixtures.synthetic_runs import ART_CLASSES
from triptych.reporting.conftest import FAILED, MODELS

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# per finished model: 7 figures, 2 Grad-CAM overlays; diagrams: resnet50, xception (+ separable); 2 comparison figures
EXPECTED_IMAGES = len(MODELS) * (7 + 2) + 3 + 2


def _require_browser() -> None:
    on_ci = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}
    missing = None
    if not CHROMIUM.exists():
        missing = f"{CHROMIUM} not found (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "the playwright Python package is not installed"
    if missing:
        (pytest.fail if on_ci else pytest.skip)(missing)


@pytest.mark.browser
def test_report_looks_right_in_chromium(report_path, tmp_path):
    """The shared report (conftest.py): two models with profiles, diagrams and Grad-CAM, a failed
    and a running experiment."""
    _require_browser()
    from playwright.sync_api import sync_playwright

    report = report_path

    console_errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda err: console_errors.append(str(err)))
            page.on("request", lambda req: requests.append(req.url))
            page.goto(report.as_uri(), wait_until="load")
            images = page.evaluate("Array.from(document.images, i => [i.alt, i.complete, i.naturalWidth])")
            tables = "\n".join(page.locator("table").all_inner_texts())
            overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
            # tables wider than their box (scrolling sideways inside it)
            clipped = page.evaluate(
                "Array.from(document.querySelectorAll('.scroll'), d => d.scrollWidth - d.clientWidth).filter(x => x > 0)")
            headings = page.locator("h3").all_inner_texts()
            reference = page.locator(".reference").inner_text()
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()

    if os.environ.get("TRIPTYCH_SCREENSHOT_DIR"):
        target = Path(os.environ["TRIPTYCH_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, target / "report.png")

    assert console_errors == []
    assert all(url.startswith(("file:", "data:")) for url in requests), requests  # nothing from the network
    assert len(images) == EXPECTED_IMAGES, [alt for alt, _, _ in images]
    assert all(complete and width > 0 for _, complete, width in images), [alt for alt, _, w in images if not w]
    assert sum("Grad-CAM overlay" in alt for alt, _, _ in images) == 2 * len(MODELS)
    assert sum("drawn from the built model graph" in alt for alt, _, _ in images) == 3
    for name in [*ART_CLASSES, *(m for m, _ in MODELS.values()), *MODELS, *FAILED]:
        assert name in tables, name
    for text in ("GFLOPs / image", "throughput (img/s)", "peak memory (MB)", "key innovation", "best use case"):
        assert text in tables, text
    assert headings.count("Grad-CAM: most confident mistakes") == len(MODELS)
    assert headings.count("Architecture") == len(MODELS)
    assert "REFERENCE ONLY" in reference and "published, different data (seed study" in reference.lower()
    assert overflow <= 0, "the page scrolls sideways at 1400 px"
    assert clipped == [], "a table is wider than the page at 1400 px"
    assert shot.stat().st_size > 50_000


def test_missing_browser_fails_on_ci_and_skips_elsewhere(monkeypatch, tmp_path):
    """A CI machine without Chromium must not pass the browser test by skipping it."""
    monkeypatch.setitem(globals(), "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="not found"):
        _require_browser()
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception, match="not found"):
        _require_browser()
