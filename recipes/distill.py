"""`distill`: a small student classifier learns from a trained `classifier` teacher (Hinton et al., 2015).

loss = alpha * CE(labels, student) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T)),
with the teacher's logits computed on the fly, every step, by the frozen teacher inside the
training model (`zoo.models.distillation.DistillationModel`). The student is a `classifier` of
the shape this recipe's preset and fields give; it reads the teacher's tokenizer, so both see
the same token ids, and the teacher's label names. Checkpoints hold the student alone (a plain
`TextClassifier`), which evaluates and exports like any classifier.
"""

import dataclasses
import json
import os

import keras

from recipes.base import load_checkpoint
from recipes.classifier import ClassifierConfig, ClassifierRecipe
from recipes.registry import register
from zoo.models import classification_metrics
from zoo.models.distillation import DistillationModel


@dataclasses.dataclass(frozen=True)
class DistillConfig(ClassifierConfig):
    teacher: str = ""  # a classifier run directory, checkpoint directory or .keras file (required to train)
    alpha: float = 0.5  # weight of the label cross-entropy; 1 - alpha weighs the teacher term
    temperature: float = 2.0  # softmax temperature of the teacher term
    # A transfer set beyond the labelled examples, on which the student learns the teacher's soft
    # targets only (no label term): none | unlabelled (the training split's other texts, without
    # their labels; needs shots_per_class) | augmented (a copy of each labelled text, corrupted
    # afresh every pass by transfer_augment, a `--shifts`-style spec). With alpha = 1 (the student
    # alone) there is no teacher term and no transfer set.
    transfer: str = "none"
    transfer_augment: str = "char_noise=0.1,word_dropout=0.2"

    def validate(self):
        super().validate()
        from zoo.data.shifts import Augmentation

        if self.transfer not in TRANSFER_SETS:
            raise ValueError(f"transfer must be one of {', '.join(TRANSFER_SETS)}, got {self.transfer!r}. Give another "
                             "value (on the command line: --set transfer=VALUE).")
        if self.transfer == "unlabelled" and not self.shots_per_class:
            raise ValueError("transfer=unlabelled uses the training texts beyond the labelled few: set shots_per_class "
                             "(e.g. --shots-per-class 50).")
        if self.transfer == "augmented":
            try:
                if Augmentation.parse(self.transfer_augment) is None:
                    raise ValueError("it is empty")
            except ValueError as error:
                raise ValueError(f"transfer_augment={self.transfer_augment!r}: {error}") from None


TRANSFER_SETS = ("none", "unlabelled", "augmented")


def _student(preset, layers, hidden, heads, **kwargs):
    return DistillConfig(
        preset=preset, num_layers=layers, hidden_dim=hidden, num_heads=heads, intermediate_dim=4 * hidden, **kwargs
    )


# Student shapes: each a step below the classifier preset of the same size or smaller.
PRESETS = {
    "nano": _student("nano", 1, 64, 2),
    "tiny": _student("tiny", 2, 128, 2),
    "mini": _student("mini", 4, 256, 4),
}


def _checkpoint_directory(path):
    """The directory holding model.keras for a run directory, checkpoint directory or .keras file."""
    if os.path.isfile(path):
        return os.path.dirname(path)
    for candidate in (path, os.path.join(path, "checkpoints", "best"), os.path.join(path, "checkpoints", "last")):
        if os.path.exists(os.path.join(candidate, "model.keras")):
            return candidate
    return path  # load_checkpoint reports what is missing


@register("distill")
class DistillRecipe(ClassifierRecipe):
    """A small classifier (the student, shaped by the preset) trained on labels and a trained
    classifier's soft predictions (`teacher=<run dir>`). Metrics: accuracy, macro P/R/F1,
    hard_loss (label CE) and soft_loss (T^2 x KL to the teacher)."""

    config_class = DistillConfig
    # `zoo sweep distill --set teacher=RUN` without --grid: alpha=1 is the student trained alone.
    sweep_grid = ("alpha=1.0,0.5,0.1",)
    sweep_axes = ("alpha", "accuracy")
    presets = PRESETS
    default_preset = "nano"

    def __init__(self, config):
        if not 0.0 <= config.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {config.alpha}.")
        if config.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {config.temperature}.")
        super().__init__(config)
        self._teacher = None
        self.teacher_label_names = None

    # -- the teacher ---------------------------------------------------------------------

    @property
    def teacher(self):
        """The frozen teacher classifier, loaded on first use (with its tokenizer and labels)."""
        if self._teacher is None:
            self._load_teacher()
        return self._teacher

    def _load_teacher(self):
        path = self.config.teacher
        if not path:
            raise ValueError("The distill recipe needs a teacher: set teacher=<a classifier run directory or checkpoint>.")
        model, tokenizer, teacher_config = load_checkpoint(path)
        if not hasattr(model, "num_classes") or not hasattr(model, "encoder"):
            raise ValueError(f"teacher={path!r} holds a {type(model).__name__}, not a classifier (TextClassifier).")
        if tokenizer is None:
            raise ValueError(f"teacher={path!r} has no tokenizer/ beside its model: the student could not read the same ids.")
        if self.config.sequence_length > model.encoder.sequence_length:
            raise ValueError(
                f"The student's sequence_length {self.config.sequence_length} exceeds the teacher's "
                f"{model.encoder.sequence_length}: set sequence_length <= {model.encoder.sequence_length}."
            )
        labels_path = os.path.join(_checkpoint_directory(path), "labels.json")
        if os.path.exists(labels_path):
            with open(labels_path) as f:
                self.teacher_label_names = json.load(f)
        if self.tokenizer is None:
            self.tokenizer = tokenizer
        elif self.tokenizer.get_vocabulary() != tokenizer.get_vocabulary():
            raise ValueError(f"The recipe's tokenizer differs from the teacher's ({path!r}): the student must read the teacher's ids.")
        model.trainable = False
        self._teacher = model

    def get_tokenizer(self, source=None):
        """The teacher's tokenizer (the student must read the same ids); never trained here."""
        if self.tokenizer is None:
            self._load_teacher()
        return self.tokenizer

    def examples(self, source=None, split="train"):
        examples = super().examples(source, split)
        if self.teacher_label_names is not None and list(examples.label_names) != list(self.teacher_label_names):
            raise ValueError(
                f"The data's labels {examples.label_names} differ from the teacher's {self.teacher_label_names}: "
                "distil on the data (and categories) the teacher was trained on."
            )
        return examples

    def training_set(self, source, texts, labels):
        """The labelled examples and, with `transfer`, the transfer set after them with label -1."""
        texts, labels, options = super().training_set(source, texts, labels)
        transfer = self.config.transfer
        if transfer == "none" or self.config.alpha >= 1.0:  # alpha 1, the student alone: labels only
            return texts, labels, options
        if transfer == "unlabelled":
            import collections

            labelled = collections.Counter(texts)
            others = []
            for text in self.examples(source, "train").texts:
                if labelled[text]:
                    labelled[text] -= 1
                else:
                    others.append(text)
            return list(texts) + others, list(labels) + [-1] * len(others), options
        from zoo.data.shifts import Augmentation

        # Copies with their own augmentation (the last); the labelled texts keep `augment`, if any.
        augmentations = ((options["augment"],) if options else ()) + (Augmentation.parse(self.config.transfer_augment),)
        index = [0 if options else -1] * len(texts) + [len(augmentations) - 1] * len(texts)
        return list(texts) * 2, list(labels) + [-1] * len(texts), {"augment": augmentations, "augment_index": index}

    # -- model ---------------------------------------------------------------------------

    def build_model(self, total_steps=None, jit_compile="auto"):
        # Load the teacher before the seed is set, so that the student's initial weights are the
        # same whether or not (and whenever) a teacher gets loaded: alpha=1 vs alpha<1 compare fairly.
        teacher = self.teacher
        if self.label_names is None:
            self.label_names = self.teacher_label_names
        if teacher.num_classes != self.num_classes:
            raise ValueError(f"The teacher predicts {teacher.num_classes} classes, the data has {self.num_classes}.")
        return super().build_model(total_steps=total_steps, jit_compile=jit_compile)

    def create_model(self):
        student = super().create_model()
        return DistillationModel(
            student, self.teacher, alpha=self.config.alpha, temperature=self.config.temperature, name="distillation"
        )

    def compile_model(self, model, total_steps=None, jit_compile="auto"):
        if not isinstance(model, DistillationModel):  # a saved student: evaluate it as a classifier
            return super().compile_model(model, total_steps=total_steps, jit_compile=jit_compile)
        # Weighted, so that the transfer set's texts (weight 0, no label) stay out of them.
        model.compile(
            optimizer=self.make_optimizer(total_steps),
            weighted_metrics=classification_metrics(model.student.num_classes),
            jit_compile=jit_compile,
        )

    # -- checkpoints and export ----------------------------------------------------------

    def save(self, model, directory):
        """Saves the student alone (a `TextClassifier`): the teacher is an input, not a result."""
        super().save(model.student if isinstance(model, DistillationModel) else model, directory)

    def classification_model(self, model):
        """The student of a `DistillationModel` (what is saved, evaluated and exported); any other
        model (a saved student) as it is."""
        return model.student if isinstance(model, DistillationModel) else model


def distillation_gain(
    recipe, source=None, epochs=1, steps_per_epoch=None, shots_per_class=None, split="test", jit_compile="auto", verbose=0
):
    """Student accuracy with and without the teacher, same seed, data order and budget.

    Trains the recipe's student twice, once with the recipe's `alpha` and once with `alpha=1`
    (labels only: the student trained alone), each from the same initial weights over the same
    batches, and evaluates both and the teacher on `split`.

    Args:
        recipe: a `distill` recipe (its teacher set).
        epochs, steps_per_epoch: the budget; without `steps_per_epoch` an epoch is one pass.
        shots_per_class: train both students on only K labelled examples per class
            (`zoo.evaluation.few_shot_examples`, the same K for both), the regime where a
            teacher trained on everything helps most; evaluation is still on the whole split.

    Returns:
        {"distilled": accuracy, "alone": accuracy, "gain": distilled - alone, "teacher": accuracy,
         "distilled_macro_f1": ..., "alone_macro_f1": ...}.
    """
    import math

    from zoo.evaluation import few_shot_examples

    c = recipe.config
    if shots_per_class:
        c = dataclasses.replace(c, shots_per_class=int(shots_per_class))
    tokenizer = recipe.get_tokenizer(source)
    teacher = recipe.teacher
    (evaluation,) = recipe.datasets(source, splits=(split,))
    # Both runs build the same deterministic training pipeline (each pass's order depends on the
    # seed and the pass number only), so they see the same batches.
    repeated = bool(c.shots_per_class or steps_per_epoch)
    if steps_per_epoch:
        steps = steps_per_epoch
    elif c.shots_per_class:
        steps = math.ceil(len(few_shot_examples(recipe.examples(source, "train"), c.shots_per_class, c.seed).texts) / c.batch_size)
    else:
        (train,) = recipe.datasets(source, splits=("train",))
        steps = int(train.reduce(0, lambda count, _: count + 1))

    results = {}
    for name, alpha in (("distilled", c.alpha), ("alone", 1.0)):
        run = type(recipe)(dataclasses.replace(c, alpha=alpha))
        run.tokenizer, run._teacher = tokenizer, teacher
        run.teacher_label_names, run.label_names = recipe.teacher_label_names, recipe.label_names
        (train,) = run.datasets(source, splits=("train",), repeat=repeated)
        model = run.build_model(total_steps=epochs * steps, jit_compile=jit_compile)
        model.fit(train, epochs=epochs, steps_per_epoch=steps if repeated else None, verbose=verbose, shuffle=False)
        metrics = model.evaluate(evaluation, return_dict=True, verbose=0)
        results[name] = float(metrics["accuracy"])
        results[f"{name}_macro_f1"] = float(metrics["macro_f1"])
    teacher.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    results["teacher"] = float(teacher.evaluate(evaluation, return_dict=True, verbose=0)["accuracy"])
    results["gain"] = results["distilled"] - results["alone"]
    return results
