"""`tasksync report --html` in a real headless browser (Debian's chromium, driven through
Playwright): no script errors, no network, every chart drawn with visible shapes, light and
dark, and a hostile failure reason shown as text, never run."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sync.archive.store import Store
from sync.jobs import pipeline
from sync.server.client import connect
from sync.simulator import Simulator, SimulatorServer
from sync.views.report import normalize_reason

from .helpers import CI, Run, source_for

HOSTILE = '<script>alert(1)</script><img src=x onerror="alert(2)">'


def browser_path() -> str:
    """Chromium's executable; skip (fail under CI=true) when it or Playwright is missing."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        import playwright  # noqa: F401
    except ImportError:
        path = None
    if path is None:
        reason = "chromium or playwright not installed (apt-get install chromium)"
        if CI:
            pytest.fail(f"CI=true requires {reason}")
        pytest.skip(reason)
    return path


def shapes(page: Any, figure: int) -> dict[str, int]:
    """How many rects, polylines and texts of the figure's chart the browser laid out with
    a non-empty box, and the fill the first shape was painted with."""
    return page.evaluate(
        """(n) => {
            const svg = document.querySelectorAll('figure svg')[n];
            const seen = {rect: 0, polyline: 0, text: 0};
            for (const el of svg.querySelectorAll('rect, polyline, text')) {
                const box = el.getBoundingClientRect();
                if (box.width > 0 && box.height > 0) seen[el.tagName] += 1;
            }
            const first = svg.querySelector('rect, polyline');
            const style = getComputedStyle(first);
            seen.paint = first.tagName === 'rect' ? style.fill : style.stroke;
            return seen;
        }""",
        figure,
    )


def test_html_report_draws_every_chart_in_a_real_browser(
    run: Run,
    sqlite_store: Store,
    serve: Callable[[Simulator], SimulatorServer],
    tmp_path: Path,
) -> None:
    chromium = browser_path()
    from playwright.sync_api import sync_playwright

    sim = Simulator(2_000, seed=5, gap_ms=600_000)  # two weeks
    failed = next(i for i in sim.alive if sim.task(i)["status"] == "FAILURE")
    sim.overrides[failed] = dict(sim.task(failed), failReason=HOSTILE)
    src = source_for(serve(sim).url)
    with connect(src) as client:
        pipeline.backfill(sqlite_store, client, src)
    page_file = tmp_path / "report.html"
    url = sqlite_store.url.render_as_string(hide_password=False)
    code, out, err = run("--db", url, "report", "--html", str(page_file))
    assert code == 0, err
    assert out.startswith(f"wrote {page_file}")
    errors: list[str] = []
    remote: list[str] = []
    dialogs: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 900, "height": 1200})
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.on(
            "request", lambda r: remote.append(r.url) if not r.url.startswith("file:") else None
        )
        page.goto(page_file.as_uri())
        page.wait_for_load_state("load")
        assert page.locator("figure").count() == 4
        volume, times, reasons, heat = (shapes(page, n) for n in range(4))
        days = page.locator("figure").nth(0).locator("tbody tr, tr").count() - 1
        assert days >= 14 and volume["rect"] >= days  # at least a bar segment a day
        assert times["polyline"] == 4  # queue and run, p50 and p95
        assert reasons["rect"] >= 2
        assert heat["rect"] == 7 * 24
        for drawn in (volume, times, reasons, heat):
            assert drawn["text"] > 0 and drawn["paint"] not in ("none", "rgba(0, 0, 0, 0)")
        light = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert normalize_reason(HOSTILE) in page.locator("figure").nth(2).inner_text()
        page.screenshot(path=str(tmp_path / "report-light.png"), full_page=True)
        page.emulate_media(color_scheme="dark")
        dark = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert shapes(page, 0)["paint"] != volume["paint"]  # the palette follows the mode
        page.screenshot(path=str(tmp_path / "report-dark.png"), full_page=True)
        browser.close()
    assert light == "rgb(255, 255, 255)" and dark != light
    assert errors == [] and dialogs == [] and remote == []
