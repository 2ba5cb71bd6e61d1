"""Terminal renderables of `workbench kv` (the plan as a table, its findings) and `workbench devices`.

Pure: they return rich renderables; ``cli.py`` prints them.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from workbench.report.terminal import STATUS_STYLES
from workbench.report.text import printable
from workbench.settings import get_device, list_devices
from workbench.units import gib

_BASIS = {"cuda": "as CUDA reports it", "nominal": "nominal: CUDA's figure not in the catalog",
          "host": "this host's RAM", "given": "as given"}  # fmt: skip


def _gib(value: float | None) -> str:
    return "-" if value is None else gib(value)


def kv_renderables(result: dict[str, Any]) -> list[Any]:
    """The plan of ``workbench kv`` as a two-column table, then every finding that is not a pass."""
    plan = result["plan"]
    title = f"{result['model']} ({result['attention']}) on {result['device']}, as {plan['engine_title']} would serve it"
    table = Table(title=Text(printable(title)), show_header=False)
    limit = plan["max_context"]
    largest = "unbounded (windows)" if limit is None else f"{limit:,} ({plan['max_context_reason']})"
    rows = [
        ("engine", f"{plan['engine']}: blocks of {plan['block_size']}, {plan['max_num_batched_tokens']:,} "
                   f"batched tokens, up to {plan['max_num_seqs']:,} requests"),
        ("device memory", f"{_gib(plan['device_memory_bytes'])} ({_BASIS[plan['memory_basis']]})"),
        (f"budget ({plan['utilization']:.2f})", _gib(plan["device_bytes"])),
        (f"weights ({plan['weights_dtype']})", _gib(plan["weights_bytes"])),
        ("activation peak", _gib(plan["activation_bytes"])),
        ("outside torch", _gib(plan["non_torch_bytes"])),
        ("left for the KV cache", _gib(plan["kv_budget_bytes"])),
        (f"KV bytes per token ({plan['kv_dtype']})", f"{plan['kv_bytes_per_token']:,}"),
        (f"KV per request of {plan['context']:,} tokens", _gib(plan["kv_bytes_per_request"])),
        (f"KV for {plan['batch']:,} request(s)", _gib(plan["kv_bytes"])),
        (f"maximum concurrency at {plan['context']:,} tokens", f"{plan['max_concurrency']:.2f}x"),
        ("fits", "yes" if plan["fits"] else "[bold red]no[/]"),
        ("risk", plan["risk"]),
        (f"largest context at batch {plan['batch']:,}", largest),
        (f"largest batch at {plan['context']:,} tokens", f"{plan['max_batch']:,}"),
    ]  # fmt: skip
    for key, value in rows:
        table.add_row(key, value)
    shown: list[Any] = [table]
    for finding in result["findings"]:
        if finding["status"] == "pass":
            continue
        colour = STATUS_STYLES.get(finding["status"], "white")
        shown.append(Text.assemble((finding["status"], colour), " ", printable(finding["message"])))
        if finding.get("fix"):
            shown.append(Text("  fix: " + printable(finding["fix"])))
    return shown


def devices_renderables() -> list[Any]:
    """The device catalog: nominal and CUDA-reported memory, bandwidth, 16-bit peak; then every
    source in full (a table column would cut them)."""
    table = Table("device", "nominal", "CUDA reports", "bandwidth", "peak 16-bit", title="Device catalog")
    sources: list[Any] = []
    for name in list_devices():
        device = get_device(name)
        bandwidth, peak = device.bandwidth_bytes_per_second, device.peak_16bit_flops_per_second
        table.add_row(name, f"{device.memory_bytes / 2**30:.0f} GiB",
                      _gib(device.cuda_memory_bytes) if device.cuda_memory_bytes else "-",
                      f"{bandwidth / 1e12:.2f} TB/s" if bandwidth else "-",
                      f"{peak / 1e12:,.0f} TFLOP/s" if peak else "-")  # fmt: skip
        cuda = f"; CUDA figure: {device.cuda_memory_source}" if device.cuda_memory_source else ""
        sources.append(Text.assemble((name, "bold"), ": ", " ".join(device.source.split()) + cuda))
    note = Text("Sources ('-' under CUDA reports: not in the catalog; plans use the nominal size and say so):")
    return [table, note, *sources]
