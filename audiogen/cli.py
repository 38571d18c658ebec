"""The ``audiogen`` command.

Each subcommand lives in ``audiogen/commands/<name>.py`` and exposes
``register(subparsers)`` (argparse only, cheap imports) and ``run(args) -> int``
(which may import torch and friends). User errors (:class:`AudiogenError`) print one
line and exit 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from audiogen import __version__
from audiogen.errors import AudiogenError


def _command_modules():
    import audiogen.commands as pkg

    mods = [importlib.import_module(f"audiogen.commands.{m.name}") for m in pkgutil.iter_modules(pkg.__path__)
            if not m.name.startswith("_")]  # _name: a helper the commands share
    return sorted(mods, key=lambda m: (getattr(m, "ORDER", 100), m.__name__))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audiogen",
        description="Music generation end to end: prepare a corpus of EnCodec tokens, train a conditioned "
        "transformer LM, generate finished tracks, and evaluate them (FAD, blind listening tests).",
        epilog="Run 'audiogen COMMAND --help' for a command's options. Docs: README.md and docs/.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"audiogen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _command_modules():
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except AudiogenError as e:
        print(f"audiogen {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"audiogen {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
