"""Terminal view of a report: rich renderables for ``cli.py`` to print.

:func:`summary_panel` and :func:`findings_table` build renderables and print nothing;
:func:`render` prints both to the console the caller passes in. Report strings (model names,
messages, fixes) may contain ``[...]`` that rich would read as markup, so every one is wrapped
in :class:`rich.text.Text`, which rich never parses; and they may contain terminal escape
sequences (a token, a checkpoint's name), which :func:`text.printable` makes inert first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from workbench.findings import STATUS_ORDER
from workbench.report.format import (
    format_number,
    format_seconds,
    format_si,
    format_us,
    sorted_findings,
    value_text,
    where_text,
)
from workbench.report.schema import SECTION_ANALYZERS, SECTIONS
from workbench.report.text import printable
from workbench.units import plural

STATUS_STYLES = {"pass": "green", "info": "blue", "skip": "dim", "warn": "yellow", "fail": "bold red"}


def status_text(status: str, upper: bool = True) -> Text:
    """``status`` in its colour."""
    return Text(status.upper() if upper else status, style=STATUS_STYLES.get(status, ""))


def findings_table(
    report: dict[str, Any], statuses: tuple[str, ...] | None = None, limit: int | None = None
) -> Table:
    """The findings, fail first; only ``statuses`` when given, at most ``limit`` rows (the
    caption says how many were left out)."""
    findings = sorted_findings(report.get("findings") or [])
    if statuses is not None:
        findings = [f for f in findings if f["status"] in statuses]
    shown = findings if limit is None else findings[:limit]
    table = Table(title="Findings", title_justify="left", expand=True, show_lines=False, pad_edge=False)
    table.add_column("status", no_wrap=True)
    table.add_column("analyzer", style="cyan", overflow="fold", max_width=22)
    table.add_column("check", overflow="fold", max_width=24)
    table.add_column("where", overflow="fold", max_width=20)
    table.add_column("value vs threshold", justify="right", overflow="fold", max_width=22)
    table.add_column("message", ratio=1, overflow="fold", min_width=30)
    for finding in shown:
        message = Text(printable(finding["message"]))
        if finding.get("fix"):
            message.append("\n\u2192 ", style="dim")
            message.append(printable(finding["fix"]), style="italic")
        table.add_row(
            status_text(finding["status"]),
            Text(printable(finding["analyzer"])),
            Text(printable(finding["check"])),
            Text(printable(where_text(finding.get("where")))),
            Text(value_text(finding)),
            message,
        )
    hidden = len(findings) - len(shown)
    if hidden:
        table.caption = f"{hidden} more not shown"
    if not findings:
        table.caption = "no findings"
    return table


def summary_panel(report: dict[str, Any]) -> Panel:
    """Model, run, overall status and counts per status and analyzer."""
    model, run, summary = report["model"], report["run"], report["summary"]
    lines = Text()
    lines.append("overall ", style="bold")
    lines.append_text(status_text(summary["status"]))
    lines.append("   ")
    for status in sorted(STATUS_ORDER, key=STATUS_ORDER.__getitem__, reverse=True):
        count = summary["counts"].get(status, 0)
        if count:
            lines.append(f"{count} ", style="bold")
            lines.append_text(status_text(status, upper=False))
            lines.append("  ")
    if summary["analyzers"]:
        lines.append("\n")
    for name, status in sorted(summary["analyzers"].items()):
        lines.append(f"{printable(name)} ")
        lines.append_text(status_text(status, upper=False))
        lines.append("  ")
    facts = Text(style="dim")
    run_id = f"run {run['id']} \u00b7 " if run["id"] else ""
    facts.append(printable(f"\n{run_id}{run['command']} \u00b7 profile {run['profile']} \u00b7 seed {run['seed']}"))
    facts.append(printable(f"\n{run['device']} \u00b7 {run['dtype']} \u00b7 {run['backend']} backend \u00b7 "))
    facts.append(
        f"{format_number(run['duration_seconds'])} s \u00b7 {format_number(model['n_params'])} parameters"
    )
    judged = set(summary["analyzers"])
    not_run = [name for name in SECTIONS
               if report.get(name) is None and not judged & set(SECTION_ANALYZERS.get(name, ()))]
    if not_run:
        facts.append(f"\nnot run: {', '.join(not_run)}")
    title = Text(printable(model["name"], keep_newlines=False), style="bold")
    return Panel(Group(lines, facts), title=title, title_align="left",
                 border_style=STATUS_STYLES.get(summary["status"], ""))  # fmt: skip


def findings_blocks(report: dict[str, Any], statuses: tuple[str, ...] = ("fail", "warn"),
                    limit: int | None = 40) -> Group:
    """One block per finding (status, analyzer/check, where, value vs threshold; the message and
    the fix on their own lines): readable in any terminal width."""
    findings = [f for f in sorted_findings(report.get("findings") or []) if f["status"] in statuses]
    shown = findings if limit is None else findings[:limit]
    blocks = []
    for finding in shown:
        head = status_text(finding["status"])
        head.append(printable(f"  {finding['analyzer']}/{finding['check']}"), style="cyan")
        where = where_text(finding.get("where"))
        if where and where != "model":
            head.append(printable(f"  {where}"), style="bold")
        if finding.get("value") is not None:
            head.append(f"  {value_text(finding)}", style="dim")
        body = Text("  " + printable(finding["message"]))
        blocks.append(head)
        blocks.append(body)
        if finding.get("fix"):
            blocks.append(Text("  fix: " + printable(finding["fix"]), style="italic"))
    if len(findings) > len(shown):
        blocks.append(Text(f"{len(findings) - len(shown)} more in the report", style="dim"))
    return Group(*blocks)


def grouped_counts(report: dict[str, Any], statuses: tuple[str, ...] = ("info", "skip", "pass")) -> Group:
    """One line per (status, analyzer/check) with how many findings and where; a lone skip also
    says how to run its check (its fix)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for finding in sorted_findings(report.get("findings") or []):
        if finding["status"] in statuses:
            groups.setdefault((finding["status"], f"{finding['analyzer']}/{finding['check']}"), []).append(finding)
    lines = []
    for (status, name), items in groups.items():
        line = status_text(status)
        line.append(printable(f"  {name}"), style="cyan")
        places = [where_text(f.get("where")) for f in items]
        places = [p for p in places if p and p != "model"]
        if len(items) == 1:
            line.append("  " + printable(items[0]["message"]), style="dim")
            if status == "skip" and items[0].get("fix"):  # how to run the check after all
                line.append("\n  fix: " + printable(items[0]["fix"]), style="italic")
        else:
            line.append(f"  x{len(items)}", style="bold")
            if places:
                line.append(printable("  " + ", ".join(places[:8]) + (" ..." if len(places) > 8 else "")), style="dim")
        lines.append(line)
    return Group(*lines)


def timing_block(timing: dict[str, Any], folder: Path | None = None, top: int = 5) -> Group:
    """What ``workbench profile`` measured: the forward's wall time (a median, without the
    profiler) and FLOP rate; then, under the profiler, where that time goes (attention, MLP,
    router) and the heaviest ops, each as a share of the profiled forward, so no part can exceed
    its whole; and where the trace is."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")  # a trace path is folded onto the next line, never cut
    runs = timing.get("wall_seconds_runs") or []
    forward = Text.assemble(
        (format_seconds(timing["wall_seconds"]), "bold"),
        f" per forward of {timing['batch']} x {plural(timing['seq_len'], 'token')} on {printable(timing['device'])}"
        f" (median of {plural(len(runs), 'run')}, without the profiler)",
    )
    if timing.get("flops"):
        forward.append(f" \u00b7 {format_si(timing['flops'], 'FLOP')}")
    if timing.get("achieved_flops_per_second"):
        forward.append(f" \u00b7 {format_si(timing['achieved_flops_per_second'], 'FLOP/s')}")
    if timing.get("fraction_of_peak"):
        forward.append(f" ({timing['fraction_of_peak']:.0%} of the device's peak)")
    table.add_row("forward", forward)
    totals = (timing.get("components") or {}).get("totals") or {}
    whole = totals.get("forward_us") or 0

    def share(us: float) -> str:
        return f"{min(us, whole) / whole:.0%}" if whole else format_us(us)

    parts = [("attention", "attn_us"), ("MLP", "mlp_us"), ("router", "router_us"),
             ("other in blocks", "other_us"), ("outside blocks", "outside_blocks_us")]
    shares = [f"{label} {share(totals[key])}" for label, key in parts if totals.get(key)]
    if shares:
        head = f"of {format_us(whole)} per forward under the profiler (its overhead included): " if whole else ""
        table.add_row("profiled", Text(head + " \u00b7 ".join(shares)))
    ops = timing.get("top_ops") or []
    if ops:
        device = any(op.get("self_cuda_us") for op in ops)
        key = "self_cuda_us" if device else "self_cpu_us"
        heaviest = sorted(ops, key=lambda op: op.get(key) or 0, reverse=True)[:top]
        table.add_row(f"top ops ({'CUDA' if device else 'CPU'})",
                      Text(" \u00b7 ".join(f"{printable(op['name'])} {share(op.get(key) or 0)}" for op in heaviest)))
    trace = timing.get("trace") or {}
    if trace.get("chrome_trace"):
        base = folder if folder is not None else Path()
        table.add_row("trace", Text(printable(
            f"{base / trace['chrome_trace']} (ui.perfetto.dev, chrome://tracing); "
            f"TensorBoard: tensorboard --logdir {(base / trace['tensorboard_dir']).parent}")))
    return Group(Text("Timing", style="bold"), table)


def render(
    report: dict[str, Any], console: Console, show_pass: bool = False, limit: int | None = 40,
    folder: Path | None = None,
) -> None:
    """Print the summary panel, the fail/warn findings one block each, one line per group of
    info/skip (and, with ``show_pass``, pass) findings, and the timing when the run profiled.
    ``folder``: the report's folder, to print where its traces are."""
    console.print(summary_panel(report))
    console.print(findings_blocks(report, limit=limit))
    console.print(grouped_counts(report, ("info", "skip", "pass") if show_pass else ("info", "skip")))
    passed = report["summary"]["counts"].get("pass", 0)
    if not show_pass and passed:
        console.print(Text(f"{plural(passed, 'passing check')} not shown", style="dim"))
    if report.get("timing"):
        console.print(timing_block(report["timing"], folder))
