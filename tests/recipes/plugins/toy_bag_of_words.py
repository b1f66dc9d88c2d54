"""A recipe written outside the zoo, in one file: a bag-of-words text classifier.

`tests/recipes/test_add_a_recipe.py` puts this directory on `ZOO_RECIPE_PATH` and drives the
recipe through the `zoo` command (train, evaluate, export) like a built-in one (README, "Add a
recipe"). Nothing else in the repository names it.
"""

import dataclasses
import json
import os

import keras

from recipes.base import Recipe, RecipeConfig
from recipes.registry import register

NAME = "toy-bag-of-words"


@dataclasses.dataclass(frozen=True)
class BagOfWordsConfig(RecipeConfig):
    vocabulary_size: int = 300
    sequence_length: int = 16
    hidden_dim: int = 16
    batch_size: int = 16
    learning_rate: float = 1e-2
    warmup_steps: int = 0
    lowercase: bool = True


@register(NAME)
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

    # -- the task ------------------------------------------------------------------------

    def evaluator(self, model):
        from zoo.evaluation import ClassificationEvaluator

        return ClassificationEvaluator(model, self.preprocessor, self.examples, self.label_names)

    def report(self, report):
        """The zoo's tables, then one line of this task's own."""
        return super().report(report) + f"\nBag of words over {self.model_vocabulary_size} tokens.\n"

    def training_sample(self, model):
        """`zoo train` ends with the label of one text."""
        text = "the cat and the dog"
        logits = self.evaluator(model).predict_logits([text])
        return f"Sample: {text!r} -> {self.label_names[int(logits.argmax())]}"

    def export_module(self, model):
        from zoo.export import ClassifyEndpoints, ExportModule, TokenizeEndpoint

        classify = ClassifyEndpoints(model, self.label_names, num_classes=len(self.label_names),
                                     vocabulary_size=self.model_vocabulary_size)
        return ExportModule(self.preprocessor, [classify, TokenizeEndpoint("classify")], serving_default="classify")
