"""The workbench's errors: one base class, one subclass per domain.

Every error a user can cause (a bad file, a bad option, a shape the planner cannot describe)
is a :class:`WorkbenchError` whose message is one line naming the file or option and the
problem. The CLI prints that line and exits 2; anything else is a bug and keeps its traceback.
They subclass ``ValueError`` too, so callers that caught ``ValueError`` keep working.
"""

from __future__ import annotations


class WorkbenchError(ValueError):
    """Bad input of any kind; the message is one line."""


class ConfigError(WorkbenchError):
    """A configuration that cannot describe a decoder (missing or inconsistent fields)."""


class CheckpointError(WorkbenchError):
    """A checkpoint that cannot be loaded; the message names the file and the problem."""


class ProfileError(WorkbenchError):
    """A profile, device or architecture file that cannot be used."""


class InputError(WorkbenchError):
    """A probe input that cannot be made (empty text, sizes out of range, no vocabulary)."""


class PlanError(WorkbenchError):
    """A deployment shape or storage type the memory planner cannot describe."""


class BackendError(WorkbenchError):
    """A transformers model whose structure or outputs the nnsight backend cannot read."""


class RunError(WorkbenchError):
    """Bad input found while running (options, probe lengths, memory that does not suffice)."""


class ReportError(WorkbenchError):
    """A report that cannot be written (invalid document, bad output path)."""
