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
from zoo.models.multitask import CLASSIFICATION_INPUTS, GRADIENT_SURGERIES, LOSS_WEIGHTINGS, MultiTaskModel


@dataclasses.dataclass(frozen=True)
class MultitaskConfig(ClassifierConfig):
    # Task balance: loss = mlm_weight * mlm_loss + classification_weight * classification_loss.
    # A weight of 0 switches a task off (its head is frozen; its loss is still logged).
    mlm_weight: float = 1.0
    classification_weight: float = 1.0
    gradient_surgery: str = "none"  # none | pcgrad (project away conflicting task gradients)
    # fixed (the weights above) | uncertainty (Kendall et al. 2018) | gradnorm (Chen et al. 2018): learned
    # task weights, starting from the weights above (see MultiTaskModel.compile).
    loss_weighting: str = "fixed"
    # The paper's default. 0 (equal gradient norms) matched the equal fixed weights at 300 steps
    # on WordNet where 1.5 lost 4.4 points of accuracy (README, "Learned loss weights").
    gradnorm_alpha: float = 1.5
    loss_weighting_learning_rate: float = 0.025  # the learned weights' own gradient-descent step
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
        if config.loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(
                f"Unknown loss_weighting {config.loss_weighting!r}; expected one of {', '.join(LOSS_WEIGHTINGS)}."
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
            loss_weighting=self.config.loss_weighting,
            gradnorm_alpha=self.config.gradnorm_alpha,
            weighting_learning_rate=self.config.loss_weighting_learning_rate,
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

    # -- the task: evaluation and export --------------------------------------------------

    export_options = {"top_k": "fill_mask: candidates returned per mask (default 5)"}

    def classification_model(self, model):
        """The encoder and classification head of a `MultiTaskModel` as a classifier that shares
        their weights (evaluation and `classify` see the clean text, as `classification_input=clean`
        training does); any other model is returned as it is."""
        if not isinstance(model, MultiTaskModel):
            return model
        token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        padding_mask = keras.Input(shape=(None,), dtype="bool", name="padding_mask")
        sequence = model.encoder(token_ids, padding_mask=padding_mask)
        logits = model.classification_head(sequence, padding_mask=padding_mask)
        return keras.Model({"token_ids": token_ids, "padding_mask": padding_mask}, logits, name="classifier")

    def export_module(self, model, top_k=None):
        """Both tasks of the shared encoder: `classify` (the serving default), `classify_ids`,
        `fill_mask`, `fill_mask_ids`, `embed` and `tokenize` (as `classify` packs the text)."""
        from zoo.export import (DEFAULT_TOP_K, ClassifyEndpoints, EmbedEndpoint, ExportModule, FillMaskEndpoints,
                                TokenizeEndpoint)

        if not isinstance(model, MultiTaskModel):  # a classifier (e.g. from to_classifier())
            return super().export_module(model)
        encoder, mlm_head = model.encoder, model.mlm_head

        def masked_lm(inputs):
            sequence = encoder(inputs["token_ids"], padding_mask=inputs["padding_mask"], training=False)
            return mlm_head(sequence, mask_positions=inputs["mask_positions"])

        endpoints = [
            ClassifyEndpoints(self.classification_model(model), self.label_names, num_classes=model.num_classes,
                              vocabulary_size=encoder.vocabulary_size),
            FillMaskEndpoints(masked_lm, [encoder, mlm_head], encoder.vocabulary_size, DEFAULT_TOP_K if top_k is None else top_k),
            EmbedEndpoint(encoder),
            TokenizeEndpoint("classify"),
        ]
        return ExportModule(self.preprocessor, endpoints, serving_default="classify")

