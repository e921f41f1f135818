"""``prunekit report RUN_DIR [OTHER_RUN ...]``: rebuild a run folder's report; more folders compare.

    prunekit report runs/default
    prunekit report runs/default runs/default-2     # the first run's report gains a comparison table
"""

from __future__ import annotations

import argparse
from typing import Any

HELP = "rebuild the report of a run folder (more folders: compare them side by side)"


def register(subparsers: Any) -> None:
    """Add the ``report`` sub-command."""
    p = subparsers.add_parser("report", help=HELP, description=HELP + ".")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by prunekit run")
    p.add_argument("others", nargs="*", metavar="OTHER_RUN", help="run folders to compare with")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from prunekit.report import render

    html, md = render(args.run_dir, compare_with=args.others or None)
    print(f"wrote {html}\nwrote {md}")
    return 0
