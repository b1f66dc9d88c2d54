"""The `zoo` command before TensorFlow: the recipe catalog, fast usage errors, --help, --version,
`list --verbose`, --xla; and the quiet stderr of `evaluate` and `export`."""

import re
import subprocess
import sys

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
    """Names, default presets, summaries, config fields and their types, preset shapes."""
    assert catalog.build_catalog() == catalog.CATALOG, "the catalog is stale: run `python -m trainers.catalog`"


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
    classifies = name in ("classifier", "multitask", "distill")
    recipe = recipes.get(name, preset=preset, **({"num_classes": 3} if classifies else {}))
    # distill: the student alone (checkpoints hold it; the training model adds the teacher).
    model = ClassifierRecipe.create_model(recipe) if name == "distill" else recipe.create_model()
    assert model.count_params() == catalog.parameter_count(name, preset, classes=3 if classifies else None)


def test_gpt2_small_has_gpt2s_parameter_count():
    assert round(catalog.parameter_count("gpt-clm", "small") / 1e6) == 124


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
