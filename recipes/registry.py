"""The recipe registry: a plain dict from name to recipe class, filled by `@register`.

`import recipes` imports every module of the package, then the recipe files that
`$ZOO_RECIPE_PATH` names (`load_plugins`), so that their `@register` fills it.
"""

import dataclasses
import difflib
import importlib.util
import os
import sys

_RECIPES = {}


def _suggest(name, valid):
    close = difflib.get_close_matches(str(name), valid, n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def register(name):
    """Class decorator: registers a `Recipe` subclass under `name` (e.g. "gpt-clm")."""

    def decorator(cls):
        if name in _RECIPES and _RECIPES[name] is not cls:
            raise ValueError(f"A recipe named {name!r} is already registered ({_RECIPES[name].__qualname__}).")
        cls.name = name
        _RECIPES[name] = cls
        return cls

    return decorator


def unregister(name):
    """Removes a recipe from the registry (e.g. one a test registered); KeyError if unknown."""
    get_class(name)
    del _RECIPES[name]


def list_recipes():
    """Names of all registered recipes, sorted."""
    return sorted(_RECIPES)


def get_class(name):
    if name not in _RECIPES:
        raise KeyError(
            f"Unknown recipe {name!r}. Registered recipes: {', '.join(list_recipes())}.{_suggest(name, list_recipes())}"
        )
    return _RECIPES[name]


def resolve_config(recipe_class, preset=None, overrides=None):
    """The recipe's config: the named preset with `overrides` (a dict) applied, each key checked."""
    preset = preset or recipe_class.default_preset
    if preset not in recipe_class.presets:
        valid = sorted(recipe_class.presets)
        raise KeyError(
            f"Unknown preset {preset!r} for recipe {recipe_class.name!r}. "
            f"Valid presets: {', '.join(valid)}.{_suggest(preset, valid)}"
        )
    config = recipe_class.presets[preset]
    overrides = dict(overrides or {})
    fields = {f.name: f for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        valid = sorted(fields)
        hint = _suggest(unknown[0], valid)
        raise KeyError(
            f"Unknown config key(s) {', '.join(map(repr, unknown))} for recipe {recipe_class.name!r}. "
            f"Valid keys: {', '.join(valid)}.{hint}"
        )
    return dataclasses.replace(config, preset=preset, **overrides)


def get(name, preset=None, **overrides):
    """A recipe instance: `get("gpt-clm", preset="tiny", num_layers=4)`."""
    recipe_class = get_class(name)
    return recipe_class(resolve_config(recipe_class, preset, overrides))


# -- recipes from outside the package ----------------------------------------------------------

# Directories (or single .py files) of recipe files outside the package, separated by os.pathsep:
# `import recipes` imports each file after the built-in recipes, so that its `@register` adds its
# recipes to the registry (README, "Add a recipe").
PLUGIN_PATH_VARIABLE = "ZOO_RECIPE_PATH"
_PLUGIN_PREFIX = "zoo_recipe_plugin_"


def plugin_files(path=None):
    """The recipe files of `path` (default: `$ZOO_RECIPE_PATH`), in load order.

    Each entry (separated by `os.pathsep`) is a `.py` file, or a directory whose `.py` files (not
    starting with "_") are taken in name order. FileNotFoundError names an entry that is neither.
    """
    path = os.environ.get(PLUGIN_PATH_VARIABLE, "") if path is None else path
    files = []
    for entry in filter(None, path.split(os.pathsep)):
        if os.path.isdir(entry):
            names = sorted(name for name in os.listdir(entry) if name.endswith(".py") and not name.startswith("_"))
            files += [os.path.join(entry, name) for name in names]
        elif os.path.isfile(entry) and entry.endswith(".py"):
            files.append(entry)
        else:
            raise FileNotFoundError(
                f"{PLUGIN_PATH_VARIABLE} names {entry!r}, which is neither a directory nor a .py file."
            )
    return files


def plugin_module_name(path):
    """The module name a recipe file is imported under: `zoo_recipe_plugin_<file name>`."""
    return _PLUGIN_PREFIX + os.path.splitext(os.path.basename(path))[0]


def load_plugins(path=None):
    """Imports the recipe files of `path` (default: `$ZOO_RECIPE_PATH`; see `plugin_files`); returns the modules.

    Each file becomes the module `plugin_module_name(file)`, whose `@register` adds its recipes.
    A file imported before is not imported again; two files of the same name raise ValueError.
    """
    modules = []
    for file in plugin_files(path):
        name = plugin_module_name(file)
        module = sys.modules.get(name)
        if module is not None:
            if os.path.realpath(module.__file__) != os.path.realpath(file):
                raise ValueError(
                    f"Two recipe files named {os.path.basename(file)!r}: {module.__file__} and {file}. Rename one."
                )
            modules.append(module)
            continue
        spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # before it runs: its dataclasses look their module up there
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        modules.append(module)
    return modules
