"""The HTML report in real headless Chromium (playwright, sync API), offline.

Every request that is not a ``file://`` URL is aborted and recorded; a test fails if any was
attempted, if the page logged a console error or threw, if a section's charts did not draw, if
the pattern viewer does not switch heads, or if hostile text from the prompt or the tokenizer ran
as markup instead of showing as text. Also saves a full-page screenshot to /tmp/report.png.

Skipped when /usr/bin/chromium (Debian's package) is absent; playwright's own browser download is
never used.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from report_sample import HOSTILE_STRINGS, sample_report

from workbench.report.html import render_html
from workbench.report.schema import SECTIONS

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]  # fmt: skip
SCREENSHOT = Path("/tmp/report.png")
PLOTS_PER_SECTION = {"attention": 4, "residual": 2, "routing": 2, "length": 1, "kv": 1, "timing": 1}

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"),
]


@dataclass
class LoadedPage:
    page: Any
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_report(browser: Any, report: dict[str, Any], path: Path) -> LoadedPage:
    """Write ``report``'s page to ``path`` and load it in a fresh offline context."""
    path.write_text(render_html(report), encoding="utf-8")
    context = browser.new_context(viewport={"width": 1360, "height": 900}, offline=True)
    loaded = LoadedPage(page=None)

    def route(route: Any) -> None:
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            loaded.requests.append(route.request.url)
            route.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.on("console", lambda message: message.type == "error" and loaded.console_errors.append(message.text))
    page.on("pageerror", lambda error: loaded.page_errors.append(str(error)))
    page.goto(path.as_uri(), wait_until="load")
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length > 0")
    page.wait_for_timeout(300)
    loaded.page = page
    return loaded


@pytest.fixture(scope="module")
def hostile(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoadedPage]:
    loaded = open_report(
        browser, sample_report(hostile=True), tmp_path_factory.mktemp("html") / "report.html"
    )
    yield loaded
    loaded.page.context.close()


def test_no_network_no_errors(hostile: LoadedPage) -> None:
    hostile.page.mouse.move(400, 400)
    assert hostile.requests == []
    assert hostile.console_errors == []
    assert hostile.page_errors == []


def test_every_section_draws_its_charts(hostile: LoadedPage) -> None:
    page = hostile.page
    for section, expected in PLOTS_PER_SECTION.items():
        plots = page.locator(f"section#{section} .js-plotly-plot")
        assert plots.count() == expected, section
        for index in range(expected):
            assert plots.nth(index).locator("svg.main-svg").count() >= 1
            box = plots.nth(index).bounding_box()
            assert box["width"] > 300 and box["height"] > 200, (section, index, box)
    assert page.locator(".plot-error").count() == 0
    # A heatmap drew its cells, a line chart its lines, the bar chart its bars.
    assert page.locator(
        "#fig-attention-entropy_norm .hm image, #fig-attention-entropy_norm .heatmaplayer image"
    ).count()
    assert page.locator("#fig-residual-lens .scatterlayer path.js-line").count() == 2
    assert page.locator("#fig-timing-layers .barlayer .point").count() == 4 * 32
    assert page.locator("#fig-length-loss .shapelayer path").count() >= 1  # the trained-context line


def test_pattern_viewer_switches_heads(hostile: LoadedPage) -> None:
    page = hostile.page
    title = page.locator("#fig-pattern .gtitle")

    def wait_for(prefix: str) -> None:
        page.wait_for_function(
            f"document.querySelector('#fig-pattern .gtitle').textContent.startsWith('{prefix}')"
        )

    # It opens on the head of the most severe attention finding (the planted one-hot head).
    assert title.text_content().startswith("Layer 3, head 5")
    assert page.input_value("#pattern-select") == "1"
    z = page.evaluate("document.getElementById('fig-pattern').data[0].z")
    assert z[5][4] > 0.9  # the planted previous-token head
    page.select_option("#pattern-select", "0")
    wait_for("Layer 0, head 1")
    page.click("#pattern-next")
    wait_for("Layer 3, head 5")
    page.click("#pattern-next")
    wait_for("Layer 12, head 7")
    page.click("#pattern-next")
    page.click("#pattern-next")  # stops at the last head
    wait_for("Layer 20, head 30")
    assert page.input_value("#pattern-select") == "3"
    page.click("#pattern-prev")
    wait_for("Layer 12, head 7")


def test_hostile_text_is_shown_as_text(hostile: LoadedPage) -> None:
    page = hostile.page
    for text in HOSTILE_STRINGS:
        token = page.locator("ol.tokens code.tok", has_text=text)
        assert token.count() >= 1 and token.first.text_content() == text
        assert page.get_by_text(text, exact=True).count() >= 1
    prompt = page.locator("pre.prompt").text_content()
    assert all(text in prompt for text in HOSTILE_STRINGS)
    assert page.locator("h1").text_content() == f"evil{HOSTILE_STRINGS[0]}/../../etc"
    ticks = page.locator("#fig-pattern .xtick text").all_text_contents()
    assert "<img src=x on\u2026" in ticks and "</script><scr\u2026" in ticks
    assert page.evaluate("typeof window.__xss") == "undefined"
    assert page.evaluate("document.querySelectorAll('img, [onerror], [onload]').length") == 0
    page.hover("#fig-pattern .nsewdrag")
    assert page.evaluate("typeof window.__xss") == "undefined"


def test_findings_filter(hostile: LoadedPage) -> None:
    page = hostile.page
    page.click("button.filter[data-filter=fail]")
    visible = page.locator("#findings-table tbody tr:visible")
    assert visible.count() == 2
    assert set(visible.evaluate_all("rows => rows.map(r => r.dataset.status)")) == {"fail"}
    page.click("button.filter[data-filter=all]")
    total = len(sample_report(hostile=True)["findings"])
    assert page.locator("#findings-table tbody tr:visible").count() == total


def test_screenshot(hostile: LoadedPage) -> None:
    hostile.page.evaluate("window.scrollTo(0, 0)")
    hostile.page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 100_000


def test_sections_not_run(browser: Any, tmp_path: Path) -> None:
    loaded = open_report(
        browser, sample_report(omit=[s for s in SECTIONS if s != "kv"]), tmp_path / "report.html"
    )
    page = loaded.page
    try:
        assert loaded.requests == [] and loaded.console_errors == [] and loaded.page_errors == []
        assert page.get_by_text("Not run.").count() == len(SECTIONS) - 1
        assert page.locator(".js-plotly-plot").count() == 1
        assert page.locator("#fig-pattern").count() == 0
    finally:
        page.context.close()


def test_a_real_pipeline_report_with_a_hostile_prompt(browser: Any, tmp_path: Path) -> None:
    """End to end: the pipeline on a tiny MoE checkpoint, probed on hostile text, then Chromium."""
    import torch

    from workbench.config import DecoderConfig
    from workbench.loading.native import save_checkpoint
    from workbench.model.decoder import HookedDecoder
    from workbench.pipeline.run import RunOptions, run

    torch.manual_seed(0)
    config = DecoderConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=4, d_head=8, d_mlp=48, max_positions=64,
                           n_experts=4, top_k=2, name="<script>window.__xss=9</script>")
    folder = save_checkpoint(HookedDecoder(config), tmp_path / "ckpt")
    prompt = " ".join(HOSTILE_STRINGS)
    report = run(str(folder), RunOptions(command="diagnose", profile="ci", prompt=prompt)).report
    loaded = open_report(browser, report, tmp_path / "report.html")
    page = loaded.page
    assert loaded.requests == [] and loaded.console_errors == [] and loaded.page_errors == []
    assert page.evaluate("window.__xss") is None
    assert page.evaluate("document.querySelectorAll('.js-plotly-plot').length") >= 8
    assert "<script>window.__xss=9</script>" in page.text_content("body")
    loaded.page.context.close()


def test_fix_column_only_when_a_finding_has_a_fix(browser: Any, tmp_path: Path) -> None:
    """The fix column holds what to do, a skip's remedy included; a report without any fix has no
    empty column."""
    report = sample_report()
    skips = [f for f in report["findings"] if f["status"] == "skip"]
    skips[0]["fix"] = "Raise probes.max_tokens in the run profile."
    loaded = open_report(browser, report, tmp_path / "with.html")
    page = loaded.page
    try:
        headers = page.locator("#findings-table thead th").all_text_contents()
        assert headers[-1] == "fix"
        row = page.locator("#findings-table tbody tr[data-status=skip]", has_text=skips[0]["message"])
        assert row.locator("td.fix").text_content() == "Raise probes.max_tokens in the run profile."
    finally:
        page.context.close()
    for finding in report["findings"]:
        finding["fix"] = None
    loaded = open_report(browser, report, tmp_path / "without.html")
    page = loaded.page
    try:
        assert "fix" not in page.locator("#findings-table thead th").all_text_contents()
        assert page.locator("#findings-table td.fix").count() == 0
        assert loaded.console_errors == [] and loaded.page_errors == []
    finally:
        page.context.close()


def test_a_stored_report_shows_readable_tokens_and_a_causal_pattern(browser: Any, tmp_path: Path) -> None:
    """A checkpoint without a tokenizer (as the zoo's): its byte probe is labelled with characters,
    not ids ("#104"); the page is the one the writer stores (compact patterns), whose viewer leaves
    the keys after each query blank."""
    import json

    import torch

    from workbench.config import DecoderConfig
    from workbench.loading.native import save_checkpoint
    from workbench.model.decoder import HookedDecoder
    from workbench.pipeline.run import RunOptions, run, write

    torch.manual_seed(0)
    config = DecoderConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=4, d_head=8, d_mlp=48,
                           max_positions=64, name="bytes")
    folder = save_checkpoint(HookedDecoder(config), tmp_path / "ckpt")
    options = RunOptions(command="attention", profile="ci", prompt="hello, world\n\u00e9")
    written = write(run(str(folder), options), tmp_path / "report")
    stored = json.loads((written / "report.json").read_text())
    assert stored["attention"]["token_labels"] == [*"hello, world\n", "<0xC3>", "<0xA9>"]
    pattern = stored["attention"]["patterns"][0]["pattern"]
    assert [len(row) for row in pattern] == list(range(1, len(pattern) + 1))  # cut at the diagonal
    context = browser.new_context(viewport={"width": 1360, "height": 900}, offline=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto((written / "report.html").as_uri(), wait_until="load")
        page.wait_for_function("document.querySelectorAll('#fig-pattern .main-svg').length > 0")
        tokens = page.locator("ol.tokens code.tok").all_text_contents()
        assert tokens[:5] == ["h", "e", "l", "l", "o"] and "\u21b5" in tokens  # the newline, visible
        assert not any(token.startswith("#") for token in tokens)
        z = page.evaluate("document.getElementById('fig-pattern').data[0].z")
        assert len(z) == len(pattern) and all(len(row) == len(pattern) for row in z)
        assert z[0][1] is None and z[1][0] is not None  # past the diagonal: blank, not a weight
        assert errors == []
    finally:
        context.close()
