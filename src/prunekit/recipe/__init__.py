"""Recipes: describe the job once in YAML, get a pruned model, a run folder and a report.

``prunekit run RECIPE`` (or ``prunekit run`` for the embedded default) reads a recipe with
:func:`load`, checks it completely before any work (:class:`RecipeError` names the key, its line,
what it got and what is allowed) and runs it with :func:`run_recipe`. The keys are listed in
:data:`prunekit.recipe.schema.SCHEMA` and in ``docs/recipes.md``.
"""

from prunekit.recipe.core import Recipe, check_against_model, default, load, loads
from prunekit.recipe.pipeline import (
    REGULARIZERS,
    SEARCHES,
    STEPS,
    default_folder,
    register_regularizer,
    register_search,
    run_recipe,
)
from prunekit.recipe.schema import SCHEMA, RecipeError

__all__ = [
    "REGULARIZERS", "SCHEMA", "SEARCHES", "STEPS", "Recipe", "RecipeError", "check_against_model", "default", "default_folder", "load", "loads",
    "register_regularizer", "register_search", "run_recipe",
]
