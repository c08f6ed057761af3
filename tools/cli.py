"""The ``signstream`` command line: one entry point, one module per subcommand.

Each subcommand module exposes ``HELP`` (one line), ``add_arguments(parser)``
and ``run(args) -> int``. Every expected way a command ends is one line on
stderr: user errors (:class:`signstream.SignstreamError`) exit 2, a full disk
1, Ctrl-C 130 and SIGTERM 143 (both unwind normally, so worker pools are
stopped and temporary files removed, and a rerun resumes). Secrets in URLs
are replaced in every message. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import importlib.util
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

from signstream import SignstreamError, __version__
from signstream.loaders.fileio import disk_full
from signstream.loaders.remote import redact

# name -> module; imported lazily so `signstream wer` does not import torch/DALI.
SUBCOMMANDS = {
    "synth": "signstream.tools.synth",
    "pack": "signstream.tools.pack",
    "verify": "signstream.tools.verify",
    "wer": "signstream.tools.wer",
    "demo": "signstream.tools.demo",
}
# Recipes take `--config PRESET.yaml key=value ...` themselves (see recipes/config.py).
RECIPES = {
    "extract_features": "signstream.recipes.extract_features",
    "finetune_ctc": "signstream.recipes.finetune_ctc",
    "train_head": "signstream.recipes.train_head",
}


# Commands whose interrupted run a rerun resumes (atomic shards plus a state file).
RESUMABLE = {"pack"}
STOP_GRACE_S = 15.0  # after SIGTERM, longest the clean unwind may take before the process just exits


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so the command unwinds like Ctrl-C.

    A ``BaseException`` like ``KeyboardInterrupt``: no ``except Exception`` on
    the way may swallow it.
    """


@contextlib.contextmanager
def stop_signals(line: str) -> Iterator[None]:
    """While the block runs, SIGTERM raises :class:`Terminated` and SIGINT ``KeyboardInterrupt``.

    Only in this process: a forked worker (a pool's) that inherits the handler
    ignores SIGINT (its parent stops it) and dies of SIGTERM at once, quietly,
    as it would have without the handler; its parent is the one that reports. After the
    first SIGTERM a second one kills at once, and a watchdog prints ``line`` and
    exits 143 if unwinding takes longer than :data:`STOP_GRACE_S`. The previous
    handlers are restored when the block ends.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner, watchdog = os.getpid(), []

    def give_up() -> None:
        print(line, file=sys.stderr, flush=True)
        os._exit(143)

    def handler(signum, frame) -> None:
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_IGN if signum == signal.SIGINT else signal.SIG_DFL)
            if signum == signal.SIGTERM:
                os.kill(os.getpid(), signum)
            return
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        watchdog.append(threading.Timer(STOP_GRACE_S, give_up))
        watchdog[-1].daemon = True
        watchdog[-1].start()
        raise Terminated

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        for timer in watchdog:
            timer.cancel()


def run_command(command: str | None, run: Callable[[], int]) -> int:
    """Run a subcommand (``run()`` parses and runs it); every expected ending is one line on stderr.

    The signal handlers are in place before the subcommand's module is even
    imported, so a SIGTERM during start-up is reported the same way.
    """
    name = f"signstream {command}" if command in SUBCOMMANDS else "signstream"
    resume = "; rerun the same command to resume" if command in RESUMABLE else ""
    try:
        with stop_signals(f"{name}: terminated{resume}"):
            return run()
    except SignstreamError as exc:
        print(f"{name}: error: {redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted{resume}", file=sys.stderr)
        return 130
    except Terminated:
        print(f"{name}: terminated{resume}", file=sys.stderr)
        return 143
    except OSError as exc:
        if not disk_full(exc):
            raise
        print(f"{name}: error: {redact(disk_full(exc))}", file=sys.stderr)
        return 1


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
        prog="signstream", description="signstream: sign language video to recognised glosses, fast and measured",
        epilog="Recipes take --config PRESET.yaml and key=value overrides; `signstream RECIPE --help` lists "
               "their keys and shipped presets. `signstream COMMAND --help` shows a command's options.",
        formatter_class=_OneLineHelp)
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
        if (isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "HELP" for t in node.targets)
                and isinstance(node.value, ast.Constant)):
            return str(node.value.value)
    line = (ast.get_docstring(tree) or "").strip().splitlines()[0:1]
    text = line[0].rstrip(".") if line else modname
    return text[:1].lower() + text[1:]


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in RECIPES:
        from signstream.recipes.config import main_guard

        return main_guard(importlib.import_module(RECIPES[argv[0]]).main, argv[1:])
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
