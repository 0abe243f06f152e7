"""Typed errors of the library: every error a user can cause or fix derives from `UserError`.

The library speaks in function arguments (messages name them in backticks, e.g. "`out_dir`");
`kfac_mem.cli` maps argument names to its flags in one place and prints one line, exit code 2.
Each class also derives from the builtin it refines, so `except ValueError` keeps working.
"""

from __future__ import annotations

__all__ = [
    "CorruptArtifactError",
    "InputError",
    "NonFiniteError",
    "OutputDirError",
    "RunLockedError",
    "UserError",
]


class UserError(Exception):
    """Base of errors caused by arguments, inputs or the state of a directory (not a bug)."""


class InputError(UserError, ValueError):
    """An input (data file, token ids, flag value) is invalid; nothing was written."""


class OutputDirError(UserError, FileExistsError):
    """An output directory belongs to a user, another stage's run, or is an input of the call."""


class RunLockedError(UserError, BlockingIOError):
    """Another process holds the run directory's lock."""


class CorruptArtifactError(UserError, ValueError):
    """A file of an artifact (checkpoint, JSON, safetensors) cannot be read; the message names it."""


class NonFiniteError(UserError, FloatingPointError):
    """A NaN/Inf in factors, eigenbases, weights or activations; the message names the layer and
    the artifact, and nothing was written for it."""
