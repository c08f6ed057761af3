"""The ``signstream`` command line: one entry point, one module per subcommand.

Each subcommand module exposes ``HELP`` (one line), ``add_arguments(parser)``
and ``run(args) -> int``. User errors (:class:`signstream.SignstreamError`)
become a one-line message on stderr and exit code 2; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from signstream import SignstreamError, __version__

# name -> module; imported lazily so `signstream wer` does not import torch/DALI.
SUBCOMMANDS = {
    "synth": "signstream.tools.synth",
    "pack": "signstream.tools.pack",
    "verify": "signstream.tools.verify",
    "wer": "signstream.tools.wer",
}
# Recipes take `--config PRESET.yaml key=value ...` themselves (see recipes/config.py).
RECIPES = {
    "extract_features": "signstream.recipes.extract_features",
    "finetune_ctc": "signstream.recipes.finetune_ctc",
    "train_head": "signstream.recipes.train_head",
}


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr (exit code 2).

    argparse prints the whole usage block before the message; for a command
    with many options that buries the one line that matters.
    """

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, object | None]:
    """Build the parser; only the chosen subcommand's module is imported."""
    parser = OneLineParser(prog="signstream", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"signstream {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    module = None
    for name, modname in SUBCOMMANDS.items():
        if name == chosen:
            module = importlib.import_module(modname)
            p = sub.add_parser(name, help=module.HELP, description=module.HELP)
            module.add_arguments(p)
        else:
            sub.add_parser(name, help=_lazy_help(name), add_help=False)
    for name in RECIPES:
        sub.add_parser(name, help=f"recipe: --config PRESET.yaml key=value ... (see `signstream {name} --help`)")
    return parser, module


def _lazy_help(name: str) -> str:
    return f"see `signstream {name} --help`"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in RECIPES:
        from signstream.recipes.config import main_guard

        return main_guard(importlib.import_module(RECIPES[argv[0]]).main, argv[1:])
    parser, module = build_parser(argv)
    args = parser.parse_args(argv)
    if module is None:
        parser.print_help()
        return 2
    try:
        return int(module.run(args) or 0)
    except SignstreamError as exc:
        print(f"signstream {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"signstream {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
