"""What the `zoo` command knows of the recipes before it imports TensorFlow.

The recipe modules import Keras (and so TensorFlow: 7-19 s) at the top, and their config
dataclasses and presets live there. To report a misspelt recipe, preset or config key in well
under a second, the CLI checks them against `CATALOG`: a copy of the registry's names, default
presets, one-line summaries, config fields (with their types) and each preset's shape.

`CATALOG` is generated, never edited by hand: `python -m trainers.catalog` rewrites it from the
real registry (the recipes of the `recipes` package; not those of `$ZOO_RECIPE_PATH`), with
`MODULES`, the package's modules it was generated from. A test (tests/trainers/test_cli_fast.py)
fails whenever an entry differs from the registry's.

A new recipe needs no new catalog. The catalog is `complete()` when the package has the same
modules as when it was generated and `$ZOO_RECIPE_PATH` is unset; only then does the CLI reject
a name it lacks at once. Otherwise (a recipe file added since, or recipe files from outside the
package) a name it lacks is left to the registry, which the command imports anyway: the new
recipe trains at once, and a misspelt name is reported after the TensorFlow import, with every
registered recipe listed. `zoo list` then lists the registry's recipes (`entries()`).
Regenerating the catalog brings back the instant check.
"""

import difflib
import os

# Preset fields that set a model's shape (and so its parameter count), where the config has them.
SHAPE_FIELDS = (
    "vocabulary_size", "sequence_length", "num_layers", "hidden_dim", "num_heads", "intermediate_dim",
    "num_segments", "position_embedding_type", "num_key_value_heads", "data", "categories", "num_classes",
)
# The recipes whose parameter count `parameter_count` knows by formula (the others: None).
PARAMETER_FORMULAS = ("bert-mlm", "classifier", "distill", "gpt-clm", "multitask")
# Of those, the ones with a classification head (the count depends on the number of classes).
CLASSIFICATION_HEADS = ("classifier", "distill", "multitask")
# The environment variable of recipe files outside the package (recipes.registry.PLUGIN_PATH_VARIABLE).
PLUGIN_PATH_VARIABLE = "ZOO_RECIPE_PATH"


def _suggest(name, valid):
    close = difflib.get_close_matches(str(name), valid, n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


# -- is the catalog the whole registry? --------------------------------------------------------


def recipe_modules():
    """Names of the `recipes` package's modules, found without importing it (no TensorFlow)."""
    import importlib.util
    import pkgutil

    spec = importlib.util.find_spec("recipes")
    return tuple(sorted(module.name for module in pkgutil.iter_modules(spec.submodule_search_locations)))


def complete():
    """Whether `CATALOG` knows every recipe the registry will hold: the package has the modules the
    catalog was generated from, and `$ZOO_RECIPE_PATH` adds none (see the module's docstring)."""
    return recipe_modules() == MODULES and not os.environ.get(PLUGIN_PATH_VARIABLE)


_entries = None  # the registry's entries, once `entries()` had to build them


def entries():
    """{name: entry} of every registered recipe: `CATALOG` when it is `complete()`, else built from
    the registry (slow: imports the recipes, and so TensorFlow), recipe files of `$ZOO_RECIPE_PATH`
    included."""
    global _entries
    if _entries is None:
        _entries = CATALOG if complete() else build_catalog(package_only=False)
    return _entries


def _entry(name):
    return (_entries or CATALOG)[name]


# -- the same checks (and messages) as recipes.registry ----------------------------------------


def recipe_names():
    return sorted(CATALOG)


def check_recipe(name):
    """The catalog entry of recipe `name`; KeyError (the registry's message) if there is none."""
    if name not in CATALOG:
        names = recipe_names()
        raise KeyError(f"Unknown recipe {name!r}. Registered recipes: {', '.join(names)}.{_suggest(name, names)}")
    return CATALOG[name]


def check_preset(name, preset):
    """The preset's name (the default for None); KeyError (the registry's message) if unknown."""
    entry = check_recipe(name)
    preset = preset or entry["default_preset"]
    if preset not in entry["presets"]:
        valid = sorted(entry["presets"])
        raise KeyError(
            f"Unknown preset {preset!r} for recipe {name!r}. Valid presets: {', '.join(valid)}.{_suggest(preset, valid)}"
        )
    return preset


def check_keys(name, keys):
    """KeyError (the registry's message) naming the keys that are not config fields of the recipe."""
    fields = check_recipe(name)["fields"]
    unknown = sorted(set(keys) - set(fields))
    if unknown:
        valid = sorted(fields)
        raise KeyError(
            f"Unknown config key(s) {', '.join(map(repr, unknown))} for recipe {name!r}. "
            f"Valid keys: {', '.join(valid)}.{_suggest(unknown[0], valid)}"
        )


def field_types(name):
    """{field: type} of the recipe's config (int, float, str or bool)."""
    types = {"int": int, "float": float, "str": str, "bool": bool}
    return {field: types.get(type_name, object) for field, type_name in check_recipe(name)["fields"].items()}


# -- shapes and parameter counts ----------------------------------------------------------------


def num_classes(shape):
    """The classes a classification preset's model gets: `num_classes`, else one per WordNet
    category (the default data); None when the data decides (a local file)."""
    if shape.get("num_classes"):
        return shape["num_classes"]
    if shape.get("data") == "wordnet":
        return len(shape["categories"].split(","))
    return None


def parameter_count(name, preset, classes=None):
    """Parameters of the recipe's model at the preset's shape, by formula (no model is built);
    None for a recipe without one (not in `PARAMETER_FORMULAS`: its count is not guessed).

    The vocabulary is the config's `vocabulary_size` (a trained tokenizer can come out smaller);
    classification heads have `classes` outputs (default: `num_classes(shape)`). For `distill`,
    the student alone (what its checkpoints hold). A test checks the formula against built models.
    """
    if name not in PARAMETER_FORMULAS:
        return None
    shape = _entry(name)["presets"][preset]
    v, length, layers = shape["vocabulary_size"], shape["sequence_length"], shape["num_layers"]
    h, heads, i = shape["hidden_dim"], shape["num_heads"], shape["intermediate_dim"]
    head_dim = h // heads
    kv_heads = shape.get("num_key_value_heads") or heads
    attention = h * (heads + 2 * kv_heads) * head_dim + (heads + 2 * kv_heads) * head_dim + heads * head_dim * h + h
    feed_forward = h * i + i + i * h + h
    block = attention + feed_forward + 2 * 2 * h  # two layer norms
    positions = length * h if shape.get("position_embedding_type", "learned") == "learned" else 0
    body = v * h + positions + shape.get("num_segments", 0) * h + layers * block + 2 * h  # + final/embedding norm
    if name == "gpt-clm":
        return body  # the output projection is the token embedding (tied)
    masked_lm_head = h * h + h + 2 * h + v  # transform, its norm, the output bias (projection tied)
    if name == "bert-mlm":
        return body + masked_lm_head
    classes = classes or num_classes(shape) or 2
    classification_head = h * classes + classes
    if name == "multitask":
        # + the learned loss weighting's state: a log-variance, a GradNorm weight and a first loss per task.
        return body + masked_lm_head + classification_head + 3 * 2
    return body + classification_head  # classifier, distill


def preset_summary(name, preset):
    """One line: the preset's shape and parameter count ("parameters unknown" without a formula)."""
    shape = _entry(name)["presets"][preset]
    params = parameter_count(name, preset)
    parts = []
    if "num_layers" in shape:
        parts.append(f"{shape['num_layers']} layer{'s' if shape['num_layers'] != 1 else ''}")
    for key, label in (("hidden_dim", "hidden {}"), ("num_heads", "{} heads"), ("sequence_length", "sequence {}"),
                       ("vocabulary_size", "vocabulary {}")):
        if key in shape:
            parts.append(label.format(shape[key]))
    text = ", ".join(parts) + ": " if parts else ""
    if params is None:
        return text + f"parameters unknown (no formula for {name}; nothing is built)"
    text += f"{_human(params)} parameters"
    if name in CLASSIFICATION_HEADS:
        text += f" (at {num_classes(shape) or 2} classes)"
    return text


def _human(count):
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.1f}{unit}"
    return str(count)


# -- generation -------------------------------------------------------------------------------


def build_catalog(package_only=True):
    """The catalog derived from the real registry (imports the recipes, hence TensorFlow): the
    recipes of the `recipes` package, or with `package_only=False` every registered one (those
    of `$ZOO_RECIPE_PATH` too)."""
    import dataclasses

    import recipes

    catalog = {}
    for name in recipes.list():
        recipe_class = recipes.get_class(name)
        if package_only and not recipe_class.__module__.startswith("recipes."):
            continue  # a recipe file from outside the package (or a test's): not the package's catalog
        fields = dataclasses.fields(recipe_class.config_class)
        catalog[name] = {
            "summary": (recipe_class.__doc__ or "").split("\n")[0],
            "default_preset": recipe_class.default_preset,
            "fields": {f.name: f.type.__name__ if isinstance(f.type, type) else str(f.type) for f in fields},
            "presets": {
                preset: {key: getattr(config, key) for key in SHAPE_FIELDS if hasattr(config, key)}
                for preset, config in sorted(recipe_class.presets.items())
            },
        }
    return catalog


_BEGIN, _END = "# --- generated by `python -m trainers.catalog`: do not edit ---", "# --- end of generated catalog ---"


def write_catalog(path=__file__):
    import pprint

    with open(path) as f:
        text = f.read()
    head, _, rest = text.partition(_BEGIN + "\n")
    _, _, tail = rest.partition(_END)
    body = "CATALOG = " + pprint.pformat(build_catalog(), width=110, sort_dicts=True) + "\n"
    body += "MODULES = " + pprint.pformat(recipe_modules(), width=110) + "\n"
    with open(path, "w") as f:
        f.write(head + _BEGIN + "\n" + body + _END + tail)


# --- generated by `python -m trainers.catalog`: do not edit ---
CATALOG = {'bert-mlm': {'default_preset': 'tiny',
              'fields': {'activation': 'str',
                         'batch_size': 'int',
                         'clipnorm': 'float',
                         'data': 'str',
                         'decay': 'str',
                         'dropout': 'float',
                         'gradient_accumulation_steps': 'int',
                         'hidden_dim': 'int',
                         'init_from': 'str',
                         'initializer_range': 'float',
                         'intermediate_dim': 'int',
                         'layer_norm_epsilon': 'float',
                         'learning_rate': 'float',
                         'lora_rank': 'int',
                         'lowercase': 'bool',
                         'mask_selection_rate': 'float',
                         'mask_token_rate': 'float',
                         'max_documents': 'int',
                         'max_predictions': 'int',
                         'num_heads': 'int',
                         'num_layers': 'int',
                         'num_segments': 'int',
                         'preset': 'str',
                         'random_token_rate': 'float',
                         'seed': 'int',
                         'sequence_length': 'int',
                         'steps_per_epoch': 'int',
                         'tokenizer': 'str',
                         'total_steps': 'int',
                         'validation_steps': 'int',
                         'vocabulary_size': 'int',
                         'warmup_steps': 'int',
                         'weight_decay': 'float'},
              'presets': {'base': {'data': 'stdlib',
                                   'hidden_dim': 768,
                                   'intermediate_dim': 3072,
                                   'num_heads': 12,
                                   'num_layers': 12,
                                   'num_segments': 2,
                                   'sequence_length': 512,
                                   'vocabulary_size': 30522},
                          'mini': {'data': 'stdlib',
                                   'hidden_dim': 256,
                                   'intermediate_dim': 1024,
                                   'num_heads': 4,
                                   'num_layers': 4,
                                   'num_segments': 2,
                                   'sequence_length': 128,
                                   'vocabulary_size': 8192},
                          'small': {'data': 'stdlib',
                                    'hidden_dim': 512,
                                    'intermediate_dim': 2048,
                                    'num_heads': 8,
                                    'num_layers': 4,
                                    'num_segments': 2,
                                    'sequence_length': 128,
                                    'vocabulary_size': 8192},
                          'tiny': {'data': 'stdlib',
                                   'hidden_dim': 128,
                                   'intermediate_dim': 512,
                                   'num_heads': 2,
                                   'num_layers': 2,
                                   'num_segments': 2,
                                   'sequence_length': 128,
                                   'vocabulary_size': 8192}},
              'summary': 'Masked-token prediction: text chunks wrapped as [CLS] ... [SEP], 15% of tokens '
                         'selected'},
 'classifier': {'default_preset': 'tiny',
                'fields': {'activation': 'str',
                           'adversarial': 'str',
                           'adversarial_epsilon': 'float',
                           'adversarial_steps': 'int',
                           'adversarial_weight': 'float',
                           'augment': 'str',
                           'augment_probability': 'float',
                           'batch_size': 'int',
                           'categories': 'str',
                           'classifier_dropout': 'float',
                           'clipnorm': 'float',
                           'consistency': 'str',
                           'consistency_weight': 'float',
                           'data': 'str',
                           'decay': 'str',
                           'dropout': 'float',
                           'examples_per_class': 'int',
                           'gradient_accumulation_steps': 'int',
                           'hidden_dim': 'int',
                           'init_from': 'str',
                           'initializer_range': 'float',
                           'intermediate_dim': 'int',
                           'layer_norm_epsilon': 'float',
                           'learning_rate': 'float',
                           'lora_rank': 'int',
                           'lowercase': 'bool',
                           'max_documents': 'int',
                           'num_classes': 'int',
                           'num_heads': 'int',
                           'num_layers': 'int',
                           'num_segments': 'int',
                           'pooling': 'str',
                           'preset': 'str',
                           'seed': 'int',
                           'sequence_length': 'int',
                           'shots_per_class': 'int',
                           'steps_per_epoch': 'int',
                           'tokenizer': 'str',
                           'total_steps': 'int',
                           'validation_steps': 'int',
                           'vocabulary_size': 'int',
                           'warmup_steps': 'int',
                           'weight_decay': 'float'},
                'presets': {'base': {'categories': 'noun.animal,noun.plant,noun.food,noun.artifact',
                                     'data': 'wordnet',
                                     'hidden_dim': 768,
                                     'intermediate_dim': 3072,
                                     'num_classes': 0,
                                     'num_heads': 12,
                                     'num_layers': 12,
                                     'num_segments': 2,
                                     'sequence_length': 128,
                                     'vocabulary_size': 30522},
                            'mini': {'categories': 'noun.animal,noun.plant,noun.food,noun.artifact',
                                     'data': 'wordnet',
                                     'hidden_dim': 256,
                                     'intermediate_dim': 1024,
                                     'num_classes': 0,
                                     'num_heads': 4,
                                     'num_layers': 4,
                                     'num_segments': 2,
                                     'sequence_length': 64,
                                     'vocabulary_size': 8192},
                            'small': {'categories': 'noun.animal,noun.plant,noun.food,noun.artifact',
                                      'data': 'wordnet',
                                      'hidden_dim': 512,
                                      'intermediate_dim': 2048,
                                      'num_classes': 0,
                                      'num_heads': 8,
                                      'num_layers': 4,
                                      'num_segments': 2,
                                      'sequence_length': 64,
                                      'vocabulary_size': 8192},
                            'tiny': {'categories': 'noun.animal,noun.plant,noun.food,noun.artifact',
                                     'data': 'wordnet',
                                     'hidden_dim': 128,
                                     'intermediate_dim': 512,
                                     'num_classes': 0,
                                     'num_heads': 2,
                                     'num_layers': 2,
                                     'num_segments': 2,
                                     'sequence_length': 64,
                                     'vocabulary_size': 8192}},
                'summary': 'An encoder and a classification head; `num_classes` and label names come from '
                           'the data.'},
 'distill': {'default_preset': 'nano',
             'fields': {'activation': 'str',
                        'adversarial': 'str',
                        'adversarial_epsilon': 'float',
                        'adversarial_steps': 'int',
                        'adversarial_weight': 'float',
                        'alpha': 'float',
                        'augment': 'str',
                        'augment_probability': 'float',
                        'batch_size': 'int',
                        'categories': 'str',
                        'classifier_dropout': 'float',
                        'clipnorm': 'float',
                        'consistency': 'str',
                        'consistency_weight': 'float',
                        'data': 'str',
                        'decay': 'str',
                        'dropout': 'float',
                        'examples_per_class': 'int',
                        'gradient_accumulation_steps': 'int',
                        'hidden_dim': 'int',
                        'init_from': 'str',
                        'initializer_range': 'float',
                        'intermediate_dim': 'int',
                        'layer_norm_epsilon': 'float',
                        'learning_rate': 'float',
                        'lora_rank': 'int',
                        'lowercase': 'bool',
                        'max_documents': 'int',
                        'num_classes': 'int',
                        'num_heads': 'int',
                        'num_layers': 'int',
                        'num_segments': 'int',
                        'pooling': 'str',
                        'preset': 'str',
                        'seed': 'int',
                        'sequence_length': 'int',
                        'shots_per_class': 'int',
                        'steps_per_epoch': 'int',
                        'teacher': 'str',
                        'temperature': 'float',
                        'tokenizer': 'str',
                        'total_steps': 'int',
                        'transfer': 'str',
                        'transfer_augment': 'str',
                        'validation_steps': 'int',
                        'vocabulary_size': 'int',
                        'warmup_steps': 'int',
                        'weight_decay': 'float'},
             'presets': {'mini': {'categories': 'noun.animal,noun.plant,noun.food,noun.artifact',
                                  'data': 'wordnet',
                                  'hidden_dim': 256,
                                  'intermediate_dim': 1024,
                                  'num_classes': 0,
                                  'num_heads': 4,
                                  'num_layers': 4,
                                  'num_segments': 2,
                                  'sequence_length': 64,
                                  'vocabulary_size': 8192},
                         'nano': {'categories': 'noun.animal,noun.plant,noun.food,noun.artifact',
                                  'data': 'wordnet',
                                  'hidden_dim': 64,
                                  'intermediate_dim': 256,
                                  'num_classes': 0,
                                  'num_heads': 2,
                                  'num_layers': 1,
                                  'num_segments': 2,
                                  'sequence_length': 64,
                                  'vocabulary_size': 8192},
                         'tiny': {'categories': 'noun.animal,noun.plant,noun.food,noun.artifact',
                                  'data': 'wordnet',
                                  'hidden_dim': 128,
                                  'intermediate_dim': 512,
                                  'num_classes': 0,
                                  'num_heads': 2,
                                  'num_layers': 2,
                                  'num_segments': 2,
                                  'sequence_length': 64,
                                  'vocabulary_size': 8192}},
             'summary': 'A small classifier (the student, shaped by the preset) trained on labels and a '
                        'trained'},
 'gpt-clm': {'default_preset': 'tiny',
             'fields': {'activation': 'str',
                        'batch_size': 'int',
                        'clipnorm': 'float',
                        'data': 'str',
                        'decay': 'str',
                        'dropout': 'float',
                        'gradient_accumulation_steps': 'int',
                        'hidden_dim': 'int',
                        'init_from': 'str',
                        'initializer_range': 'float',
                        'intermediate_dim': 'int',
                        'learning_rate': 'float',
                        'lora_rank': 'int',
                        'lowercase': 'bool',
                        'max_documents': 'int',
                        'num_heads': 'int',
                        'num_key_value_heads': 'int',
                        'num_layers': 'int',
                        'position_embedding_type': 'str',
                        'preset': 'str',
                        'sample_prompt': 'str',
                        'sample_tokens': 'int',
                        'seed': 'int',
                        'sequence_length': 'int',
                        'steps_per_epoch': 'int',
                        'tokenizer': 'str',
                        'total_steps': 'int',
                        'use_rotary': 'bool',
                        'validation_steps': 'int',
                        'vocabulary_size': 'int',
                        'warmup_steps': 'int',
                        'weight_decay': 'float'},
             'presets': {'small': {'data': 'stdlib',
                                   'hidden_dim': 768,
                                   'intermediate_dim': 3072,
                                   'num_heads': 12,
                                   'num_key_value_heads': 0,
                                   'num_layers': 12,
                                   'position_embedding_type': 'learned',
                                   'sequence_length': 1024,
                                   'vocabulary_size': 50257},
                         'tiny': {'data': 'stdlib',
                                  'hidden_dim': 128,
                                  'intermediate_dim': 512,
                                  'num_heads': 2,
                                  'num_key_value_heads': 0,
                                  'num_layers': 2,
                                  'position_embedding_type': 'learned',
                                  'sequence_length': 128,
                                  'vocabulary_size': 8192}},
             'summary': 'Next-token prediction on documents concatenated (each ended by [SEP]) and packed '
                        'into'},
 'multitask': {'default_preset': 'tiny',
               'fields': {'activation': 'str',
                          'adversarial': 'str',
                          'adversarial_epsilon': 'float',
                          'adversarial_steps': 'int',
                          'adversarial_weight': 'float',
                          'augment': 'str',
                          'augment_probability': 'float',
                          'batch_size': 'int',
                          'categories': 'str',
                          'classification_input': 'str',
                          'classification_weight': 'float',
                          'classifier_dropout': 'float',
                          'clipnorm': 'float',
                          'consistency': 'str',
                          'consistency_weight': 'float',
                          'data': 'str',
                          'decay': 'str',
                          'dropout': 'float',
                          'examples_per_class': 'int',
                          'gradient_accumulation_steps': 'int',
                          'gradient_surgery': 'str',
                          'gradnorm_alpha': 'float',
                          'hidden_dim': 'int',
                          'init_from': 'str',
                          'initializer_range': 'float',
                          'intermediate_dim': 'int',
                          'layer_norm_epsilon': 'float',
                          'learning_rate': 'float',
                          'lora_rank': 'int',
                          'loss_weighting': 'str',
                          'loss_weighting_learning_rate': 'float',
                          'lowercase': 'bool',
                          'mask_selection_rate': 'float',
                          'mask_token_rate': 'float',
                          'max_documents': 'int',
                          'max_predictions': 'int',
                          'mlm_weight': 'float',
                          'num_classes': 'int',
                          'num_heads': 'int',
                          'num_layers': 'int',
                          'num_segments': 'int',
                          'pooling': 'str',
                          'preset': 'str',
                          'random_token_rate': 'float',
                          'seed': 'int',
                          'sequence_length': 'int',
                          'shots_per_class': 'int',
                          'steps_per_epoch': 'int',
                          'tokenizer': 'str',
                          'total_steps': 'int',
                          'validation_steps': 'int',
                          'vocabulary_size': 'int',
                          'warmup_steps': 'int',
                          'weight_decay': 'float'},
               'presets': {'mini': {'categories': 'noun.animal,noun.plant,noun.food,noun.artifact',
                                    'data': 'wordnet',
                                    'hidden_dim': 256,
                                    'intermediate_dim': 1024,
                                    'num_classes': 0,
                                    'num_heads': 4,
                                    'num_layers': 4,
                                    'num_segments': 2,
                                    'sequence_length': 64,
                                    'vocabulary_size': 8192},
                           'small': {'categories': 'noun.animal,noun.plant,noun.food,noun.artifact',
                                     'data': 'wordnet',
                                     'hidden_dim': 512,
                                     'intermediate_dim': 2048,
                                     'num_classes': 0,
                                     'num_heads': 8,
                                     'num_layers': 4,
                                     'num_segments': 2,
                                     'sequence_length': 64,
                                     'vocabulary_size': 8192},
                           'tiny': {'categories': 'noun.animal,noun.plant,noun.food,noun.artifact',
                                    'data': 'wordnet',
                                    'hidden_dim': 128,
                                    'intermediate_dim': 512,
                                    'num_classes': 0,
                                    'num_heads': 2,
                                    'num_layers': 2,
                                    'num_segments': 2,
                                    'sequence_length': 64,
                                    'vocabulary_size': 8192}},
               'summary': 'Masked LM and classification on one shared encoder, from the same labelled '
                          'texts.'}}
MODULES = ('base', 'bert_mlm', 'classifier', 'distill', 'gpt_clm', 'multitask', 'pretrained', 'registry')
# --- end of generated catalog ---


if __name__ == "__main__":
    write_catalog()
    print(f"Wrote {__file__}")
