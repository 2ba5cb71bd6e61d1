"""Write one run's report folder atomically: report.json, report.html, traces, extra files.

A report folder is never seen half-written. Everything is written into a hidden temporary
sibling ``<root>/.<name>.tmp-<random>`` on the same filesystem, then renamed into place::

    reports/<model-slug>-<UTC YYYYMMDDTHHMMSSZ>/
        report.json      the document (schema.py; sort_keys, indent 2, no NaN)
        report.html      the self-contained view of it (html.py)
        trace/<run>/     profiler traces, copied from ``trace_source``

Two runs never overwrite each other: the final name is claimed first with ``os.mkdir``
(exclusive; for the default name, ``-2``, ``-3``, ... are tried when it exists; a folder the user
named is used when absent or empty and refused when it holds files, unless ``force``), the
report is rendered (an empty ``run.id`` becomes the claimed name) and written into the temporary
folder, which is then renamed onto the empty claim; POSIX ``rename`` replaces an empty directory
atomically. So the folder is, in turn, absent, empty, and complete: never partly written. On any
exception, including KeyboardInterrupt, the temporary folder and the claim (when this call
created it) are removed and the exception re-raised.

What is written is :func:`compact.compact` of the document: the same data, its bulky per-head
arrays rounded to the precision the report shows.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
import unicodedata
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from workbench.errors import ReportError
from workbench.report.compact import compact
from workbench.report.html import render_html
from workbench.report.schema import validate

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
TRACE_DIR = "trace"
_MAX_SUFFIX = 10_000
_WINDOWS_RESERVED = {
    "con",
    "prn",
    "aux",
    "nul",
    *(f"com{i}" for i in range(10)),
    *(f"lpt{i}" for i in range(10)),
}



def slug(name: str, max_length: int = 64, fallback: str = "model") -> str:
    """A lower-case name safe for one path component: ``[a-z0-9._-]``, no leading or trailing
    dot, dash or underscore, no ``..``, no Windows device name, at most ``max_length`` chars.

    ``"HuggingFaceTB/SmolLM2-135M"`` -> ``"huggingfacetb-smollm2-135m"``; ``"../../etc"`` ->
    ``"etc"``; a name with nothing usable -> ``fallback``.
    """
    text = unicodedata.normalize("NFKD", str(name)).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^a-z0-9._-]+", "-", text.lower())
    text = re.sub(r"\.{2,}", ".", text)
    text = re.sub(r"[._]*-[-._]*", "-", text).strip("-._")  # "a/../b" -> "a-b", not "a-.-b"
    text = text[:max_length].strip("-._")
    if not text:
        return fallback
    if text.split(".")[0] in _WINDOWS_RESERVED:
        text = f"{fallback}-{text}"[:max_length]
    return text


def utc_stamp(when: str | datetime | None = None) -> str:
    """``YYYYMMDDTHHMMSSZ`` for an ISO time string or datetime (naive = UTC; None = now)."""
    moment: datetime | None = None
    if isinstance(when, datetime):
        moment = when
    elif isinstance(when, str):
        try:
            moment = datetime.fromisoformat(when.replace("Z", "+00:00"))
        except ValueError:
            moment = None
    if moment is None:
        moment = datetime.now(UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def folder_name(report: dict[str, Any]) -> str:
    """``<model-slug>-<UTC stamp of run.created_utc>``."""
    model = report.get("model") or {}
    run = report.get("run") or {}
    return f"{slug(model.get('name', 'model'))}-{utc_stamp(run.get('created_utc'))}"


def to_jsonable(value: Any) -> Any:
    """A copy of ``value`` that JSON can hold: NaN and infinities -> None, tuples -> lists,
    paths -> POSIX strings, dict keys -> strings. Other types are left for :func:`validate`."""
    if isinstance(value, dict):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, PurePosixPath | Path):
        return value.as_posix()
    return value


def dumps(report: dict[str, Any]) -> str:
    """The report as report.json text: sorted keys, objects indented by 2, lists of numbers on
    one line each (so a [layers][heads][positions] array stays readable and small), NaN refused,
    trailing newline."""
    return _dump(report, 0) + "\n"


def _dump(value: Any, depth: int) -> str:
    def flat(item: Any) -> str:
        return json.dumps(item, allow_nan=False, ensure_ascii=False, sort_keys=True)

    pad, inner = "  " * depth, "  " * (depth + 1)
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f"{inner}{flat(str(key))}: {_dump(value[key], depth + 1)}" for key in sorted(value)]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list):
        if not value or all(not isinstance(item, dict | list) for item in value):
            return flat(value)
        if all(isinstance(item, list) and all(not isinstance(x, dict | list) for x in item) for item in value):
            return "[\n" + ",\n".join(inner + flat(item) for item in value) + "\n" + pad + "]"
        return "[\n" + ",\n".join(inner + _dump(item, depth + 1) for item in value) + "\n" + pad + "]"
    return flat(value)


def _safe_relative(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if not name or path.is_absolute() or "\\" in name or any(part in ("", ".", "..") for part in path.parts):
        raise ReportError(f"extra file name must be a plain relative path, got {name!r}")
    if path.as_posix() in (REPORT_JSON, REPORT_HTML):
        raise ReportError(f"extra file {name!r} would replace the report itself")
    return path


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _make_temp(root: Path, name: str) -> Path:
    """``root/.<name>.tmp-<random>``, created with the process umask (so the final folder gets
    ordinary permissions)."""
    for _ in range(100):
        candidate = root / f".{name}.tmp-{secrets.token_hex(4)}"
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise ReportError(f"cannot create a temporary folder in {root}")


def _claim(root: Path, name: str) -> Path:
    """Create (exclusively) the first free folder among ``name``, ``name-2``, ``name-3``, ..."""
    for index in range(1, _MAX_SUFFIX):
        candidate = root / (name if index == 1 else f"{name}-{index}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise ReportError(f"{root / name}: {_MAX_SUFFIX} folders of that name already exist")


def _fsync_dir(path: Path) -> None:
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _claim_given(folder: Path, force: bool) -> tuple[Path, bool, bool]:
    """Claim the folder the user named: (folder, whether we created it, whether it holds files).

    Absent: created (exclusively). Present and empty: used as it is. Holding files: refused
    unless ``force``."""
    try:
        folder.mkdir()
        return folder, True, False
    except FileExistsError:
        pass
    except OSError as error:
        raise ReportError(f"{folder}: cannot create the report folder ({error.strerror})") from None
    if not folder.is_dir():
        raise ReportError(f"{folder}: a file is there, not a folder")
    holds = next(os.scandir(folder), None) is not None
    if holds and not force:
        raise ReportError(f"{folder}: the folder holds files; give an empty or new folder, or --force")
    return folder, False, holds


def _replace_into(temp: Path, folder: Path) -> None:
    """Move everything in ``temp`` into the existing ``folder``, each entry replaced atomically
    (files with ``os.replace``; a folder is swapped with a rename and the old one removed after).
    Entries of the report layout that the new report lacks (an old ``trace/``) are removed, so
    the folder never mixes two runs; other files are left alone."""
    stale_trace = not (temp / TRACE_DIR).exists() and (folder / TRACE_DIR).is_dir()
    for entry in sorted(temp.iterdir()):
        target = folder / entry.name
        if entry.is_dir() and target.is_dir() and not target.is_symlink():
            old = folder / f".{entry.name}.old-{secrets.token_hex(4)}"
            os.rename(target, old)
            os.rename(entry, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)
    if stale_trace:
        shutil.rmtree(folder / TRACE_DIR, ignore_errors=True)
    temp.rmdir()


def write_report(
    report: dict[str, Any],
    out_dir: Path | None,
    reports_root: Path = Path("reports"),
    extra_files: dict[str, bytes | Path] | None = None,
    trace_source: Path | None = None,
    force: bool = False,
) -> Path:
    """Validate ``report``, render it, and write its folder atomically; returns the folder.

    ``out_dir`` None: ``reports_root/<model-slug>-<UTC stamp>``, never an existing folder (``-2``,
    ``-3``, ... are appended). Otherwise ``out_dir`` itself, when it is absent or empty; a folder
    holding files is refused (:class:`ReportError`) unless ``force``, which writes the report into
    it, replacing an earlier report's files one by one (each replacement atomic).
    An empty ``run.id`` is set to the folder's name in the written document (``report`` itself
    is not modified).
    ``extra_files`` maps relative names to bytes or to a file to copy; ``trace_source`` is a
    folder (the ``trace/`` that ``recorders.timing.profile_forward`` wrote) copied to ``trace/``.
    Raises :class:`ReportError` for an invalid document, before anything is created.
    """
    clean = to_jsonable(report)
    problems = validate(clean)
    if problems:
        raise ReportError("invalid report:\n  " + "\n  ".join(problems))
    extras = {_safe_relative(name): source for name, source in (extra_files or {}).items()}
    if trace_source is not None and not Path(trace_source).is_dir():
        raise ReportError(f"trace_source {trace_source} is not a folder")
    holds = False
    if out_dir is None:
        root = Path(reports_root)
        root.mkdir(parents=True, exist_ok=True)
        claim, created = _claim(root, folder_name(clean)), True
    else:
        root, name = Path(out_dir).parent, Path(out_dir).name
        if name in ("", ".", ".."):
            raise ReportError(f"out_dir must name a folder, got {out_dir}")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ReportError(f"{out_dir}: cannot create its parent folder ({error.strerror})") from None
        claim, created, holds = _claim_given(Path(out_dir), force)
    temp: Path | None = None
    try:
        if not clean["run"]["id"]:
            clean["run"]["id"] = claim.name
        stored = compact(clean)
        json_text, html_text = dumps(stored), render_html(stored)
        temp = _make_temp(root, claim.name)
        _write_bytes(temp / REPORT_JSON, json_text.encode("utf-8"))
        _write_bytes(temp / REPORT_HTML, html_text.encode("utf-8"))
        if trace_source is not None:
            shutil.copytree(trace_source, temp / TRACE_DIR, dirs_exist_ok=True)
        for relative, source in extras.items():
            data = source if isinstance(source, bytes) else Path(source).read_bytes()
            _write_bytes(temp.joinpath(*relative.parts), data)
        if holds:
            _replace_into(temp, claim)
        else:
            os.rename(temp, claim)  # replaces the empty claim atomically
    except BaseException:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
        if created:
            try:
                claim.rmdir()  # only while it is still our empty claim
            except OSError:
                pass
        raise
    _fsync_dir(root)
    return claim
