"""`multitask`: one encoder trained on masked-LM and classification at once, optionally with PCGrad.

The classification source (WordNet by default, or a local CSV/JSONL) feeds both tasks: every
batch of labelled texts is also masked, BERT-style and afresh each time (dynamic masking), and
the MLM head predicts the masked tokens while the classification head predicts the labels.
"""

import dataclasses

import keras

from recipes import pretrained
from recipes.classifier import PRESETS as CLASSIFIER_PRESETS
from recipes.classifier import ClassifierConfig, ClassifierRecipe
from recipes.registry import register
from zoo.models import Perplexity, classification_metrics
from zoo.models.multitask import CLASSIFICATION_INPUTS, GRADIENT_SURGERIES, MultiTaskModel


@dataclasses.dataclass(frozen=True)
class MultitaskConfig(ClassifierConfig):
    # Task balance: loss = mlm_weight * mlm_loss + classification_weight * classification_loss.
    # A weight of 0 switches a task off (its head is frozen; its loss is still logged).
    mlm_weight: float = 1.0
    classification_weight: float = 1.0
    gradient_surgery: str = "none"  # none | pcgrad (project away conflicting task gradients)
    classification_input: str = "clean"  # clean (unmasked ids, 2nd encoder pass) | masked (the MLM's input)
    # Masking, as in bert-mlm.
    mask_selection_rate: float = 0.15
    mask_token_rate: float = 0.8
    random_token_rate: float = 0.1
    max_predictions: int = 0  # prediction slots per text; 0: ceil(mask_selection_rate * (sequence_length - 2))


# The classifier's presets (shapes and training defaults) as multitask configs; no `base`.
PRESETS = {
    name: MultitaskConfig(**dataclasses.asdict(config)) for name, config in CLASSIFIER_PRESETS.items() if name != "base"
}


@register("multitask")
class MultitaskRecipe(ClassifierRecipe):
    """Masked LM and classification on one shared encoder, from the same labelled texts.
    Metrics per task: mlm_loss, mlm_accuracy, mlm_perplexity, classification_loss,
    classification_accuracy and macro P/R/F1. `gradient_surgery=pcgrad` de-conflicts the tasks."""

    config_class = MultitaskConfig
    presets = PRESETS
    # `zoo sweep multitask` without --grid: from MLM only to classification only.
    sweep_grid = ("mlm_weight:classification_weight=1:0,1:0.25,1:1,0.25:1,0:1",)
    sweep_axes = ("mlm_perplexity", "classification_accuracy")

    def __init__(self, config):
        if config.gradient_surgery not in GRADIENT_SURGERIES:
            raise ValueError(
                f"Unknown gradient_surgery {config.gradient_surgery!r}; expected one of {', '.join(GRADIENT_SURGERIES)}."
            )
        if config.classification_input not in CLASSIFICATION_INPUTS:
            raise ValueError(
                f"Unknown classification_input {config.classification_input!r}; "
                f"expected one of {', '.join(CLASSIFICATION_INPUTS)}."
            )
        if min(config.mlm_weight, config.classification_weight) < 0 or max(config.mlm_weight, config.classification_weight) <= 0:
            raise ValueError(
                f"mlm_weight and classification_weight must be >= 0 and not both 0, got "
                f"{config.mlm_weight} and {config.classification_weight}."
            )
        super().__init__(config)

    @property
    def loss_weights(self):
        return {"mlm": self.config.mlm_weight, "classification": self.config.classification_weight}

    def task_model(self, encoder):
        c = self.config
        return MultiTaskModel(
            encoder, self.num_classes, pooling=c.pooling, dropout=c.classifier_dropout,
            classification_input=c.classification_input, name="multitask",
        )

    def compile_model(self, model, total_steps=None, jit_compile="auto"):
        num_classes = model.num_classes
        model.compile(
            optimizer=self.make_optimizer(total_steps),
            loss_weights=self.loss_weights,
            gradient_surgery=self.config.gradient_surgery,
            metrics={"classification": classification_metrics(num_classes)},
            weighted_metrics={"mlm": [keras.metrics.SparseCategoricalAccuracy(name="accuracy"), Perplexity()]},
            jit_compile=jit_compile,
        )

    def make_preprocessor(self, tokenizer):
        return pretrained.masked_lm_preprocessor(self.config, tokenizer, self._pretrained)

    def datasets(self, source=None, batch_size=None, splits=("train", "validation"), repeat=False):
        """Batches of `(x, y, sample_weight)`: x = {"token_ids" (masked), "padding_mask",
        "mask_positions"[, "clean_token_ids"]}, y = {"mlm": ids at the masked positions,
        "classification": labels}, sample_weight = {"mlm": mask weights, "classification": 1s}.
        The labelled texts are packed as the classifier's, then masked by the same preprocessor."""
        import tensorflow as tf

        classification = super().datasets(source, batch_size, splits, repeat)
        preprocessor = self.preprocessor
        clean_input = self.config.classification_input == "clean"

        def mask(x, label):
            inputs, mlm_ids, mlm_weights = preprocessor.mask(x["token_ids"], x["padding_mask"])
            if clean_input:
                inputs["clean_token_ids"] = x["token_ids"]
            targets = {"mlm": mlm_ids, "classification": label}
            weights = {"mlm": mlm_weights, "classification": tf.ones_like(label, tf.float32)}
            return inputs, targets, weights

        return tuple(dataset.map(mask, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
                     for dataset in classification)

    def export(self, model, path, **options):
        """Exports the classification side (encoder + classification head) as a `classifier` SavedModel."""
        from zoo.export import export_recipe

        view = _ClassifierView(self)
        return export_recipe(view, model.to_classifier() if isinstance(model, MultiTaskModel) else model, path, **options)


class _ClassifierView:
    """What `zoo.export.export_recipe` reads from a recipe, presenting a multitask/distill recipe
    as the `classifier` whose signatures its model has; the metadata keeps the real config."""

    name = "classifier"

    def __init__(self, recipe):
        self.tokenizer = recipe.tokenizer
        self.preprocessor = recipe.preprocessor
        self.label_names = recipe.label_names
        self.config = recipe.config
        self._recipe = recipe

    def config_dict(self):
        return self._recipe.config_dict()

