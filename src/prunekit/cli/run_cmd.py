"""``prunekit run [RECIPE]``: the main job. A recipe in; a pruned model, a run folder and a report out.

Without a recipe it runs the embedded default (digits CNN, offline, under 2 minutes on 2 cores)::

    prunekit run                                  # the default recipe -> runs/default/
    prunekit run recipes/resnet20_masks80.yaml --out runs/r20
    prunekit run runs/r20/recipe.yaml --out runs/r20-again   # a run folder's recipe repeats the run
    prunekit run runs/r20/recipe.yaml --out runs/r20 --resume  # a stopped run goes on where it stopped
    prunekit run recipes/resnet20_masks80.yaml --check        # check the recipe only, run nothing
    prunekit run --set prune.allocation.sparsity=0.9          # any key overridden from the command line

Every mistake in the recipe is reported at once, with its line, before any work starts.
"""

from __future__ import annotations

import argparse
from typing import Any

HELP = "run a recipe (default: the embedded digits recipe): prune, recover, deploy, measure, report"


def register(subparsers: Any) -> None:
    """Add the ``run`` sub-command."""
    p = subparsers.add_parser("run", help=HELP, description=HELP + ".")
    p.add_argument("recipe", nargs="?", metavar="RECIPE", help="recipe file (.yaml); default: the embedded one")
    p.add_argument("--out", metavar="DIR", help="run folder (default: outputs.dir, else runs/<recipe name>)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--force", action="store_true", help="replace an earlier run in --out")
    again.add_argument("--resume", action="store_true",
                       help="continue the stopped run of this recipe in --out (default: the last runs/<name> folder): "
                            "trainings go on after their last finished epoch, searches from their state files")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a recipe key, e.g. --set prune.allocation.sparsity=0.9 (repeatable; the run "
                   "folder's recipe.yaml records it)")
    p.add_argument("--check", action="store_true", help="check the recipe (and the model it names), run nothing")
    bars = p.add_mutually_exclusive_group()
    bars.add_argument("--progress", dest="progress", action="store_const", const=True, default=None,
                      help="progress bars on (default: outputs.progress, 'auto' = on a terminal)")
    bars.add_argument("--no-progress", dest="progress", action="store_const", const=False, help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from prunekit import recipe as rc

    recipe = rc.load(args.recipe, overrides=args.overrides) if args.recipe else rc.default(args.overrides)
    if args.check and recipe.kind == "kernels":  # no model to check against
        print(f"{recipe.source}: ok")
        return 0
    if args.check:
        from prunekit.data.choose import example_input_for
        from prunekit.models import available, create
        from prunekit.recipe.core import dataset_of

        name, source = recipe["model"]["name"], recipe["model"]["checkpoint"]
        if source:
            from prunekit import checkpoint

            model, _ = checkpoint.build(source)
        elif name in available():
            model = create(name)
        else:
            model = None
        if model is not None:
            rc.check_against_model(recipe, model, example_input_for(dataset_of(recipe)))
        print(f"{recipe.source}: ok")
        return 0
    out = Path(args.out) if args.out else rc.default_folder(recipe, resume=args.resume)
    print(f"run folder: {out}" + (" (resuming)" if args.resume else ""))
    results = rc.run_recipe(recipe, out, force=args.force, progress=args.progress, resume=args.resume)
    made = "recipe.yaml, results.json, log.txt, report.html"
    print(f"\nrun {results['status']}: {out}/ ({'model.pt, ' if (out / 'model.pt').exists() else ''}{made})")
    return 0
