"""Registered training recipes. `recipes.get(name, preset=..., **overrides)` returns one.

Each recipe module registers itself on import (`@register`). Importing this package imports
every module of the package (found with `pkgutil`: a new recipe file needs no line here), then
the recipe files outside it that `$ZOO_RECIPE_PATH` names (`registry.load_plugins`), so
`recipes.list()` is complete.
"""

import importlib
import pkgutil

from recipes.base import Recipe, RecipeConfig, load_checkpoint
from recipes.registry import get, get_class, list_recipes, load_plugins, register, resolve_config


def _import_modules():
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")  # registers the module's recipes


_import_modules()
load_plugins()

list = list_recipes  # noqa: A001 - the public name the design asks for: recipes.list()

__all__ = [
    "Recipe", "RecipeConfig", "get", "get_class", "list", "list_recipes", "load_checkpoint", "load_plugins", "register",
    "resolve_config",
]
