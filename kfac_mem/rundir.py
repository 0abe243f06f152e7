"""Ownership and locking of output directories: a stage writes only where it may.

Every artifact directory this package writes carries a marker, `.kfac-mem.json`
({"format": "kfac-mem-dir-v1", "kind": KIND, ...}), written first into a new or empty directory.
A stage may write into a directory only if it is new, empty, or already marked with the stage's own
kind (resume, or replace with `overwrite`); never into a user's directory, another stage's run, or
an input of the same call (compared by real path, nesting included). Directories written before
markers existed are recognised by this package's own metadata (a `metadata.json` with a factor or
eigen format tag, a `model_config.json`, an analyzer `report.json`, a `config.yaml` written by a
stage), so old runs still resume.

The writer holds an advisory lock (`fcntl.flock` on `.kfac-mem.lock` inside the directory) for the
whole run; a second writer is refused with the holder's pid and command line. In a multi-process
run only process 0 checks, locks and marks the directory (the others check only that it is not an
input); a refusal on process 0 ends every process of the run.

    with claim(out_dir, "factors", inputs={"model": model_dir}):
        ...  # write the run
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import sys
from collections.abc import Mapping
from typing import Any

from kfac_mem.errors import OutputDirError, RunLockedError

__all__ = ["KINDS", "LOCK", "MARKER", "Claim", "check_output", "claim", "kind_of"]

MARKER = ".kfac-mem.json"
LOCK = ".kfac-mem.lock"
MARKER_FORMAT = "kfac-mem-dir-v1"
# kind -> what a message calls it
KINDS = {
    "factors": "a factor run (`kfac-mem collect` or `merge`)",
    "eigen": "an eigen run (`kfac-mem decompose`)",
    "model": "an edited model (`kfac-mem edit` / `baseline`)",
    "hf-export": "an HF export (`models.export_hf`, `kfac-mem export`)",
    "evaluation": "an evaluation (`kfac-mem evaluate`)",
    "analysis": "an analysis (`kfac-mem analyze`)",
    "mined": "a mined set (`kfac-mem mine`)",
    "comparison": "a comparison (`kfac-mem compare`)",
    "demo": "a demo run (`kfac-mem demo`)",
    "sweep": "a sweep (`kfac-mem sweep`)",
}
USER = "user"  # kind_of: a non-empty directory this package did not write
# config.yaml `command` (written by the CLI before markers existed) -> kind
_LEGACY_COMMANDS = {
    "collect": "factors",
    "decompose": "eigen",
    "edit": "model",
    "evaluate": "evaluation",
    "analyze": "analysis",
    "mine": "mined",
    "compare": "comparison",
    "baseline": "model",
    "demo": "demo",
}
_IGNORED = {LOCK}


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _legacy_kind(path: str, names: set[str]) -> str | None:
    """Kind of a directory written before markers existed, or None when ambiguous."""
    if "metadata.json" in names:
        fmt = (_read_json(os.path.join(path, "metadata.json")) or {}).get("format")
        if fmt == "kfac-mem-factors-v1":
            return "factors"
        if fmt == "kfac-mem-eigen-v1":
            return "eigen"
    if "model_config.json" in names:
        fmt = (_read_json(os.path.join(path, "model_config.json")) or {}).get("format")
        if fmt in ("flax-decoder-v1", "flax-vit-v1"):
            return "model"
    if "report.json" in names:
        fmt = (_read_json(os.path.join(path, "report.json")) or {}).get("format")
        if fmt == "kfac-mem-analysis-v1":
            return "analysis"
    if "config.yaml" in names:
        import yaml

        try:
            with open(os.path.join(path, "config.yaml"), encoding="utf-8") as f:
                doc = yaml.safe_load(f)
        except (OSError, yaml.YAMLError):
            doc = None
        if isinstance(doc, dict) and {"command", "argv", "flags", "devices"} <= set(doc):
            return _LEGACY_COMMANDS.get(doc.get("command"))
    return None


def kind_of(path: str) -> str | None:
    """The kind of artifact directory at `path`: a `KINDS` key, None (missing or empty), or
    "user" (non-empty and not recognisably written by this package)."""
    if not os.path.isdir(path):
        return USER if os.path.exists(path) else None
    names = set(os.listdir(path)) - _IGNORED
    if not names or names == {MARKER}:  # a marked directory nothing was written to yet
        return None
    marker = _read_json(os.path.join(path, MARKER)) if MARKER in names else None
    if isinstance(marker, dict) and marker.get("format") == MARKER_FORMAT:
        kind = marker.get("kind")
        return kind if kind in KINDS else USER
    return _legacy_kind(path, names) or USER


def _describe(kind: str) -> str:
    return KINDS.get(kind, "files this tool did not write")


def _is_within(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def check_output(
    path: str,
    kind: str,
    *,
    inputs: Mapping[str, str | None] | None = None,
    overwrite: bool = False,
    replace_needs_overwrite: bool = False,
    arg: str = "out_dir",
    _probe: bool = True,
) -> str:
    """Refuse `path` as the output of a `kind` stage unless it may be written; writes nothing.

    Args:
      path: the output directory.
      kind: the stage's artifact kind (a `KINDS` key).
      inputs: argument name -> path of the call's inputs (None / non-paths are skipped); the output
        may be neither one of them nor inside one nor contain one (real paths).
      overwrite: the caller may replace an existing artifact of its own kind.
      replace_needs_overwrite: an existing artifact of `kind` is refused without `overwrite`
        (stages that replace rather than resume: decompose, edit, analyze, HF export).
      arg: the argument name messages use for `path`.

    Returns the real path of `path`.
    Raises OutputDirError naming `arg`, the directory and the fix.
    """
    if kind not in KINDS:
        raise ValueError(f"`kind` must be one of {sorted(KINDS)}, got {kind!r}.")
    out = os.path.realpath(path)
    for name, value in (inputs or {}).items():
        if not value or not os.path.exists(value):
            continue
        src = os.path.realpath(value)
        if _is_within(out, src) or _is_within(src, out):
            relation = "is" if out == src else "overlaps"
            raise OutputDirError(
                f"`{arg}` {out} {relation} the input `{name}` {src}; writing there would destroy "
                f"the input. Choose another `{arg}`."
            )
    held = _HELD.get(out)
    if held is not None and held.kind == kind:
        return out  # this process claimed it (the checks passed then)
    if _process_index() != 0:
        # Multi-process: the directory's state is process 0's to check (it locks and marks it,
        # possibly before this process gets here); a refusal there ends the whole run.
        return out
    if os.path.exists(out) and not os.path.isdir(out):
        raise OutputDirError(f"`{arg}` {out} is a file, not a directory. Choose another `{arg}`.")
    if _probe:
        _probe_lock(out, arg)
    found = kind_of(out)
    if found is None:
        return out
    if found == USER:
        names = sorted(set(os.listdir(out)) - _IGNORED)
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        raise OutputDirError(
            f"`{arg}` {out} is not empty and was not written by kfac-mem (it holds {shown}); "
            f"nothing was changed. Choose a new or empty `{arg}`."
        )
    if found != kind:
        raise OutputDirError(
            f"`{arg}` {out} holds {_describe(found)}, not {_describe(kind)}; nothing was changed "
            f"(another stage's output is never replaced). Choose another `{arg}`."
        )
    if replace_needs_overwrite and not overwrite:
        raise OutputDirError(
            f"`{arg}` {out} already holds {_describe(kind)}; pass `overwrite` to replace it or "
            f"choose another `{arg}`."
        )
    return out


def _process_index() -> int:
    if "jax" not in sys.modules:
        return 0
    import jax

    return jax.process_index()


class Claim:
    """A held output directory: the lock is released by `release()` (or leaving the `with`)."""

    def __init__(self, path: str, kind: str, fd: int | None, created: bool = False):
        self.path = path
        self.kind = kind
        self.created = created  # this claim made the directory
        self._fd = fd
        self._count = 1

    def _discard_if_unused(self) -> None:
        """Remove a directory this claim created when nothing but its marker and lock is in it."""
        if not self.created or self._fd is None or set(os.listdir(self.path)) - {MARKER, LOCK}:
            return
        for name in (MARKER, LOCK):
            if os.path.exists(os.path.join(self.path, name)):
                os.remove(os.path.join(self.path, name))
        os.rmdir(self.path)

    def release(self) -> None:
        self._count -= 1
        if self._count > 0:
            return
        _HELD.pop(self.path, None)
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and self._count == 1:
            with contextlib.suppress(OSError):
                self._discard_if_unused()  # a refused run leaves no trace
        self.release()


_HELD: dict[str, Claim] = {}


def _holder(lock_path: str) -> str:
    info = _read_json(lock_path) or {}
    if not isinstance(info, dict) or "pid" not in info:
        return "another process"
    return f"pid {info['pid']} on {info.get('host', '?')}: {info.get('command', '?')}"


def _probe_lock(out: str, arg: str) -> None:
    """Refuse early (before any work) when another process holds `out`'s lock."""
    lock_path = os.path.join(out, LOCK)
    if not os.path.isfile(lock_path):
        return
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RunLockedError(
            f"`{arg}` {out} is being written by another process ({_holder(lock_path)}); "
            f"wait for it to finish or choose another `{arg}`."
        ) from None
    finally:
        os.close(fd)  # closing drops a shared lock taken here


def _program() -> str:
    name = os.path.basename(sys.argv[0] or "python")
    return "kfac-mem" if name in ("__main__.py", "kfac-mem") else name


def _lock(out: str, arg: str) -> int:
    lock_path = os.path.join(out, LOCK)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunLockedError(
            f"`{arg}` {out} is being written by another process ({_holder(lock_path)}); "
            f"wait for it to finish or choose another `{arg}`."
        ) from None
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": " ".join([_program(), *sys.argv[1:]]),
        "since": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    return fd


def claim(
    path: str,
    kind: str,
    *,
    inputs: Mapping[str, str | None] | None = None,
    overwrite: bool = False,
    replace_needs_overwrite: bool = False,
    arg: str = "out_dir",
) -> Claim:
    """`check_output`, then create the directory, lock it and mark it with `kind`.

    The check is repeated under the lock (two writers that both saw an empty directory). A
    directory this process already holds is returned again (re-entrant: the CLI claims before the
    library does). Only process 0 of a multi-process run locks and writes the marker.
    Raises OutputDirError or RunLockedError; nothing is written when either is raised (beyond
    creating a missing, empty directory with its lock file).
    """
    out = os.path.realpath(path)
    held = _HELD.get(out)
    if held is not None:
        if held.kind != kind:
            raise OutputDirError(
                f"`{arg}` {out} is already being written as {_describe(held.kind)} by this "
                f"process; choose another `{arg}`."
            )
        held._count += 1
        return held
    check_output(
        out,
        kind,
        inputs=inputs,
        overwrite=overwrite,
        replace_needs_overwrite=replace_needs_overwrite,
        arg=arg,
    )
    if _process_index() != 0:
        result = Claim(out, kind, None)
        _HELD[out] = result
        return result
    existed = os.path.isdir(out)
    os.makedirs(out, exist_ok=True)
    fd = _lock(out, arg)
    try:
        check_output(  # again under the lock: another writer may have claimed it meanwhile
            out,
            kind,
            inputs=inputs,
            overwrite=overwrite,
            replace_needs_overwrite=replace_needs_overwrite,
            arg=arg,
            _probe=False,
        )
        marker = os.path.join(out, MARKER)
        if not os.path.isfile(marker) or kind_of(out) is None:
            tmp = f"{marker}.tmp-{os.getpid()}"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(
                    {
                        "format": MARKER_FORMAT,
                        "kind": kind,
                        "created": datetime.datetime.now(datetime.UTC).isoformat(
                            timespec="seconds"
                        ),
                        "adopted": existed and kind_of(out) == kind,
                    },
                    f,
                )
            os.replace(tmp, marker)
    except BaseException:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        raise
    result = Claim(out, kind, fd, created=not existed)
    _HELD[out] = result
    return result
