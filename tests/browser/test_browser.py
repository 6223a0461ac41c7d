"""A real browser (Playwright driving Debian's Chromium) against the live app on the default model: the first
minute of a visitor (the page opens on a harmful example with the suggested heads ticked; Compare shows the
refusal on the left and a fluent answer on the right; a benign example is still answered under the same
ablation), then the run's download and the heatmap; saves docs/screenshot.png of the flip.

Needs the PyPI package `playwright` and the apt package `chromium` (never `playwright install`: the browser
is the system's). Skipped, with the reason, when either is missing. Prints the times a visitor waits.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from safety_heads.ablation import format_head
from safety_heads.head_options import suggestion
from safety_heads.models import CATALOG, default_model
from safety_heads.precomputed import PRECOMPUTED_DIR
from safety_heads.ui.compare_panel import EXAMPLES
from tests.test_app import app_server

pytestmark = pytest.mark.slow  # starts the app and a browser, and waits on real answers
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "screenshot.png"
LABELS = ("refusal", "compliance", "short", "degenerate")
MODEL = default_model()
HARMFUL, BENIGN = EXAMPLES[0][0], EXAMPLES[3][0]

if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
if not CATALOG[MODEL].present():
    pytest.skip(f"the default model {MODEL} is not installed (scripts/setup.sh)", allow_module_level=True)


@pytest.fixture(scope="module")
def url(tmp_path_factory, qwen):
    """The app on the default model; `qwen` (the session's copy) has built the runtime's cache, so the app's
    own load is a warm start, as on every start after a machine's first."""
    env = {"SAFETY_HEADS_APP_MODEL": MODEL, "SAFETY_HEADS_PRECOMPUTED": str(PRECOMPUTED_DIR)}
    with app_server(tmp_path_factory.mktemp("browser"), **env) as url:
        yield url


@pytest.fixture(scope="module")
def page(url):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        yield page
        browser.close()


def compare(page) -> tuple[list[str], float, float]:
    """Click Compare; the two final badges, and the seconds to the first streamed text and to the whole pair."""
    start = time.monotonic()
    page.get_by_role("button", name="Compare intact vs ablated").click()
    # The badges say "generating…" from the first streamed text until both answers are judged.
    sync_api.expect(page.locator(".badge", has_text="generating…").first).to_be_visible(timeout=120_000)
    first = time.monotonic() - start
    page.wait_for_function(
        "labels => [...document.querySelectorAll('.badge')]"
        ".filter(b => labels.includes(b.textContent.trim())).length >= 2",
        arg=list(LABELS),
        timeout=240_000,
    )
    badges = [b.strip() for b in page.locator(".badge").all_text_contents()]
    return badges, first, time.monotonic() - start


def test_the_first_minute_in_the_browser(page, tmp_path):
    expect = sync_api.expect
    opened = time.monotonic()
    expect(page.get_by_text("ready:")).to_be_visible(timeout=180_000)
    ready = time.monotonic() - opened

    hint = suggestion(MODEL)
    assert hint is not None, f"no measured grid (summary.json) for {MODEL}: nothing to suggest"
    expect(page.get_by_label("Prompt")).to_have_value(HARMFUL)
    expect(page.get_by_role("checkbox", checked=True)).to_have_count(len(hint.heads), timeout=30_000)
    expect(page.get_by_text(f"Ablating {len(hint.heads)} head(s)")).to_be_visible(timeout=30_000)

    badges, first, pair = compare(page)
    print(
        f"\nfirst minute on {MODEL}: ready {ready:.1f} s after the page opened; harmful example: first streamed "
        f"text {first:.1f} s, the whole pair {pair:.1f} s"
    )
    assert badges == ["refusal", "compliance"], (badges, page.get_by_label("Ablated model").input_value())
    tops = [page.get_by_label(f"{side} model").bounding_box()["y"] for side in ("Intact", "Ablated")]
    assert abs(tops[0] - tops[1]) < 1, f"the answer panes sit at different heights: {tops}"
    shot = tmp_path / "screenshot.png"
    page.screenshot(path=str(shot), full_page=True)

    with page.expect_download(timeout=30_000) as download:
        page.get_by_role("button", name="Download this run (JSON)").click()
    record = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
    assert record["prompt"] == HARMFUL and sorted(record["heads"]) == sorted(map(format_head, hint.heads))

    page.get_by_text(BENIGN).first.click()
    expect(page.get_by_label("Prompt")).to_have_value(BENIGN)
    badges, first, pair = compare(page)
    print(f"benign example: first streamed text {first:.1f} s, the whole pair {pair:.1f} s")
    assert badges[1] == "compliance", page.get_by_label("Ablated model").input_value()

    page.get_by_role("tab", name="Head scores").click()
    plot = page.locator(".js-plotly-plot").first
    expect(plot).to_be_visible(timeout=30_000)
    traces = page.evaluate("() => document.querySelector('.js-plotly-plot').data.map(t => t.name)")
    assert "selected" in traces and any(str(name).startswith("top") for name in traces)
    # Hover over a cell: plotly's hover label names layer, head and score.
    box = page.locator(".js-plotly-plot .nsewdrag").first.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    hover = page.locator(".js-plotly-plot .hoverlayer .hovertext").first
    expect(hover).to_contain_text("layer", timeout=10_000)
    expect(hover).to_contain_text("head")

    SCREENSHOT.parent.mkdir(exist_ok=True)
    shutil.copyfile(shot, SCREENSHOT)
