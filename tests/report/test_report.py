"""Tests of workbench.report: the schema validator, the atomic writer, the HTML page (without a
browser; see test_report_browser.py for the page in Chromium) and the terminal tables."""

from __future__ import annotations

import base64
import copy
import hashlib
import html
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from report_sample import HOSTILE_STRINGS, sample_report
from rich.console import Console

from workbench.report import writer
from workbench.report.compact import compact
from workbench.report.figures import kv_figures, length_figures, moving_average
from workbench.report.html import plotly_js, render_html, script_json
from workbench.report.patterns import pattern_figures
from workbench.report.schema import SECTIONS, TIME_FIELDS, strip_time_fields, validate
from workbench.report.terminal import findings_table, render, summary_panel, timing_block
from workbench.report.writer import ReportError, dumps, slug, to_jsonable, write_report


@pytest.fixture(scope="module")
def base_report() -> dict:
    return sample_report()


@pytest.fixture
def report(base_report: dict) -> dict:
    return copy.deepcopy(base_report)


@pytest.fixture(scope="module")
def hostile_html() -> str:
    return render_html(sample_report(hostile=True))


# --- schema ------------------------------------------------------------------------------------


def test_sample_reports_are_valid(report: dict) -> None:
    assert validate(report) == []
    assert validate(sample_report(hostile=True)) == []
    assert validate(sample_report(omit=SECTIONS)) == []


@pytest.mark.parametrize(
    ("break_it", "expected"),
    [
        (lambda r: r["run"].pop("seed"), "run.seed: missing"),
        (lambda r: r.pop("findings"), "findings: missing"),
        (lambda r: r["run"].update(seed="0"), "run.seed: expected an integer, got str"),
        (lambda r: r["run"].update(backend="tensorrt"), "run.backend: expected one of"),
        (lambda r: r["run"].update(created_utc="yesterday"), "run.created_utc: not an ISO 8601 time"),
        (lambda r: r["findings"][0].update(status="bad"), "findings[0].status: expected one of"),
        (lambda r: r["findings"][0].update(value="0.9"), "findings[0].value: expected a number, got str"),
        (lambda r: r["findings"][0]["where"].update(layer=-1), "findings[0].where.layer: expected a non-negative"),
        (lambda r: r["attention"]["head_means"]["max_prob"][3].__setitem__(5, float("nan")),
         "attention.head_means.max_prob[3][5]: nan is not allowed in JSON"),
        (lambda r: r["kv"]["plan"].update(fraction_used=float("inf")), "kv.plan.fraction_used: inf is not allowed"),
        (lambda r: r["attention"]["head_means"]["entropy"][0].pop(), "attention.head_means.entropy[0]: expected 32 items"),
        (lambda r: r["attention"]["patterns"][0].update(layer=99), "attention.patterns[0].layer: expected an integer in [0, 32)"),
        (lambda r: r["routing"]["layers"][2]["load"].append(1), "routing.layers[2].load: expected 8 items, got 9"),
        (lambda r: r["length"]["probes"][0].update(kind="random"), "length.probes[0].kind: expected one of"),
        (lambda r: r["timing"]["components"]["per_layer"][0].pop("attn_us"), "timing.components.per_layer[0].attn_us: missing"),
        (lambda r: r["summary"]["counts"].update(fail=0), "summary.counts.fail: says 0, findings have 2"),
        (lambda r: r.update(schema_version=2), "schema_version: this workbench reads version 1, got 2"),
        (lambda r: r.update(schema="something/else"), "schema: expected 'transformer-workbench/report'"),
        (lambda r: r["artifacts"].update(chrome_trace="/tmp/trace.json"), "artifacts.chrome_trace: must be a path relative"),
        (lambda r: r["artifacts"].update(trace_dir="../elsewhere"), "artifacts.trace_dir: must be a path relative"),
        (lambda r: r["model"]["config"].update(moe_layers=(0, 1)), "model.config.moe_layers: tuple is not a JSON value"),
        (lambda r: r.update(residual=[]), "residual: expected an object, got list"),
    ],
)  # fmt: skip
def test_validate_rejects_broken_reports(report: dict, break_it, expected: str) -> None:
    break_it(report)
    problems = validate(report)
    assert any(problem.startswith(expected) for problem in problems), problems


def test_validate_rejects_non_objects() -> None:
    assert validate([]) == ["<report>: expected an object, got list"]


def test_validate_accepts_null_sections_and_bare_timing_names(report: dict) -> None:
    for row in report["timing"]["components"]["per_layer"]:
        for name in ("attn", "mlp", "router", "other"):
            row[name] = row.pop(f"{name}_us")
    report["kv"] = None
    report["extra_key_from_a_later_writer"] = {"anything": 1}
    assert validate(report) == []


def test_validate_caps_the_number_of_problems(report: dict) -> None:
    report["attention"]["by_position"]["entropy"] = [[[float("nan")] * 100] * 32] * 32
    problems = validate(report)
    assert len(problems) == 51 and re.fullmatch(r"\.\.\. and \d+ more problems", problems[-1])


def test_strip_time_fields(report: dict) -> None:
    stripped = strip_time_fields(report)
    assert report["time_fields"] == TIME_FIELDS
    assert not {"created_utc", "duration_seconds", "id"} & set(stripped["run"])
    assert "timing" not in stripped and "time_fields" not in stripped
    assert stripped["run"]["seed"] == report["run"]["seed"] and report["timing"] is not None
    other = copy.deepcopy(report)
    other["run"].update(created_utc="2030-01-01T00:00:00Z", duration_seconds=1.0, id="other-20300101T000000Z")
    other["timing"]["wall_seconds"] = 99.0
    assert strip_time_fields(other) == stripped


# --- writer ------------------------------------------------------------------------------------


def test_write_report_layout_and_json_round_trip(report: dict, tmp_path: Path) -> None:
    report["findings"][1]["value"] = float("nan")  # the writer turns NaN into null
    report["summary"]["counts"] = dict(report["summary"]["counts"])
    folder = write_report(report, None, reports_root=tmp_path)
    assert folder == tmp_path / "mixtral-8x7b-20261123T145500Z"
    assert sorted(p.name for p in folder.iterdir()) == ["report.html", "report.json"]
    text = (folder / "report.json").read_text(encoding="utf-8")
    loaded = json.loads(text)
    assert loaded == compact(to_jsonable(report))  # the stored form: see test_report_store.py
    assert loaded["findings"][1]["value"] is None
    assert text == dumps(loaded) and text.endswith("}\n")  # sorted keys, scalar lists on one line
    assert validate(loaded) == []
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no temporary left


def test_write_report_never_overwrites(report: dict, tmp_path: Path) -> None:
    folders = [write_report(report, None, reports_root=tmp_path) for _ in range(3)]
    names = [folder.name for folder in folders]
    assert names == ["mixtral-8x7b-20261123T145500Z", "mixtral-8x7b-20261123T145500Z-2",
                     "mixtral-8x7b-20261123T145500Z-3"]  # fmt: skip
    assert all((folder / "report.json").is_file() for folder in folders)
    explicit = write_report(report, tmp_path / "mine", reports_root=tmp_path / "unused")
    assert explicit == tmp_path / "mine"
    with pytest.raises(ReportError, match="holds files"):  # a named folder is never silently "mine-2"
        write_report(report, tmp_path / "mine")
    assert not (tmp_path / "unused").exists() and not (tmp_path / "mine-2").exists()


def test_empty_run_id_becomes_the_folder_name(report: dict, tmp_path: Path) -> None:
    report["run"]["id"] = ""
    first = write_report(report, None, reports_root=tmp_path)
    second = write_report(report, None, reports_root=tmp_path)
    assert report["run"]["id"] == ""  # the caller's dict is left alone
    for folder in (first, second):
        assert json.loads((folder / "report.json").read_text())["run"]["id"] == folder.name
        assert f'<dd class="mono">{folder.name}</dd>' in (folder / "report.html").read_text()


def test_write_report_copies_traces_and_extra_files(report: dict, tmp_path: Path) -> None:
    source = tmp_path / "scratch" / "trace"
    (source / "smoke").mkdir(parents=True)
    (source / "smoke" / "host_1.123.pt.trace.json").write_text('{"traceEvents": []}')
    (source / "smoke" / "trace.json").write_text('{"traceEvents": []}')
    chrome = tmp_path / "scratch" / "copy.json"
    chrome.write_text("{}")
    folder = write_report(report, None, reports_root=tmp_path / "reports", trace_source=source,
                          extra_files={"trace.json": chrome, "notes/readme.txt": b"hello"})  # fmt: skip
    assert (folder / "trace" / "smoke" / "host_1.123.pt.trace.json").is_file()
    assert (folder / report["artifacts"]["chrome_trace"]).is_file()
    assert (folder / "trace.json").read_text() == "{}"
    assert (folder / "notes" / "readme.txt").read_bytes() == b"hello"


@pytest.mark.parametrize("name", ["../escape.txt", "/etc/passwd", "a/../../b", "report.json", "", "a\\b"])
def test_write_report_refuses_unsafe_extra_names(report: dict, tmp_path: Path, name: str) -> None:
    with pytest.raises(ReportError):
        write_report(report, None, reports_root=tmp_path / "reports", extra_files={name: b"x"})
    assert not (tmp_path / "reports").exists()


def test_invalid_report_writes_nothing(report: dict, tmp_path: Path) -> None:
    report["run"].pop("id")
    with pytest.raises(ReportError, match="run.id: missing"):
        write_report(report, None, reports_root=tmp_path / "reports")
    assert not (tmp_path / "reports").exists()


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_failure_mid_write_leaves_nothing(report: dict, tmp_path: Path, monkeypatch, error) -> None:
    real_write = writer._write_bytes
    calls = []

    def failing_write(path: Path, data: bytes) -> None:
        calls.append(path.name)
        if len(calls) == 2:  # report.json is on disk, report.html is not
            raise error
        real_write(path, data)

    monkeypatch.setattr(writer, "_write_bytes", failing_write)
    with pytest.raises(type(error)):
        write_report(report, None, reports_root=tmp_path)
    assert calls == ["report.json", "report.html"]
    assert list(tmp_path.iterdir()) == []


def test_failure_at_rename_releases_the_claim(report: dict, tmp_path: Path, monkeypatch) -> None:
    def failing_rename(source, target) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(writer.os, "rename", failing_rename)
    with pytest.raises(KeyboardInterrupt):
        write_report(report, None, reports_root=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_failure_copying_traces_leaves_nothing(report: dict, tmp_path: Path, monkeypatch) -> None:
    source = tmp_path / "trace"
    source.mkdir()

    def failing_copy(*args, **kwargs) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(writer.shutil, "copytree", failing_copy)
    with pytest.raises(KeyboardInterrupt):
        write_report(report, None, reports_root=tmp_path / "reports", trace_source=source)
    assert list((tmp_path / "reports").iterdir()) == []


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("SmolLM2-135M", "smollm2-135m"),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "huggingfacetb-smollm2-135m-instruct"),
        ("../../etc/passwd", "etc-passwd"),
        ("..", "model"),
        ("", "model"),
        ("   ", "model"),
        (".hidden", "hidden"),
        ("Ünïcödé mödel", "unicode-model"),
        ("CON", "model-con"),
        ("nul.gguf", "model-nul.gguf"),
        ("a..b", "a.b"),
        ("x" * 200, "x" * 64),
    ],
)
def test_slug(name: str, expected: str) -> None:
    assert slug(name) == expected


SAFE_COMPONENT = re.compile(r"[a-z0-9](?:[a-z0-9._-]*[a-z0-9])?")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
def test_slug_is_always_one_safe_path_component(name: str) -> None:
    result = slug(name)
    assert SAFE_COMPONENT.fullmatch(result) and ".." not in result and len(result) <= 64
    assert Path("/reports", result).parent == Path("/reports")


def test_hostile_model_name_stays_inside_the_root(tmp_path: Path) -> None:
    hostile = sample_report(hostile=True)
    folder = write_report(hostile, None, reports_root=tmp_path)
    assert folder.parent == tmp_path
    assert folder.name == "evil-img-src-x-onerror-window.__xss-1-etc-20261123T145500Z"


# --- HTML --------------------------------------------------------------------------------------


def test_html_is_self_contained(hostile_html: str) -> None:
    assert plotly_js() in hostile_html and "window.Plotly = Plotly" in plotly_js()
    page = hostile_html.replace(plotly_js(), "")  # the bundle's own strings name plotly.com etc.
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.IGNORECASE)
    assert not re.search(r"https?://", page)
    assert not re.search(r"<link\b|<img\b|<iframe\b|<object\b", page, re.IGNORECASE)
    assert "@import" not in page and "url(" not in page
    assert "default-src 'none'" in page


def test_html_content_security_policy_allows_exactly_the_inline_scripts(hostile_html: str) -> None:
    policy = html.unescape(
        re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', hostile_html)[1]
    )
    allowed = set(re.findall(r"'sha256-([^']+)'", policy))
    scripts = re.findall(r"<script>(.*?)</script>", hostile_html, re.DOTALL)
    assert len(scripts) == 2
    digests = {base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() for s in scripts}
    assert digests == allowed


def test_html_renders_every_finding(report: dict) -> None:
    page = render_html(report)
    for finding in report["findings"]:
        assert finding["message"].replace("'", "&#39;").replace('"', "&#34;") in page
    assert page.count('<tr data-status="') == len(report["findings"])
    first_rows = re.findall(r'<tr data-status="(\w+)"', page)
    assert first_rows[:2] == ["fail", "fail"] and first_rows[-1] == "pass"
    assert "L3 H5" in page and "0.97 vs 0.5" in page


def test_html_escapes_hostile_text(hostile_html: str) -> None:
    page = hostile_html.replace(plotly_js(), "")
    for text in HOSTILE_STRINGS:
        assert text not in page
    assert not re.search(r"<(?:img|svg)\b", page) and page.count("</script>") == 4
    assert "&lt;img src=x onerror=&#34;window.__xss=1&#34;&gt;" in page
    assert "&lt;/script&gt;&lt;script&gt;window.__xss=2&lt;/script&gt;" in page
    assert "\\u0026lt;/script\\u0026gt;\\u0026lt;scr" in page  # a pattern tick label, in the JSON data


def test_script_json_cannot_leave_its_element() -> None:
    value = {"label": "</script><!-- <b>&amp;</b>\u2028\u2029", "n": [1, 2.5, None]}
    text = script_json(value)
    assert not set("<>&") & set(text) and "\u2028" not in text and "\u2029" not in text
    assert json.loads(text) == value


def test_plot_strings_are_escaped_for_plotly() -> None:
    hostile = sample_report(hostile=True)
    ticks = [t for fig in pattern_figures(hostile["attention"]) for t in fig["layout"]["xaxis"]["ticktext"]]
    assert "&lt;img src=x on\u2026" in ticks and not any("<" in tick for tick in ticks)


def test_length_figure_marks_the_trained_context_only_when_reached(report: dict) -> None:
    layout = length_figures(report["length"])["fig-length-loss"]["layout"]
    assert layout["shapes"][0]["x0"] == report["length"]["trained_context"]
    report["length"]["trained_context"] = 10**7
    layout = length_figures(report["length"])["fig-length-loss"]["layout"]
    assert "shapes" not in layout and "is beyond the longest probe" in layout["title"]["text"]


def test_moving_average_skips_nulls() -> None:
    assert moving_average([1.0, None, 3.0, 5.0], 2) == [1.0, 2.0, 4.0, 4.0]
    assert moving_average([None, None], 3) == [None, None]


def test_kv_figure_uses_a_log_scale_for_a_small_model(report: dict) -> None:
    assert kv_figures(report["kv"])["fig-kv-memory"]["layout"]["yaxis"].get("type") != "log"
    for device in report["kv"]["devices"]:
        device["usable_bytes"] *= 1000
    assert kv_figures(report["kv"])["fig-kv-memory"]["layout"]["yaxis"]["type"] == "log"


def test_sections_not_run_say_so() -> None:
    page = render_html(sample_report(omit=SECTIONS))
    assert page.count("<strong>Not run.</strong>") == len(SECTIONS)
    assert 'id="fig-' not in page
    assert '<script type="application/json" id="wb-figures">{}</script>' in page


def test_moe_free_model_routing_section() -> None:
    report = sample_report()
    report["routing"] = {"layers": []}
    assert "This model has no mixture-of-experts layers." in render_html(report)


# --- terminal ----------------------------------------------------------------------------------


def _text(renderable) -> str:
    console = Console(width=160, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_findings_table(report: dict) -> None:
    report["findings"][0]["message"] = "[bold red]not markup[/bold red]"
    text = _text(findings_table(report))
    assert "[bold red]not markup[/bold red]" in text
    assert "L3 H5" in text and "0.97 vs 0.5" in text and "L4 E6 moe" in text
    rows = [line for line in text.splitlines() if line.startswith("│") and line[1:5].strip()]
    assert [row.split("│")[1].strip() for row in rows][:2] == ["FAIL", "FAIL"]
    only_warn = _text(findings_table(report, statuses=("warn",), limit=2))
    assert "FAIL" not in only_warn and "1 more not shown" in only_warn


def test_summary_panel_and_render(report: dict) -> None:
    report["kv"] = None
    report["findings"] = [f for f in report["findings"] if f["analyzer"] != "kv_memory"]
    report["summary"]["analyzers"].pop("kv_memory")
    text = _text(summary_panel(report))
    assert "mixtral-8x7b" in text and "overall FAIL" in text and "not run: kv" in text
    console = Console(width=160, record=True, color_system=None)
    render(report, console)
    output = console.export_text()
    assert "5 passing checks not shown" in output and "logit_scale" not in output


def test_a_skip_says_how_to_run_its_check(report: dict) -> None:
    skip = next(f for f in report["findings"] if f["status"] == "skip")
    skip["fix"] = "Raise probes.max_tokens (e.g. --profile long)."
    console = Console(width=160, record=True, color_system=None)
    render(report, console)
    lines = console.export_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("SKIP"))
    assert lines[at + 1].strip() == "fix: Raise probes.max_tokens (e.g. --profile long)."


def test_a_section_its_analyzer_skipped_is_not_also_not_run(report: dict) -> None:
    """`workbench routing` on a dense model: routing_collapse says skip (no MoE layers) and the
    routing section is empty; the header says skip once, never "not run" as well."""
    report["routing"] = None
    report["summary"]["analyzers"]["routing_collapse"] = "skip"
    text = _text(summary_panel(report))
    assert "routing_collapse skip" in text and "not run" not in text
    report["summary"]["analyzers"].pop("routing_collapse")
    assert "not run: routing" in _text(summary_panel(report))


def test_timing_block_says_where_the_time_goes(report: dict, tmp_path) -> None:
    timing = report["timing"]
    text = _text(timing_block(timing, tmp_path))
    totals = timing["components"]["totals"]
    mlp_share = f"MLP {totals['mlp_us'] / totals['forward_us']:.0%}"
    assert "per forward of 1 x 512 tokens on cpu (median of 3 runs, without the profiler)" in text
    assert "per forward under the profiler (its overhead included)" in text
    assert mlp_share in text  # a share of the profiled forward, from the totals
    heaviest = text[text.index("top ops (CPU)"):]
    assert heaviest.index("aten::mm") < heaviest.index("aten::bmm") < heaviest.index("aten::_softmax")
    assert "aten::copy_" not in text  # the top 5 only
    assert str(tmp_path / "trace/smoke/trace.json") in text
    shares = [int(share) for share in re.findall(r"(\d+)%", text[text.index("profiled"):text.index("trace")])]
    assert shares and max(shares) <= 100  # no part exceeds its whole
    console = Console(width=160, record=True, color_system=None)
    render(report, console, folder=tmp_path)
    assert "top ops (CPU)" in console.export_text()
    report["timing"] = None
    console = Console(width=160, record=True, color_system=None)
    render(report, console)
    assert "top ops" not in console.export_text()
