"""A recipe written outside the zoo (here, in this file) trains, evaluates, exports and serves
through the generic paths: the Task interface is all those paths need (README, "Add a recipe")."""

import dataclasses
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import recipes
from recipes.base import Recipe, RecipeConfig
from recipes.registry import register, unregister

NAME = "toy-bag-of-words"


# -- the recipe: one file's worth ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BagOfWordsConfig(RecipeConfig):
    vocabulary_size: int = 300
    sequence_length: int = 16
    hidden_dim: int = 16
    batch_size: int = 16
    learning_rate: float = 1e-2
    warmup_steps: int = 0
    lowercase: bool = True


class BagOfWordsRecipe(Recipe):
    """Mean of token embeddings, then a linear layer: a text classifier in a dozen lines."""

    config_class = BagOfWordsConfig
    presets = {"tiny": BagOfWordsConfig()}
    kind = "classification"

    def __init__(self, config):
        super().__init__(config)
        self.label_names = None

    def make_preprocessor(self, tokenizer):
        from zoo.data.preprocessing import EncoderPreprocessor

        return EncoderPreprocessor(tokenizer, self.config.sequence_length)

    def tokenizer_training_texts(self, source):
        return self.examples(source, "train").texts

    def examples(self, source=None, split="train"):
        from zoo.data import corpora

        examples = corpora.labelled_examples(source or self.config.data, split)
        self.label_names = self.label_names or list(examples.label_names)
        return examples

    def datasets(self, source=None, batch_size=None, splits=("train", "validation"), repeat=False):
        from zoo.data import pipelines

        self.get_tokenizer(source)
        return tuple(
            pipelines.classification_dataset(
                self.examples(source, split).texts, self.examples(source, split).labels, self.preprocessor,
                batch_size or self.config.batch_size, shuffle=split == "train", seed=self.config.seed, repeat=repeat,
            )
            for split in splits
        )

    def create_model(self):
        token_ids = keras.Input((None,), dtype="int32", name="token_ids")
        padding_mask = keras.Input((None,), dtype="bool", name="padding_mask")
        embedded = keras.layers.Embedding(self.model_vocabulary_size, self.config.hidden_dim)(token_ids)
        pooled = keras.layers.GlobalAveragePooling1D()(embedded, mask=padding_mask)
        logits = keras.layers.Dense(len(self.label_names))(pooled)
        return keras.Model({"token_ids": token_ids, "padding_mask": padding_mask}, logits, name="bag_of_words")

    def compile_model(self, model, total_steps=None, jit_compile="auto"):
        model.compile(optimizer=self.make_optimizer(total_steps), jit_compile=jit_compile, metrics=["accuracy"],
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    def save(self, model, directory):
        super().save(model, directory)
        with open(os.path.join(directory, "labels.json"), "w") as f:
            json.dump(self.label_names, f)

    def evaluator(self, model):
        from zoo.evaluation import ClassificationEvaluator

        return ClassificationEvaluator(model, self.preprocessor, self.examples, self.label_names)

    def export_module(self, model):
        from zoo.export import ClassifyEndpoints, ExportModule, TokenizeEndpoint

        classify = ClassifyEndpoints(model, self.label_names, num_classes=len(self.label_names),
                                     vocabulary_size=self.model_vocabulary_size)
        return ExportModule(self.preprocessor, [classify, TokenizeEndpoint("classify")], serving_default="classify")


# -- the generic paths --------------------------------------------------------------------------


@pytest.fixture
def toy_recipe():
    register(NAME)(BagOfWordsRecipe)
    yield BagOfWordsRecipe
    unregister(NAME)


@pytest.mark.slow
def test_a_recipe_from_outside_trains_evaluates_exports_and_serves(toy_recipe, classification_csv, tmp_path, capsys):
    from trainers import cli
    from trainers.export_commands import export_run, predict
    from trainers.reports import evaluation_report
    from trainers.trainer import TrainOptions, Trainer, load_run

    assert NAME in recipes.list_recipes()
    recipe = recipes.get(NAME, data=classification_csv)
    run_dir = str(tmp_path / "run")
    options = TrainOptions(epochs=3, steps_per_epoch=25, jit_compile=False, verbose=0)
    result = Trainer(recipe, run_dir, options=options).train()
    history = result.history["loss"]
    assert history[-1] < min(0.3, history[0]), history  # an easy task: the loss falls

    # Evaluation through the task's evaluator, with shifted copies, as `zoo evaluate --shifts` does.
    report = evaluation_report(run_dir, shifts="char_noise=0.3", max_examples=80)
    assert report["recipe"] == NAME and report["kind"] == "classification"
    sets = report["sets"]
    assert list(sets) == [classification_csv, "char_noise_30"]
    assert sets[classification_csv]["accuracy"] > 0.9
    assert "| char_noise_30 |" in recipe.report(report)

    # Export through the task's module, from the command line, then predict from the SavedModel alone.
    out = str(tmp_path / "export" / "1")
    assert cli.main(["export", run_dir, "--out", out]) == 0
    assert cli.main(["export", run_dir, "--out", str(tmp_path / "export" / "2"), "--top-k", "3"]) == 2
    assert "A toy-bag-of-words export has no option 'top_k'. Its options: none." in capsys.readouterr().err
    metadata = json.load(open(os.path.join(out, "assets", "zoo_metadata.json")))
    assert metadata["recipe"] == NAME and metadata["label_names"] == load_run(run_dir)[1].label_names
    assert set(metadata["signatures"]) == {"classify", "classify_ids", "tokenize", "serving_default"}
    texts = ["the cat and the dog", "the hammer and the saw"]
    predictions = predict(out, texts)
    model, loaded_recipe = load_run(run_dir)
    logits = loaded_recipe.evaluator(model).predict_logits(texts)
    assert [p["label_id"] for p in predictions] == list(np.argmax(logits, axis=-1))

    # The export runs in a fresh process that has neither the zoo nor this recipe.
    script = (
        "import sys, tensorflow as tf, tensorflow_text\n"
        "assert 'zoo' not in sys.modules\n"
        f"loaded = tf.saved_model.load({out!r})\n"
        f"out = loaded.signatures['classify'](text=tf.constant({texts!r}))\n"
        "print([int(i) for i in out['label_id'].numpy()])\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=str(tmp_path), timeout=300,
                         env={**os.environ, "PYTHONPATH": ""})
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == str([int(p["label_id"]) for p in predictions])


def test_unregistered_recipes_are_gone_and_names_are_checked(toy_recipe):
    with pytest.raises(ValueError, match="already registered"):
        register(NAME)(type("Other", (Recipe,), {}))
    unregister(NAME)
    assert NAME not in recipes.list_recipes()
    with pytest.raises(KeyError, match="Unknown recipe 'toy-bag-of-words'"):
        unregister(NAME)
    register(NAME)(BagOfWordsRecipe)  # for the fixture's teardown
