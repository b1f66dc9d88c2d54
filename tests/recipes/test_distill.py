"""The distill recipe: the loss is Hinton's, the teacher stays frozen, the student saves alone and beats itself alone."""

import json
import os

import keras
import numpy as np
import pytest

import recipes
import recipes.distill  # noqa: F401 - registers "distill" (until recipes/__init__ imports it)
from recipes.base import load_checkpoint
from recipes.distill import distillation_gain
from zoo.models import TextClassifier
from zoo.models.distillation import DistillationModel, distillation_loss

SMALL = dict(vocabulary_size=300, sequence_length=16, batch_size=32, warmup_steps=0, learning_rate=3e-3)
STUDENT = dict(num_layers=1, hidden_dim=16, num_heads=2, intermediate_dim=32, **SMALL)


def numpy(value):
    return keras.ops.convert_to_numpy(value)


def softmax(logits):
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def reference_loss(labels, student, teacher, alpha, temperature):
    """The formula, term by term, in numpy."""
    cross_entropy = -np.log(softmax(student)[np.arange(len(labels)), labels])
    p_teacher, p_student = softmax(teacher / temperature), softmax(student / temperature)
    kl = (p_teacher * np.log(p_teacher / p_student)).sum(axis=-1)
    return np.mean(alpha * cross_entropy + (1 - alpha) * temperature**2 * kl)


# -- the loss ---------------------------------------------------------------------------------


def test_distillation_loss_matches_a_hand_computation():
    # One example, two classes: the student says class 0 (logits [1, 0]), the teacher class 1.
    # CE = log(1 + e^-1) = 0.313262; at T=1, KL = (0.731059 - 0.268941) * 1 = 0.462117, so
    # loss = 0.5 * 0.313262 + 0.5 * 0.462117 = 0.387689. At T=2 the logit gaps halve:
    # KL = (0.622459 - 0.377541) * 0.5 = 0.122459, times T^2 = 4: loss = 0.5 * 0.313262 + 0.5 * 0.489837.
    labels, student, teacher = [0], [[1.0, 0.0]], [[0.0, 1.0]]
    assert float(distillation_loss(labels, student, teacher, alpha=0.5, temperature=1.0)) == pytest.approx(0.387689, abs=1e-5)
    assert float(distillation_loss(labels, student, teacher, alpha=0.5, temperature=2.0)) == pytest.approx(0.401550, abs=1e-5)


def test_distillation_loss_matches_the_formula_on_random_logits():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=8)
    student, teacher = rng.normal(size=(8, 4)) * 3, rng.normal(size=(8, 4)) * 3
    for alpha, temperature in [(0.0, 1.0), (0.3, 2.0), (0.7, 4.0), (1.0, 3.0)]:
        ours = float(distillation_loss(labels, student.astype("float32"), teacher.astype("float32"), alpha, temperature))
        assert ours == pytest.approx(reference_loss(labels, student, teacher, alpha, temperature), rel=1e-5)
    # alpha = 0 and a student equal to the teacher: nothing left to learn.
    assert float(distillation_loss(labels, teacher, teacher, alpha=0.0, temperature=2.0)) == pytest.approx(0.0, abs=1e-6)


# -- the recipe on a small CSV ----------------------------------------------------------------


@pytest.fixture(scope="module")
def csv_teacher(classification_csv, tmp_path_factory):
    """A classifier run directory (checkpoint, tokenizer, labels) trained briefly on the CSV."""
    teacher = recipes.get("classifier", data=classification_csv, num_layers=1, hidden_dim=32, num_heads=2, intermediate_dim=64, **SMALL)
    train, _ = teacher.datasets()
    model = teacher.build_model()
    model.fit(train, epochs=2, verbose=0)
    directory = str(tmp_path_factory.mktemp("teacher") / "checkpoints" / "best")
    teacher.save(model, directory)
    return os.path.dirname(os.path.dirname(directory))  # the run directory


def test_student_learns_from_a_frozen_teacher_and_is_saved_alone(classification_csv, csv_teacher, tmp_path):
    recipe = recipes.get("distill", data=classification_csv, teacher=csv_teacher, alpha=0.3, temperature=2.0, **STUDENT)
    teacher, tokenizer, _ = load_checkpoint(csv_teacher)
    assert recipe.get_tokenizer().get_vocabulary() == tokenizer.get_vocabulary()  # the teacher's ids, not a new vocabulary
    train, validation = recipe.datasets()
    model = recipe.build_model()
    assert isinstance(model, DistillationModel) and model.student.encoder.hidden_dim == 16
    assert model.teacher.encoder.hidden_dim == 32 and not model.teacher.trainable_weights
    teacher_before = [numpy(w).copy() for w in model.teacher.weights]
    student_before = [numpy(w).copy() for w in model.student.weights]
    history = model.fit(train.take(5), verbose=0).history
    assert all(np.array_equal(b, numpy(w)) for b, w in zip(teacher_before, model.teacher.weights))
    assert any(not np.array_equal(b, numpy(w)) for b, w in zip(student_before, model.student.weights))
    # The logged loss is alpha * hard + (1 - alpha) * soft.
    assert history["loss"][0] == pytest.approx(0.3 * history["hard_loss"][0] + 0.7 * history["soft_loss"][0], rel=1e-4)

    recipe.save(model, str(tmp_path / "student"))
    saved, saved_tokenizer, config = load_checkpoint(str(tmp_path / "student"))
    assert isinstance(saved, TextClassifier) and saved.encoder.hidden_dim == 16
    assert config["recipe"] == "distill" and config["teacher"] == csv_teacher
    assert json.load(open(tmp_path / "student" / "labels.json")) == ["animal", "tool"]
    x, _ = next(iter(validation))
    np.testing.assert_allclose(numpy(saved(x)), numpy(model(x)), atol=1e-5)

    # The trainer's evaluation path: the saved student compiles and evaluates as a classifier.
    from trainers.trainer import evaluate_run

    metrics = evaluate_run(str(tmp_path / "student"), split="validation")
    assert {"accuracy", "macro_f1"} <= set(metrics)


def test_alpha_one_trains_on_labels_alone(classification_csv, csv_teacher):
    recipe = recipes.get("distill", data=classification_csv, teacher=csv_teacher, alpha=1.0, **STUDENT)
    _, validation = recipe.datasets()
    model = recipe.build_model()
    metrics = model.evaluate(validation, return_dict=True, verbose=0)
    assert metrics["soft_loss"] == 0.0
    assert metrics["loss"] == pytest.approx(metrics["hard_loss"], rel=1e-5)


def test_bad_teachers_fail_clearly(classification_csv, csv_teacher, tmp_path):
    with pytest.raises(ValueError, match="needs a teacher"):
        recipes.get("distill", data=classification_csv, **STUDENT).get_tokenizer()
    with pytest.raises(ValueError, match="sequence_length 32 exceeds the teacher's 16"):
        recipes.get("distill", data=classification_csv, teacher=csv_teacher, **{**STUDENT, "sequence_length": 32}).get_tokenizer()
    with pytest.raises(FileNotFoundError, match="No model.keras"):
        recipes.get("distill", data=classification_csv, teacher=str(tmp_path), **STUDENT).get_tokenizer()
    with pytest.raises(ValueError, match="alpha must be in"):
        recipes.get("distill", alpha=1.5)


# -- the point of it all: WordNet -------------------------------------------------------------


@pytest.mark.slow
def test_distilled_student_is_at_least_as_good_as_the_student_alone_on_wordnet(tmp_path):
    """A 2-layer hidden-64 teacher trained on all of WordNet's 4 default classes (2 epochs) teaches
    a 1-layer hidden-32 student that sees only 50 labelled glosses per class (120 steps each way)."""
    data = dict(sequence_length=32, warmup_steps=20)  # the default vocabulary: the tokenizer the tiny classifier test trains
    teacher = recipes.get("classifier", num_layers=2, hidden_dim=64, num_heads=2, intermediate_dim=128,
                          batch_size=64, learning_rate=3e-3, **data)
    train, _ = teacher.datasets()
    model = teacher.build_model(total_steps=2 * 100, jit_compile=False)
    model.fit(train, epochs=2, verbose=0)
    teacher.save(model, str(tmp_path / "teacher"))

    student = recipes.get("distill", teacher=str(tmp_path / "teacher"), num_layers=1, hidden_dim=32, num_heads=2,
                          intermediate_dim=64, alpha=0.5, temperature=4.0, batch_size=32, learning_rate=2e-3, **data)
    result = distillation_gain(student, epochs=1, steps_per_epoch=120, shots_per_class=50, jit_compile=False)
    print(f"WordNet 4 classes, test accuracy: {result}")
    assert result["teacher"] >= 0.85
    assert result["distilled"] >= result["alone"], result
