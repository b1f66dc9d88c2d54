"""Config values from the command line: `--set key=value`, `--config FILE` and `--grid` values,
converted to the types of the recipe's config fields (used by `trainers.cli` and
`trainers.reports`; imports no TensorFlow)."""

import dataclasses
import json
import os


class UsageError(Exception):
    """A bad argument: printed as one line, exit status 2, no traceback."""


# -- config overrides ------------------------------------------------------------------------


def field_types(recipe):
    """{field: type} of a recipe's config: `recipe` is a recipe class, or a name (looked up in
    the catalog, without importing TensorFlow)."""
    if isinstance(recipe, str):
        from trainers import catalog

        return catalog.field_types(recipe)
    return {f.name: f.type for f in dataclasses.fields(recipe.config_class)}


def coerce(recipe_class, key, value, raw):
    """`value` converted to the type of config field `key` (validated by the registry).

    `recipe_class`: a recipe class, or a recipe's name (its fields then come from the catalog)."""
    fields = field_types(recipe_class)
    if key not in fields:
        return value  # the registry reports unknown keys with the list of valid ones
    expected = fields[key]
    if expected is str:
        return raw if isinstance(raw, str) else str(value)
    if expected is bool and isinstance(value, bool):
        return value
    if expected is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if expected is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if expected is float and isinstance(value, str):
        try:  # YAML 1.1 reads "3e-3" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    raise UsageError(f"{key} expects {expected.__name__}, got {raw!r}.")


def parse_overrides(recipe_class, config_file=None, assignments=()):
    """Config overrides from a JSON/YAML file and `key=value` strings (the latter win)."""
    import yaml

    overrides = {}
    if config_file:
        if not os.path.exists(config_file):
            raise UsageError(f"Config file {config_file!r} does not exist.")
        with open(config_file) as f:
            try:
                loaded = json.load(f) if config_file.endswith(".json") else yaml.safe_load(f)
            except (ValueError, yaml.YAMLError) as error:
                raise UsageError(f"{config_file}: not valid {'JSON' if config_file.endswith('.json') else 'YAML'}: {error}")
        if not isinstance(loaded, dict):
            raise UsageError(f"{config_file}: expected a mapping of config keys to values.")
        for key, value in loaded.items():
            overrides[key] = coerce(recipe_class, key, value, value)
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        if not sep or not key:
            raise UsageError(f"--set expects key=value, got {assignment!r}.")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        overrides[key.strip()] = coerce(recipe_class, key.strip(), value, raw)
    return overrides
