"""Entry point of the ``prunekit`` command.

Each sub-command is a module in ``prunekit.cli`` exposing ``register(subparsers)``, which adds
its parser and sets ``func`` (``args -> int`` exit code) as a default. Add a new command by
appending its module name to ``COMMANDS``.

Exit codes: 0 success, 1 a :class:`~prunekit.errors.PrunekitError` (one line on stderr),
2 a usage error (one line on stderr), 130 interrupted (Ctrl-C: one line saying what was kept;
every file is either its last good version or untouched, never half-written).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from prunekit.errors import PrunekitError

COMMANDS: tuple[str, ...] = (
    "prunekit.cli.run_cmd",
    "prunekit.cli.report_cmd",
    "prunekit.cli.search_cmd",
    "prunekit.cli.info_cmd",
    "prunekit.cli.train_cmd",
    "prunekit.cli.eval_cmd",
    "prunekit.cli.demo_cmd",
    "prunekit.cli.prune_cmd",
    "prunekit.cli.deploy_cmd",
    "prunekit.cli.bench_cmd",
)


class UsageError(Exception):
    """Raised by :class:`OneLineParser` instead of printing the full usage text."""


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are a single line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: error: {message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every available sub-command registered."""
    parser = OneLineParser(prog="prunekit", description="Prune, sparsify and measure PyTorch models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for module_name in COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # command not written yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return 2
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    from prunekit.io import write_count, written_since

    mark = write_count()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"prunekit {args.command}: interrupted; {_left_after_interrupt(args, written_since(mark))}",
              file=sys.stderr)
        return 130
    except UsageError as exc:  # raised by the command itself: same one-line form as the parser's
        text = str(exc)
        prefix = f"prunekit {args.command}: error: "
        print(text if text.startswith("prunekit") else prefix + text, file=sys.stderr)
        return 2
    except PrunekitError as exc:
        print(f"prunekit {args.command}: error: {exc}", file=sys.stderr)
        return 1


def _left_after_interrupt(args: argparse.Namespace, written: list) -> str:
    """What an interrupted command leaves: nothing new, or the files it finished (each complete)."""
    if not written:
        return "nothing was written (existing files are unchanged)"
    last = written[-1]
    kept = f"the last good {'checkpoint' if str(last).endswith('.pt') else 'file'} {last} is kept"
    if len(written) > 1:
        kept = f"{', '.join(str(w) for w in written[:-1])} and {kept} (all complete)"
    trains = args.command == "train" or getattr(args, "finetune_epochs", 0)
    if trains and str(last) == str(getattr(args, "out", None)):  # rewritten every epoch, training state included
        kept += f"; continue with: prunekit train --checkpoint {last} --resume --out {last}"
    return kept


if __name__ == "__main__":
    sys.exit(main())
