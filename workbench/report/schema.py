"""The report document (``report.json``), version 1: its constants and a hand-written validator.

``reports/README.md`` documents every field for users; this module is the executable version of
that document. :func:`validate` returns a list of problems, one line each, naming the dotted path
of the offending field (``attention.head_means.entropy_norm[3]``); an empty list means the
report is valid. Checks are structural (required keys, types, enumerations, array shapes that
the header fields fix) plus a few invariants (finite numbers only, summary counts that match the
findings, artifact paths relative to the report folder). Unknown keys are allowed, so a reader of
version 1 accepts a later writer's additions; a report with a higher ``schema_version`` is
rejected.

:func:`strip_time_fields` removes the fields listed in ``time_fields`` (wall-clock times and
timings), leaving what two runs of the same checkpoint and profile must agree on.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any

SCHEMA_NAME = "transformer-workbench/report"
SCHEMA_VERSION = 1
STATUSES = ("pass", "info", "skip", "warn", "fail")  # least to most severe
SUMMARY_STATUSES = ("pass", "warn", "fail")
SECTIONS = ("attention", "residual", "routing", "length", "kv", "timing")  # null when not run
# Each section's analyzers: the page repeats their findings there; a section one of them judged
# (a skip included) was considered, so the terminal does not also call it "not run".
SECTION_ANALYZERS: dict[str, tuple[str, ...]] = {
    "attention": ("attention_saturation", "saturation", "attention"), "residual": ("residual",),
    "routing": ("routing_collapse", "routing"), "length": ("length_extrapolation", "length"),
    "kv": ("kv_memory", "kv_cache"), "timing": ("timing",)}  # fmt: skip
# run.id and the profiler's trace file name (artifacts.chrome_trace) hold the time
TIME_FIELDS = ["run.created_utc", "run.duration_seconds", "run.id", "timing", "artifacts.chrome_trace"]
TIMING_COMPONENTS = ("attn", "mlp", "router", "other")  # per_layer keys, "<name>_us" or "<name>"
PROBE_KINDS = ("random", "repeated", "natural", "user")
MAX_PROBLEMS = 50

Spec = Callable[["_Checker", Any, str], None]


class _Checker:
    """Collects problems while specs walk the document."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.dropped = 0

    def add(self, path: str, message: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(f"{path or '<report>'}: {message}")
        else:
            self.dropped += 1


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --- spec combinators ------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return _is_int(value) or isinstance(value, float)


def _scalar(name: str, test: Callable[[Any], bool]) -> Spec:
    def check(c: _Checker, value: Any, path: str) -> None:
        if not test(value):
            c.add(path, f"expected {name}, got {_kind(value)}")

    return check


STR = _scalar("a string", lambda v: isinstance(v, str))
INT = _scalar("an integer", _is_int)
NUM = _scalar("a number", _is_number)
BOOL = _scalar("a boolean", lambda v: isinstance(v, bool))
DICT = _scalar("an object", lambda v: isinstance(v, dict))
NONNEG_INT = _scalar("a non-negative integer", lambda v: _is_int(v) and v >= 0)
POS_INT = _scalar("a positive integer", lambda v: _is_int(v) and v > 0)


def nullable(spec: Spec) -> Spec:
    def check(c: _Checker, value: Any, path: str) -> None:
        if value is not None:
            spec(c, value, path)

    return check


def one_of(*choices: Any) -> Spec:
    def check(c: _Checker, value: Any, path: str) -> None:
        if value not in choices:
            c.add(path, f"expected one of {', '.join(map(repr, choices))}, got {value!r}")

    return check


def list_of(spec: Spec, length: Callable[[], int | None] | None = None) -> Spec:
    """A list whose items match ``spec``; ``length()`` (evaluated lazily) fixes its size."""

    def check(c: _Checker, value: Any, path: str) -> None:
        if not isinstance(value, list):
            c.add(path, f"expected a list, got {_kind(value)}")
            return
        expected = length() if length is not None else None
        if expected is not None and len(value) != expected:
            c.add(path, f"expected {expected} items, got {len(value)}")
        for index, item in enumerate(value):
            spec(c, item, f"{path}[{index}]")

    return check


def dict_of(spec: Spec, keys: Iterable[str] | None = None) -> Spec:
    """An object with string keys (from ``keys`` when given) whose values match ``spec``."""
    allowed = tuple(keys) if keys is not None else None

    def check(c: _Checker, value: Any, path: str) -> None:
        if not isinstance(value, dict):
            c.add(path, f"expected an object, got {_kind(value)}")
            return
        for key, item in value.items():
            if allowed is not None and key not in allowed:
                c.add(_join(path, str(key)), f"unknown key (expected one of {', '.join(allowed)})")
            spec(c, item, _join(path, str(key)))

    return check


def obj(required: dict[str, Spec], optional: dict[str, Spec] | None = None) -> Spec:
    """An object with ``required`` keys, ``optional`` ones, and any other keys left alone."""

    def check(c: _Checker, value: Any, path: str) -> None:
        if not isinstance(value, dict):
            c.add(path, f"expected an object, got {_kind(value)}")
            return
        for key, spec in required.items():
            if key not in value:
                c.add(_join(path, key), "missing")
            else:
                spec(c, value[key], _join(path, key))
        for key, spec in (optional or {}).items():
            if key in value:
                spec(c, value[key], _join(path, key))

    return check


def int_below(limit: Callable[[], int]) -> Spec:
    """An integer in ``[0, limit())``."""

    def check(c: _Checker, value: Any, path: str) -> None:
        if not _is_int(value) or not 0 <= value < limit():
            c.add(path, f"expected an integer in [0, {limit()}), got {value!r}")

    return check


def _iso_time(c: _Checker, value: Any, path: str) -> None:
    if not isinstance(value, str):
        c.add(path, f"expected an ISO 8601 time string, got {_kind(value)}")
        return
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        c.add(path, f"not an ISO 8601 time: {value!r}")


def _relative_path(c: _Checker, value: Any, path: str) -> None:
    """A path inside the report folder: relative, POSIX separators, no ``..``."""
    if value is None:
        return
    if not isinstance(value, str):
        c.add(path, f"expected a relative path string, got {_kind(value)}")
        return
    parts = PurePosixPath(value).parts
    if not value or value.startswith(("/", "\\")) or ":" in value or ".." in parts or "\\" in value:
        c.add(path, f"must be a path relative to the report folder, got {value!r}")


# --- the sections ----------------------------------------------------------------------------

NUM_OR_NULL = nullable(NUM)

TOOL = obj({"name": STR, "version": STR, "torch": STR, "transformers": nullable(STR), "python": STR})
RUN = obj(
    {
        "id": STR, "command": STR, "created_utc": _iso_time, "duration_seconds": NUM,
        "profile": STR, "seed": INT, "device": STR, "dtype": STR,
        "backend": one_of("native", "nnsight"),
    }
)  # fmt: skip
MODEL = obj(
    {"source": STR, "name": STR, "model_type": STR, "config": DICT, "n_params": NONNEG_INT,
     "weights_quant": nullable(STR)}
)  # fmt: skip
SUMMARY = obj(
    {"status": one_of(*SUMMARY_STATUSES), "counts": dict_of(NONNEG_INT, STATUSES),
     "analyzers": dict_of(one_of(*STATUSES))}
)  # fmt: skip
WHERE = obj(
    {},
    {"layer": nullable(NONNEG_INT), "head": nullable(NONNEG_INT), "expert": nullable(NONNEG_INT),
     "positions": nullable(list_of(NONNEG_INT, lambda: 2)), "sublayer": nullable(STR),
     "experts": nullable(list_of(NONNEG_INT))},
)  # fmt: skip
FINDING = obj(
    {"analyzer": STR, "check": STR, "status": one_of(*STATUSES), "message": STR, "where": WHERE,
     "metric": nullable(STR), "value": NUM_OR_NULL, "threshold": NUM_OR_NULL, "fix": nullable(STR),
     "details": DICT}
)  # fmt: skip
PROBE = obj(
    {"name": STR, "kind": one_of(*PROBE_KINDS), "length": NONNEG_INT, "seed": nullable(INT),
     "description": STR, "text": nullable(STR)}
)  # fmt: skip
ARTIFACTS = obj(
    {"report_json": _relative_path, "report_html": _relative_path, "trace_dir": _relative_path,
     "chrome_trace": _relative_path}
)  # fmt: skip


def _attention(c: _Checker, value: Any, path: str) -> None:
    header = {"n_layers": POS_INT, "n_heads": POS_INT, "n_tokens": NONNEG_INT, "d_head": POS_INT}
    obj(header)(c, value, path)
    if not isinstance(value, dict) or any(not _is_int(value.get(k)) for k in header):
        return
    layers, heads = value["n_layers"], value["n_heads"]
    per_head = list_of(list_of(NUM_OR_NULL, lambda: heads), lambda: layers)
    per_position = list_of(list_of(list_of(NUM_OR_NULL)))
    pattern = obj(
        {"layer": int_below(lambda: layers), "head": int_below(lambda: heads), "start": NONNEG_INT,
         "pattern": list_of(list_of(NUM_OR_NULL))}
    )  # fmt: skip
    obj(
        {"scale": NUM, "head_means": dict_of(per_head), "by_position": dict_of(per_position),
         "bucket_size": POS_INT, "patterns": list_of(pattern), "patterns_dropped": NONNEG_INT,
         "probe": STR, "token_labels": list_of(STR)}
    )(c, value, path)  # fmt: skip


def _residual(c: _Checker, value: Any, path: str) -> None:
    lens = obj({"positions": list_of(NONNEG_INT), "kl_mean": list_of(NUM_OR_NULL),
                "top1_mean": list_of(NUM_OR_NULL)})  # fmt: skip
    obj(
        {
            "layer_means": dict_of(list_of(NUM_OR_NULL)),
            "by_position": dict_of(list_of(list_of(NUM_OR_NULL))),
            "probe": STR,
        },
        {"lens": nullable(lens)},
    )(c, value, path)


def _routing_layer(c: _Checker, value: Any, path: str) -> None:
    obj({"layer": NONNEG_INT, "n_experts": POS_INT, "top_k": POS_INT})(c, value, path)
    experts = value.get("n_experts") if isinstance(value, dict) else None
    if not _is_int(experts):
        return
    obj(
        {"tokens": NONNEG_INT, "load": list_of(NONNEG_INT, lambda: experts),
         "importance": list_of(NUM, lambda: experts), "entropy": NUM_OR_NULL,
         "entropy_norm": NUM_OR_NULL,
         "coselect": list_of(list_of(NONNEG_INT, lambda: experts), lambda: experts), "sample": DICT}
    )(c, value, path)  # fmt: skip


ROUTING = obj({"layers": list_of(_routing_layer)})
LENGTH_PROBE = obj(
    {"kind": one_of("natural", "copy"), "length": POS_INT, "bucket_size": POS_INT,
     "loss_by_position": nullable(list_of(NUM_OR_NULL)), "in_context_loss": NUM_OR_NULL,
     "beyond_loss": NUM_OR_NULL, "error": nullable(STR)},
    {"seeds": list_of(INT), "in_context_spread": NUM_OR_NULL, "prefix_of": nullable(POS_INT)})  # fmt: skip
LENGTH = obj(
    {"trained_context": POS_INT, "max_positions": POS_INT, "positions": STR,
     "probes": list_of(LENGTH_PROBE), "effective_context": dict_of(nullable(NONNEG_INT))},
    {"chance_loss": NUM, "rope_scaling": nullable(STR)})  # fmt: skip
KV_PLAN = obj(
    {"device": STR, "batch": POS_INT, "context": POS_INT, "kv_dtype": STR, "kv_bytes": NONNEG_INT,
     "weights_bytes": NONNEG_INT, "total_bytes": NONNEG_INT, "device_bytes": NONNEG_INT,
     "fraction_used": NUM_OR_NULL, "fits": BOOL, "risk": one_of("low", "medium", "high", "oom"),
     "max_context": nullable(NONNEG_INT)}
)  # fmt: skip
KV_POINT = obj({"context": POS_INT, "total_bytes": NONNEG_INT, "kv_bytes": NONNEG_INT,
                "weights_bytes": NONNEG_INT})  # fmt: skip
KV_DEVICE = obj(
    {"name": STR, "usable_bytes": NONNEG_INT, "memory_bytes": NONNEG_INT, "curve": list_of(KV_POINT),
     "max_context": nullable(NONNEG_INT)}
)  # fmt: skip
KV = obj({"batch": POS_INT, "kv_dtype": STR, "plan": KV_PLAN, "devices": list_of(KV_DEVICE)})


def _timing_row(c: _Checker, value: Any, path: str) -> None:
    obj({"layer": NONNEG_INT})(c, value, path)
    if not isinstance(value, dict):
        return
    for name in TIMING_COMPONENTS:
        key = f"{name}_us" if f"{name}_us" in value else name
        if key not in value:
            c.add(_join(path, f"{name}_us"), "missing")
        else:
            NUM(c, value[key], _join(path, key))


TOP_OP = obj({"name": STR, "calls": NUM, "self_cpu_us": NUM, "cpu_total_us": NUM})
TIMING = obj(
    {"wall_seconds": NUM, "top_ops": list_of(TOP_OP),
     "components": obj({"per_layer": list_of(_timing_row), "totals": dict_of(NUM)}),
     "flops": nullable(NONNEG_INT), "achieved_flops_per_second": NUM_OR_NULL, "device": STR},
    {"trace": nullable(obj({}, {"tensorboard_dir": _relative_path, "chrome_trace": _relative_path}))},
)  # fmt: skip

SECTION_SPECS: dict[str, Spec] = {
    "attention": _attention, "residual": _residual, "routing": ROUTING, "length": LENGTH, "kv": KV,
    "timing": TIMING,
}  # fmt: skip


def _json_values(c: _Checker, value: Any, path: str) -> None:
    """Everything must be JSON: str-keyed objects, lists, strings, finite numbers, booleans, null."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                c.add(path, f"object key {key!r} is not a string")
            _json_values(c, item, _join(path, str(key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _json_values(c, item, f"{path}[{index}]")
    elif isinstance(value, float):
        if not math.isfinite(value):
            c.add(path, f"{value} is not allowed in JSON (use null)")
    elif not (value is None or isinstance(value, str | int | bool)):
        c.add(path, f"{_kind(value)} is not a JSON value")


def _summary_matches(c: _Checker, report: dict[str, Any]) -> None:
    findings, summary = report.get("findings"), report.get("summary")
    if not isinstance(findings, list) or not isinstance(summary, dict):
        return
    counts = summary.get("counts")
    statuses = [f.get("status") for f in findings if isinstance(f, dict)]
    if isinstance(counts, dict):
        for status, count in counts.items():
            if status in STATUSES and count != statuses.count(status):
                c.add(f"summary.counts.{status}", f"says {count}, findings have {statuses.count(status)}")


def validate(report: Any) -> list[str]:
    """Problems with ``report`` as a version-1 report document; empty when it is valid."""
    c = _Checker()
    if not isinstance(report, dict):
        return [f"<report>: expected an object, got {_kind(report)}"]
    _json_values(c, report, "")
    if report.get("schema") != SCHEMA_NAME:
        c.add("schema", f"expected {SCHEMA_NAME!r}, got {report.get('schema')!r}")
    version = report.get("schema_version")
    if not _is_int(version):
        c.add("schema_version", f"expected an integer, got {_kind(version)}")
    elif version != SCHEMA_VERSION:
        newer = " (written by a newer workbench)" if version > SCHEMA_VERSION else ""
        c.add("schema_version", f"this workbench reads version {SCHEMA_VERSION}, got {version}{newer}")
    top = {
        "tool": TOOL, "run": RUN, "time_fields": list_of(STR), "model": MODEL, "summary": SUMMARY,
        "findings": list_of(FINDING), "probes": list_of(PROBE), "artifacts": ARTIFACTS,
    }  # fmt: skip
    top.update({name: nullable(spec) for name, spec in SECTION_SPECS.items()})
    obj(top)(c, report, "")
    _summary_matches(c, report)
    if c.dropped:
        c.problems.append(f"... and {c.dropped} more problems")
    return c.problems


def strip_time_fields(report: dict[str, Any], fields: Iterable[str] | None = None) -> dict[str, Any]:
    """A deep copy of ``report`` without the fields named in ``fields`` (default: the report's
    own ``time_fields``, else :data:`TIME_FIELDS`) and without ``time_fields`` itself: what two
    runs of the same checkpoint and profile must agree on."""
    stripped = copy.deepcopy(report)
    paths = list(fields) if fields is not None else list(report.get("time_fields") or TIME_FIELDS)
    for dotted in paths:
        *parents, last = dotted.split(".")
        node: Any = stripped
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    stripped.pop("time_fields", None)
    return stripped
