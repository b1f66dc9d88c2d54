"""A recipe written outside the zoo (one file, `plugins/toy_bag_of_words.py`) trains, evaluates,
exports and serves through the generic paths: the `zoo` command finds it on `ZOO_RECIPE_PATH`,
and the Task interface is all those paths need (README, "Add a recipe")."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import recipes
from recipes.base import Recipe
from recipes.registry import load_plugins, plugin_files, plugin_module_name, register, unregister

PLUGINS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plugins")
NAME = "toy-bag-of-words"


def zoo(*args, plugins=PLUGINS, timeout=300):
    """The `zoo` command in a new process, with `plugins` as its ZOO_RECIPE_PATH."""
    command = [sys.executable, "-c", "import sys; from trainers.cli import main; sys.exit(main())", *map(str, args)]
    env = {**os.environ, "ZOO_RECIPE_PATH": plugins}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture
def toy_recipe():
    """The toy recipe registered in this process, as `import recipes` with ZOO_RECIPE_PATH would."""
    (module,) = load_plugins(PLUGINS)
    yield module.BagOfWordsRecipe
    unregister(NAME)
    del sys.modules[module.__name__]


@pytest.mark.slow
def test_a_recipe_from_outside_trains_evaluates_exports_and_serves(toy_recipe, classification_csv, tmp_path, capsys):
    from trainers import cli
    from trainers.export_commands import predict
    from trainers.trainer import load_run

    run_dir = tmp_path / "run"
    trained = zoo("train", NAME, "--data", classification_csv, "--steps", "75", "--run-dir", run_dir, "--verbose", "0")
    assert trained.returncode == 0, trained.stderr[-3000:]
    final = json.loads(trained.stdout[trained.stdout.index("{"): trained.stdout.index("}") + 1])
    assert final["loss"] < 0.3, trained.stdout  # an easy task: the loss falls
    assert "Sample: 'the cat and the dog' -> animal" in trained.stdout  # the task's training_sample
    assert json.load(open(run_dir / "config.json"))["recipe"] == NAME

    # Plain evaluation: the recipe's compiled metrics on its test split.
    evaluated = zoo("evaluate", run_dir)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    metrics = json.loads(evaluated.stdout[: evaluated.stdout.index("}") + 1])
    assert set(metrics) == {"loss", "accuracy"} and metrics["accuracy"] > 0.9

    # The task's evaluator with shifted copies, and its report (its own line included), as markdown and in report.md.
    report_dir = tmp_path / "report"
    shifted = zoo("evaluate", run_dir, "--shifts", "char_noise=0.3", "--max-examples", "80", "--report-dir", report_dir)
    assert shifted.returncode == 0, shifted.stderr[-3000:]
    report = json.load(open(report_dir / "report.json"))
    assert report["recipe"] == NAME and report["kind"] == "classification"
    assert list(report["sets"]) == [classification_csv, "char_noise_30"]
    assert report["sets"][classification_csv]["accuracy"] > 0.9
    own_line = "Bag of words over "
    assert "| char_noise_30 |" in shifted.stdout and own_line in shifted.stdout
    assert own_line in (report_dir / "report.md").read_text()

    # Export through the task's module, from the command line, then predict from the SavedModel alone.
    out = tmp_path / "export" / "1"
    exported = zoo("export", run_dir, "--out", out)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert cli.main(["export", str(run_dir), "--out", str(tmp_path / "export" / "2"), "--top-k", "3"]) == 2
    assert "A toy-bag-of-words export has no option 'top_k'. Its options: none." in capsys.readouterr().err
    metadata = json.load(open(out / "assets" / "zoo_metadata.json"))
    model, recipe = load_run(str(run_dir))
    assert metadata["recipe"] == NAME and metadata["label_names"] == recipe.label_names
    assert set(metadata["signatures"]) == {"classify", "classify_ids", "tokenize", "serving_default"}
    texts = ["the cat and the dog", "the hammer and the saw"]
    predictions = predict(str(out), texts)
    logits = recipe.evaluator(model).predict_logits(texts)
    assert [p["label_id"] for p in predictions] == list(np.argmax(logits, axis=-1))

    # The export runs in a fresh process that has neither the zoo nor this recipe.
    script = (
        "import sys, tensorflow as tf, tensorflow_text\n"
        "assert 'zoo' not in sys.modules\n"
        f"loaded = tf.saved_model.load({str(out)!r})\n"
        f"out = loaded.signatures['classify'](text=tf.constant({texts!r}))\n"
        "print([int(i) for i in out['label_id'].numpy()])\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=str(tmp_path), timeout=300,
                         env={**os.environ, "PYTHONPATH": ""})
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == str([int(p["label_id"]) for p in predictions])


@pytest.mark.slow
def test_names_neither_in_the_catalog_nor_on_the_recipe_path_fail_with_one_line(tmp_path):
    """Not in the generated catalog: the registry decides, after the import, and lists the plugins too."""
    result = zoo("train", "toy-bag-of-wrds", "--run-dir", tmp_path / "run")
    assert result.returncode == 2
    # One line besides the status lines of the import (`[zoo] importing TensorFlow ...`).
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("[zoo] ")]
    assert len(lines) == 1 and lines[0].startswith("zoo train: error: Unknown recipe 'toy-bag-of-wrds'."), result.stderr
    assert f"Registered recipes: {', '.join(sorted(recipes.list_recipes() + [NAME]))}." in lines[0]
    assert "Did you mean 'toy-bag-of-words'?" in lines[0]
    assert not (tmp_path / "run").exists()


def test_the_recipe_path_lists_files_and_directories(tmp_path, monkeypatch):
    (tmp_path / "a.py").write_text("")
    (tmp_path / "_private.py").write_text("")
    (tmp_path / "notes.txt").write_text("")
    single = tmp_path / "single" / "b.py"
    single.parent.mkdir()
    single.write_text("")
    path = os.pathsep.join([str(tmp_path), "", str(single)])
    assert plugin_files(path) == [str(tmp_path / "a.py"), str(single)]
    monkeypatch.setenv("ZOO_RECIPE_PATH", path)
    assert plugin_files() == plugin_files(path)
    monkeypatch.delenv("ZOO_RECIPE_PATH")
    assert plugin_files() == []
    with pytest.raises(FileNotFoundError, match="ZOO_RECIPE_PATH names '/no/such/dir', which is neither"):
        plugin_files(os.pathsep.join([str(tmp_path), "/no/such/dir"]))


def test_recipe_files_load_once_and_register_their_recipes(tmp_path):
    source = (
        "from recipes.base import Recipe\nfrom recipes.registry import register\n\n"
        "@register('toy-empty')\nclass EmptyRecipe(Recipe):\n    '''Nothing.'''\n"
    )
    (tmp_path / "empty.py").write_text(source)
    try:
        (module,) = load_plugins(str(tmp_path))
        assert module.__name__ == plugin_module_name(str(tmp_path / "empty.py")) == "zoo_recipe_plugin_empty"
        assert sys.modules[module.__name__] is module
        assert recipes.get_class("toy-empty") is module.EmptyRecipe
        assert load_plugins(str(tmp_path)) == [module]  # imported once: no second registration
        other = tmp_path / "other"
        other.mkdir()
        (other / "empty.py").write_text(source)
        with pytest.raises(ValueError, match="Two recipe files named 'empty.py'"):
            load_plugins(str(other))
    finally:
        unregister("toy-empty")
        sys.modules.pop(plugin_module_name("empty.py"), None)


@pytest.mark.slow
def test_a_recipe_file_added_to_the_package_needs_no_other_edit(tmp_path):
    """A copy of the package with the toy's file added (no import line, no new catalog): `zoo list`
    finds it, through the registry, since the catalog was generated without that module."""
    package = tmp_path / "recipes"
    shutil.copytree(os.path.dirname(recipes.__file__), package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(PLUGINS, "toy_bag_of_words.py"), package / "toy_bag_of_words.py")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    command = [sys.executable, "-c", "import sys; from trainers.cli import main; sys.exit(main())", "list", "--verbose"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), root])}
    env.pop("ZOO_RECIPE_PATH", None)
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{NAME} presets: tiny (default tiny)" in result.stdout
    assert ("tiny    2 layers, hidden 16, 2 heads, sequence 16, vocabulary 300: parameters unknown "
            f"(no formula for {NAME}; nothing is built)") in result.stdout
    assert "gpt-clm" in result.stdout and "124." in result.stdout  # the built-in recipes, with their formulas


def test_unregistered_recipes_are_gone_and_names_are_checked(toy_recipe):
    assert NAME in recipes.list_recipes()
    with pytest.raises(ValueError, match="already registered"):
        register(NAME)(type("Other", (Recipe,), {}))
    unregister(NAME)
    assert NAME not in recipes.list_recipes()
    with pytest.raises(KeyError, match="Unknown recipe 'toy-bag-of-words'"):
        unregister(NAME)
    register(NAME)(toy_recipe)  # for the fixture's teardown
