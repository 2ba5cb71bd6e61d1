"""``workbench check``: the probes suite (pytest) on a checkpoint, with bad input as one line.

Bad input must read the same here as in ``workbench diagnose``: one line and exit 2, never
pytest's banner and "!!! Exit" report. :func:`check_inputs` refuses what can be refused before
pytest starts (the profile, the checkpoint's config, the JUnit path); what only loading the
weights reveals is refused inside the suite, whose conftest writes the one-line reason to the
file named by ``WORKBENCH_CHECK_ERROR_FILE``; :func:`run_probes` then holds back pytest's own
report of it and returns the line.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from workbench.loading.checkpoint import load_config
from workbench.pipeline.preflight import check_output_file
from workbench.settings import load_profile

ERROR_FILE_VARIABLE = "WORKBENCH_CHECK_ERROR_FILE"


def check_inputs(checkpoint: str | None, profile: str, junitxml: Path | None) -> None:
    """Raise the one-line :class:`~workbench.errors.WorkbenchError` of a bad profile, checkpoint
    config or JUnit path, before pytest starts."""
    load_profile(profile)
    load_config(checkpoint)
    check_output_file(junitxml, "--junitxml")


def probes_command(checkpoint: str | None, profile: str, junitxml: Path | None, verbose: bool,
                   extra: list[str]) -> list[str]:
    """The pytest command line that runs the shipped probes suite."""
    # the suite ships as the data package workbench.probes (top-level probes/ in a checkout)
    spec = importlib.util.find_spec("workbench.probes")
    assert spec is not None and spec.submodule_search_locations, "the probes suite is not installed"
    command = [sys.executable, "-m", "pytest", spec.submodule_search_locations[0], "-p", "no:cacheprovider",
               "--profile", profile, "-q"]
    if not verbose:
        command += ["-W", "ignore"]  # library warnings, as the other commands hide them
    if checkpoint is not None:
        command += ["--checkpoint", checkpoint]
    if junitxml is not None:
        command += [f"--junitxml={junitxml}"]
    return command + extra


def run_probes(command: list[str], sink: Callable[[bytes], None]) -> tuple[int, str | None]:
    """Run ``command`` (pytest), handing its output to ``sink`` as it comes; returns (exit code,
    the one-line refusal of a bad checkpoint or None). The process is terminated if this is
    interrupted."""
    with tempfile.TemporaryDirectory(prefix="workbench-check-") as folder:
        error_file = Path(folder) / "error.txt"
        env = {**os.environ, ERROR_FILE_VARIABLE: str(error_file)}
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        assert process.stdout is not None
        held = b""
        passing = False  # True once real output has been seen: everything after it streams
        try:
            while chunk := os.read(process.stdout.fileno(), 4096):
                if passing:
                    sink(chunk)
                    continue
                held += chunk
                if held.strip() and not error_file.exists():  # with the file: pytest's report of it
                    passing = True
                    sink(held)
            code = process.wait()
        except BaseException:
            process.terminate()
            process.wait()
            raise
        problem = error_file.read_text(encoding="utf-8").strip() if error_file.exists() else None
        if problem is None and held and not passing:
            sink(held)
        return code, (problem if code == 2 else None)
