"""The recipe registry: a plain dict from name to recipe class, filled by `@register`."""

import dataclasses
import difflib

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
