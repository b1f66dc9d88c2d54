"""The `zoo` command before TensorFlow: the recipe catalog, fast usage errors, --help, --version,
`list --verbose`, --xla; and the quiet stderr of `evaluate` and `export`."""

import re
import subprocess
import sys
import warnings

import pytest

from trainers import catalog

# Runs the CLI and says on stderr whether TensorFlow or Keras got imported.
_PROBE = (
    "import sys; from trainers.cli import main\n"
    "try:\n    code = main()\nexcept SystemExit as exit:\n    code = exit.code\n"
    "heavy = sorted(m for m in ('tensorflow', 'keras') if m in sys.modules)\n"
    "print('IMPORTED:' + ','.join(heavy), file=sys.stderr); sys.exit(code)"
)


def zoo_light(*args):
    command = [sys.executable, "-c", _PROBE, *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert "IMPORTED:\n" in result.stderr, f"TensorFlow or Keras was imported: {result.stderr[-500:]}"
    return result


def test_the_catalog_is_the_registry():
    """Names, default presets, summaries, config fields and their types, preset shapes: every entry
    is the registry's; and every recipe has one, unless a recipe module was added since the catalog
    was generated (then the CLI asks the registry about names it lacks: `catalog.complete()`)."""
    built = catalog.build_catalog()
    stale = sorted(name for name, entry in catalog.CATALOG.items() if built.get(name) != entry)
    assert not stale, f"the catalog is stale for {', '.join(stale)}: run `python -m trainers.catalog`"
    if catalog.recipe_modules() == catalog.MODULES:  # the CLI trusts it to know every recipe: it must
        assert sorted(built) == catalog.recipe_names(), "the catalog is stale: run `python -m trainers.catalog`"
    else:
        warnings.warn("recipe modules were added since the catalog was generated: a misspelt recipe name is reported "
                      "only after the TensorFlow import until `python -m trainers.catalog` regenerates it")


def test_names_the_catalog_lacks_go_to_the_registry_unless_it_is_complete(monkeypatch):
    from trainers import cli

    parser = cli.build_parser()
    new = parser.parse_args(["train", "brand-new-recipe", "--set", "any_key=1"])
    monkeypatch.delenv("ZOO_RECIPE_PATH", raising=False)
    assert catalog.complete()
    with pytest.raises(KeyError, match="Unknown recipe 'brand-new-recipe'"):
        cli._check_before_tensorflow(new)  # the catalog knows every recipe module: rejected at once
    assert "$ZOO_RECIPE_PATH" not in cli._recipes_epilog()

    monkeypatch.setattr(catalog, "MODULES", catalog.MODULES[:-1])  # as if a module had been added since
    assert not catalog.complete()
    assert cli._check_before_tensorflow(new) is None  # left to the registry, after the import
    assert "recipes added since the catalog was generated, or from $ZOO_RECIPE_PATH" in cli._recipes_epilog()

    monkeypatch.setattr(catalog, "MODULES", catalog.recipe_modules())
    monkeypatch.setenv("ZOO_RECIPE_PATH", "/recipes/elsewhere")
    assert not catalog.complete() and cli._check_before_tensorflow(new) is None
    # Names the catalog has are checked at once whatever else there is: presets, keys, their types.
    with pytest.raises(KeyError, match="Did you mean 'num_layers'"):
        cli._check_before_tensorflow(parser.parse_args(["train", "gpt-clm", "--set", "num_layer=1"]))
    with pytest.raises(KeyError, match="Valid presets: small, tiny"):
        cli._check_before_tensorflow(parser.parse_args(["train", "gpt-clm", "--preset", "huge"]))


@pytest.mark.parametrize(
    "recipe, preset, keys",
    [("gpt-clmm", None, ()), ("gpt-clm", "huge", ()), ("gpt-clm", None, ("hiden_dim",)),
     ("multitask", "tiny", ("mlm_wieght", "zzz")), ("distill", "tiny", ("teacherr",))],
)
def test_catalog_checks_give_the_registrys_messages(recipe, preset, keys):
    import recipes

    overrides = {key: 1 for key in keys}
    with pytest.raises(KeyError) as expected:
        recipes.get(recipe, preset=preset, **overrides)
    with pytest.raises(KeyError) as got:
        catalog.check_preset(recipe, preset)
        catalog.check_keys(recipe, overrides)
    assert got.value.args == expected.value.args


@pytest.mark.parametrize("name", catalog.recipe_names())
def test_parameter_count_formula_matches_a_built_model(name):
    import recipes
    from recipes.classifier import ClassifierRecipe

    preset = catalog.CATALOG[name]["default_preset"]
    if name not in catalog.PARAMETER_FORMULAS:  # a recipe added since the formulas: no count, nothing built
        assert catalog.parameter_count(name, preset) is None
        return
    classifies = name in catalog.CLASSIFICATION_HEADS
    recipe = recipes.get(name, preset=preset, **({"num_classes": 3} if classifies else {}))
    # distill: the student alone (checkpoints hold it; the training model adds the teacher).
    model = ClassifierRecipe.create_model(recipe) if name == "distill" else recipe.create_model()
    assert model.count_params() == catalog.parameter_count(name, preset, classes=3 if classifies else None)


def test_gpt2_small_has_gpt2s_parameter_count():
    assert round(catalog.parameter_count("gpt-clm", "small") / 1e6) == 124


def test_a_recipe_without_a_formula_has_an_unknown_parameter_count(monkeypatch):
    shape = {"vocabulary_size": 300, "sequence_length": 16, "num_layers": 1, "hidden_dim": 16, "num_heads": 2}
    entry = {"default_preset": "tiny", "fields": {}, "presets": {"tiny": shape}, "summary": ""}
    monkeypatch.setitem(catalog.CATALOG, "bag-of-words", entry)
    assert catalog.parameter_count("bag-of-words", "tiny") is None
    assert catalog.preset_summary("bag-of-words", "tiny") == (
        "1 layer, hidden 16, 2 heads, sequence 16, vocabulary 300: parameters unknown (no formula for bag-of-words; "
        "nothing is built)"
    )
    monkeypatch.setitem(catalog.CATALOG, "bag-of-words", {**entry, "presets": {"tiny": {}}})
    assert catalog.preset_summary("bag-of-words", "tiny").startswith("parameters unknown")


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "gpt-clmm"], "Unknown recipe 'gpt-clmm'. Registered recipes: bert-mlm, classifier, distill, "
                                "gpt-clm, multitask. Did you mean 'gpt-clm'?"),
        (["train", "gpt-clm", "--preset", "huge"], "Valid presets: small, tiny"),
        (["train", "gpt-clm", "--preset", "smal"], "Did you mean 'small'?"),
        (["train", "gpt-clm", "--set", "nonsense=1"], "Unknown config key(s) 'nonsense' for recipe 'gpt-clm'"),
        (["train", "gpt-clm", "--set", "num_layer=1"], "Did you mean 'num_layers'?"),
        (["train", "gpt-clm", "--set", "num_layers=two"], "num_layers expects int"),
        (["train", "gpt-clm", "--set", "lora_rnak=4"], "Did you mean 'lora_rank'?"),
        (["sweep", "multitask", "--grid", "mlm_wieght=0,1"], "Did you mean 'mlm_weight'?"),
        (["learning-curve", "--pretrained", "minilm", "--pretrained-set", "learning_rat=5e-5"], "Valid keys:"),
    ],
)
def test_bad_names_fail_before_tensorflow(args, message):
    result = zoo_light(*args)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if not line.startswith("IMPORTED:")]
    assert len(lines) == 1 and lines[0].startswith(f"zoo {args[0]}: error: ") and message in lines[0], result.stderr


def test_config_file_keys_fail_before_tensorflow(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("learning_rate: 1e-3\nhidden_dimm: 64\n")
    result = zoo_light("train", "gpt-clm", "--config", config)
    assert result.returncode == 2 and "Unknown config key(s) 'hidden_dimm'" in result.stderr
    assert "Did you mean 'hidden_dim'?" in result.stderr


def test_version_without_tensorflow():
    result = zoo_light("--version")
    setup = open("setup.py").read()
    version = re.search(r'version="([^"]+)"', setup).group(1)
    assert result.returncode == 0 and result.stdout.strip() == f"zoo {version}"


def test_train_help_lists_recipes_and_presets():
    result = zoo_light("train", "--help")
    assert result.returncode == 0
    epilog = result.stdout[result.stdout.index("recipes and presets"):]
    for name, entry in catalog.CATALOG.items():
        line = next(line for line in epilog.splitlines() if line.split()[:1] == [name])
        assert {p.strip(",*") for p in line.split()[1:]} == set(entry["presets"])
        assert f"{entry['default_preset']}*" in line
    assert "--xla {auto,on,off}" in result.stdout and "--no-xla" in result.stdout


def test_list_verbose_shows_shapes_and_sizes_without_tensorflow():
    result = zoo_light("list", "--verbose")
    assert result.returncode == 0
    assert re.search(r"small +12 layers, hidden 768, 12 heads, sequence 1024, vocabulary 50257: 124\.\dM parameters",
                     result.stdout)
    assert "nano    1 layer, hidden 64" in result.stdout
    assert zoo_light("list").stdout.count("parameters") == 0


def test_xla_flag_and_its_no_xla_alias():
    from trainers.cli import build_parser

    parser = build_parser()
    for command in (["train", "gpt-clm"], ["sweep", "gpt-clm"], ["learning-curve"]):
        assert parser.parse_args(command).xla == "auto"
        assert parser.parse_args(command + ["--no-xla"]).xla == "off"
        assert parser.parse_args(command + ["--xla", "on"]).xla == "on"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "gpt-clm", "--xla", "maybe"])


def test_xla_auto_is_off_on_a_cpu_only_machine(capsys):
    import tensorflow as tf

    from trainers.cli import _resolve_xla

    accelerated = bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))
    assert _resolve_xla("auto") is accelerated
    assert f"XLA: {'on' if accelerated else 'off'} (auto: " in capsys.readouterr().err
    assert _resolve_xla("on") is True and _resolve_xla("off") is False
    assert "XLA: off (--xla off)" in capsys.readouterr().err


# (That evaluate and export print no TensorFlow noise is checked in test_cli.py, on its trained run.)
