"""pytest options and the shared diagnosis for the probes suite.

    pytest probes/ --checkpoint DIR [--profile NAME]

The checkpoint is diagnosed once per session (every analyzer, no profiler trace); each test
module then checks one analyzer's findings. A test fails with the messages of the ``fail``
findings it covers; ``warn`` findings are shown but do not fail.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from workbench.errors import CheckpointError
from workbench.pipeline.run import RunError, RunOptions, run


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("workbench")
    group.addoption("--checkpoint", default=None,
                    help="checkpoint to check (folder, .gguf, workbench checkpoint); default: SmolLM2")
    group.addoption("--profile", default="default", help="run profile name or TOML path")
    group.addoption("--probe-device", default="cpu", help="torch device (cpu, cuda)")


@pytest.fixture(scope="session")
def diagnosis(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The report document of one `check` run on --checkpoint."""
    options = RunOptions(command="check", profile=request.config.getoption("--profile"),
                         device=request.config.getoption("--probe-device"))
    try:
        return run(request.config.getoption("--checkpoint"), options).report
    except (CheckpointError, RunError, ValueError) as error:
        # `workbench check` names this file: it prints the one line instead of pytest's report
        error_file = os.environ.get("WORKBENCH_CHECK_ERROR_FILE")
        if error_file:
            Path(error_file).write_text(str(error), encoding="utf-8")
        pytest.exit(f"cannot diagnose the checkpoint: {error}", returncode=2)
