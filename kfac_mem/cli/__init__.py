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


# Library argument name -> flag, per command ("*": every command), where the two names differ
# and the flag's own destination does not say it. A backticked name that is not listed but is the
# destination of one of the command's options becomes that option (`--set` for `sets`); failing
# that, an attribute of the parsed arguments becomes that flag (dashes for underscores). A name
# after a noun that says it is a value ("Set `clean`", "field `text`", "mesh axis `data`") is
# left as it is.
ARGUMENT_FLAGS: dict[str, dict[str, str]] = {
    "*": {
        "out_dir": "--out",
        "hf_dir": "--export-hf",
        "sizes": "--mesh-axis",
        "paths": "--data",
        "windows": "--data",
        "accumulate_dtype": "--accumulate",  # named by decompose's overflow hint, too
    },
    "collect": {"scheme": "--step-scheme"},
    "decompose": {"run": "--factors"},
    "edit": {"text": "--layers-json", "path": "--layers-file"},
    "export": {"hf_dir": "--out"},
    "sweep": {"edit_dir": "--write-edit", "texts": "--text"},
    "evaluate": {"paths": "--text", "texts": "--text", "length": "--window"},
    "mine": {"paths": "--corpus"},
    "analyze": {"rhos": "--rho", "site_ids": "--layers"},
    "merge": {"paths": "RUN"},  # the positional factor runs
}
_VALUE_NOUNS = ("set", "field", "axis", "config", "task", "layer", "parameter", "factor", "key")
_BACKTICKED = re.compile(
    "".join(rf"(?<!{n} )(?<!{n.capitalize()} )" for n in _VALUE_NOUNS)
    + r"`([a-z][a-z0-9_]*)(\[\d+\])?`"
)


def _option_flags(parser: argparse.ArgumentParser | None) -> dict[str, str]:
    """Destination -> long flag of every option of `parser` and of its nested subcommands."""
    out: dict[str, str] = {}
    for action in parser._actions if parser is not None else ():
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out = {**_option_flags(sub), **out}
            continue
        longs = [o for o in action.option_strings if o.startswith("--")]
        if longs and action.dest not in ("help", "debug"):
            out[action.dest] = longs[0]
    return out


def _command_parser(
    command: str, top: argparse.ArgumentParser | None = None
) -> argparse.ArgumentParser | None:
    """The parser of subcommand `command` (of `top`, default a freshly built `build_parser()`)."""
    for action in (top or build_parser())._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(command)
    return None


def flag_message(
    message: str,
    command: str,
    args: argparse.Namespace | None = None,
    parser: argparse.ArgumentParser | None = None,
) -> str:
    """`message` with each backticked library argument name replaced by `command`'s flag.

    `parser` is the command's parser (default: built from `SUBCOMMANDS`); its options' destinations
    map to their flags, then `ARGUMENT_FLAGS` and the attributes of `args` fill in the rest.
    """
    table = {**ARGUMENT_FLAGS["*"], **ARGUMENT_FLAGS.get(command, {})}
    options = _option_flags(parser if parser is not None else _command_parser(command))
    names = {
        k
        for k, v in vars(args or argparse.Namespace()).items()
        if not callable(v) and k != "command"
    }

    def repl(m: re.Match) -> str:
        name = m.group(1)
        if name in table:
            return table[name]
        if name in options:
            return options[name]
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
    from kfac_mem.aot import quiet_absent_tpu

    quiet_absent_tpu()
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
        shown = flag_message(message, args.command, args, _command_parser(args.command, parser))
        print(f"kfac-mem {args.command}: error: {shown}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
