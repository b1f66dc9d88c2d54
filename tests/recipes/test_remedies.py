"""The classifier's remedies for shifted data, through the recipe: config checks, the augmented
training pipeline (a function of seed, pass and example, so a resumed run sees the same batches),
each remedy under MirroredStrategy and XLA, and the distillation transfer set."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import recipes
import recipes.distill  # noqa: F401 - registers "distill"

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = dict(vocabulary_size=300, sequence_length=16, batch_size=8, num_layers=1, hidden_dim=16, num_heads=2,
             intermediate_dim=32, warmup_steps=0, learning_rate=3e-3)


def batches(dataset, count):
    return [(x["token_ids"].numpy(), y.numpy(), {k: v.numpy() for k, v in x.items()}) for x, y in dataset.take(count)]


# -- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "recipe, overrides, message",
    [
        ("classifier", {"adversarial": "fgsm"}, "adversarial must be one of none, fgm, pgd, got 'fgsm'"),
        ("classifier", {"consistency": "mixup"}, "consistency must be one of none, rdrop, augment, got 'mixup'"),
        ("classifier", {"adversarial_steps": 0}, "adversarial_steps must be an integer >= 1"),
        ("classifier", {"adversarial_epsilon": -1.0}, "adversarial_epsilon must be a finite number > 0"),
        ("classifier", {"augment_probability": 1.5}, "augment_probability must be a number in"),
        ("classifier", {"augment": "length=8"}, "Cannot augment with 'length'"),
        ("classifier", {"augment": "typos=0.1"}, "Unknown shift 'typos'"),
        ("classifier", {"augment": "char_noise=2"}, "rate must be in"),
        ("classifier", {"consistency": "augment"}, "consistency=augment compares each text with an augmented copy"),
        ("multitask", {"adversarial": "fgm"}, "multitask: adversarial and consistency train the classifier recipe's model only"),
        ("distill", {"consistency": "rdrop"}, "distill: adversarial and consistency train the classifier recipe's model only"),
        ("distill", {"transfer": "everything"}, "transfer must be one of none, unlabelled, augmented"),
        ("distill", {"transfer": "unlabelled"}, "transfer=unlabelled uses the training texts beyond the labelled few"),
        ("distill", {"transfer": "augmented", "transfer_augment": ""}, "transfer_augment='': it is empty"),
    ],
)
def test_bad_remedy_settings_fail_in_one_line(recipe, overrides, message):
    with pytest.raises(ValueError, match=message) as error:
        recipes.get(recipe, **overrides)
    assert "\n" not in str(error.value)


def test_the_remedies_are_in_the_cli_catalog():
    from trainers import catalog

    for name in ("classifier", "multitask", "distill"):
        fields = catalog.field_types(name)
        for key in ("augment", "augment_probability", "adversarial", "adversarial_epsilon", "adversarial_steps",
                    "adversarial_weight", "consistency", "consistency_weight"):
            assert key in fields, (name, key)
    assert catalog.field_types("distill")["transfer"] is str


# -- the augmented training pipeline ------------------------------------------------------------


@pytest.fixture(scope="module")
def augmenting(classification_csv):
    recipe = recipes.get("classifier", data=classification_csv, augment="char_noise=0.3,word_dropout=0.2", **SMALL)
    recipe.get_tokenizer()
    return recipe


def test_augmentation_is_a_function_of_seed_and_step_and_survives_a_resume(augmenting, classification_csv):
    import tensorflow as tf

    from zoo.data import corpora

    (stream,) = augmenting.datasets(splits=("train",), repeat=True)
    per_pass = len(corpora.labelled_examples(classification_csv, "train")) // SMALL["batch_size"]
    first = batches(stream, per_pass + 4)  # into the second pass
    # A resumed run builds the pipeline anew (another process, another global seed state)
    # and skips the steps already trained: it must see the same batches from there on.
    tf.random.set_seed(1234)
    tf.random.uniform([3])
    resumed = recipes.get("classifier", data=classification_csv, augment="char_noise=0.3,word_dropout=0.2", **SMALL)
    resumed.tokenizer = augmenting.tokenizer
    (again,) = resumed.datasets(splits=("train",), repeat=True)
    for (ids, labels, _), (ids_again, labels_again, _) in zip(first[5:], batches(again.skip(5), per_pass - 1)):
        np.testing.assert_array_equal(ids, ids_again)
        np.testing.assert_array_equal(labels, labels_again)
    # Without augmentation the same seed gives the same order and labels but the clean ids.
    plain = recipes.get("classifier", data=classification_csv, **SMALL)
    plain.tokenizer = augmenting.tokenizer
    (clean,) = plain.datasets(splits=("train",), repeat=True)
    clean = batches(clean, 3)
    for (ids, labels, _), (clean_ids, clean_labels, _) in zip(first, clean):
        np.testing.assert_array_equal(labels, clean_labels)
        assert np.mean(np.any(ids != clean_ids, axis=1)) > 0.5
    # Another seed corrupts (and orders) differently.
    other = recipes.get("classifier", data=classification_csv, augment="char_noise=0.3,word_dropout=0.2", seed=1, **SMALL)
    other.tokenizer = augmenting.tokenizer
    (other,) = other.datasets(splits=("train",), repeat=True)
    assert not np.array_equal(batches(other, 1)[0][0], first[0][0])


def test_every_pass_corrupts_afresh_and_validation_stays_clean(augmenting, classification_csv):
    from zoo.data import corpora, pipelines
    from zoo.data.shifts import Augmentation

    examples = corpora.labelled_examples(classification_csv, "train")
    texts, labels = examples.texts[:16], examples.labels[:16]
    augmentation = Augmentation.parse("char_noise=0.3")
    stream = pipelines.classification_dataset(texts, labels, augmenting.preprocessor, 8, shuffle=False, repeat=True, augment=augmentation)
    pass_0, pass_1 = batches(stream, 4)[:2], batches(stream, 4)[2:]
    for (ids_0, _, _), (ids_1, _, _) in zip(pass_0, pass_1):  # the same examples, in the same order
        assert np.mean(np.any(ids_0 != ids_1, axis=1)) > 0.5
    # Only the training split is augmented.
    _, validation = augmenting.datasets()
    plain = recipes.get("classifier", data=classification_csv, **SMALL)
    plain.tokenizer = augmenting.tokenizer
    _, clean_validation = plain.datasets()
    for (ids, _, _), (clean_ids, _, _) in zip(batches(validation, 3), batches(clean_validation, 3)):
        np.testing.assert_array_equal(ids, clean_ids)


def test_augment_consistency_batches_carry_the_clean_and_the_augmented_view(augmenting, classification_csv):
    recipe = recipes.get("classifier", data=classification_csv, augment="char_noise=0.3", consistency="augment", **SMALL)
    recipe.tokenizer = augmenting.tokenizer
    plain = recipes.get("classifier", data=classification_csv, **SMALL)
    plain.tokenizer = augmenting.tokenizer
    (train,) = recipe.datasets(splits=("train",), repeat=True)
    (clean,) = plain.datasets(splits=("train",), repeat=True)
    for (ids, _, x), (clean_ids, _, _) in zip(batches(train, 3), batches(clean, 3)):
        np.testing.assert_array_equal(ids, clean_ids)  # the input is the clean text
        assert set(x) == {"token_ids", "padding_mask", "augmented_token_ids", "augmented_padding_mask"}
        assert x["augmented_token_ids"].shape == ids.shape
        assert np.mean(np.any(x["augmented_token_ids"] != ids, axis=1)) > 0.5


@pytest.mark.slow
@pytest.mark.parametrize(
    "remedy",
    [
        {"augment": "char_noise=0.1,word_dropout=0.1", "augment_probability": 0.5},
        # Epsilon well below the embedding sums' norm (about 0.4 per text at hidden 16): at or above
        # it the attacked loss wins and the model learns nothing.
        {"adversarial": "fgm", "adversarial_epsilon": 0.05},
        {"adversarial": "pgd", "adversarial_epsilon": 0.05, "adversarial_steps": 2},
        {"consistency": "rdrop"},
        {"augment": "char_noise=0.1", "consistency": "augment"},
    ],
    ids=["augment", "fgm", "pgd", "rdrop", "consistency-augment"],
)
def test_each_remedy_trains_the_recipe(classification_csv, augmenting, remedy):
    recipe = recipes.get("classifier", data=classification_csv, **{**SMALL, **remedy})
    recipe.tokenizer = augmenting.tokenizer
    (train,) = recipe.datasets(splits=("train",), repeat=True)
    (validation,) = recipe.datasets(splits=("validation",))
    model = recipe.build_model(total_steps=50, jit_compile=False)
    history = model.fit(train, validation_data=validation, steps_per_epoch=25, epochs=2, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]
    assert history["val_accuracy"][-1] > 0.9  # an easy task: the remedies must not stop it learning
    for term in ("adversarial_loss", "consistency_loss"):
        if term in history:
            assert all(value >= 0 for value in history[term])
            assert f"val_{term}" not in history


@pytest.mark.slow
def test_a_resumed_augmented_adversarial_run_ends_with_the_uninterrupted_weights(classification_csv, augmenting, tmp_path):
    """The Trainer stops at step 5 (backup of step 4), a new Trainer resumes from the backup:
    the augmentation replays, and the weights equal those of a run never interrupted."""
    from trainers.trainer import Trainer, TrainOptions

    class Interrupt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 4:
                raise KeyboardInterrupt("interrupted at step 5")

    def train(run_dir, callbacks=(), **remedy):
        recipe = recipes.get("classifier", data=classification_csv, **{**SMALL, **remedy})
        options = TrainOptions(epochs=1, steps_per_epoch=8, validation_steps=2, backup_every=2, jit_compile=False, verbose=0)
        return Trainer(recipe, str(run_dir), options=options, callbacks=callbacks).train()

    remedy = dict(augment="char_noise=0.2,word_dropout=0.2", adversarial="fgm", adversarial_epsilon=0.5)
    reference = [w.copy() for w in train(tmp_path / "reference", **remedy).model.get_weights()]
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "resumed", callbacks=[Interrupt()], **remedy)
    result = train(tmp_path / "resumed", **remedy)
    assert result.resumed_from_step == 4 and result.final_step == 8
    for a, b in zip(result.model.get_weights(), reference):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # The check can fail: the same run without augmentation ends elsewhere.
    plain = train(tmp_path / "plain", adversarial="fgm", adversarial_epsilon=0.5).model.get_weights()
    assert any(not np.allclose(a, b, atol=1e-3) for a, b in zip(plain, reference))


# -- MirroredStrategy and XLA -----------------------------------------------------------------

_STRATEGY_SCRIPT = """
import json, sys
sys.path.insert(0, {root!r})
from trainers.strategy import use_logical_cpus, get_strategy
from trainers import multi_worker_fix
use_logical_cpus(2)
# Keras' symbolic build reduces the first batch across replicas, which fails on the boolean
# padding mask under MirroredStrategy; the project's patch takes one replica's batch instead.
multi_worker_fix.apply()
import keras, numpy as np, tensorflow as tf
import recipes
from trainers.distributed_data import distribute

REMEDIES = {remedies!r}
SMALL = {small!r}

class PerStepLoss(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.losses = []
    def on_train_batch_begin(self, batch, logs=None):
        self.model.reset_metrics()  # each recorded loss is one batch's own
    def on_train_batch_end(self, batch, logs=None):
        self.losses.append({{k: float(v) for k, v in logs.items() if k.endswith("loss")}})

def train(name, strategy, jit_compile):
    recipe = recipes.get("classifier", data={data!r}, dropout=0.0, classifier_dropout=0.0, **SMALL, **REMEDIES[name])
    (stream,) = recipe.datasets(splits=("train",), repeat=True)
    with strategy.scope():
        model = recipe.build_model(total_steps=10, jit_compile=jit_compile)
    callback = PerStepLoss()
    model.fit(distribute(strategy, lambda: stream, SMALL["batch_size"]), steps_per_epoch=2, epochs=1, verbose=0, callbacks=[callback])
    return {{"losses": callback.losses, "weights": [w.tolist() for w in model.get_weights()],
             "replicas": strategy.num_replicas_in_sync}}

results = {{}}
for name in REMEDIES:
    results[name] = {{"single": train(name, tf.distribute.get_strategy(), False),
                      "mirrored": train(name, get_strategy("mirrored"), False)}}
    results[name]["xla"] = train(name, tf.distribute.get_strategy(), True)
print(json.dumps(results))
"""

STRATEGY_REMEDIES = {
    # The remedies composed in one run (each is checked inside the others' train step, with 6
    # trainings instead of 11): the augmented pipeline, PGD on the embeddings (its first step is FGM's, so both are
    # covered) and the clean-vs-augmented KL.
    "augment+pgd+consistency-augment": {
        "augment": "char_noise=0.2,word_dropout=0.2", "adversarial": "pgd", "adversarial_epsilon": 0.5,
        "adversarial_steps": 2, "consistency": "augment", "consistency_weight": 2.0,
    },
    # Without dropout (needed for equal runs) the two R-Drop passes agree and the term is 0; the
    # second pass and the mean of both losses are still checked.
    "rdrop": {"consistency": "rdrop"},
}


@pytest.mark.slow
def test_each_remedy_trains_the_same_under_mirrored_strategy_and_xla(classification_csv, augmenting):
    """Two replicas on 2 logical CPUs (a fresh process), one device, and one device with XLA:
    the same per-step losses (total and each term) and the same weights after 2 steps."""
    script = _STRATEGY_SCRIPT.format(root=REPO_ROOT, remedies=STRATEGY_REMEDIES, small=SMALL, data=classification_csv)
    env = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env, cwd=REPO_ROOT)
    assert process.returncode == 0, process.stderr[-3000:]
    results = json.loads(process.stdout.strip().splitlines()[-1])
    for name, runs in results.items():
        assert runs["mirrored"]["replicas"] == 2 and runs["single"]["replicas"] == 1
        single = runs["single"]["losses"]
        assert len(single) == 2 and single[0]["loss"] > 0
        for other in [key for key in ("mirrored", "xla") if key in runs]:
            for step, (a, b) in enumerate(zip(single, runs[other]["losses"])):
                assert a.keys() == b.keys(), (name, other)
                for key in a:
                    assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (name, other, step, key)
            for a, b in zip(runs["single"]["weights"], runs[other]["weights"]):
                np.testing.assert_allclose(np.array(b), np.array(a), atol=1e-4, err_msg=f"{name} {other}")
        remedy = STRATEGY_REMEDIES[name]
        if remedy.get("adversarial", "none") != "none":
            # loss = clean + adversarial_weight (default 1) x adversarial + consistency_weight x consistency
            weight = remedy.get("consistency_weight", 1.0)
            clean = [step["loss"] - step["adversarial_loss"] - weight * step.get("consistency_loss", 0.0) for step in single]
            assert all(step["adversarial_loss"] > c > 0 for step, c in zip(single, clean))  # the attacked loss is larger
        if remedy.get("consistency") == "augment":
            assert all(step["consistency_loss"] > 0 for step in single)


# -- distillation transfer set ------------------------------------------------------------------


@pytest.fixture(scope="module")
def csv_teacher(classification_csv, tmp_path_factory):
    teacher = recipes.get("classifier", data=classification_csv, **{**SMALL, "hidden_dim": 32, "intermediate_dim": 64, "batch_size": 32})
    train, _ = teacher.datasets()
    model = teacher.build_model(jit_compile=False)
    model.fit(train, epochs=2, verbose=0)
    directory = tmp_path_factory.mktemp("teacher")
    teacher.save(model, str(directory / "checkpoints" / "best"))
    return str(directory)


def test_unlabelled_transfer_set_is_the_rest_of_the_training_split(classification_csv):
    from zoo.data import corpora

    # The transfer set needs no teacher to be chosen (none is loaded here).
    teacher = "/nonexistent/teacher"
    recipe = recipes.get("distill", data=classification_csv, teacher=teacher, shots_per_class=10, transfer="unlabelled", **SMALL)
    every = corpora.labelled_examples(classification_csv, "train")
    texts, labels, options = recipe.training_set(classification_csv, every.texts[:0], [])
    assert len(texts) == len(every.texts) and labels == [-1] * len(every.texts) and options == {}
    few = recipes.get("distill", data=classification_csv, teacher=teacher, shots_per_class=10, **SMALL)
    from zoo.evaluation import few_shot_examples

    chosen = few_shot_examples(every, 10, 0)
    texts, labels, _ = recipe.training_set(classification_csv, chosen.texts, chosen.labels)
    assert texts[:20] == chosen.texts and labels[:20] == chosen.labels
    assert sorted(texts) == sorted(every.texts)  # the labelled few and the rest: each text once
    assert labels[20:] == [-1] * (len(every.texts) - 20)
    assert few.training_set(classification_csv, chosen.texts, chosen.labels)[0] == chosen.texts
    # The student alone (alpha 1) has no teacher term, so no transfer set.
    alone = recipes.get("distill", data=classification_csv, teacher=teacher, shots_per_class=10, transfer="unlabelled",
                        alpha=1.0, **SMALL)
    assert alone.training_set(classification_csv, chosen.texts, chosen.labels)[0] == chosen.texts


@pytest.mark.slow
def test_augmented_transfer_set_is_corrupted_copies_and_trains_on_the_teacher_alone(classification_csv, csv_teacher):
    recipe = recipes.get("distill", data=classification_csv, teacher=csv_teacher, shots_per_class=10, transfer="augmented",
                         transfer_augment="char_noise=0.3", alpha=0.5, **SMALL)
    recipe.get_tokenizer()
    texts, labels, options = recipe.training_set(classification_csv, ["a cat", "a saw"], [1, 0])
    assert texts == ["a cat", "a saw"] * 2 and labels == [1, 0, -1, -1]
    assert [str(a) for a in options["augment"]] == ["char_noise=0.3"] and options["augment_index"] == [-1, -1, 0, 0]
    (train,) = recipe.datasets(splits=("train",), repeat=True)
    x, y = next(iter(train))
    assert set(np.unique(y.numpy())) <= {-1, 0, 1} and np.any(y.numpy() == -1)
    model = recipe.build_model(total_steps=20, jit_compile=False)
    logs = model.fit(train, steps_per_epoch=4, epochs=1, verbose=0).history
    assert logs["soft_loss"][-1] > 0 and np.isfinite(logs["hard_loss"][-1])
    # Label -1 adds the teacher term only: on a batch of transfer texts the loss is
    # (1 - alpha) x the soft term, whatever labels they would have had, and the label term is 0.
    student_logits = model(x, training=False)
    unlabelled = -np.ones_like(y.numpy())
    model.reset_metrics()
    transfer_loss = float(model.compute_loss(x, unlabelled, student_logits, training=False))
    assert float(model.hard_loss_tracker.result()) == 0.0
    assert transfer_loss == pytest.approx(0.5 * float(model.soft_loss_tracker.result()), rel=1e-5)
    # The metrics leave them out: the accuracy of a mixed batch is over its labelled texts.
    for x, y in train.take(20):
        y = y.numpy()
        if 0 < np.sum(y >= 0) < len(y):
            break
    predicted = np.argmax(model(x, training=False).numpy(), axis=-1)
    model.reset_metrics()
    logs = model.compute_metrics(x, y, model(x, training=False))
    assert float(logs["accuracy"]) == pytest.approx(np.mean(predicted[y >= 0] == y[y >= 0]))
