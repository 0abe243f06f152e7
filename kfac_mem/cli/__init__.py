"""`kfac-mem` command line: one module per subcommand, each with `add_parser` and `run`.

Usage: kfac-mem {collect,merge,decompose,edit,sweep,analyze,evaluate,mine,export,demo,...} --help

One error path: an error the user can fix (`kfac_mem.errors.UserError`, and the builtin errors
the library raises for bad inputs or files) is printed as one line, exit code 2, with the library's
argument names (in backticks) replaced by this command's flags (`ARGUMENT_FLAGS`, the one place
that maps them); Ctrl-C prints how to resume, exit code 130. `--debug` (anywhere on the command
line, or KFAC_MEM_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys

__all__ = ["SUBCOMMANDS", "build_parser", "main"]

# Subcommand name -> module under kfac_mem.cli (imported lazily so `--help` is fast).
SUBCOMMANDS = {
    "collect": "collect",
    "merge": "merge",
    "decompose": "decompose",
    "edit": "edit",
    "analyze": "analyze",
    "evaluate": "evaluate",
    "mine": "mine",
    "demo": "demo",
    "baseline": "baseline",
    "compare": "compare",
    "audit": "audit",
    "plan": "plan",
    "export": "export",
    "sweep": "sweep",
}


def _available() -> dict[str, str]:
    out = {}
    for name, module in SUBCOMMANDS.items():
        if importlib.util.find_spec(f"kfac_mem.cli.{module}") is not None:
            out[name] = module
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kfac-mem",
        description="K-FAC curvature analysis and removal of memorization (JAX).",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of an error (accepted anywhere on the command line)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in _available().items():
        mod = importlib.import_module(f"kfac_mem.cli.{module}")
        mod.add_parser(sub, name)
    return parser


# Library argument name -> flag, per command ("*": every command). A backticked name that is not
# listed but is an attribute of the parsed arguments becomes that flag (dashes for underscores).
ARGUMENT_FLAGS: dict[str, dict[str, str]] = {
    "*": {
        "out_dir": "--out",
        "hf_dir": "--export-hf",
        "sizes": "--mesh-axis",
        "paths": "--data",
        "windows": "--data",
    },
    "decompose": {"run": "--factors"},
    "export": {"hf_dir": "--out"},
    "sweep": {"edit_dir": "--write-edit", "texts": "--text"},
    "evaluate": {"paths": "--text", "texts": "--text"},
    "mine": {"paths": "--corpus"},
    "merge": {"paths": "RUN"},  # the positional factor runs
}
_BACKTICKED = re.compile(r"`([a-z][a-z0-9_]*)(\[\d+\])?`")


def flag_message(message: str, command: str, args: argparse.Namespace | None = None) -> str:
    """`message` with each backticked library argument name replaced by `command`'s flag."""
    table = {**ARGUMENT_FLAGS["*"], **ARGUMENT_FLAGS.get(command, {})}
    names = {
        k
        for k, v in vars(args or argparse.Namespace()).items()
        if not callable(v) and k != "command"
    }

    def repl(m: re.Match) -> str:
        name = m.group(1)
        if name in table:
            return table[name]
        if name in names:
            return "--" + name.replace("_", "-")
        return m.group(0)

    return _BACKTICKED.sub(repl, message)


def _user_errors() -> tuple[type[BaseException], ...]:
    from kfac_mem.errors import UserError

    return (
        UserError,
        FileNotFoundError,
        FileExistsError,
        NotADirectoryError,
        IsADirectoryError,
        PermissionError,
        ValueError,
        KeyError,
        json.JSONDecodeError,
        FloatingPointError,
        TimeoutError,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    from kfac_mem.cli.common import DEBUG_ENV, is_debug

    if "--debug" in argv:
        argv = [a for a in argv if a != "--debug"]
        import os

        os.environ[DEBUG_ENV] = "1"
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        if is_debug():
            raise
        print(
            f"kfac-mem {args.command}: interrupted; rerun the same command to resume",
            file=sys.stderr,
        )
        return 130
    except _user_errors() as e:
        if is_debug():
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        message = " ".join(str(message).split())  # one line
        print(
            f"kfac-mem {args.command}: error: {flag_message(message, args.command, args)}",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
