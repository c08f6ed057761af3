"""The ``signstream`` command line: one entry point, one module per subcommand.

Each subcommand module exposes ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``. Every
expected way a command ends is one line on stderr (:func:`signstream.recipes.runtime.guarded`): user errors
exit 2, a full disk 1, Ctrl-C 130, SIGTERM 143, with secrets in URLs replaced; anything else is a bug and keeps
its traceback. Why: docs/design/packing.md
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import sys
from collections.abc import Callable

from signstream import __version__
from signstream.recipes.runtime import guarded

# name -> module; imported lazily so `signstream wer` does not import torch/DALI.
SUBCOMMANDS = {
    "synth": "signstream.tools.synth",
    "pack": "signstream.tools.pack",
    "verify": "signstream.tools.verify",
    "wer": "signstream.tools.wer",
    "demo": "signstream.tools.demo",
    # registered by name only: the benchmarks sit above the commands, so nothing here imports them
    "bench": "signstream.benchmarks.history",
}
# Recipes take `--config PRESET.yaml key=value ...` themselves (see recipes/config.py).
RECIPES = {
    "extract_features": "signstream.recipes.extract_features",
    "finetune_ctc": "signstream.recipes.finetune_ctc",
    "train_head": "signstream.recipes.train_head",
}


# Commands whose interrupted run a rerun resumes (atomic shards plus a state file).
RESUMABLE = {"pack"}


def run_command(command: str | None, run: Callable[[], int]) -> int:
    """Run a subcommand (``run()`` parses and runs it) under the one exit-code policy.

    The signal handlers are in place before the subcommand's module is even
    imported, so a SIGTERM during start-up is reported the same way.
    """
    name = f"signstream {command}" if command in SUBCOMMANDS else "signstream"
    return guarded(run, name=name, resumable=command in RESUMABLE)


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr (exit code 2).

    argparse prints the whole usage block before the message; for a command
    with many options that buries the one line that matters.
    """

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class _OneLineHelp(argparse.HelpFormatter):
    """Wide enough that each subcommand and its description share one line."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=120, max_help_position=30)

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction):
            # argparse measures subcommand names one indent level too shallow, so the
            # longest name (extract_features) would push its description to the next line
            longest = max(map(len, action.choices), default=0)
            self._action_max_length = max(self._action_max_length, self._current_indent + 4 + longest)


def build_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, object | None]:
    """Build the parser; only the chosen subcommand's module is imported."""
    parser = OneLineParser(
        prog="signstream",
        description="signstream: sign language video to recognised glosses, fast and measured",
        epilog="Recipes take --config PRESET.yaml and key=value overrides; `signstream RECIPE --help` lists "
        "their keys and shipped presets. `signstream COMMAND --help` shows a command's options.",
        formatter_class=_OneLineHelp,
    )
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
            sub.add_parser(name, help=summary(modname), add_help=False)
    for name, modname in RECIPES.items():
        sub.add_parser(name, help=f"recipe: {summary(modname)}")
    return parser, module


def summary(modname: str) -> str:
    """A module's one-line description, read from its source without importing it.

    The module's ``HELP`` string when it has one, else the first line of its
    docstring, lower-cased and without the final full stop (argparse style).
    Reading the source keeps ``signstream --help`` from importing torch.
    """
    spec = importlib.util.find_spec(modname)
    tree = ast.parse(open(spec.origin, encoding="utf-8").read())
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(getattr(t, "id", None) == "HELP" for t in node.targets)
            and isinstance(node.value, ast.Constant)
        ):
            return str(node.value.value)
    line = (ast.get_docstring(tree) or "").strip().splitlines()[0:1]
    text = line[0].rstrip(".") if line else modname
    return text[:1].lower() + text[1:]


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in RECIPES:
        # a recipe's own lines carry no command name, as when it is launched with `accelerate launch`
        return guarded(lambda: importlib.import_module(RECIPES[argv[0]]).main(argv[1:]))
    return run_command(next((a for a in argv if not a.startswith("-")), None), lambda: _parse_and_run(argv))


def _parse_and_run(argv: list[str]) -> int:
    parser, module = build_parser(argv)
    args = parser.parse_args(argv)
    if module is None:
        parser.print_help()
        return 2
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
