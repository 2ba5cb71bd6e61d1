"""Checks of a run's options that happen before anything heavy: nothing is loaded, nothing written.

A run that will fail on its device or its output paths must say so at once, in one line, not
after minutes of probing (or with a traceback when the report is written):

* :func:`check_device`: ``--device`` is a torch device this host has (``cpu``, ``cuda:1``), with
  a hint when a catalog name (``h100-sxm``, for ``workbench kv``) or a vendor word (``gpu``) is
  given instead, and what this host does have; :func:`check_catalog_device` is its mirror for
  ``workbench kv``, whose ``--device`` is a catalog name;
* :func:`check_report_folder` and :func:`check_output_file`: the report folder and ``--json``
  can be written (an absent or empty folder is used as given; a folder holding files only with
  ``force``);
* :func:`dtype_notes`: what a user should know about the dtype on this device (a CPU without
  native half-precision arithmetic runs it slower than float32);
* :func:`check_options` runs them all for an analysis command; :func:`read_prompt` reads
  ``--prompt``/``--text``.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import torch

from workbench.errors import InputError, ProfileError, RunError
from workbench.inputs import read_text_file
from workbench.report.text import printable
from workbench.settings import get_device

# Device types the workbench runs on, with how to ask torch whether this host has one.
_ACCELERATORS = {
    "cuda": lambda: torch.cuda.is_available(),
    "mps": lambda: torch.backends.mps.is_available(),
    "xpu": lambda: hasattr(torch, "xpu") and torch.xpu.is_available(),
}
# What a torch device looks like (for the hint when one is given where a catalog name is meant).
_TORCH_DEVICE = re.compile(r"^(cuda|mps|xpu|hip|gpu|cpu)(:\d+)?$", re.IGNORECASE)
# Words people type for "the GPU" that torch does not know.
_VENDOR_WORDS = {"gpu", "nvidia", "rocm", "amd", "metal", "apple", "intel"}


def host_devices() -> list[str]:
    """The torch devices this host has: ``cpu``, then ``cuda:0``, ``cuda:1``, ... and ``mps``."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if _ACCELERATORS["mps"]():
        found.append("mps")
    if _ACCELERATORS["xpu"]():
        found += [f"xpu:{index}" for index in range(torch.xpu.device_count())]
    return found


def _is_catalog_device(name: str) -> bool:
    try:
        get_device(name)
    except ProfileError:
        return False
    return True


def check_device(device: str) -> str:
    """``device`` as torch writes it, when this host has it; else a :class:`RunError` whose one
    line says what was wrong and which devices this host has."""
    has = f"this host has: {', '.join(host_devices())}"
    shown = printable(device, keep_newlines=False)
    try:
        parsed = torch.device(device.strip().lower())
    except (RuntimeError, ValueError):
        if _is_catalog_device(device):
            hint = (f"{shown!r} is a device of the catalog, for `workbench kv --device` (memory "
                    "planning); analysis commands run on a torch device (cpu, cuda, cuda:1)")
        elif device.strip().lower() in _VENDOR_WORDS | {"cuda0", "gpu0", "gpu:0"}:
            hint = f"{shown!r} is not a torch device name; a GPU is cuda (NVIDIA, AMD ROCm), mps (Apple) or xpu (Intel)"
        else:
            hint = f"{shown!r} is not a torch device (cpu, cuda, cuda:1, mps)"
        raise RunError(f"--device {hint}; {has}") from None
    if parsed.type == "cpu":
        return "cpu"
    if parsed.type not in _ACCELERATORS:
        raise RunError(f"--device {shown!r}: the workbench runs on cpu, cuda, mps or xpu; {has}")
    if not _ACCELERATORS[parsed.type]():
        built = ""
        if parsed.type == "cuda" and torch.version.cuda is None and torch.version.hip is None:
            built = f" (this torch {torch.__version__} is a CPU-only build)"
        raise RunError(f"--device {shown}: this host has no {parsed.type.upper()} device{built}; {has}")
    if parsed.index is not None and parsed.type in ("cuda", "xpu"):
        count = getattr(torch, parsed.type).device_count()
        if parsed.index >= count:
            raise RunError(f"--device {shown}: there is no device {parsed.index}; {has}")
    return str(parsed)


def check_catalog_device(name: str) -> None:
    """For ``workbench kv --device``: refuse a torch device name (``cuda``) with a hint; a name
    that is neither is left to the catalog's own error (which suggests the closest name)."""
    if _is_catalog_device(name) or not _TORCH_DEVICE.match(name.strip()):
        return
    shown = printable(name, keep_newlines=False)
    catalog = "a device of the catalog (h100-sxm, a100-80gb, l4, ...: see `workbench devices`)"
    if name.strip().lower().startswith("gpu"):
        raise RunError(f"--device {shown!r}: `workbench kv` plans memory for {catalog}; name the GPU's model")
    raise RunError(f"--device {shown!r} is a torch device; `workbench kv` plans memory for {catalog}. "
                   f"To run on {shown}, give it to an analysis command: workbench diagnose --device {shown}")


def check_options(device: str, dtype: str, out: Path | None, json_path: Path | None,
                  force: bool = False) -> tuple[str, list[str]]:
    """Every check an analysis command's options get before anything loads: the device (returned
    as torch names it), the report folder, the ``--json`` path; and the notes to show (a slow dtype)."""
    device = check_device(device)
    check_report_folder(out, force=force)
    check_output_file(json_path, "--json")
    return device, dtype_notes(device, dtype)


def read_prompt(path: Path | None, prompt: str | None) -> str | None:
    """The probe text: ``prompt``, or the UTF-8 text of the file ``path`` (not both, not empty)."""
    if path is None:
        return prompt
    if prompt is not None:
        raise InputError("give --prompt or --text, not both")
    shown = printable(path, keep_newlines=False)
    try:
        text = read_text_file(Path(path))  # at most what a probe can use, never a whole 200 MB file
    except FileNotFoundError:
        raise InputError(f"{shown}: no such file") from None
    except UnicodeDecodeError:
        raise InputError(f"{shown}: not UTF-8 text") from None
    except OSError as error:
        raise InputError(f"{shown}: cannot read ({error.strerror})") from None
    if not text.strip():
        raise InputError(f"{shown}: the text file is empty")
    return text


def _nearest_existing(path: Path) -> Path:
    current = path
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def _check_can_create_in(path: Path, option: str) -> None:
    """Creating ``path`` (and its missing parents) would work: its nearest existing ancestor is a
    folder we can create entries in (tried with a temporary folder, removed at once)."""
    ancestor = _nearest_existing(path)
    shown = printable(path, keep_newlines=False)
    if not ancestor.is_dir():
        raise RunError(f"{option} {shown}: {printable(ancestor)} is a file, not a folder")
    try:
        probe = tempfile.mkdtemp(prefix=".workbench-check-", dir=ancestor)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise RunError(f"{option} {shown}: cannot create anything in {printable(ancestor)} ({reason})") from None
    os.rmdir(probe)


def check_report_folder(out: Path | None, force: bool = False, reports_root: Path = Path("reports")) -> None:
    """The report can be written: ``out`` absent, or an empty folder, or (with ``force``) a
    folder holding files, and creatable; with no ``out``, ``reports_root`` is creatable."""
    if out is None:
        _check_can_create_in(Path(reports_root), "reports folder")
        return
    out = Path(out)
    shown = printable(out, keep_newlines=False)
    if out.name in ("", ".", ".."):
        raise RunError(f"--out {shown}: name a folder (e.g. reports/mine)")
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {shown}: a file is there, not a folder")
    if out.is_dir():
        try:
            holds = next(os.scandir(out), None) is not None
        except OSError as error:
            raise RunError(f"--out {shown}: cannot read the folder ({error.strerror})") from None
        if holds and not force:
            raise RunError(f"--out {shown}: the folder holds files; give an empty or new folder, "
                           "or --force to write the report into it (replacing an earlier report there)")
        if not os.access(out, os.W_OK | os.X_OK):
            raise RunError(f"--out {shown}: the folder is not writable")
        return
    _check_can_create_in(out, "--out")


def check_output_file(path: Path | None, option: str = "--json") -> None:
    """``path`` can be written as a file: not a folder, its folder creatable or writable."""
    if path is None:
        return
    path = Path(path)
    shown = printable(path, keep_newlines=False)
    if path.is_dir():
        raise RunError(f"{option} {shown}: is a folder; give a file path (e.g. {shown.rstrip('/')}/report.json)")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise RunError(f"{option} {shown}: the file is not writable")
        return
    _check_can_create_in(path, option)


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_native(dtype: str) -> bool | None:
    """Whether this CPU computes ``dtype`` (bfloat16, float16) in hardware, as oneDNN sees it;
    None when torch cannot tell."""
    checks = {"bfloat16": "_is_mkldnn_bf16_supported", "float16": "_is_mkldnn_fp16_supported"}
    name = checks.get(dtype)
    if name is None:
        return True
    probe = getattr(torch.ops.mkldnn, name, None)
    if probe is not None:
        try:
            return bool(probe())
        except RuntimeError:
            pass
    flags = _cpu_flags()
    if not flags:
        return None
    wanted = {"bfloat16": {"avx512_bf16", "amx_bf16"}, "float16": {"avx512_fp16", "amx_fp16"}}[dtype]
    return bool(flags & wanted)


def dtype_notes(device: str, dtype: str) -> list[str]:
    """One-line notes about running ``dtype`` on ``device`` (empty when there is nothing to say)."""
    canonical = {"bf16": "bfloat16", "fp16": "float16", "half": "float16"}.get(dtype, dtype)
    if device != "cpu" or canonical not in ("bfloat16", "float16"):
        return []
    if cpu_has_native(canonical) is False:
        return [f"this CPU has no native {canonical} arithmetic: {canonical} is emulated and runs slower "
                "than float32 here (use --dtype float32 unless you are checking half-precision numerics)"]
    return []
