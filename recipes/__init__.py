"""Registered training recipes. `recipes.get(name, preset=..., **overrides)` returns one.

Each recipe module registers itself on import; importing this package imports them all, so
`recipes.list()` is complete.
"""

from recipes import bert_mlm, classifier, distill, gpt_clm, multitask  # noqa: F401 - registers the recipes
from recipes.base import Recipe, RecipeConfig, load_checkpoint
from recipes.registry import get, get_class, list_recipes, register, resolve_config

list = list_recipes  # noqa: A001 - the public name the design asks for: recipes.list()

__all__ = ["Recipe", "RecipeConfig", "get", "get_class", "list", "list_recipes", "load_checkpoint", "register", "resolve_config"]
