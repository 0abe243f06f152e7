"""`kfac-mem` command line: one module per subcommand, each with `add_parser` and `run`.

Usage: kfac-mem {collect,decompose,edit,analyze,evaluate,mine,demo,...} --help
"""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["SUBCOMMANDS", "build_parser", "main"]

# Subcommand name -> module under kfac_mem.cli (imported lazily so `--help` is fast).
SUBCOMMANDS = {
    "collect": "collect",
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
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in _available().items():
        mod = importlib.import_module(f"kfac_mem.cli.{module}")
        mod.add_parser(sub, name)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError) as e:
        from kfac_mem.cli.common import is_debug

        if is_debug():
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"kfac-mem {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
